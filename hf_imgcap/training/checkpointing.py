# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Training checkpoints that are either complete and verified, or ignored.

A checkpoint is written into a hidden temporary folder, sealed with a `manifest.json` listing every file's
size and SHA-256, and only then renamed to `step_<N>` (a rename is atomic on one file system). A kill or a
full disk during the save therefore leaves the previous checkpoint as the newest complete one. On load the
manifest is checked file by file, so a checkpoint that was truncated or altered later is refused with an
error naming the file. Old checkpoints rotate out once a newer one is sealed.

Why not Accelerate's `ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=N)` for the rotation: it
deletes the oldest checkpoint *before* writing the new one (a kill or a full disk during the save then leaves one
complete checkpoint fewer, possibly none), it counts every entry of the folder as a checkpoint (here also `best/`,
`processor/` and unsealed temporary folders), and it writes `checkpoint_<i>` folders in place, so a partial one looks
like a complete one. The files inside a checkpoint are Accelerate's (`save_state`, with the scheduler registered by
`register_for_checkpointing`); only the sealing and the rotation are done here.
"""

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "training_state.json"
_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointError(ValueError):
    """A checkpoint is missing, partial or corrupt."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class CheckpointManager:
    """Checkpoints under `folder/step_<N>`; keeps the newest `keep` of them."""

    def __init__(self, folder, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def _temporary(self, step: int) -> Path:
        return self.folder / f".tmp-step_{step:08d}"

    def start(self, step: int) -> Path:
        """A fresh temporary folder for the checkpoint of `step` (in several processes: call on the main one, then
        let every process write its files into it)."""
        temporary = self._temporary(step)
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        return temporary

    def seal(self, temporary: Path, step: int, state: dict) -> Path:
        """Write the training state and the manifest, then rename the folder to `step_<N>` (main process only)."""
        final = self.folder / f"step_{step:08d}"
        try:
            (temporary / STATE).write_text(json.dumps(state, indent=1))
            files = {
                str(path.relative_to(temporary)): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
                for path in sorted(temporary.rglob("*"))
                if path.is_file()
            }
            (temporary / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
            _fsync_tree(temporary)
            if final.exists():
                shutil.rmtree(final)
            os.replace(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)  # the previous checkpoint stays the newest
            raise
        self._rotate()
        logger.info("checkpoint saved: %s", final)
        return final

    def save(self, accelerator, step: int, state: dict) -> Path:
        """Checkpoint a (possibly multi-process) run: every process writes its part with `accelerator.save_state`
        (each its own RNG state) into one temporary folder; the main process then seals it. A failed write (e.g. a
        full disk) raises a `RuntimeError` saying which checkpoint is intact."""
        temporary = self._temporary(step)
        try:
            if accelerator.is_main_process:
                self.start(step)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(temporary))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                self.seal(temporary, step, state)
            accelerator.wait_for_everyone()
        except OSError as error:
            raise RuntimeError(
                f"could not write the checkpoint of step {step} ({error}); the newest complete checkpoint, "
                f"{self.latest()}, is intact: free space, then --resume"
            ) from error
        return self.folder / f"step_{step:08d}"

    def complete_checkpoints(self) -> list[Path]:
        """Sealed checkpoints, oldest first (temporary folders of interrupted saves are not included)."""
        if not self.folder.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.folder.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and (p / MANIFEST).is_file()]
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        checkpoints = self.complete_checkpoints()
        return checkpoints[-1] if checkpoints else None

    def _rotate(self):
        for old in self.complete_checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in self.folder.glob(".tmp-step_*"):
            shutil.rmtree(leftover, ignore_errors=True)


def verify_checkpoint(folder) -> dict:
    """Check every file against the manifest; return the training state. Raises `CheckpointError` naming
    what is wrong."""
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    if not manifest_file.is_file():
        raise CheckpointError(f"checkpoint {folder} is partial: it has no {MANIFEST} (the save did not finish)")
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {folder}: unreadable {MANIFEST} ({error})") from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is corrupt: {name} is missing")
        if path.stat().st_size != expected["bytes"]:
            raise CheckpointError(
                f"checkpoint {folder} is corrupt: {name} has {path.stat().st_size} bytes, expected {expected['bytes']}"
            )
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {folder} is corrupt: {name} does not match its checksum")
    return json.loads((folder / STATE).read_text())
