# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Checks and set-up of a training run that happen before any data is read.

A nonsense setting (a negative learning rate, `--batch_size 0`, `--output_dir` that is a file) should fail in the
first second with a message naming the argument, not after the feature cache was built or hours of training.
An output folder holds exactly one run: a second run there is refused unless it continues the first (`--resume`)
or replaces it (`--overwrite_output_dir`, which deletes only what a recorded run wrote: `output_folder.RunFiles`).
"""

import dataclasses
import fnmatch
import json
import logging
import math
import os
import shlex
import shutil
from pathlib import Path

import accelerate.tracking
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from accelerate.utils import LoggerType, PrecisionType, ProjectConfiguration
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hf_imgcap.hub import HUB_FILE_NAMES
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import TOKENIZER_FILES
from hf_imgcap.training.model_selection import LR_SCHEDULER_TYPES, SELECTION_METRICS
from hf_imgcap.training.output_folder import RUN_FILES, RunFiles, replace_text_file

logger = logging.getLogger(__name__)

TRAINING_ARGS_FILE = "training_args.json"
DEFAULT_SEED = 42  # train.py's --seed; also what `hf-imgcap evaluate` carves a missing split with, as train.py does
LATEST_CHECKPOINT = "latest"  # --resume_from_checkpoint's value (and its value when given alone): the newest checkpoint
TRACKER_FOLDER = "runs"
# What to pip install for each tracker Accelerate supports (the packages its is_*_available() look for; it only
# uses aim below 4.0). Accelerate silently drops a tracker whose package is missing, so the run checks first.
TRACKER_PACKAGES = {"aim": "aim<4", "comet_ml": "comet_ml", "mlflow": "mlflow", "tensorboard": "tensorboard",
                    "wandb": "wandb", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}

# The top-level names a training run writes in its output_dir (folders are removed whole): a name of these that no
# recorded run wrote (run_files.json) is never written over or deleted. Anything else there, such as the demo's
# synthetic data and feature cache or a user's notes, is never touched.
BLIND_BASELINE_FOLDER = "blind_baseline"  # the demo's image-blind run, inside its output_dir
RUN_FOLDERS = ("checkpoints", TRACKER_FOLDER, BLIND_BASELINE_FOLDER)
RUN_OUTPUT_PATTERNS = (
    *RUN_FOLDERS, TRAINING_ARGS_FILE, RUN_FILES,
    # save_pretrained of the model and the processor, the model card and the run's records: what goes to the Hub
    *sorted(HUB_FILE_NAMES), "model-*-of-*.safetensors",
    # what tokenizers of other kinds (--tokenizer) save
    "vocab.*", "merges.txt", "*.model", "*.spm", "chat_template.*",
)
# Any of these means the folder holds (part of) a previous run.
RUN_MARKERS = (TRAINING_ARGS_FILE, "checkpoints", "config.json", "model.safetensors", "metrics.json")

# Arguments that decide the model's shapes, its processor or its data: a resumed run must use the same values. (The
# splits themselves are compared too, once read: `data_fingerprint`.) So must what sets the data order and the
# optimizer: a resumed run skips the batches its checkpoint trained on, in that run's order, and continues with its
# optimizer state (learning rates included), so other values would train on other data and be recorded unused.
RESUME_MUST_MATCH = {
    "data": ("dataset", "dataset_config"),
    "model": ("encoder", "tokenizer", "caption_vocab_size", "embedding_size", "attention_size", "hidden_size", "image_size",
              "max_caption_length", "whiten_features", "dropout"),
    "training": ("finetune_encoder", "blind", "metric_for_best_model", "lr_scheduler_type", "seed", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "learning_rate", "encoder_learning_rate"),
}
# What a run saved before an argument existed did instead (its training_args.json has no such key).
VALUE_BEFORE_THE_ARGUMENT = {"model": {"whiten_features": False}}


# ---------------------------------------------------------------------------------------------- argument values
def _at_least(minimum):
    return lambda v: None if v >= minimum else f"must be ≥ {minimum}"


def _positive_finite(v):
    return None if math.isfinite(v) and v > 0 else "must be a positive number"


def _non_negative_finite(v):
    return None if math.isfinite(v) and v >= 0 else "must be ≥ 0"


def _not_empty(v):
    return None if v.strip() else "must not be empty"


def _dataset(v):
    if not v.strip():
        return "must not be empty"
    if v.startswith(("/", "./", "../", "~")) and not Path(v).expanduser().exists():
        return "no such folder"
    return None


def _local_path(v: str, special_values: tuple) -> Path | None:
    """`v` as a local path when it is written as one or names something that exists; None for a Hub id or one of
    the argument's special values."""
    if v in special_values or v.startswith("torchvision:"):
        return None
    path = Path(v).expanduser()
    return path if v.startswith(("/", "./", "../", "~")) or path.exists() else None


