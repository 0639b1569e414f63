# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""`hf-imgcap`: caption images, evaluate captioners and share them on the Hub from a shell.

    hf-imgcap caption photos/ dog.jpg --model path/or/repo --num-beams 5 --json
    hf-imgcap evaluate --model path/or/repo --dataset path/to/flickr8k --split test
    hf-imgcap push outputs/show-attend-tell --repo-id user/name --space-id user/name-demo
    hf-imgcap space outputs/show-attend-tell --output my-space && python my-space/app.py

Memory stays flat however many images there are: paths are found lazily, images are opened and preprocessed one
batch at a time, and each result is written (and flushed) as soon as its batch is done.
"""

import argparse
import errno
import json
import logging
import math
import os
import shutil
import sys
import traceback
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hf_imgcap.evaluation.attention_maps import model_view_crop_fraction, render_attention_map
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import TOKENIZER_FILES

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
PROGRAM = "hf-imgcap"
MAX_PATH_COLUMN = 60  # table mode: longer paths push their caption to the right instead of widening every row

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + 2  # Ctrl-C: what a shell reports for a tool ended by SIGINT
EXIT_BROKEN_PIPE = 128 + 13  # the reader went away (`| head`): what a shell reports for a tool ended by SIGPIPE
DEBUG_VARIABLE = "HF_IMGCAP_DEBUG"
DEBUG_HELP = f"Errors the user can fix print one message; set {DEBUG_VARIABLE}=1 to see their Python traceback too."


class UsageError(Exception):
    """A problem the user can fix (missing model, no images, ...): one line on stderr, exit code 2."""


# ---------------------------------------------------------------------------------------------- errors at the entry points
def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's to fix (a message is enough) rather than a bug (the traceback is the report).

    User errors are what our checks raise (`UsageError`, `ValueError` and its subclasses: argument values, data
    layouts, columns, checkpoints, images) and `OSError`, which Python, transformers, datasets and huggingface_hub
    raise for files, folders and repositories that are missing, unreadable or full; also the errors of the two
    libraries that read a user's data and weights files when those files are damaged. Anything else (TypeError,
    KeyError, AttributeError, RuntimeError, ...) is a bug and keeps its traceback.
    """
    return isinstance(error, (UsageError, ValueError, OSError, *_damaged_file_errors()))


def _damaged_file_errors() -> tuple[type, ...]:
    """What datasets and safetensors raise for a damaged data or weights file; looked up only if those libraries
    are loaded (whatever raised one has imported it)."""
    found = []
    if "datasets.exceptions" in sys.modules:
        found.append(sys.modules["datasets.exceptions"].DatasetGenerationError)
    if "safetensors" in sys.modules:
        found.append(sys.modules["safetensors"].SafetensorError)
    return tuple(found)


def error_message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:  # "name: No such file or directory", not "[Errno 2] ..."
        return f"{terminal_safe(str(error.filename))}: {error.strerror}" if error.filename is not None else error.strerror
    text = str(error).strip() or type(error).__name__
    if isinstance(error, _damaged_file_errors()) and error.__cause__ is not None:  # datasets: "An error occurred while
        text += f" ({type(error.__cause__).__name__}: {_first_line(error.__cause__)})"  # generating the dataset": why
    return text


