# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The model card (rendered from the run's metrics file, never typed by hand) and the upload to the Hub."""

import json
import logging
import math
import os
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData

from hf_imgcap.models import show_attend_tell
from hf_imgcap.models.show_attend_tell.configuration_show_attend_tell import ShowAttendTellConfig

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"
METRIC_LABELS = {
    "bleu_1": ("bleu", "BLEU-1"),
    "bleu_2": ("bleu", "BLEU-2"),
    "bleu_3": ("bleu", "BLEU-3"),
    "bleu_4": ("bleu", "BLEU-4"),
    "cider": ("cider", "CIDEr-D"),
    "rouge_l": ("rouge", "ROUGE-L"),
    "meteor": ("meteor", "METEOR"),
}
# What a Hub repository of ours holds, by exact name at the top of the output folder: everything
# from_pretrained(..., trust_remote_code=True) and the pipeline need, the card and the run's records. Nothing else
# (checkpoints, logs, caches, a dataset, notes, credentials, .git) is ever uploaded, whatever its name.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json", "added_tokens.json")
# The remote-code bundle is every module of the model's folder (save_pretrained copies them next to the weights).
REMOTE_CODE_FILES = tuple(sorted(f.name for f in Path(show_attend_tell.__file__).parent.glob("*.py") if f.name != "__init__.py"))
RUN_RECORD_FILES = ("README.md", "metrics.json", "training_args.json", "test_captions.json", "attention_example.png")
HUB_FILE_NAMES = frozenset(MODEL_FILES + PROCESSOR_FILES + REMOTE_CODE_FILES + RUN_RECORD_FILES)
WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")  # save_pretrained's names for a sharded model


def _dataset_name(dataset: str) -> str:
    return Path(dataset).name if Path(dataset).exists() else dataset


HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def base_model_of(encoder) -> str | None:
    """The card's `base_model`: the encoder checkpoint when it is a Hub model id (`microsoft/resnet-152`), so the
    Hub links the two models. None for a random encoder, a torchvision name, a local folder or a .pth file: the
    Hub only accepts ids of models it hosts there."""
    if not isinstance(encoder, str) or encoder == "random" or encoder.startswith("torchvision:") or Path(encoder).exists():
        return None
    return encoder if HUB_REPO_ID.fullmatch(encoder) and not encoder.endswith((".pth", ".pt")) else None