def _encoder(v):
    if not v.strip():
        return "must not be empty"
    path = _local_path(v, ("random",))
    if path is None or (path.is_file() and path.suffix in (".pth", ".pt")):
        return None
    if not path.exists():
        return "no such file or folder"
    if path.is_file():
        return "is a file: pass a model folder (config.json and weights) or a .pth / .pt state dict"
    return None if (path / "config.json").is_file() else "holds no config.json: not a transformers model folder"


def _tokenizer(v):
    if not v.strip():
        return "must not be empty"
    path = _local_path(v, ("bert-base-uncased", "captions"))
    if path is None:
        return None
    if not path.exists():
        return "no such file or folder"
    if path.is_file():
        return "is a file: pass a tokenizer folder (one save_pretrained wrote)"
    return None if any((path / name).is_file() for name in TOKENIZER_FILES) else f"holds no tokenizer ({' / '.join(TOKENIZER_FILES)})"


def _existing_folder(v):
    return None if Path(v).expanduser().is_dir() else "is not an existing folder"


def _folder_to_write(v):
    if not v.strip():
        return "must not be empty"
    path = Path(v).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else f"{candidate} is a file, not a folder"
    return None


def _mixed_precision(v):
    return None if v in PrecisionType.list() else f"must be one of {', '.join(PrecisionType.list())}"


def requested_trackers(report_to: str) -> list[str]:
    """--report_to as Accelerate's `log_with`: the comma-separated names, trimmed; [] for 'none'."""
    return [] if report_to.strip() == "none" else [name.strip() for name in report_to.split(",")]


def _report_to(v):
    names = requested_trackers(v)
    known = {"all", *LOGGER_TYPE_TO_CLASS}
    unknown = [name for name in names if name not in known]
    if unknown:
        return f"unknown tracker {', '.join(map(repr, unknown))} (known: none, {', '.join(sorted(known))})"
    # "all" is every installed tracker (Accelerate's meaning); a tracker named on its own must be installed.
    installed = {str(tracker) for tracker in accelerate.tracking.get_available_trackers()}
    missing = [name for name in names if name in LoggerType.list() and name != "all" and name not in installed]
    if missing:
        return "; ".join(f"tracker {name!r} is not installed (pip install {shlex.quote(TRACKER_PACKAGES.get(name, name))})"
                         for name in missing) + "; or leave it out of --report_to ('none': no tracking)"
    return None


