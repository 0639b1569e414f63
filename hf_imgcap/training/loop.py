# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The training loop of train.py: one epoch of optimizer steps, the end-of-epoch validation, the final test.

`TrainState` is everything the loop changes (and a checkpoint saves beside Accelerate's model, optimizer and RNG
states); `TrainingRun` is what it works with and does not change. An optimizer step reads its micro-batches ahead
(as transformers' Trainer does) so that the loss of every micro-batch is a share of the whole step's loss: the
model divides by the step's token and caption counts over every process, and `--gradient_accumulation_steps 2`
gives the same update as a batch twice as large.
"""

import contextlib
import dataclasses
import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from hf_imgcap.evaluation.attention_maps import model_view_crop_fraction, render_attention_map
from hf_imgcap.evaluation.generation import evaluate_captioner
from hf_imgcap.hub import push_to_hub, write_model_card
from hf_imgcap.models.show_attend_tell.image_loading import load_image
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import ShowAttendTellForConditionalGeneration
from hf_imgcap.training.checkpointing import STATE, CheckpointManager, verify_checkpoint
from hf_imgcap.training.data_fingerprint import fingerprint_differences
from hf_imgcap.training.model_selection import is_epoch_scheduler, is_improvement
from hf_imgcap.training.output_folder import RunFiles, save_pretrained_replacing
from hf_imgcap.training.run_arguments import refuse_untrained_run
from hf_imgcap.training.run_metrics import METRICS_FILE, EvalSettings, RunMetrics, TrainingRecord

logger = get_logger("train")  # Accelerate's: logs once, on the main process


@dataclass
class TrainState:
    """The loop's progress; saved as a checkpoint's training_state.json. The scheduler's state is Accelerate's to save
    (`register_for_checkpointing`: custom_checkpoint_0.pkl), beside the model, optimizer and RNG states."""

    epoch: int = 0
    step_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    global_step: int = 0  # optimizer steps taken
    metric_for_best_model: str = "bleu_4"  # what best_metric is a value of
    best_metric: float | None = None  # the best validation value so far (None: no validation yet)
    best_epoch: int = 0  # the epoch (1-based) whose model is the best so far
    epochs_without_improvement: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    history: list[dict] = field(default_factory=list)
    # The finite losses of `epoch` so far (this process's steps): a resumed epoch records the whole epoch's mean.
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    data_fingerprint: dict | None = None  # the splits the run trains on (`data_fingerprint.data_fingerprint`)
    num_processes: int | None = None  # how many processes trained (None: a checkpoint of an earlier version)

    def to_checkpoint(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, saved: dict, scheduler) -> "TrainState":
        saved = dict(saved)
        if EARLIER_SCHEDULER_KEY in saved:  # a checkpoint of an earlier version: the scheduler's state is here
            scheduler.load_state_dict(saved.pop(EARLIER_SCHEDULER_KEY))
        if "best_bleu_4" in saved:  # the layout before --metric_for_best_model: runs selected on BLEU-4
            best = saved.pop("best_bleu_4")
            saved |= {"metric_for_best_model": "bleu_4", "best_metric": best if best >= 0 else None}
            history = [entry for entry in saved.get("history", []) if entry.get("bleu_4") == best]
            saved["best_epoch"] = history[0]["epoch"] if history else 0
        return cls(**saved)

    def add_step_loss(self, loss: float):
        self.epoch_loss_sum += loss
        self.epoch_loss_steps += 1

    def epoch_mean_loss(self) -> float:
        return self.epoch_loss_sum / max(self.epoch_loss_steps, 1)

    def next_epoch(self):
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.epoch_loss_sum, self.epoch_loss_steps = 0.0, 0

    def best_entry(self) -> dict:
        """The history entry (validation metrics) of the best epoch, or {} before any validation."""
        return next((entry for entry in self.history if entry["epoch"] == self.best_epoch), {})


TEST_CAPTIONS_FILE = "test_captions.json"
ATTENTION_EXAMPLE_FILE = "attention_example.png"
MODEL_CARD_FILE = "README.md"

# Checkpoints written before the scheduler was registered with Accelerate keep its state in training_state.json.
EARLIER_SCHEDULER_KEY = "scheduler"
BEST_MODEL_RECORD = "selected.json"  # in best_dir: the epoch and step of the model there


@dataclass
class TrainingRun:
    """What the loop works with: the prepared objects and the arguments."""

    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    processor: object
    checkpoints: CheckpointManager
    args: object  # TrainingArguments
    evaluation: dict  # keyword arguments of evaluate_captioner
    best_dir: Path
    validation_batches: object = None  # this process's share of the validation captions (for the validation loss)
    batches_run: int = 0  # micro-batches run by this process since it started (for the no-step error)

    def log(self, *message):
        logger.info(*message)

    def save_checkpoint(self, state: TrainState):
        state.num_processes = self.accelerator.num_processes
        self.checkpoints.save(self.accelerator, state.global_step, state.to_checkpoint())


def checkpoint_to_resume(checkpoints: CheckpointManager, resume: bool, resume_from: str | None) -> Path | None:
    """The checkpoint --resume_from_checkpoint continues from: the one named, else the newest one (None: none yet)."""
    return Path(resume_from) if resume_from else checkpoints.latest() if resume else None


def check_resume_data(checkpoint: Path | None, fingerprint: dict):
    """Refuse to continue `checkpoint` on other data than it trained on (before anything is loaded or written)."""
    if checkpoint is None:
        return
    try:
        saved = json.loads((checkpoint / STATE).read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        return  # verify_checkpoint says what is wrong with it when the run loads it
    if saved is None:
        logger.info("%s does not record the data it trained on (an earlier version's checkpoint): not compared", checkpoint)
        return
    differences = fingerprint_differences(saved, fingerprint)
    if differences:
        raise ValueError(
            f"cannot resume from {checkpoint}: it trained on --dataset {saved['dataset']!r}, and --dataset "
            f"{fingerprint['dataset']!r} now gives other splits:\n  " + "\n  ".join(differences)
            + "\nResume with the data the run trained on (the same --dataset, --max_train_images, --max_eval_images and "
            "--seed), or start a new run in another --output_dir."
        )


def save_best_model(run: TrainingRun, state: TrainState):
    """The model and processor as the best so far, in `best_dir`, with the epoch and step they are of (main process)."""
    save_pretrained_replacing(run.accelerator.unwrap_model(run.model), run.best_dir)
    save_pretrained_replacing(run.processor, run.best_dir)
    (run.best_dir / BEST_MODEL_RECORD).write_text(json.dumps({"epoch": state.best_epoch, "step": state.global_step}))


def keep_the_best_model_of(run: TrainingRun, state: TrainState, checkpoint: Path):
    """After resuming `checkpoint`: `best_dir` must hold the best model up to that checkpoint. A run resumed from an
    earlier checkpoint than its last one may have saved a later best model there since; then the checkpoint's own
    model is put back when it is that best one (a checkpoint follows each epoch's validation), else model selection
    starts again from the next validation."""
    record_file = run.best_dir / BEST_MODEL_RECORD
    if not run.best_dir.is_dir() or (state.best_metric is not None and not record_file.is_file()):
        return  # nothing saved yet, or saved by an earlier version (no record to compare)
    best_step = next((entry["step"] for entry in state.history if entry.get("epoch") == state.best_epoch), None)
    saved_step = json.loads(record_file.read_text()).get("step") if record_file.is_file() else None
    if state.best_metric is not None and saved_step == best_step:
        return
    run.accelerator.wait_for_everyone()  # every process has read the record before the main one changes it
    if state.best_metric is not None and best_step == state.global_step:
        if run.accelerator.is_main_process:
            save_best_model(run, state)
        run.log("%s holds a later model than %s's best (epoch %d): put back from the checkpoint", run.best_dir, checkpoint,
                state.best_epoch)
    else:
        if run.accelerator.is_main_process:
            shutil.rmtree(run.best_dir)
        if state.best_metric is not None:
            logger.warning("%s held a later model than %s's best (epoch %d), which is no longer saved: the best model is "
                           "selected again from the next validation", run.best_dir, checkpoint, state.best_epoch)
        state.best_metric, state.best_epoch, state.epochs_without_improvement = None, 0, 0
    run.accelerator.wait_for_everyone()


def resume_state(run: TrainingRun, resume: bool, resume_from: str | None) -> TrainState:
    """A fresh state, or the one of the checkpoint to continue from (model, optimizer, scheduler and RNG states via
    Accelerate). Registers the scheduler for checkpointing: call once per run."""
    latest = checkpoint_to_resume(run.checkpoints, resume, resume_from)
    metric = run.args.metric_for_best_model
    if latest is None:
        if resume:
            run.log("--resume: no checkpoint in %s yet, starting from scratch", run.checkpoints.folder)
        run.accelerator.register_for_checkpointing(run.scheduler)
        return TrainState(metric_for_best_model=metric)
    saved = verify_checkpoint(latest)
    # The scheduler is saved and loaded by Accelerate with the model and optimizer; a checkpoint of an earlier version
    # has no file for it (its state is in training_state.json), so it is registered only after loading such a one.
    earlier_layout = EARLIER_SCHEDULER_KEY in saved
    if not earlier_layout:
        run.accelerator.register_for_checkpointing(run.scheduler)
    run.accelerator.load_state(str(latest))
    state = TrainState.from_checkpoint(saved, run.scheduler)
    if earlier_layout:
        run.accelerator.register_for_checkpointing(run.scheduler)
    if state.metric_for_best_model != metric:  # its best value and plateau counts are of another metric
        raise ValueError(f"cannot resume from {latest}: that run selects its best model on {state.metric_for_best_model!r}, "
                         f"not {metric!r}; pass --metric_for_best_model {state.metric_for_best_model}")
    if state.num_processes is not None and state.num_processes != run.accelerator.num_processes:
        # Each process reads its share of every batch: another count puts the run at another place in the data.
        raise ValueError(f"cannot resume from {latest}: it was trained by {state.num_processes} process(es), this run has "
                         f"{run.accelerator.num_processes}; launch it as the run was launched (accelerate launch --num_processes "
                         f"{state.num_processes}), or start a new run in another --output_dir")
    keep_the_best_model_of(run, state, latest)
    run.log("resumed from %s (epoch %d, step %d)", latest, state.epoch + 1, state.global_step)
    return state


@dataclass
class EpochEnd:
    train_loss: float  # mean loss of this process's optimizer steps in the epoch (before a resume too)
    stopped_by: str | None = None  # the signal that asked the run to stop
    out_of_steps: bool = False  # --max_steps reached
    complete: bool = True  # every batch of the epoch was trained on


def optimizer_step(run: TrainingRun, micro_batches: list[dict]) -> tuple[float | None, float]:
    """One optimizer step over `micro_batches` (this process's part). Returns (loss, caption loss) of the step, or
    (None, ·) when a loss was not finite on some process and the step was skipped."""
    accelerator, model, args = run.accelerator, run.model, run.args
    # The counts of the whole step over every process (one all-reduce): each micro-batch's loss is then its share of
    # the step's loss (DDP averages gradients over the processes, hence the division).
    local_counts = [sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches),
                    sum(len(b["input_ids"]) for b in micro_batches)]
    num_targets, num_captions = accelerator.reduce(torch.tensor(local_counts, device=accelerator.device), "sum")
    losses = []
    for index, batch in enumerate(micro_batches):
        if args.blind:
            batch["encoder_hidden_states"].zero_()
        last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):  # all-reduce the gradients once
            outputs = model(**batch, return_logits=False, num_items_in_batch=num_targets / accelerator.num_processes,
                            num_captions_in_batch=num_captions / accelerator.num_processes)
            # Every process runs every backward, even after a non-finite loss: DDP's gradient all-reduce needs all
            # of them, and the step's gradients are thrown away below if any loss was not finite.
            accelerator.backward(outputs.loss)
        losses.append(torch.stack([outputs.loss.detach(), outputs.caption_loss.detach()]))
        run.batches_run += 1
    loss, caption_loss = torch.stack(losses).sum(0).tolist()  # one device sync per step, not one per micro-batch
    # Decided together (one all-reduce): every process skips the step if any process's loss is not finite.
    nonfinite_anywhere = accelerator.reduce(torch.tensor(float(not math.isfinite(loss)), device=accelerator.device), "sum")
    finite = nonfinite_anywhere.item() == 0
    if finite:
        if args.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        run.optimizer.step()
        if not is_epoch_scheduler(run.scheduler):
            run.scheduler.step()
    run.optimizer.zero_grad()
    return (loss if finite else None), caption_loss


def _count_nonfinite(run: TrainingRun, state: TrainState):
    """A skipped step is counted; too many in a row stop the run with the last good checkpoint intact."""
    state.nonfinite_in_a_row += 1
    state.nonfinite_total += 1
    logger.warning("non-finite loss at step %d: step skipped (%d in a row)", state.global_step, state.nonfinite_in_a_row)
    if state.nonfinite_in_a_row >= run.args.max_nonfinite_steps:
        last_good = run.checkpoints.latest()
        raise RuntimeError(
            f"{state.nonfinite_in_a_row} non-finite losses in a row: stopping. "
            + (f"The last good checkpoint is {last_good}; lower the learning rate or check the data, then --resume."
               if last_good else "There is no checkpoint yet; lower the learning rate or check the data.")
        )


def train_epoch(run: TrainingRun, state: TrainState, stop) -> EpochEnd:
    """Train on the rest of epoch `state.epoch`; checkpoint every --checkpoint_every_steps and when asked to stop."""
    accelerator, args, loader = run.accelerator, run.args, run.loader
    loader.set_epoch(state.epoch)
    batches = accelerator.skip_first_batches(loader, state.step_in_epoch) if state.step_in_epoch else loader
    run.model.train()
    bar = tqdm(total=len(loader), initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}/{args.num_train_epochs}",
               disable=not accelerator.is_main_process, unit="batch")
    started, seen = time.perf_counter(), 0
    end = EpochEnd(train_loss=0.0)
    batches = iter(batches)
    while micro_batches := list(itertools.islice(batches, args.gradient_accumulation_steps)):
        for batch in micro_batches:
            batch.pop("image_index")
        loss, caption_loss = optimizer_step(run, micro_batches)
        state.step_in_epoch += len(micro_batches)
        bar.update(len(micro_batches))
        if loss is None:
            _count_nonfinite(run, state)
            continue
        state.nonfinite_in_a_row = 0
        state.global_step += 1
        state.add_step_loss(loss)
        seen += sum(len(batch["input_ids"]) for batch in micro_batches) * accelerator.num_processes
        bar.set_postfix(loss=f"{loss:.3f}", captions_per_s=f"{seen / (time.perf_counter() - started):.0f}")
        accelerator.log({"train/loss": loss, "train/caption_loss": caption_loss,
                         "train/lr": run.optimizer.param_groups[0]["lr"]}, step=state.global_step)
        stop_now = accelerator.reduce(torch.tensor(float(stop.requested), device=accelerator.device), "max").item() > 0
        end.out_of_steps = args.max_steps is not None and state.global_step >= args.max_steps
        # --max_steps inside an epoch: a checkpoint, so that --resume with a larger --max_steps goes on from here (at
        # an epoch's end the checkpoint after its validation does).
        ends_mid_epoch = end.out_of_steps and state.step_in_epoch < len(loader)
        if stop_now or ends_mid_epoch or (args.checkpoint_every_steps and state.global_step % args.checkpoint_every_steps == 0):
            run.save_checkpoint(state)
        if stop_now:
            end.stopped_by = stop.signal_name or "signal"
            break
        if end.out_of_steps:
            break
    bar.close()
    end.train_loss = state.epoch_mean_loss()
    end.complete = state.step_in_epoch >= len(loader)
    return end


@torch.no_grad()
def validation_loss(run: TrainingRun) -> float:
    """The teacher-forced caption cross-entropy per token over the validation captions (every process scores its own
    share; the sums are added up over the processes, so each caption counts once)."""
    model = run.accelerator.unwrap_model(run.model)  # not through DDP: the processes may have different batch counts
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in run.validation_batches:
        batch.pop("image_index")
        batch = {key: value.to(run.accelerator.device) for key, value in batch.items()}
        if run.args.blind:
            batch["encoder_hidden_states"].zero_()
        total += model(**batch, return_logits=False, num_items_in_batch=1).caption_loss.item()  # summed over tokens
        tokens += int((batch["labels"][:, 1:] != -100).sum())
    model.train(was_training)
    sums = run.accelerator.reduce(torch.tensor([total, tokens], dtype=torch.float64, device=run.accelerator.device), "sum")
    return (sums[0] / sums[1].clamp(min=1)).item()


def validate(run: TrainingRun, state: TrainState, end: EpochEnd, split, features):
    """End of an epoch: caption the validation images (and score the validation captions' loss), keep the best model
    on --metric_for_best_model in `best_dir`, decay the learning rate on a plateau, record the epoch and checkpoint."""
    accelerator, metric = run.accelerator, state.metric_for_best_model
    metrics, _ = evaluate_captioner(run.model, run.processor, split, features=features, meteor=metric == "meteor",
                                    **run.evaluation)
    if run.validation_batches is not None:
        metrics["loss"] = validation_loss(run)
    value = metrics[metric]
    if is_epoch_scheduler(run.scheduler):
        run.scheduler.step(value)
    improved = is_improvement(metric, value, state.best_metric)
    state.epochs_without_improvement = 0 if improved else state.epochs_without_improvement + 1
    state.history.append({"epoch": state.epoch + 1, "step": state.global_step, "train_loss": round(end.train_loss, 4),
                          **{k: round(v, 4) for k, v in metrics.items()}})
    run.log("epoch %d: validation BLEU-1..4 %s, CIDEr-D %.3f%s%s", state.epoch + 1,
            " / ".join(f"{metrics[f'bleu_{n}']:.3f}" for n in range(1, 5)), metrics["cider"],
            f", loss {metrics['loss']:.3f}" if "loss" in metrics else "", f" (best {metric} so far)" if improved else "")
    accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.global_step)
    if improved:
        state.best_metric, state.best_epoch = value, state.epoch + 1
        if accelerator.is_main_process:
            save_best_model(run, state)
    state.next_epoch()
    run.save_checkpoint(state)


def finish(run: TrainingRun, state: TrainState, test_split, features, output_dir: Path, record: dict,
           run_files: RunFiles | None = None) -> dict:
    """The best model on the test split with every metric; the Hub-ready folder (model, processor, metrics.json,
    test captions, model card, attention example). `record` has the arguments (model/data/training dicts), the
    number of training images and, after an SCST stage, its record ("scst"). `run_files` records what is written in
    output_dir (default: its record there).
    Returns metrics.json's content plus `test_examples`.

    The model and the processor are written first and the optional extras last: a failure at the end of a run
    never costs the trained model, and an extra that cannot be made (the attention figure) is logged and left out."""
    accelerator, args, processor = run.accelerator, run.args, run.processor
    final = (ShowAttendTellForConditionalGeneration.from_pretrained(run.best_dir) if run.best_dir.is_dir()
             else accelerator.unwrap_model(run.model))
    final.to(accelerator.device)
    if accelerator.is_main_process:
        run_files = run_files or RunFiles.read(output_dir) or RunFiles(Path(output_dir))
        run_files.save_pretrained(final)
        run_files.save_pretrained(processor)
    test_metrics, test_captions = evaluate_captioner(final, run.processor, test_split, features=features, **run.evaluation)
    run_metrics = RunMetrics(
        test=dict(test_metrics),
        validation_best_bleu_4=state.best_entry().get("bleu_4", -1.0),
        best_model_selection={"metric": state.metric_for_best_model, "epoch": state.best_epoch,
                              "value": None if state.best_metric is None else round(state.best_metric, 4)},
        history=state.history,
        steps=state.global_step,
        nonfinite_steps_skipped=state.nonfinite_total,
        eval=EvalSettings(num_beams=args.eval_num_beams, max_new_tokens=args.eval_max_new_tokens, blind=args.blind,
                          length_penalty=args.eval_length_penalty, tokenizer=test_metrics.tokenizer),
        dataset=record["data"]["dataset"],
        num_train_images=record["num_train_images"],
        training=TrainingRecord(steps=state.global_step, mixed_precision=accelerator.mixed_precision,
                                num_processes=accelerator.num_processes, device=accelerator.device.type),
        vocab_size=len(processor.tokenizer),
        scst=record.get("scst"),
    )
    results = run_metrics.to_dict()
    test_examples = [{"image_id": i, "caption": c, "references": list(r)}
                     for i, c, r in zip(test_split["image_id"], test_captions, test_split["captions"])]
    if accelerator.is_main_process:
        run_files.write_text(METRICS_FILE, run_metrics.to_json())
        run_files.write_text(TEST_CAPTIONS_FILE, json.dumps(test_examples, indent=1))
        run_files.record(MODEL_CARD_FILE)
        write_model_card(output_dir, results, model_args=record["model"], training_args=record["training"], data_args=record["data"])
        run.log("test (beam %d): %s", args.eval_num_beams, ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items() if isinstance(v, float)))
        written = write_attention_example(final, processor, test_split, run_files, args.eval_num_beams)
        run.log("wrote the model, processor, metrics.json, model card%s to %s", f" and {ATTENTION_EXAMPLE_FILE}" if written else "",
                output_dir)
        if args.push_to_hub:
            push_to_hub(output_dir, args.hub_model_id)
            run.log("pushed %s to https://huggingface.co/%s", output_dir, args.hub_model_id)
    return {**results, "test_examples": test_examples}


def optional(description: str, compute, *args):
    """`compute(*args)`, or None (logged with the reason) when it fails: for what a run can do without."""
    try:
        return compute(*args)
    except Exception as error:  # noqa: BLE001 - any failure of an extra must not cost the run
        logger.warning("%s left out: %s: %s", description, type(error).__name__, error)
        return None


def first_decodable_image(split):
    """`(image_id, image)` of the first image of `split` that decodes, or None; the ones skipped are logged."""
    found, skipped = None, []
    for index, image_id in enumerate(split["image_id"]):
        try:
            found = image_id, load_image(split[index]["image"])
            break
        except Exception as error:  # noqa: BLE001 - PIL and datasets raise many kinds for a broken file
            skipped.append(f"{image_id} ({type(error).__name__}: {error})")
    if skipped:
        logger.warning("attention example: skipped %d test image(s) that cannot be decoded: %s", len(skipped), "; ".join(skipped))
    return found


def write_attention_example(model, processor, test_split, run_files: RunFiles, num_beams: int) -> bool:
    """The Show-Attend-Tell picture of the first test image that decodes: where the model looked for each word it
    wrote. Optional: when it cannot be made, that is logged and False returned."""
    found = first_decodable_image(test_split)
    if found is None:
        logger.warning("no %s: no test image could be decoded", ATTENTION_EXAMPLE_FILE)
        return False
    image_id, image = found

    def draw():
        result = model.caption(image, processor=processor, return_attentions=True, num_beams=num_beams)
        crop = model_view_crop_fraction(processor.image_processor)  # the part of the image the model saw
        run_files.record(ATTENTION_EXAMPLE_FILE)
        render_attention_map(image, result["tokens"], result["attentions"], run_files.folder / ATTENTION_EXAMPLE_FILE,
                             crop_fraction=crop)
        return True

    return bool(optional(f"{ATTENTION_EXAMPLE_FILE} (test image {image_id})", draw))


def run_epochs(run: TrainingRun, state: TrainState, stop, val_split, val_features) -> str | None:
    """Epochs until --num_train_epochs, --max_steps, early stopping or a stop signal; returns the signal's name if one
    stopped the run (a step checkpoint was saved), else None."""
    for epoch in range(state.epoch, run.args.num_train_epochs):
        state.epoch = epoch
        end = train_epoch(run, state, stop)
        if end.stopped_by:
            return end.stopped_by
        if not end.complete:
            return None  # --max_steps mid-epoch: no end-of-epoch evaluation; its step checkpoint resumes
        refuse_untrained_run(state.global_step, run.batches_run, state.nonfinite_total)  # before any model is saved
        validate(run, state, end, val_split, val_features)
        if state.epochs_without_improvement >= run.args.early_stopping_patience:
            run.log("early stopping: no %s improvement for %d epochs", state.metric_for_best_model, state.epochs_without_improvement)
            return None
        if end.out_of_steps:
            return None
    return None
