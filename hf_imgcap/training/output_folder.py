# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What a training run writes at the top of its output folder: recorded name by name, written without following links.

`run_files.json` (`RUN_FILES`) lists the top-level names a run created in `output_dir`. A run writes it when it
starts and adds each name before creating it, so even a run killed half-way has recorded what it left behind.
`--overwrite_output_dir` deletes exactly the recorded names, and nothing else is ever written over: a folder that
holds a name a run writes but that no recorded run wrote (an encoder's config.json, the user's README.md, a link
named tokenizer.json) is refused at the start (see `run_arguments.check_output_dir`).

Every file goes to a temporary file in its folder and is moved into place with `os.replace`, which replaces a
symlink in the way instead of writing into the file it points to (and no reader ever sees half a file). What
`save_pretrained` writes is saved into a fresh temporary folder first and moved in the same way, file by file.

`RunFiles.begin` also remembers what the folder held before the run started, so that a start that fails before the
first optimizer step can put the folder back as it found it (`undo_start`); a start that was killed instead is left
recorded as `training_started: false`, and the next run clears it without asking.
"""

import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_FILES = "run_files.json"
_TEMPORARY_PREFIX = ".hf_imgcap-"  # hidden, and never a name a run records


def replace_file(path, write) -> Path:
    """Create or replace the file `path` with what `write(binary_file)` writes, via a temporary file in the same
    folder and `os.replace`: a symlink at `path` is replaced, never written through."""
    path = Path(path)
    temporary = path.with_name(f"{_TEMPORARY_PREFIX}{secrets.token_hex(6)}-{path.name}")
    # os.open with 0o666: the file gets the permissions the umask gives any new file (mkstemp would make it 0600).
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def replace_text_file(path, text: str) -> Path:
    return replace_file(path, lambda file: file.write(text.encode("utf-8")))


def save_pretrained_replacing(obj, folder, before_moving=None) -> list[str]:
    """`obj.save_pretrained(folder)` (a model or a processor) that never writes through a symlink in `folder`: it saves
    into a fresh temporary folder inside `folder`, calls `before_moving(names)`, then moves each file into place.
    Returns the names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=_TEMPORARY_PREFIX))
    try:
        obj.save_pretrained(staging)
        names = sorted(path.name for path in staging.iterdir())
        if before_moving is not None:
            before_moving(names)
        for name in names:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def remove_temporaries(folder):
    """Delete what an interrupted `replace_file` / `save_pretrained_replacing` left in `folder` (by its prefix)."""
    for path in Path(folder).glob(f"{_TEMPORARY_PREFIX}*"):
        logger.info("removing %s, left by an interrupted save", path)
        _remove(path)


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunFilesError(ValueError):
    """`run_files.json` cannot be read."""


@dataclass
class FolderAtStart:
    """What the output folder was when a run started: enough to put it back (`RunFiles.undo_start`)."""

    names: set[str]  # its top-level entries
    contents: dict[str, bytes | None]  # the files the start rewrites (None: absent)
    created: bool  # the start created the folder itself