def _one_of(choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _hub_model_id(v):
    try:
        validate_repo_id(v)
    except HFValidationError as error:
        return f"is not a Hub repository id ({error})"
    return None if "/" in v else "must be user/name"


# One rule per argument that takes a value (flags need none). tests/test_train.py checks that every such argument
# has a rule and a nonsense case. None (not given) is always allowed for optional arguments.
RULES = {
    # data
    "dataset": _dataset,
    "dataset_config": _not_empty,
    "revision": _not_empty,
    "image_column": _not_empty,
    "caption_column": _not_empty,
    "image_dir": _existing_folder,
    "cache_dir": _folder_to_write,
    "max_train_images": _at_least(1),
    "max_eval_images": _at_least(1),
    "num_workers": _at_least(0),
    # model
    "encoder": _encoder,
    "tokenizer": _tokenizer,
    "caption_vocab_size": lambda v: None if v >= 6 else "must be ≥ 6 (5 special tokens and at least one word)",
    "embedding_size": _at_least(1),
    "attention_size": _at_least(1),
    "hidden_size": _at_least(1),
    "dropout": lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
    "attention_regularization": _non_negative_finite,
    "image_size": lambda v: None if v >= 32 else "must be ≥ 32 (the encoder downsamples by 32)",
    "max_caption_length": lambda v: None if v >= 3 else "must be ≥ 3 ([CLS], at least one word, [SEP]): no caption could train",
    # training
    "output_dir": _folder_to_write,
    "seed": lambda v: None if 0 <= v < 2**32 else "must be in [0, 2**32)",
    "num_train_epochs": _at_least(1),
    "max_steps": _at_least(1),
    "per_device_train_batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "learning_rate": _positive_finite,
    "encoder_learning_rate": _positive_finite,
    "grad_clip": _non_negative_finite,
    "lr_scheduler_type": _one_of(LR_SCHEDULER_TYPES),
    "warmup_ratio": lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
    "metric_for_best_model": _one_of(SELECTION_METRICS),
    "lr_decay_factor": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "lr_decay_patience": _at_least(1),
    "early_stopping_patience": _at_least(1),
    "mixed_precision": _mixed_precision,
    "report_to": _report_to,
    "eval_num_beams": _at_least(1),
    "eval_max_new_tokens": _at_least(1),
    "per_device_eval_batch_size": _at_least(1),
    "eval_length_penalty": lambda v: None if math.isfinite(v) else "must be a finite number",
    "checkpoint_every_steps": _at_least(0),
    "save_total_limit": _at_least(1),
    "resume_from_checkpoint": lambda v: None if v == LATEST_CHECKPOINT else _existing_folder(v),
    "max_nonfinite_steps": _at_least(1),
    "hub_model_id": _hub_model_id,
    "scst_epochs": _at_least(0),
    "scst_learning_rate": _positive_finite,
    "scst_num_samples": _at_least(1),
    "scst_baseline": lambda v: None if v in ("greedy", "mean") else "must be 'greedy' or 'mean'",
}


def validate_arguments(model_args, data_args, args):
    """Raise one `ValueError` listing every argument with an impossible value (`--name value: why`)."""
    problems = []
    for group in (model_args, data_args, args):
        for field in dataclasses.fields(group):
            value = getattr(group, field.name)
            rule = RULES.get(field.name)
            if value is None or rule is None:
                continue
            problem = rule(value)
            if problem:
                problems.append(f"--{field.name} {value!r}: {problem}")
    if args.push_to_hub and not args.hub_model_id:
        problems.append("--push_to_hub needs --hub_model_id user/name")
    if args.blind and args.finetune_encoder:
        problems.append("--blind zeroes the cached image features; it cannot be combined with --finetune_encoder")
    if args.scst_baseline == "mean" and args.scst_num_samples == 1:
        problems.append(f"--scst_baseline mean needs --scst_num_samples ≥ 2 (the mean of an image's other samples), got {args.scst_num_samples}")
    if args.warmup_ratio and args.lr_scheduler_type == "reduce_lr_on_plateau":
        problems.append(f"--warmup_ratio {args.warmup_ratio} warms up a step-based schedule; reduce_lr_on_plateau has none: "
                        "pass --lr_scheduler_type linear (or cosine, ...) with it, or leave it out")
    if args.scst_epochs and args.finetune_encoder:
        problems.append("--scst_epochs trains on the cached features of the frozen encoder; it cannot be combined with --finetune_encoder")
    problems.extend(_folders_inside_the_dataset(data_args.dataset, {"output_dir": args.output_dir, "cache_dir": data_args.cache_dir}))
    if problems:
        raise ValueError("invalid arguments:\n  " + "\n  ".join(problems))


def _folders_inside_the_dataset(dataset: str, folders: dict) -> list[str]:
    """datasets reads every file under a local dataset folder: a run's records or feature cache written inside it
    would be read as data by every later load (this run's --resume included)."""
    root = Path(dataset).expanduser() if isinstance(dataset, str) else None
    if root is None or not root.is_dir():
        return []
    root = root.resolve()
    return [f"--{name} {folder!r} is inside the dataset folder {str(root)!r}: datasets would read the run's files as data "
            f"the next time it loads the dataset; choose a folder outside it"
            for name, folder in folders.items() if folder and Path(folder).expanduser().resolve().is_relative_to(root)]


# ---------------------------------------------------------------------------------------------- the output folder
def is_run_output_name(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in RUN_OUTPUT_PATTERNS)


def _in_the_way(output_dir: Path) -> list[str]:
    """The entries of `output_dir` named like something a run writes (an empty folder is no obstacle: a run fills it)."""
    names = []
    for name in sorted(os.listdir(output_dir)):
        path = output_dir / name
        if is_run_output_name(name) and not (path.is_dir() and not any(path.iterdir())):
            names.append(name)
    return names


def _describe(output_dir: Path, names) -> str:
    return ", ".join(f"{name} (a link to {os.readlink(output_dir / name)})" if (output_dir / name).is_symlink() else name
                     for name in names)


def foreign_files_message(output_dir: Path, foreign: list[str]) -> str:
    return (f"--output_dir {output_dir} holds {_describe(output_dir, foreign)}: a training run writes files of "
            f"{'that name' if len(foreign) == 1 else 'these names'}, but no recorded run wrote {'it' if len(foreign) == 1 else 'them'} "
            f"(not listed in {RUN_FILES}). Nothing was deleted or written. Move {'it' if len(foreign) == 1 else 'them'} "
            f"elsewhere, or choose another --output_dir.")


def check_output_dir(output_dir, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse to start a run in a folder that holds a previous one, unless it continues it (`resume`) or replaces it
    (`overwrite`), and refuse any folder that holds files a run would write over but that no recorded run wrote
    (run_files.json). Returns the files to delete before starting: a previous run's with `overwrite`, and those
    of a start that was killed before training. Reads only, so every process can call it before any of them writes."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    in_the_way = _in_the_way(output_dir)
    record = RunFiles.read(output_dir)
    if record is None:
        return _check_unrecorded_folder(output_dir, in_the_way, resume, overwrite)
    foreign = record.foreign(in_the_way)
    if foreign:
        raise ValueError(foreign_files_message(output_dir, foreign))
    if resume:
        return []
    if not record.training_started:  # what a start that was killed before training left: nothing trained, ours to clear
        logger.info("%s holds what a run that stopped before training left; removing it", output_dir)
        return record.existing_paths()
    if not overwrite:
        found = [name for name in RUN_MARKERS if name in record.names and (output_dir / name).exists()] or [RUN_FILES]
        raise ValueError(
            f"--output_dir {output_dir} holds a previous training run ({', '.join(found)}). Continue it with --resume, "
            f"choose another --output_dir, or pass --overwrite_output_dir to delete that run's files first "
            f"(a run never mixes its processor and checkpoints with another run's)."
        )
    return record.existing_paths()


def _check_unrecorded_folder(output_dir: Path, in_the_way: list[str], resume: bool, overwrite: bool) -> list[Path]:
    """A folder without run_files.json: nothing in the way, or the files of a run from before hf-imgcap recorded them
    (which a --resume continues, taking them over), or someone else's files. Nothing of theirs is deleted."""
    if not in_the_way:
        return []
    if resume and TRAINING_ARGS_FILE in in_the_way:
        return []
    if not any(name in in_the_way for name in RUN_MARKERS):
        raise ValueError(foreign_files_message(output_dir, in_the_way))
    removal = " ".join(shlex.quote(str(output_dir / name)) for name in in_the_way)
    continue_it = "continue that run with --resume, " if TRAINING_ARGS_FILE in in_the_way else ""
    raise ValueError(
        f"--output_dir {output_dir} holds {_describe(output_dir, in_the_way)} but no {RUN_FILES}, the record of the files "
        f"a run wrote: they are a run's from before hf-imgcap kept that record, or someone else's (a saved model, "
        f"an encoder). Nothing was deleted{' (--overwrite_output_dir deletes only recorded files)' if overwrite else ''}. "
        f"To go on: {continue_it}choose another --output_dir, or, if these files are a previous run's, delete them "
        f"yourself (rm -r {removal}) and start again."
    )


def remove_run_outputs(paths: list[Path]):
    """Delete what `check_output_dir` listed (main process only)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if paths:
        kept = sorted(p.name for p in paths[0].parent.iterdir())
        logger.info("deleted %d files/folders of the previous run%s", len(paths),
                    f"; kept {', '.join(kept)} (not written by a run)" if kept else "")


def start_output_dir(output_dir, previous_run: list[Path], model_args, data_args, args) -> RunFiles:
    """The run's first writes (main process only): delete `previous_run` (what `check_output_dir` returned), open the
    record of the files this run writes, and write training_args.json. The returned record can undo this start."""
    output_dir = Path(output_dir)
    remove_run_outputs(previous_run)
    creating = (TRAINING_ARGS_FILE, "checkpoints") + (() if args.report_to == "none" else (TRACKER_FOLDER,))
    adopt = tuple(_in_the_way(output_dir)) if output_dir.is_dir() else ()
    run_files = RunFiles.begin(output_dir, creating=creating, remember=(TRAINING_ARGS_FILE,), adopt=adopt)
    write_training_args(output_dir, model_args, data_args, args)
    return run_files


def check_no_foreign_files(output_dir, names):
    """Refuse when `output_dir` holds one of `names` (files the run will write) that no recorded run wrote. Reads only."""
    output_dir = Path(output_dir)
    record = RunFiles.read(output_dir) or RunFiles(output_dir)
    foreign = record.foreign(names)
    if foreign:
        raise ValueError(foreign_files_message(output_dir, foreign))


def write_training_args(output_dir, model_args, data_args, args) -> Path:
    """`training_args.json`, written atomically at the start of a run so that `--resume` can check it."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
                          "training": dataclasses.asdict(args)}, indent=1)
    return replace_text_file(output_dir / TRAINING_ARGS_FILE, content)


