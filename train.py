#!/usr/bin/env python
# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Train a Show, Attend and Tell captioner with 🤗 Accelerate; evaluate it by generation; write a Hub-ready folder.

    python train.py --dataset /path/to/Flickr8k                       # 1 CPU or 1 GPU
    accelerate launch --multi_gpu --num_processes 8 train.py ...      # N GPUs (DDP)
    python train.py --demo                                            # offline demo on synthetic data

By default the frozen encoder runs once per image into an fp16 feature cache and the decoder trains on that;
`--finetune_encoder` trains end to end from the images instead. After every epoch the model captions the
validation images with beam search and is selected on `--metric_for_best_model`; at the end the best model is
scored on the test split with every metric. `python train.py --help` documents every option.
"""

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from transformers import HfArgumentParser

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, ShowAttendTellProcessor
from hf_imgcap.cli import DEBUG_HELP, TerminalSafeFormatter, run_as_program
from hf_imgcap.data.caption_datasets import DEFAULT_DATASET, load_caption_dataset
from hf_imgcap.data.feature_cache import build_feature_cache
from hf_imgcap.data.standardized_features import standardized_feature_cache
from hf_imgcap.data.tokenizer_training import train_caption_tokenizer
from hf_imgcap.data.training_data import CaptionPairs, collate_captions, tokenize_captions
from hf_imgcap.models.pretrained_encoder import build_captioner
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import default_image_processor, default_tokenizer
from hf_imgcap.training.checkpointing import CheckpointManager
from hf_imgcap.training.data_fingerprint import data_fingerprint
from hf_imgcap.training.freed_memory import keep_freed_memory_for_reuse
from hf_imgcap.training.loop import TrainingRun, check_resume_data, checkpoint_to_resume, finish, resume_state, run_epochs
from hf_imgcap.training.model_fields import model_field, processor_field
from hf_imgcap.training.model_selection import LR_SCHEDULER_TYPES, SELECTION_METRICS, build_lr_scheduler
from hf_imgcap.training.output_folder import RunFiles, UndoFailedStart, save_pretrained_replacing
from hf_imgcap.training.preemption import StopRequest
from hf_imgcap.training.run_arguments import (
    DEFAULT_SEED, LATEST_CHECKPOINT, check_no_foreign_files, check_output_dir, check_resume_compatible, make_accelerator, refuse_untrained_run,
    start_output_dir, validate_arguments,
)
from hf_imgcap.training.scst import self_critical_training

logger = get_logger("train")  # Accelerate's: logs once, on the main process (main_process_only=False for every process)
# Accelerate's mixed-precision names: the feature cache's encoder pass runs under autocast in these.
MIXED_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- arguments
@dataclass
class DataArguments:
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "A Hub dataset id, a local folder datasets.load_dataset reads (imagefolder with metadata.jsonl / metadata.csv, parquet, ...), a folder of images with a caption table (captions.csv, or train.csv / val.csv / test.csv; COCO's annotations/captions_*.json), one .parquet / .csv / .tsv / .jsonl file, or a local Flickr8k folder (original, Kaggle or Karpathy layout). Splits come from the source (or its 'split' column); missing validation / test splits are carved from train (seeded, by image)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration (subset) name of --dataset, passed to datasets.load_dataset as name=."})
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub --dataset, passed to datasets.load_dataset."})
    image_column: str | None = field(default=None, metadata={"help": "Column holding the images (default: 'image', or the only Image column); for a caption table, its column of image file names (default: file_name / image / image_path / filename / ...)."})
    caption_column: str | None = field(default=None, metadata={"help": "Column holding the captions: a string or a list of strings per row (default: caption_0..caption_N, else captions / caption / text / sentences / raw)."})
    image_dir: str | None = field(default=None, metadata={"help": "Folder of the images, if not next to the caption file."})
    cache_dir: str = field(default="~/.cache/hf_imgcap/features", metadata={"help": "Where the encoder feature cache lives (reused across runs)."})
    max_train_images: int | None = field(default=None, metadata={"help": "Use only the first N training images (quick runs)."})
    max_eval_images: int | None = field(default=None, metadata={"help": "Use only the first N validation and test images."})
    verify_images: bool = field(default=True, metadata={"help": "Decode every image once at load time and skip the broken ones."})
    allow_split_overlap: bool = field(default=False, metadata={"help": "Keep validation / test images that are also in train (or test images also in validation): the same file, bytes or pixels under any name. By default they are left out of the evaluation split, counted and named in a warning, so that its scores are not inflated."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes for training batches."})


@dataclass
class ModelArguments:
    encoder: str = field(default="microsoft/resnet-152", metadata={"help": "Pretrained encoder: Hub id or folder of a transformers ResNet, 'torchvision:resnet152', a .pth state dict, or 'random' (untrained ResNet-152)."})
    tokenizer: str = field(default="bert-base-uncased", metadata={"help": "'bert-base-uncased' (bundled, offline), 'captions' (WordPiece trained on the training captions), or a tokenizer folder / Hub id."})
    caption_vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size for --tokenizer captions."})
    # The model's sizes: defaults and help from the config (and the processor), where they are stated once.
    embedding_size: int = model_field("embedding_size")
    attention_size: int = model_field("attention_size")
    hidden_size: int = model_field("hidden_size")
    dropout: float = model_field("dropout")
    attention_regularization: float = model_field("attention_regularization")
    whiten_features: bool = field(default=False, metadata={"help": "Decorrelate the standardised feature channels (ZCA whitening with the training set's covariance) before the decoder, applied once per image. Helps when an encoder's content sits in weak feature directions (the demo's random encoder); with a pretrained encoder, measure (docs/standin_encoder.md). Off: per-channel standardisation, as in the paper."})
    image_size: int = model_field("image_size")
    max_caption_length: int = processor_field("max_caption_length")


@dataclass
class TrainingArguments:
    output_dir: str = field(default="outputs/show-attend-tell", metadata={"help": "The Hub-ready output folder (checkpoints/ and runs/ inside)."})
    seed: int = field(default=DEFAULT_SEED, metadata={"help": "Random seed (data order, dropout, initialisation)."})
    num_train_epochs: int = field(default=120, metadata={"aliases": ["--num_epochs"], "help": "Maximum number of epochs (early stopping usually ends sooner)."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimizer steps in total."})
    per_device_train_batch_size: int = field(default=32, metadata={"aliases": ["--batch_size"], "help": "Captions per batch per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=4e-4, metadata={"help": "Adam learning rate of the decoder."})
    encoder_learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate of the encoder when fine-tuned."})
    finetune_encoder: bool = field(default=False, metadata={"help": "Train the encoder too, from the images (no feature cache)."})
    grad_clip: float = field(default=5.0, metadata={"help": "Clip the gradient norm to this value (0: off)."})
    lr_scheduler_type: str = field(default="reduce_lr_on_plateau", metadata={"help": f"Learning-rate schedule (transformers.get_scheduler name): {', '.join(LR_SCHEDULER_TYPES)}. reduce_lr_on_plateau decays at epoch ends when --metric_for_best_model stalls; the others follow the optimizer steps."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of the optimizer steps with a linear learning-rate warmup (step-based schedules)."})
    lr_decay_factor: float = field(default=0.8, metadata={"help": "reduce_lr_on_plateau: multiply the learning rates by this when --metric_for_best_model stalls."})
    lr_decay_patience: int = field(default=8, metadata={"help": "reduce_lr_on_plateau: epochs without improvement of --metric_for_best_model before decaying the learning rate."})
    metric_for_best_model: str = field(default="bleu_4", metadata={"help": f"Validation number that selects the kept model and drives the plateau schedule and early stopping: {', '.join(SELECTION_METRICS)} (cider is CIDEr-D; loss is the teacher-forced caption loss, lower is better; meteor needs Java)."})
    early_stopping_patience: int = field(default=20, metadata={"help": "Epochs without improvement of --metric_for_best_model before stopping."})
    mixed_precision: str | None = field(default=None, metadata={"help": "'no', 'bf16', 'fp16' or 'fp8'; default: what `accelerate launch` / `accelerate config` says ('no' with plain python). bf16 / fp16 also run the feature cache's encoder pass under autocast (a cache of its own)."})
    use_cpu: bool = field(default=False, metadata={"aliases": ["--cpu"], "help": "Train on the CPU even when a GPU is available (default: the launcher / Accelerate decides)."})
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker(s) for Accelerate, comma separated ('tensorboard', 'wandb', ...), 'all' (every installed one) or 'none'. A tracker named here must be installed (e.g. pip install wandb): the run refuses to start otherwise."})
    eval_num_beams: int = field(default=3, metadata={"help": "Beam size for validation and test captions."})
    eval_length_penalty: float = field(default=1.0, metadata={"help": "Beam search length penalty for validation and test captions (a beam's score is its log-probability / length**penalty: > 1 favours longer captions)."})
    eval_max_new_tokens: int = field(default=40, metadata={"help": "Longest caption generated during evaluation."})
    per_device_eval_batch_size: int = field(default=32, metadata={"aliases": ["--eval_batch_size"], "help": "Images per generation batch per process."})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "Also checkpoint every N optimizer steps (0: only at epoch ends)."})
    save_total_limit: int = field(default=2, metadata={"aliases": ["--checkpoints_to_keep"], "help": "Newest checkpoints kept; older ones are deleted."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace the previous run in output_dir: delete the files it recorded in run_files.json (other files stay). Without it, a used output_dir needs --resume_from_checkpoint."})
    # `--resume_from_checkpoint` alone (or `latest`) continues from the newest checkpoint, as Trainer.train(resume_from_checkpoint=True).
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "aliases": ["--resume", "--resume_from"], "nargs": "?", "const": LATEST_CHECKPOINT,
        "help": f"Continue from this checkpoint folder (verified first); without a value or '{LATEST_CHECKPOINT}': from the newest complete checkpoint in output_dir/checkpoints."})
    max_nonfinite_steps: int = field(default=10, metadata={"help": "Stop after this many non-finite losses in a row (each is skipped)."})
    scst_epochs: int = field(default=0, metadata={"help": "Self-critical sequence training (CIDEr-D reward) epochs after the cross-entropy stage, from its best model; the best SCST epoch on validation CIDEr-D is the final model if it beats the cross-entropy model there, else that model stays (0: off)."})
    scst_learning_rate: float = field(default=5e-5, metadata={"help": "Adam learning rate of the SCST stage."})
    scst_num_samples: int = field(default=5, metadata={"help": "Captions sampled per training image in each SCST step."})
    scst_baseline: str = field(default="mean", metadata={"help": "SCST reward baseline: 'mean' (the mean reward of the image's other samples, as ruotianluo's toolkit recommends) or 'greedy' (the reward of the greedy caption, Rennie et al. 2017)."})
    blind: bool = field(default=False, metadata={"help": "Image-blind baseline: the same training with the image features zeroed."})
    demo: bool = field(default=False, metadata={"help": "Run the offline demo (hf_imgcap.demo): synthetic scenes in the Flickr8k layout, a random ResNet-152, training with images and image-blind, content tables; its presets become the defaults."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the output folder to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for --push_to_hub (user/name)."})

    # The meaning of --resume_from_checkpoint, read by the run.
    @property
    def resume(self) -> bool:
        return self.resume_from_checkpoint is not None

    @property
    def resume_from(self) -> str | None:
        return None if self.resume_from_checkpoint in (None, LATEST_CHECKPOINT) else self.resume_from_checkpoint




# ---------------------------------------------------------------------------------------------- building blocks
def build_processor(model_args, train_split, output_dir: Path, accelerator) -> ShowAttendTellProcessor:
    """The processor, reused from an earlier run of this output_dir when there is one (resume). Refused when the
    files it saves would write over files in output_dir that no recorded run wrote (names of another tokenizer)."""
    saved = output_dir / "checkpoints" / "processor"
    with accelerator.main_process_first():  # the main process builds and saves it; the others then load it
        if not (saved / "processor_config.json").is_file():
            processor = _new_processor(model_args, train_split)
            if accelerator.is_main_process:
                save_pretrained_replacing(processor, saved)
        processor = ShowAttendTellProcessor.from_pretrained(saved)
    check_no_foreign_files(output_dir, [path.name for path in saved.iterdir()])
    return processor


def _new_processor(model_args, train_split) -> ShowAttendTellProcessor:
    if model_args.tokenizer == "bert-base-uncased":
        tokenizer = default_tokenizer()
    elif model_args.tokenizer == "captions":
        captions = [caption for captions in train_split["captions"] for caption in captions]
        tokenizer = train_caption_tokenizer(captions, vocab_size=model_args.caption_vocab_size)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer)
    return ShowAttendTellProcessor(
        image_processor=default_image_processor(model_args.image_size),
        tokenizer=tokenizer,
        max_caption_length=model_args.max_caption_length,
    )


def build_model(model_args, tokenizer, finetune_encoder: bool, blind: bool = False) -> ShowAttendTellForConditionalGeneration:
    config_kwargs = dict(
        vocab_size=len(tokenizer),
        embedding_size=model_args.embedding_size,
        attention_size=model_args.attention_size,
        hidden_size=model_args.hidden_size,
        dropout=model_args.dropout,
        attention_regularization=model_args.attention_regularization,
        whiten_features=model_args.whiten_features and not blind,  # a blind run's features are zeros: nothing to whiten
        image_size=model_args.image_size,
        freeze_encoder=not finetune_encoder,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.cls_token_id,
    )
    if model_args.encoder == "random":
        return ShowAttendTellForConditionalGeneration(ShowAttendTellConfig(**config_kwargs))
    return build_captioner(model_args.encoder, **config_kwargs)


def validation_batches(val_split, features, processor, model_args, args, accelerator):
    """This process's share of the validation (image, caption) pairs, in batches, for the validation loss (each
    process takes every num_processes-th pair: every pair is scored once)."""
    pairs, _ = tokenize_captions(val_split, processor.tokenizer, model_args.max_caption_length,
                                 valid_images=None if features is None else features.valid)
    pairs = pairs.select(range(accelerator.process_index, len(pairs), accelerator.num_processes))
    examples = CaptionPairs(pairs, features=features) if features is not None else CaptionPairs(pairs, images=val_split, processor=processor)
    return torch.utils.data.DataLoader(examples, batch_size=args.per_device_eval_batch_size * 5,
                                       collate_fn=lambda items: collate_captions(items, processor.tokenizer.pad_token_id))


def read_decoder_inputs_once(run: TrainingRun, caches: dict):
    """With feature whitening, the training and validation pairs read each image's decoder input, standardised and
    whitened once per image and kept next to its feature cache (`standardized_feature_cache`), instead of features
    that the model would standardise and whiten again for each of the image's captions, every epoch. Standardisation
    alone is elementwise, a negligible share of a step: without whitening the pairs read the features as they are
    (no second copy of the cache on disk). Call after resuming: the input is then the one of the model that trains
    (with the statistics its checkpoint holds)."""
    model = run.accelerator.unwrap_model(run.model)
    if not model.config.whiten_features:
        return
    for name, loader in (("train", run.loader), ("validation", run.validation_batches)):
        examples = getattr(loader, "dataset", None)  # Accelerate's prepared loader keeps the DataLoader's dataset
        if isinstance(examples, CaptionPairs) and examples.features is not None and examples.features is caches.get(name):
            examples.features = standardized_feature_cache(caches[name], model)


def subset(split, limit):
    return split if limit is None or limit >= len(split) else split.select(range(limit))


def start_run(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments):
    """Refuse nonsense values, impossible combinations and an output folder the run may not use before any data is
    read, not after hours of training; then the accelerator and the seed. Nothing is written yet. Returns the
    accelerator, the arguments and the files of a previous run to delete (`check_output_dir`)."""
    validate_arguments(model_args, data_args, args)
    previous_run = check_output_dir(Path(args.output_dir), resume=args.resume, overwrite=args.overwrite_output_dir)
    check_resume_compatible(model_args, data_args, args)
    accelerator = make_accelerator(args)
    args = dataclasses.replace(args, mixed_precision=accelerator.mixed_precision)  # what the launcher chose, for the record
    set_seed(args.seed)
    return accelerator, args, previous_run


def open_output_dir(accelerator, previous_run, model_args, data_args, args) -> RunFiles | None:
    """Once the data is read: the run's first writes in output_dir (the previous run's files deleted, the record of
    what this run writes, training_args.json for a --resume after a crash to check). Main process: the record;
    the others: None."""
    run_files = start_output_dir(args.output_dir, previous_run, model_args, data_args, args) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    return run_files


def load_splits(data_args: DataArguments, args: TrainingArguments, accelerator) -> dict:
    """The train / validation / test splits the run uses (--max_train_images / --max_eval_images applied)."""
    with accelerator.main_process_first():
        dataset = load_caption_dataset(
            data_args.dataset, dataset_config=data_args.dataset_config, revision=data_args.revision,
            image_column=data_args.image_column, caption_column=data_args.caption_column, image_dir=data_args.image_dir,
            seed=args.seed, verify_images=data_args.verify_images, allow_split_overlap=data_args.allow_split_overlap,
        )
    return {"train": subset(dataset["train"], data_args.max_train_images),
            "validation": subset(dataset["validation"], data_args.max_eval_images),
            "test": subset(dataset["test"], data_args.max_eval_images)}


# ---------------------------------------------------------------------------------------------- training
def prepare_training(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments, accelerator, splits: dict,
                     checkpoints: CheckpointManager) -> tuple[TrainingRun, dict]:
    """Everything the epochs need: the processor, the model, the encoder features of each split (the caches) and the
    training batches, optimizer and scheduler. Returns the `TrainingRun` and the caches."""
    output_dir, log = Path(args.output_dir), logger.info
    train_split, val_split = splits["train"], splits["validation"]

    # 2. Processor and model.
    processor = build_processor(model_args, train_split, output_dir, accelerator)
    model = build_model(model_args, processor.tokenizer, args.finetune_encoder, blind=args.blind)
    model.generation_config.num_beams = args.eval_num_beams
    model.generation_config.max_new_tokens = args.eval_max_new_tokens
    model.generation_config.length_penalty = args.eval_length_penalty

    # 3. Encoder features, computed once per image (the encoder is frozen), and the statistics that standardise
    # them. Fine-tuning reads the images instead; it still takes its starting statistics from the train cache.
    cache_dir = Path(data_args.cache_dir).expanduser()
    splits_to_cache = {"train": train_split} if args.finetune_encoder else splits
    model.to(accelerator.device)  # encode on the GPU (prepare() would move it only later)
    # Every process encodes its shard of each split into the shared cache (N processes: N times sooner).
    caches = {
        name: build_feature_cache(model, processor, split, cache_dir, description=f"encoding {name} images",
                                  show_progress=accelerator.is_main_process, accelerator=accelerator,
                                  encoder_dtype=MIXED_PRECISION_DTYPES.get(accelerator.mixed_precision))
        for name, split in splits_to_cache.items()
    }
    if not args.blind:
        mean, std = caches["train"].statistics()
        whitening = caches["train"].whitening(std) if model_args.whiten_features else None
        model.set_feature_statistics(mean, std, whitening)

    # 4. Training pairs, optimizer, scheduler.
    pairs, counts = tokenize_captions(train_split, processor.tokenizer, model_args.max_caption_length, valid_images=caches["train"].valid)
    log("training pairs: %s", counts)
    examples = (
        CaptionPairs(pairs, images=train_split, processor=processor)
        if args.finetune_encoder
        else CaptionPairs(pairs, features=caches["train"])
    )
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=lambda items: collate_captions(items, processor.tokenizer.pad_token_id),
        num_workers=data_args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # not the global RNG: resuming must not shift it
    )
    parameter_groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")], "lr": args.learning_rate}]
    if args.finetune_encoder:
        parameter_groups.append({"params": list(model.encoder.parameters()), "lr": args.encoder_learning_rate})
    # fused: one kernel over all parameters; Adam's update is otherwise a sixth of a decoder step on the CPU.
    optimizer = torch.optim.Adam(parameter_groups, fused=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = build_lr_scheduler(args, optimizer, steps_per_epoch=-(-len(loader) // args.gradient_accumulation_steps))

    # The trackers, and what the loop works with.
    hyperparameters = {k: v for a in (model_args, data_args, args) for k, v in dataclasses.asdict(a).items() if isinstance(v, (int, float, str, bool))}
    accelerator.init_trackers("hf_imgcap", config=hyperparameters)  # on every process; only the main one starts trackers
    run = TrainingRun(
        accelerator, model, optimizer, scheduler, loader, processor,
        checkpoints=checkpoints,
        args=args,
        evaluation=dict(accelerator=accelerator, batch_size=args.per_device_eval_batch_size, blind=args.blind,
                        num_beams=args.eval_num_beams, max_new_tokens=args.eval_max_new_tokens,
                        length_penalty=args.eval_length_penalty, show_progress=False),
        best_dir=output_dir / "checkpoints" / "best",
        validation_batches=validation_batches(val_split, caches.get("validation"), processor, model_args, args, accelerator),
    )
    return run, caches


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    accelerator, args, previous_run = start_run(model_args, data_args, args)
    output_dir = Path(args.output_dir)
    log = logger.info
    log("accelerate: %d process(es) on %s, mixed precision %s", accelerator.num_processes, accelerator.device, accelerator.mixed_precision)

    # 1. Data: a DatasetDict of images + reference captions; a resumed run must continue on the same splits.
    splits = load_splits(data_args, args, accelerator)
    train_split, val_split, test_split = splits["train"], splits["validation"], splits["test"]
    log("data: %d / %d / %d images (train / validation / test) from %s", len(train_split), len(val_split), len(test_split), data_args.dataset)
    fingerprint = data_fingerprint(data_args.dataset, splits)
    checkpoints = CheckpointManager(output_dir / "checkpoints", keep=args.save_total_limit)
    check_resume_data(checkpoint_to_resume(checkpoints, args.resume, args.resume_from), fingerprint)

    run_files = open_output_dir(accelerator, previous_run, model_args, data_args, args)
    with UndoFailedStart(run_files) as start:  # a failure before the first optimizer step leaves the folder as it was
        run, caches = prepare_training(model_args, data_args, args, accelerator, splits, checkpoints)  # steps 2 to 4
        # 5. The loop: resume (model, optimizer, scheduler and RNG states from Accelerate; TrainState from JSON), then epochs.
        state = resume_state(run, args.resume, args.resume_from)
        read_decoder_inputs_once(run, caches)
        state.data_fingerprint = fingerprint  # the data it trains on, recorded in its checkpoints
        start.training_begins(state)
        with StopRequest() as stop:
            stopped_by = run_epochs(run, state, stop, val_split, caches.get("validation"))
        accelerator.wait_for_everyone()
        if stopped_by:
            log("stopped by %s after step %d; continue with --resume", stopped_by, state.global_step)
            accelerator.end_training()
            return {"stopped_by": stopped_by, "global_step": state.global_step}
        refuse_untrained_run(state.global_step, run.batches_run, state.nonfinite_total)
    record = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args), "training": dataclasses.asdict(args),
              "num_train_images": len(train_split)}
    # 6. Self-critical sequence training (CIDEr-D reward) from the best cross-entropy model; its best epoch is final.
    if args.scst_epochs:
        with StopRequest() as stop:  # SIGTERM / Ctrl-C end SCST at the next step; the run then finishes
            scst = self_critical_training(run, train_split, caches, val_split, test_split, stop)
        run, record["scst"] = dataclasses.replace(run, best_dir=scst.best_dir), scst.record

    # 7. Finish: the best model on the test split, with every metric; the Hub-ready folder.
    results = finish(run, state, test_split, caches.get("test"), output_dir, record, run_files=run_files)
    accelerator.end_training()
    return results


# ---------------------------------------------------------------------------------------------- entry point
PROGRAM = Path(__file__).name
EPILOG = (f"Exit status: 0 when the run finished or stopped at a checkpoint (SIGTERM, Ctrl-C: continue with --resume), "
          f"2 for a user error (a bad argument, a used --output_dir, a dataset, column, image or model that cannot be "
          f"read), 130 when interrupted outside the training loop. {DEBUG_HELP}")


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), prog=PROGRAM, description=__doc__, epilog=EPILOG)
    model_args, data_args, args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:  # argparse's usage error (exit 2), as for any other mistyped command line
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.demo:  # the demo's presets become the defaults: an option given on the command line still wins
        from hf_imgcap.demo.presets import DEMO_PRESET

        unknown = set(DEMO_PRESET) - {f.name for target in (model_args, data_args, args) for f in dataclasses.fields(target)}
        if unknown:  # a renamed argument must not silently drop its demo preset
            raise KeyError(f"DEMO_PRESET names no argument: {sorted(unknown)}")
        parser.set_defaults(**DEMO_PRESET)  # (not "replace what equals the default": --scst_epochs 0 must stay 0)
        model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, args


def main(argv=None) -> int:
    """`python train.py ...`: the exit status (see EPILOG); a user error is one message on stderr, a bug raises."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(TerminalSafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))  # logs name files
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for noisy in ("httpx", "accelerate", "datasets", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def run() -> int:
        keep_freed_memory_for_reuse()  # a CPU step's largest tensors are otherwise faulted in afresh at every step
        try:
            model_args, data_args, args = parse_args(argv)
        except SystemExit as exit_request:  # --help (0) or an argparse error (2, message already printed)
            return int(exit_request.code or 0)
        if args.demo:
            from hf_imgcap.demo.run import run_demo

            run_demo(train, model_args, data_args, args)
        else:
            train(model_args, data_args, args)
        return 0

    return run_as_program(PROGRAM, run)


if __name__ == "__main__":
    sys.exit(main())
