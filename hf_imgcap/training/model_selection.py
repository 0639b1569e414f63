# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What the end-of-epoch validation drives: which model is kept, when the learning rate decays, when to stop.

`--metric_for_best_model` (transformers' `TrainingArguments` name) picks the validation number; whether greater is
better follows from it (transformers asks for `greater_is_better` separately; here it cannot be set wrong).
`--lr_scheduler_type` picks the learning-rate schedule by its transformers name (`transformers.get_scheduler`):
`reduce_lr_on_plateau` decays on the selection metric at epoch ends; the others move every optimizer step.
"""

import math

import torch
from transformers import get_scheduler

from hf_imgcap.evaluation.caption_metrics import METRIC_NAMES

# Validation numbers a run can select on: the caption metrics (by generation) and the teacher-forced caption loss.
SELECTION_METRICS = (*METRIC_NAMES, "loss")
# transformers schedules that need nothing but the warmup and the number of steps.
LR_SCHEDULER_TYPES = ("reduce_lr_on_plateau", "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                      "constant_with_warmup", "inverse_sqrt")


def greater_is_better(metric: str) -> bool:
    return metric != "loss"


def is_improvement(metric: str, value: float, best: float | None) -> bool:
    """`value` beats `best` (None: nothing yet) for `metric`; a non-finite value never does."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if greater_is_better(metric) else value < best


def is_epoch_scheduler(scheduler) -> bool:
    """Stepped once per epoch with the validation metric (else once per optimizer step)."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def build_lr_scheduler(args, optimizer, steps_per_epoch: int):
    """The schedule of `args.lr_scheduler_type` over the run's optimizer steps (`--num_epochs` epochs of
    `steps_per_epoch`, or `--max_steps` if fewer); `--warmup_ratio` of them warm up linearly."""
    if args.lr_scheduler_type == "reduce_lr_on_plateau":
        mode = "max" if greater_is_better(args.metric_for_best_model) else "min"
        return get_scheduler("reduce_lr_on_plateau", optimizer, scheduler_specific_kwargs=dict(
            mode=mode, factor=args.lr_decay_factor, patience=args.lr_decay_patience - 1))
    total = args.num_train_epochs * steps_per_epoch
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=round(args.warmup_ratio * total),
                         num_training_steps=total)
