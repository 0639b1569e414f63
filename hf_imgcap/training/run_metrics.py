# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""`metrics.json`, the record of a training run, as a typed structure.

train.py writes it at the end of a run; the model card (hub.py) and users read it. The JSON keys are a published
layout: renaming a field here renames a key in every run folder, so don't.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from hf_imgcap.training.output_folder import replace_text_file

METRICS_FILE = "metrics.json"


@dataclass
class EvalSettings:
    """How the test captions were generated and scored."""

    num_beams: int
    max_new_tokens: int
    blind: bool = False
    length_penalty: float = 1.0
    split: str = "test"
    bleu: str = "COCO-caption BLEU (pycocoevalcap), closest reference length"
    # The text tokenizer that scored the test captions: "ptb" (pycocoevalcap's, on Java) or "python" (its
    # approximation, when Java could not run: not comparable with published scores). None: not recorded.
    tokenizer: str | None = None


@dataclass
class TrainingRecord:
    """Where and how the run trained."""

    steps: int
    mixed_precision: str
    num_processes: int
    device: str


@dataclass
class RunMetrics:
    """The content of `metrics.json`. `history` holds one entry per epoch: epoch, step, train_loss and the
    validation metrics, all rounded to 4 digits. `validation_best_bleu_4` is the validation BLEU-4 of the kept
    model; `best_model_selection` says what kept it (`metric`, its `value`, the `epoch`); files written before it
    existed selected on BLEU-4."""

    test: dict[str, float]
    validation_best_bleu_4: float
    history: list[dict]
    steps: int
    nonfinite_steps_skipped: int
    eval: EvalSettings
    dataset: str
    num_train_images: int
    training: TrainingRecord
    vocab_size: int
    # After a self-critical (SCST) stage: its settings, per-epoch rewards and validation metrics, and the test
    # metrics of the cross-entropy model it started from (`test` is then the SCST model's). Absent otherwise.
    scst: dict | None = None
    best_model_selection: dict | None = None

    @property
    def train_loss_by_epoch(self) -> list[float]:
        return [entry["train_loss"] for entry in self.history]

    def to_dict(self) -> dict:
        """The JSON layout, keys in their published order (`train_loss_by_epoch` after `history`)."""
        content = dataclasses.asdict(self)
        ordered = {}
        for key, value in content.items():
            if key in _optional_fields(self) and value is None:  # absent where it does not apply
                continue
            ordered[key] = value
            if key == "history":
                ordered["train_loss_by_epoch"] = self.train_loss_by_epoch
        return ordered

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, content: dict) -> "RunMetrics":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - _optional_fields(cls) - set(content))
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
        values = {name: content[name] for name in names if name in content}
        values["eval"] = EvalSettings(**values["eval"])
        values["training"] = TrainingRecord(**values["training"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "RunMetrics":
        return cls.from_dict(json.loads(text))

    def save(self, folder) -> Path:
        """Write `folder/metrics.json` (through a temporary file: a symlink there is replaced, not written through)."""
        return replace_text_file(Path(folder) / METRICS_FILE, self.to_json())


def _optional_fields(metrics) -> set[str]:
    """The keys present only when they apply (scst after an SCST stage; best_model_selection, which metrics.json files
    of older versions lack): the fields with a default."""
    return {f.name for f in dataclasses.fields(metrics) if f.default is not dataclasses.MISSING}


def load_run_metrics(path) -> RunMetrics:
    """Read a run's `metrics.json` (the file, or the run folder holding it); a `ValueError` names the file and
    what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        return RunMetrics.from_json(path.read_text())
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a metrics.json of an hf-imgcap run: {error}") from None