def render_model_card(config, results: dict, model_args: dict, training_args: dict, data_args: dict, repo_id: str | None = None,
                      example_image: str = "photo.jpg") -> ModelCard:
    """The Hub model card of a training run: the model's sizes from its saved `config` (the single source of
    truth), its numbers from `metrics.json` (`results`), how it was trained from its arguments."""
    test = results.get("test") or {}
    dataset = _dataset_name(data_args.get("dataset") or "unknown")
    is_hub_dataset = bool(HUB_REPO_ID.fullmatch(dataset)) and not Path(data_args.get("dataset", "")).exists()
    metric_keys = [k for k in METRIC_LABELS if isinstance(test.get(k), (int, float)) and math.isfinite(test[k])]
    eval_results = [
        EvalResult(
            task_type="image-to-text",
            task_name="Image Captioning",
            dataset_type=dataset if is_hub_dataset else dataset.lower(),
            dataset_name=dataset,
            dataset_split=results.get("eval", {}).get("split", "test"),
            metric_type=METRIC_LABELS[key][0],
            metric_name=METRIC_LABELS[key][1],
            metric_value=float(test[key]),
        )
        for key in metric_keys
    ]
    model_name = (repo_id or "show-attend-tell-captioner").split("/")[-1]
    encoder = model_args.get("encoder", "microsoft/resnet-152")
    card_data = ModelCardData(
        base_model=base_model_of(encoder),
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-to-text",
        tags=["image-captioning", "show-attend-tell", "resnet", "lstm", "attention", "hf-imgcap"],
        datasets=[dataset] if is_hub_dataset else None,
        metrics=sorted({METRIC_LABELS[k][0] for k in metric_keys}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    encoder_description = "ResNet-152 with random weights (a demo: no pretrained weights)" if encoder == "random" else f"ResNet ({encoder})"
    tokenizer = model_args.get("tokenizer", "bert-base-uncased")
    eval_settings = results.get("eval", {})
    selection = results.get("best_model_selection") or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id or "path/to/this/folder",
        example_image=example_image,
        encoder_description=encoder_description,
        encoder_channels=config.encoder_hidden_size,
        image_size=config.image_size,
        grid=math.isqrt(config.num_regions),
        vocab_size=config.vocab_size,
        tokenizer_description="bert-base-uncased" if tokenizer == "bert-base-uncased" else (
            "the frequent words of the training captions" if tokenizer == "captions" else tokenizer),
        random_encoder=encoder == "random",
        test_metrics=bool(metric_keys),
        metric_rows=[{"name": METRIC_LABELS[k][1], "value": f"{test[k]:.4f}"} for k in metric_keys],
        num_beams=eval_settings.get("num_beams", training_args.get("eval_num_beams", 3)),
        max_new_tokens=eval_settings.get("max_new_tokens", training_args.get("eval_max_new_tokens", 40)),
        num_test_images=test.get("num_images", 0),
        split=eval_settings.get("split", "test"),
        dataset=dataset,
        blind=bool(eval_settings.get("blind")),
        num_train_images=results.get("num_train_images", "?"),
        best_bleu_4=f"{results['validation_best_bleu_4']:.4f}" if isinstance(results.get("validation_best_bleu_4"), (int, float)) else "n/a",
        steps=results.get("steps", "?"),
        # metrics.json files from before --metric_for_best_model have no best_model_selection: they selected on BLEU-4.
        selection_metric=METRIC_LABELS.get(selection.get("metric", "bleu_4"), ("", "caption loss"))[1],
        selection_value=f"{selection['value']:.4f}" if isinstance(selection.get("value"), (int, float)) else None,
        **{k: getattr(config, k) for k in ("embedding_size", "attention_size", "hidden_size", "dropout", "attention_regularization")},
        batch_size=training_args.get("per_device_train_batch_size", training_args.get("batch_size")),  # batch_size in earlier runs' training_args.json
        **{k: training_args.get(k) for k in ("learning_rate", "encoder_learning_rate", "finetune_encoder",
                                             "gradient_accumulation_steps", "grad_clip", "lr_decay_factor", "lr_decay_patience",
                                             "early_stopping_patience", "mixed_precision", "lr_scheduler_type",
                                             "warmup_ratio")},
    )


def saved_config(folder):
    """The `ShowAttendTellConfig` saved in `folder`: what the card says about the model comes from here."""
    if not (Path(folder) / "config.json").is_file():
        raise ValueError(f"{folder} holds no config.json: save the model there before writing its card")
    return ShowAttendTellConfig.from_pretrained(folder)


def write_model_card(folder, results: dict, model_args: dict, training_args: dict, data_args: dict, repo_id: str | None = None,
                     example_image: str = "photo.jpg") -> Path:
    card = render_model_card(saved_config(folder), results, model_args, training_args, data_args, repo_id=repo_id or training_args.get("hub_model_id"),
                             example_image=example_image)
    path = Path(folder) / "README.md"
    if path.is_symlink():  # write the card in the folder, never through a link into some other file
        path.unlink()
    card.save(path)
    return path


def write_model_card_from_folder(folder, repo_id: str | None = None, example_image: str = "photo.jpg") -> Path:
    """Re-render `README.md` of a training output folder from its `metrics.json` and `training_args.json`."""
    folder = Path(folder)
    results = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    arguments = json.loads((folder / "training_args.json").read_text()) if (folder / "training_args.json").is_file() else {}
    return write_model_card(folder, results, arguments.get("model", {}), arguments.get("training", {}), arguments.get("data", {}),
                            repo_id, example_image)


def hub_files(folder) -> list[Path]:
    """The files of a training output folder that belong on the Hub: regular files directly in `folder` whose
    names are the model's own (`HUB_FILE_NAMES`, weight shards). Subfolders, hidden files and symlinks are never
    chosen, so a `notes/config.json`, `.git/` or a link to a secret stays local."""
    folder = Path(folder)
    chosen = []
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name not in HUB_FILE_NAMES and not WEIGHT_SHARD.fullmatch(entry.name):
            continue
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            logger.warning("not uploading %s: not a regular file (a symlink or folder)", entry.path)
            continue
        chosen.append(folder / entry.name)
    names = {path.name for path in chosen}
    if "config.json" not in names or not names & {"model.safetensors", "model.safetensors.index.json"}:
        raise ValueError(f"{folder} holds no saved model (config.json and model.safetensors at its top level): nothing to push")
    return chosen


def push_to_hub(folder, repo_id: str, token: str | None = None, private: bool | None = None, commit_message: str | None = None):
    """Upload a training output folder to `repo_id` in one commit: weights, config, code files, processor, card,
    metrics and the example attention image. The token comes from `token`, `HF_TOKEN` or `hf auth login`."""
    folder = Path(folder)
    hub_files(folder)  # refuses a folder without a model before anything is written or sent
    ModelCard.load(write_model_card_from_folder(folder, repo_id=repo_id))  # usage snippets name the repository; YAML parses
    operations = [CommitOperationAdd(path_in_repo=str(path.relative_to(folder)), path_or_fileobj=str(path)) for path in hub_files(folder)]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message or "Upload Show-Attend-Tell captioner (hf-imgcap)",
    )
    logger.info("pushed %d files from %s to https://huggingface.co/%s", len(operations), folder, repo_id)
    return commit