def check_resume_compatible(model_args, data_args, args):
    """With --resume_from_checkpoint, refuse model-size and dataset arguments that differ from the run being continued,
    naming each one (before any data is read)."""
    if args.resume_from:
        saved = Path(args.resume_from).parent.parent / TRAINING_ARGS_FILE  # <run>/checkpoints/step_N
    elif args.resume:
        saved = Path(args.output_dir) / TRAINING_ARGS_FILE
    else:
        return
    if not saved.is_file():
        return  # nothing to compare with (no run yet, or a run from before this file existed)
    try:
        previous = json.loads(saved.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"cannot resume: {saved} is not valid JSON ({error}); it records the run's arguments") from None
    current = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args), "training": dataclasses.asdict(args)}
    previous = {section: {**VALUE_BEFORE_THE_ARGUMENT.get(section, {}), **previous.get(section, {})} for section in current}
    differences = [
        f"--{name} {current[section][name]!r} (the run being resumed used {previous[section][name]!r})"
        for section, names in RESUME_MUST_MATCH.items()
        for name in names
        if name in previous[section] and not _same_value(name, previous[section][name], current[section][name])
    ]
    if differences:
        raise ValueError(
            f"cannot resume the run in {saved.parent}: these arguments differ from it:\n  " + "\n  ".join(differences)
            + "\nUse the run's values (see its training_args.json), or start a new run in another --output_dir."
        )