@dataclass
class RunFiles:
    """The record of what a run wrote at the top of `folder` (main process only). `training_started` is false while
    the run sets up (nothing it wrote is trained yet), true once its epochs began."""

    folder: Path
    names: set[str] = field(default_factory=set)
    training_started: bool = False
    at_start: FolderAtStart | None = None  # set by `begin`

    # ------------------------------------------------------------------ the record
    @classmethod
    def read(cls, folder) -> "RunFiles | None":
        """The record in `folder`, or None when there is none."""
        folder = Path(folder)
        path = folder / RUN_FILES
        if not path.is_file():
            return None
        try:
            content = json.loads(path.read_text())
            names, started = content["files"], content["training_started"]
            if not (isinstance(names, list) and all(isinstance(name, str) for name in names) and isinstance(started, bool)):
                raise TypeError("'files' must be a list of names and 'training_started' true or false")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise RunFilesError(
                f"{path} is not a record of the files a run wrote ({error}). Delete it and the run's files yourself, "
                f"or choose another --output_dir") from None
        return cls(folder, set(names), started)

    def save(self):
        content = {"written_by": "hf-imgcap", "training_started": self.training_started, "files": sorted(self.names)}
        replace_text_file(self.folder / RUN_FILES, json.dumps(content, indent=1) + "\n")

    def record(self, *names: str):
        """Add `names` to the record before they are created."""
        if not set(names) <= self.names:
            self.names.update(names)
            self.save()

    def foreign(self, names) -> list[str]:
        """Those of `names` that exist in the folder although no recorded run wrote them."""
        return sorted(name for name in set(names) - self.names - {RUN_FILES} if os.path.lexists(self.folder / name))

    def existing_paths(self) -> list[Path]:
        """The recorded names that exist, and the record itself: what `--overwrite_output_dir` deletes."""
        return sorted(self.folder / name for name in self.names | {RUN_FILES} if os.path.lexists(self.folder / name))

    # ------------------------------------------------------------------ writing
    def write_text(self, name: str, text: str) -> Path:
        self.record(name)
        return replace_text_file(self.folder / name, text)

    def save_pretrained(self, obj) -> list[str]:
        """Save a model or processor at the top of the folder (names recorded first, links replaced)."""
        return save_pretrained_replacing(obj, self.folder, before_moving=lambda names: self.record(*names))

    # ------------------------------------------------------------------ the start of a run
    @classmethod
    def begin(cls, folder, creating: tuple[str, ...], remember: tuple[str, ...], adopt: tuple[str, ...] = ()) -> "RunFiles":
        """Open the record of a run starting in `folder` (the previous record when it continues one) and add the names
        the run's start creates. `remember`: files the start rewrites, kept to be restored by `undo_start`. `adopt`:
        names recorded as the run's when the folder has no record yet (the files of a run from before the record
        that this run continues)."""
        folder = Path(folder)
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        remove_temporaries(folder)
        contents = {name: (folder / name).read_bytes() if (folder / name).is_file() else None for name in (*remember, RUN_FILES)}
        # Adopted files are a run's that trained: never to be cleared as the leftovers of a start.
        run_files = cls.read(folder) or cls(folder, set(adopt), training_started=bool(adopt))
        run_files.at_start = FolderAtStart(set(os.listdir(folder)), contents, created)
        run_files.names.update(creating)
        run_files.save()
        return run_files

    def mark_training_started(self):
        if not self.training_started:
            self.training_started = True
            self.save()

    def undo_start(self):
        """Put the folder back as `begin` found it: delete what this start created, restore the files it rewrote."""
        if self.at_start is None:
            return
        created = sorted(name for name in self.names if name not in self.at_start.names)
        for name in created:
            _remove(self.folder / name)
        for name, content in self.at_start.contents.items():
            if content is None:
                (self.folder / name).unlink(missing_ok=True)
            else:
                replace_file(self.folder / name, lambda file, content=content: file.write(content))
        if self.at_start.created and not any(self.folder.iterdir()):
            self.folder.rmdir()
        logger.info("the run stopped before training: %s is back as it was (removed %s)", self.folder,
                    ", ".join(created) or "nothing")


class UndoFailedStart:
    """Context manager around the start and the epochs of a run: a failure before the first optimizer step (bad data,
    a refused resume, an out-of-memory while encoding, no finite loss) puts the output folder back as the run found it
    (`RunFiles.undo_start`), so the next run there is not refused as continuing a previous one."""

    def __init__(self, run_files: RunFiles | None):
        self.run_files = run_files  # None on every process but the main one: it alone writes the folder
        self._state, self._first_step = None, None

    def training_begins(self, state):
        """The epochs start from `state` (a TrainState); only a failure before its next step is undone now."""
        self._state, self._first_step = state, state.global_step
        if self.run_files is not None:
            self.run_files.mark_training_started()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        trained = self._state is not None and self._state.global_step > self._first_step
        if exc_type is None or trained or self.run_files is None:
            return False
        try:
            self.run_files.undo_start()
        except OSError as error:  # the run's own error is the one to report
            logger.warning("could not put %s back as it was: %s", self.run_files.folder, error)
        return False