def debug_requested() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def run_as_program(program: str, body) -> int:
    """Run `body()` as a command-line program named `program` and return its exit status: `body()`'s own, 2 for a
    user error (`is_user_error`: one message on stderr, the traceback only with HF_IMGCAP_DEBUG=1), 130 for Ctrl-C,
    141 when the reader of stdout went away. Any other exception (a bug) propagates with its traceback."""
    try:
        return body()
    except KeyboardInterrupt:
        if debug_requested():
            traceback.print_exc()
        print(f"{program}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`hf-imgcap caption ... | head -1`): stop quietly like other tools.
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as error:
        if not is_user_error(error):
            raise
        if debug_requested():
            traceback.print_exc()
        _discard_stdout_if_unwritable()
        print(printable(f"{program}: error: {error_message(error)}", sys.stderr, keep_newlines=True), file=sys.stderr, flush=True)
        return EXIT_USAGE


def _discard_stdout() -> None:
    """Point stdout at /dev/null: Python flushes it at exit, which would fail (and print) again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (an embedding program's or a test's stream): nothing to protect
        pass


def _discard_stdout_if_unwritable() -> None:
    try:
        sys.stdout.flush()
    except OSError:  # a full disk or a closed pipe: what is left in the buffer cannot be written either
        _discard_stdout()


# ---------------------------------------------------------------------------------------------- arguments
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Show, Attend and Tell image captioning (transformers-native).",
        epilog=f"Exit status: 0 on success, 2 for a user error (bad arguments, a missing or unreadable model, dataset "
        f"or file), 130 when interrupted. {DEBUG_HELP}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    caption = commands.add_parser(
        "caption",
        help="caption images and folders of images",
        description="Caption image files and the images in folders, in batches.",
        epilog="Exit status: 0 if every image was captioned, 1 if some could not be read (each is reported on "
        "stderr with the reason; the others are still captioned), 2 for a usage error (e.g. model not found, "
        f"no images found), 130 when interrupted, 141 when the reader of the output goes away (e.g. `| head`). {DEBUG_HELP}",
    )
    caption.add_argument("images", nargs="+", metavar="IMAGES", help="image files and/or folders of images")
    _add_model_arguments(caption)
    caption.add_argument("--num-beams", type=_positive_int, default=5, help="beam width (default: 5; 1 = greedy)")
    caption.add_argument("--max-new-tokens", type=_positive_int, default=30, help="longest caption in tokens (default: 30)")
    caption.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (default: 16)")
    caption.add_argument("--recursive", action="store_true", help="also look for images in sub-folders")
    caption.add_argument("--json", action="store_true", help='write JSON lines {"image": ..., "caption": ...} instead of a table')
    caption.add_argument(
        "--attention-map", metavar="DIR", type=Path,
        help="also write, per image, DIR/<image name>_attention.png: the attention behind each word",
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="score a model on a dataset split (BLEU, METEOR, ROUGE-L, CIDEr)",
        description="Caption every image of a dataset split by generation and score the captions against the "
        "references (COCO-caption metrics).",
        epilog=f"Exit status: 0 on success, 2 for a user error (e.g. model or dataset not found), 130 when interrupted. {DEBUG_HELP}",
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument("--dataset", required=True, help="Hub dataset id or local folder (Flickr8k, Kaggle or Karpathy layout)")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"], help="(default: test)")
    evaluate.add_argument("--num-beams", type=_positive_int, default=3, help="(default: 3)")
    evaluate.add_argument("--max-new-tokens", type=_positive_int, default=40, help="(default: 40)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=32, help="(default: 32)")
    evaluate.add_argument("--max-images", type=_positive_int, help="score only the first N images of the split")
    evaluate.add_argument(
        "--allow-split-overlap", action="store_true",
        help="keep validation / test images that are also in an earlier split (the same file, bytes or pixels); by "
        "default they are left out and counted in a warning, so that the scores are not inflated",
    )
    evaluate.add_argument(
        "--seed", type=int, default=None,
        help="the seed that draws a split the dataset lacks from its images, as train.py --seed does (default: the seed "
        "in the model folder's training_args.json, else train.py's default): a model is scored on the images its run "
        "held out",
    )
    evaluate.add_argument(
        "--meteor", action=argparse.BooleanOptionalAction, default=None,
        help="run METEOR (needs Java); default: when Java is found",
    )
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    evaluate.add_argument(
        "--captions", metavar="FILE", type=Path,
        help="also write the scored captions to FILE (JSON: image_id, caption, references per image, as train.py's "
        "test_captions.json; caption null for an image left out of the metrics)",
    )

    push = commands.add_parser(
        "push",
        help="upload a training output folder to the Hub",
        description="Upload the model of a training output folder (weights, code files, processor, model card, "
        "metrics) to a Hub model repository in one commit; the model card is rewritten first to name the repository. "
        "Checkpoints, logs and any other file of the folder stay local. The token comes from HF_TOKEN or `hf auth login`.",
        epilog=f"Exit status: 0 when pushed, 2 for a user error (no model in the folder, a bad repository id, no "
        f"network or no permission), 130 when interrupted. {DEBUG_HELP}",
    )
    push.add_argument("folder", type=Path, metavar="FOLDER", help="the training output folder (train.py's --output_dir)")
    push.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the Hub model repository (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--commit-message", help="(default: 'Upload Show-Attend-Tell captioner (hf-imgcap)')")
    push.add_argument(
        "--space-id", metavar="USER/NAME",
        help="also write a Gradio Space for the model (as `hf-imgcap space` does) and upload it to this Space "
        "repository; the model card links it",
    )
    push.add_argument("--space-dir", type=Path, metavar="DIR", help="with --space-id: write the Space here and keep it "
                      "(default: a temporary folder)")
    push.add_argument("--hf-imgcap-requirement", metavar="SPEC", help="with --space-id: how the Space installs hf-imgcap "
                      "(as for `hf-imgcap space`)")

    space = commands.add_parser(
        "space",
        help="write a Gradio Space (a web page) for a model",
        description="Write a Gradio Space for a model: app.py (upload an image, read the caption, see the attention "
        "behind each word and the top beams), requirements.txt, a README.md with the Space's metadata and a few "
        "example images from the model's own test set. `python DIR/app.py` serves it on 127.0.0.1; "
        'it needs `pip install "hf-imgcap[space]"`.',
        epilog=f"Exit status: 0 when written, 2 for a user error, 130 when interrupted. {DEBUG_HELP}",
    )
    space.add_argument("model", metavar="MODEL", help="saved model folder (e.g. train.py's --output_dir) or Hub repo id")
    space.add_argument("--output", type=Path, required=True, metavar="DIR", help="the Space folder to write")
    space.add_argument("--repo-id", metavar="USER/NAME", help="the model's Hub repository: the Space loads it from there")
    space.add_argument("--title", help="the page's title (default: '<model name> captioner')")
    space.add_argument("--license", default="apache-2.0", help="(default: apache-2.0)")
    space.add_argument("--examples", nargs="+", type=Path, metavar="IMAGE",
                       help="example images (default: a few images of the model folder's test set)")
    space.add_argument("--num-examples", type=int, default=3, help="test-set images to copy as examples (default: 3)")
    space.add_argument("--hf-imgcap-requirement", metavar="SPEC",
                       help="how the Space installs hf-imgcap, a requirements.txt line (default: where the hf-imgcap "
                       "installed here came from: hf-imgcap==<version> from PyPI, or the git commit or archive URL pip "
                       "recorded; e.g. 'hf-imgcap @ git+https://...' for a copy installed from local files)")
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH_OR_REPO", help="saved model folder or Hub repo id")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="run the code files of a model folder (only needed for models that are not hf-imgcap's own)",
    )


# ---------------------------------------------------------------------------------------------- model
def resolve_device(name: str | None):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model_and_processor(model: str, device, trust_remote_code: bool = False):
    """Our classes through the auto classes (registered by `import hf_imgcap`): no remote code needed."""
    import hf_imgcap  # noqa: F401  registers the config, model and processor with the auto classes
    from transformers import AutoConfig, AutoModel, AutoProcessor
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the "Loading weights" bar: noise next to ours

    model = os.path.expanduser(model)
    if _looks_like_a_path(model) and not Path(model).is_dir():
        raise UsageError(f"model folder not found: {terminal_safe(model)}")
    if Path(model).is_dir():
        _check_model_folder_files(Path(model))
    try:
        # The config first: its sizes are checked (by the config itself, and against the weights below) before
        # from_pretrained allocates the model.
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        if Path(model).is_dir():
            check_weights_match_config(Path(model), config)
        loaded = AutoModel.from_pretrained(model, config=config, trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # missing files, unknown repo, offline, not a captioning model
        where = "the folder" if Path(model).is_dir() else "the Hub (no local folder of that name)"
        raise UsageError(f"cannot load model {model!r} from {where}: {_first_line(error)}") from None
    if not hasattr(loaded, "caption") or not hasattr(processor, "load_images"):
        raise UsageError(f"{model!r} is not a Show, Attend and Tell captioner ({type(loaded).__name__})")
    return loaded.to(device).eval(), processor


def _check_model_folder_files(folder: Path) -> None:
    """The files whose absence transformers reports in other words ("Should have a `model_type` key", "Couldn't
    instantiate the backend tokenizer"). A folder with no processor files at all is fine: the processor then
    comes from the config."""
    if not (folder / "config.json").is_file():
        raise UsageError(f"{terminal_safe(str(folder))}: no config.json: not a model folder (save_pretrained writes one)")
    if (folder / "processor_config.json").is_file() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{terminal_safe(str(folder))}: processor_config.json but no tokenizer files "
                         f"({' / '.join(TOKENIZER_FILES)}): save the processor again (processor.save_pretrained)")


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_weights_match_config(folder: Path, config) -> None:
    """Refuse a model folder whose config.json asks for a model far larger than its weight files hold (e.g. a
    few-KB folder asking for 160 GB), before anything is allocated: transformers would allocate the full size and
    fill what the files lack with random values."""
    if not hasattr(config, "estimated_num_parameters"):  # not one of our models (--trust-remote-code)
        return
    files = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    for index in WEIGHT_INDEX_FILES:
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise UsageError(f"{terminal_safe(str(folder / index))} cannot be read ({_first_line(error)})") from None
            files += [folder / shard for shard in sorted(shards) if (folder / shard).is_file()]
    if not files:
        return  # from_pretrained says which weight file is missing
    stored = sum(path.stat().st_size for path in files)
    parameters = config.estimated_num_parameters()
    if stored < parameters:  # under 1 byte per parameter: a checkpoint holds at least 2 (16-bit)
        raise UsageError(
            f"{terminal_safe(str(folder))}: config.json asks for {parameters:,} parameters ({config.describe_sizes()}), at least "
            f"{_bytes(2 * parameters)} of weights, but its weight files ({', '.join(p.name for p in files)}) hold only {stored:,} bytes: "
            "refused before allocating the model (a damaged or tampered folder?)"
        )


def _bytes(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count:,} bytes"


def _looks_like_a_path(name: str) -> bool:
    # Hub ids are "owner/name"; anything else (or anything that exists) is meant as a local folder, so that a
    # mistyped folder gets "not found" at once rather than Hub retries.
    return os.path.exists(name) or name.count("/") != 1 or name.startswith((".", "/")) or "\\" in name


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- images
def iter_image_paths(inputs: Iterable[str], recursive: bool = False) -> Iterator[Path]:
    """Files as given (even without an image extension: the user named them), then each folder's images, sorted.

    A path that does not exist is yielded as well, so that it is reported as a failed image like the others.
    Hidden files (".DS_Store", macOS "._name.jpg" resource forks) are skipped inside folders.
    """
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            yield path
            continue
        walker = os.walk(path) if recursive else [(str(path), [], [e.name for e in os.scandir(path) if _is_file_or_broken_link(e)])]
        for folder, subfolders, files in walker:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # walk order = sorted
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield Path(folder) / name


def _is_file_or_broken_link(entry: os.DirEntry) -> bool:
    """A file, or a symlink that leads nowhere (a loop, a deleted target): those are reported, not silently
    dropped (`os.walk` lists them with the files as well)."""
    try:
        return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
    except OSError:  # a symlink loop: stat() fails with ELOOP
        return True


def broken_link_reason(path: Path) -> str | None:
    """Why a symlink cannot lead to an image (a loop, a missing target), or None for anything else."""
    try:
        if not path.is_symlink():
            return None
        os.stat(path)
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop (it leads back to itself)"
        if error.errno == errno.ENOENT:
            return f"a broken symlink (its target {os.readlink(path)} does not exist)"
        return f"cannot follow the symlink ({error.strerror or error})"


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------- caption
@dataclass
class CaptionRun:
    """Counts and output formatting of one `caption` command."""

    as_json: bool
    path_width: int
    out: object = field(default_factory=lambda: sys.stdout)  # looked up when the run starts (tests swap it)
    captioned: int = 0
    failed: int = 0
    _header_written: bool = False
    _used_map_names: set = field(default_factory=set)

    def write(self, path: Path, caption: str, attention_map: Path | None = None) -> None:
        if self.as_json:
            record = {"image": str(path), "caption": caption}
            if attention_map is not None:
                record["attention_map"] = str(attention_map)
            line = json_line(record, self.out)
        else:
            if not self._header_written:
                print(f"{'image':<{self.path_width}}  caption", file=self.out)
                self._header_written = True
            line = printable(f"{terminal_safe(str(path)):<{self.path_width}}  {caption}", self.out)
        print(line, file=self.out, flush=True)  # results appear as they are made
        self.captioned += 1

    def attention_map_path(self, folder: Path, image_path: Path) -> Path:
        """`<stem>_attention.png`, with `-1`, `-2`, ... when two images share a stem (a.jpg, a.png, x/a.jpg)."""
        name, counter = f"{image_path.stem}_attention.png", 0
        while name in self._used_map_names:
            counter += 1
            name = f"{image_path.stem}_attention-{counter}.png"
        self._used_map_names.add(name)
        return folder / name


# ---------------------------------------------------------------------------------------------- text for a terminal
# Kept although not "printable": the joiners that Persian, Indic scripts and emoji sequences need.
JOINERS = frozenset("\u200c\u200d")
# Non-printable characters that do nothing to a terminal: non-ASCII spaces, private use, unassigned code points.
HARMLESS_CATEGORIES = frozenset({"Zs", "Co", "Cn"})
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _is_unsafe(char: str) -> bool:
    """Control characters (C0, DEL, C1: newline, ESC, BEL, ...), invisible format characters (the bidirectional
    overrides and isolates that reorder what a terminal shows, U+202E etc.), line and paragraph separators, and the
    lone surrogates that stand for file-name bytes that are not UTF-8."""
    return not char.isprintable() and char not in JOINERS and unicodedata.category(char) not in HARMLESS_CATEGORIES


def _escape(char: str) -> str:
    code = ord(char)
    if char in SHORT_ESCAPES:
        return SHORT_ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for a byte that is not UTF-8: show that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def terminal_safe(text: str, keep_newlines: bool = False) -> str:
    """`text` (a file name, a user's argument, or a message holding them) as it may be shown on a terminal: every
    character that would move the cursor, break the line, drive the terminal or reorder the text (`_is_unsafe`) is
    written as a visible escape (\\n, \\x1b, \\u202e; a file-name byte that is not UTF-8 as \\xNN); everything
    else, é and 日本 included, stays as it is. `keep_newlines` keeps the line breaks of a message of several lines."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(char if (keep_newlines and char == "\n") or not _is_unsafe(char) else _escape(char) for char in text)


def json_line(record: dict, stream) -> str:
    """`record` as one line of JSON that is exact (file names round-trip) and safe on a terminal: the characters
    `terminal_safe` escapes that JSON itself leaves raw (DEL, C1, bidirectional controls, separators) become \\uXXXX
    escapes; other non-ASCII text stays readable unless `stream` cannot encode it."""
    line = json.dumps(record, ensure_ascii=False)
    if not line.isprintable():
        line = "".join(_json_escape(char) if _is_unsafe(char) else char for char in line)
    return line if _encodable(line, stream) else json.dumps(record)  # \uXXXX escapes: still valid, lossless JSON


def _json_escape(char: str) -> str:
    units = char.encode("utf-16-le", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(units[i:i + 2], 'little'):04x}" for i in range(0, len(units), 2))


def _encodable(text: str, stream) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def printable(text: str, stream, keep_newlines: bool = False) -> str:
    """`text` as `stream` can show it: `terminal_safe`, then, for a stream whose encoding lacks some characters
    (Windows code pages, PYTHONIOENCODING=ascii), those as \\x.. / \\u.... escapes instead of a UnicodeEncodeError in
    the middle of a run."""
    text = terminal_safe(text, keep_newlines)
    if _encodable(text, stream):
        return text
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text.encode("ascii", "backslashreplace").decode("ascii")


class TerminalSafeFormatter(logging.Formatter):
    """Log lines with the names they hold escaped as `terminal_safe` does (multi-line messages keep their lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record), keep_newlines=True)


def caption_command(args) -> int:
    from tqdm.auto import tqdm

    # One cheap pass over the names (no file is opened) for the progress bar's total and the table's width.
    total, longest = 0, 0
    for path in iter_image_paths(args.images, args.recursive):
        total, longest = total + 1, max(longest, len(terminal_safe(str(path))))
    if total == 0:
        raise UsageError(f"no images found in {' '.join(map(terminal_safe, args.images))} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}"
                         + ("" if args.recursive else "; use --recursive for sub-folders") + ")")
    if args.attention_map is not None and args.attention_map.exists() and not args.attention_map.is_dir():
        raise UsageError(f"--attention-map {terminal_safe(str(args.attention_map))}: exists and is not a folder")
    if args.attention_map is not None:
        try:  # made now, so that a folder that cannot be made is refused before any image is captioned
            args.attention_map.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"--attention-map {terminal_safe(str(args.attention_map))}: cannot make the folder "
                             f"({error.strerror or error})") from None
    model, processor = load_model_and_processor(args.model, resolve_device(args.device), args.trust_remote_code)
    generate_kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    run = CaptionRun(as_json=args.json, path_width=min(max(longest, len("image")), MAX_PATH_COLUMN))
    crop = model_view_crop_fraction(processor.image_processor)

    with tqdm(total=total, unit="image", desc="captioning", file=sys.stderr, disable=None) as progress:
        for paths in batched(iter_image_paths(args.images, args.recursive), args.batch_size):
            good_paths, images = _open_batch(paths, processor, run, progress)
            if images:
                _caption_batch(model, processor, good_paths, images, run, args.attention_map, crop, generate_kwargs)
            progress.update(len(paths))

    summary = f"captioned {run.captioned} of {total} images"
    if run.failed:
        summary += f"; {run.failed} could not be read (see above)"
    print(f"hf-imgcap: {summary}", file=sys.stderr)
    return EXIT_SOME_FAILED if run.failed else EXIT_OK


def _caption_batch(model, processor, paths, images, run: CaptionRun, map_folder, crop: float, generate_kwargs) -> None:
    """Caption one batch of opened images and write each result (and its attention figure) at once."""
    if map_folder is None:
        for path, caption in zip(paths, model.caption(images, processor, batch_size=len(images), **generate_kwargs)):
            run.write(path, caption)
        return
    results = model.caption(images, processor, batch_size=len(images), return_attentions=True, **generate_kwargs)
    for path, image, result in zip(paths, images, results):
        target = run.attention_map_path(map_folder, path)
        render_attention_map(image, result["tokens"], result["attentions"], target, crop_fraction=crop)
        run.write(path, result["caption"], target)


def _open_batch(paths: list[Path], processor, run: CaptionRun, progress) -> tuple[list[Path], list]:
    """Open each image on its own, so that a bad one is reported and skipped instead of failing the batch."""
    good_paths, images = [], []
    for path in paths:
        try:
            reason = broken_link_reason(path)
            if reason is not None:
                raise ValueError(f"{path}: {reason}")
            images.extend(processor.load_images([str(path)]))
            good_paths.append(path)
        except ValueError as error:  # the message is "<path>: <reason>"
            run.failed += 1
            progress.write(printable(f"hf-imgcap: skipped {error}", sys.stderr), file=sys.stderr)
    return good_paths, images


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate_command(args) -> int:
    from accelerate import Accelerator

    from hf_imgcap.data.caption_datasets import load_caption_dataset
    from hf_imgcap.evaluation.caption_metrics import TOKENIZER_LABELS
    from hf_imgcap.evaluation.generation import evaluate_captioner

    if _looks_like_a_path(args.dataset) and not Path(args.dataset).exists():  # before the slow loads
        raise UsageError(f"dataset folder not found: {terminal_safe(args.dataset)}")
    if args.meteor and shutil.which("java") is None:
        raise UsageError("--meteor needs Java, and no `java` is on PATH: install a Java runtime, or pass --no-meteor")
    device = resolve_device(args.device)
    model, processor = load_model_and_processor(args.model, device, args.trust_remote_code)
    seed, seed_source = _training_seed(args)
    try:
        splits, report = load_caption_dataset(args.dataset, seed=seed, allow_split_overlap=args.allow_split_overlap, return_report=True)
    except (OSError, ValueError) as error:  # unreadable layout, empty split, unknown Hub dataset, offline
        raise UsageError(f"cannot load dataset {args.dataset!r}: {_first_line(error)}") from None
    split = splits[args.split]
    if args.split in report.seeded_splits:
        print(f"hf-imgcap: the dataset has no {args.split} split: its images were drawn by a seeded random split with seed {seed} "
              f"({seed_source}), as train.py --seed {seed} draws them", file=sys.stderr)
    if args.max_images is not None:
        split = split.select(range(min(args.max_images, len(split))))

    if args.captions is not None and not args.captions.parent.is_dir():  # before hours of captioning
        raise UsageError(f"--captions: folder not found: {terminal_safe(str(args.captions.parent))}")
    metrics, captions = evaluate_captioner(
        model,
        processor,
        split,
        accelerator=Accelerator(cpu=device.type == "cpu"),
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        meteor=args.meteor,
    )
    if args.captions is not None:
        scored = [{"image_id": image_id, "caption": caption, "references": list(references)}
                  for image_id, caption, references in zip(split["image_id"], captions, split["captions"])]
        args.captions.write_text(json.dumps(scored, indent=1, ensure_ascii=False), encoding="utf-8")
    tokenizer = TOKENIZER_LABELS[metrics.tokenizer]  # "ptb", or the approximation's warning label
    if args.json:
        print(json.dumps({**metrics, "tokenizer": tokenizer}))
    else:
        print(f"{terminal_safe(args.model)} on {terminal_safe(args.dataset)} [{args.split}], {metrics['num_images']} images, "
              f"beam {args.num_beams}, max {args.max_new_tokens} new tokens, tokenizer {tokenizer}")
        for name, value in metrics.items():
            shown = value if isinstance(value, int) or not math.isfinite(value) else f"{value:.4f}"
            print(f"  {name:<10} {shown}")
    return EXIT_OK


def _training_seed(args) -> tuple[int, str]:
    """The seed `evaluate` draws a missing split with, and where it came from: --seed, else the training run's own
    (its training_args.json beside the model), else train.py's default."""
    from hf_imgcap.training.run_arguments import DEFAULT_SEED, TRAINING_ARGS_FILE

    if args.seed is not None:
        return args.seed, "--seed"
    record = Path(args.model) / TRAINING_ARGS_FILE
    if record.is_file():
        try:
            seed = json.loads(record.read_text())["training"]["seed"]
            if isinstance(seed, int) and not isinstance(seed, bool):
                return seed, f"from {record}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return DEFAULT_SEED, f"{record} records no seed; train.py's default: pass --seed with the training run's seed"
    return DEFAULT_SEED, "train.py's default: pass --seed with the training run's seed"


# ---------------------------------------------------------------------------------------------- push
def push_command(args) -> int:
    from hf_imgcap.hub import push_to_hub

    _check_repo_id(args.repo_id, "--repo-id")
    if not args.folder.is_dir():
        raise UsageError(f"folder not found: {terminal_safe(str(args.folder))}")
    if args.space_id is not None:
        _check_repo_id(args.space_id, "--space-id")
    else:
        for option, value in (("--space-dir", args.space_dir), ("--hf-imgcap-requirement", args.hf_imgcap_requirement)):
            if value is not None:
                raise UsageError(f"{option} needs --space-id (the Space repository to upload to)")
    push_to_hub(args.folder, args.repo_id, private=args.private or None, commit_message=args.commit_message, space_id=args.space_id)
    print(f"pushed {terminal_safe(str(args.folder))} to https://huggingface.co/{args.repo_id}")
    if args.space_id is not None:
        from hf_imgcap.hub import push_space

        push_space(args.folder, args.repo_id, args.space_id, space_dir=args.space_dir, private=args.private or None,
                   hf_imgcap_requirement=args.hf_imgcap_requirement)
        print(f"pushed its Space to https://huggingface.co/spaces/{args.space_id}")
    return EXIT_OK


def _check_repo_id(repo_id: str, option: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UsageError(f"{option} {repo_id!r} is not a Hub repository id: {_first_line(error)}") from None
    if "/" not in repo_id:
        raise UsageError(f"{option} {repo_id!r}: give user/name (or organization/name)")


# ---------------------------------------------------------------------------------------------- space
def space_command(args) -> int:
    from hf_imgcap.space.folder import write_space

    model = os.path.expanduser(args.model)
    if _looks_like_a_path(model) and not Path(model).is_dir():
        raise UsageError(f"model folder not found: {terminal_safe(model)}")
    if args.repo_id is not None:
        _check_repo_id(args.repo_id, "--repo-id")
    if args.num_examples < 0:
        raise UsageError(f"--num-examples must be 0 or more, got {args.num_examples}")
    for image in args.examples or []:
        if not image.is_file():
            raise UsageError(f"--examples: no such image file: {terminal_safe(str(image))}")
    folder = write_space(model, args.output, repo_id=args.repo_id, title=args.title, license=args.license,
                         examples=None if args.examples is None else [str(path) for path in args.examples],
                         num_examples=args.num_examples, hf_imgcap_requirement=args.hf_imgcap_requirement)
    examples = sorted((folder / "examples").glob("*")) if (folder / "examples").is_dir() else []
    print(f"wrote the Space to {terminal_safe(str(folder))} ({len(examples)} example images); "
          f"serve it with: python {terminal_safe(str(folder / 'app.py'))}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the `hf-imgcap` command line; returns the exit status (0 ok, 1 some images failed, 2 usage error,
    130 interrupted, 141 output pipe closed)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or an argparse error (2, message already printed)
        return int(exit_request.code or 0)
    command = {"caption": caption_command, "evaluate": evaluate_command, "push": push_command, "space": space_command}[args.command]
    return run_as_program(PROGRAM, lambda: command(args))


if __name__ == "__main__":
    sys.exit(main())