def _same_value(name, previous, current) -> bool:
    if previous == current:
        return True
    if name == "dataset" and isinstance(previous, str) and isinstance(current, str):  # one local folder, named two ways
        before, now = Path(previous).expanduser(), Path(current).expanduser()
        return before.exists() and now.exists() and before.resolve() == now.resolve()
    return False


# ---------------------------------------------------------------------------------------------- the run itself
def make_accelerator(args) -> Accelerator:
    """Mixed precision and CPU/GPU come from `accelerate launch` / `accelerate config` unless a flag says
    otherwise; tracker logs go to output_dir/runs. Gradient accumulation is the training loop's own (it reads a
    step's micro-batches ahead to weight them exactly), so Accelerate's is left at 1."""
    output_dir = Path(args.output_dir)
    return Accelerator(
        mixed_precision=args.mixed_precision,  # None: ACCELERATE_MIXED_PRECISION, set by the launcher or config
        cpu=args.use_cpu,  # False still honours ACCELERATE_USE_CPU and falls back to the CPU without a GPU
        log_with=requested_trackers(args.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / TRACKER_FOLDER)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def refuse_untrained_run(global_step: int, batches: int, nonfinite: int):
    """A run that took no optimizer step must not write a model that looks trained."""
    if global_step > 0:
        return
    raise RuntimeError(
        f"the run took 0 optimizer steps ({batches} batches, {nonfinite} with a non-finite loss): no model was written. "
        "Check the captions and --max_caption_length, --max_steps and the learning rate."
    )
