# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The model card (rendered from the run's metrics file, never typed by hand) and the upload to the Hub."""

import json
import logging
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

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
REMOTE_CODE_FILES = show_attend_tell.bundle_code_files()  # what save_pretrained copies next to the weights
ATTENTION_EXAMPLE_FILE = "attention_example.png"
RUN_RECORD_FILES = ("README.md", "metrics.json", "training_args.json", "test_captions.json", ATTENTION_EXAMPLE_FILE)
HUB_FILE_NAMES = frozenset(MODEL_FILES + PROCESSOR_FILES + REMOTE_CODE_FILES + RUN_RECORD_FILES)
WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")  # save_pretrained's names for a sharded model


HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def base_model_of(encoder) -> str | None:
    """The card's `base_model`: the encoder checkpoint when it is a Hub model id (`microsoft/resnet-152`), so the
    Hub links the two models. None for a random encoder, a torchvision name, a local folder or a .pth file: the
    Hub only accepts ids of models it hosts there."""
    if not isinstance(encoder, str) or encoder == "random" or encoder.startswith("torchvision:") or Path(encoder).exists():
        return None
    return encoder if HUB_REPO_ID.fullmatch(encoder) and not encoder.endswith((".pth", ".pt")) else None


# ---------------------------------------------------------------------------------------------- what the card says
FLICKR8K_NAME = re.compile(r"flick?e?r[ _-]?8k", re.IGNORECASE)  # Flickr8k, flickr_8k, the release's "Flicker8k"
LOCAL_DATASET_PREFIX = "local:"  # model-index dataset.type of a local folder: ":" is never in a Hub id


def format_number(value) -> str:
    """A number as a person reads it: integers with thousands separators; floats to 4 significant digits, in plain
    notation from 0.0001 to 1,000,000 (0.0004, 0.1988, 1.235, 5) and in scientific notation outside it (4.226e-09)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value) or value == 0:
        return str(value) if value else "0"
    if 1e-4 <= abs(value) < 1e4:
        return f"{value:.4g}"
    if 1e4 <= abs(value) < 1e6:
        return f"{value:,.0f}"
    return f"{value:.3e}"


def hub_dataset_id(dataset: str) -> str | None:
    """`dataset` if it names a dataset on the Hub (`user/name`, or a bare canonical name), None for a local
    folder: one that exists, or a path that could only be one (absolute, relative with ./ ../ ~, or nested)."""
    if not dataset or Path(dataset).expanduser().exists() or dataset.startswith(("/", ".", "~")) or dataset.count("/") > 1:
        return None
    try:
        validate_repo_id(dataset)
    except HFValidationError:
        return None
    return dataset


@dataclass
class DatasetDescription:
    """What the card says about the dataset of a run: its name, where it is, its split sizes and captions."""

    name: str  # the Hub id, or the local folder's name
    hub_id: str | None
    config: str | None = None
    revision: str | None = None
    synthetic: bool = False
    split_images: dict = field(default_factory=dict)  # "train" / "validation" / "test" -> images, where recorded
    test_captions: list = field(default_factory=list)  # how many reference captions each test image has

    @property
    def is_flickr8k(self) -> bool:
        return not self.synthetic and bool(FLICKR8K_NAME.search(self.name))

    @property
    def model_index_type(self) -> str:
        """The Hub id; for a local folder an identifier that is not one (no link to someone else's dataset)."""
        return self.hub_id or f"{LOCAL_DATASET_PREFIX}{self.name}"

    @property
    def markdown(self) -> str:
        where = f"[{self.hub_id}](https://huggingface.co/datasets/{self.hub_id})" if self.hub_id else f"`{self.name}` (a local folder)"
        details = [f"configuration `{self.config}`" if self.config else "", f"revision `{self.revision}`" if self.revision else ""]
        details = ", ".join(detail for detail in details if detail)
        return f"{where} ({details})" if details else where

    @property
    def sizes(self) -> str:
        """': 6,000 training, 1,000 validation and 1,000 test images; the 1,000 test images have 5,000 reference
        captions (5 per image)', from what the run recorded ('' if nothing)."""
        counts = [f"{format_number(self.split_images[split])} {label}" for split, label in
                  (("train", "training"), ("validation", "validation"), ("test", "test")) if split in self.split_images]
        if not counts:
            return ""
        text = f": {', '.join(counts[:-1])} and {counts[-1]} images" if len(counts) > 1 else f": {counts[0]} images"
        if self.test_captions:
            low, high = min(self.test_captions), max(self.test_captions)
            per_image = format_number(low) if low == high else f"{low}–{high}"
            text += (f"; the {format_number(len(self.test_captions))} test images have {format_number(sum(self.test_captions))} "
                     f"reference captions ({per_image} per image)")
        return text

    @property
    def limitation(self) -> str:
        trained_on = self.split_images.get("train")
        if self.synthetic:
            return ("The training images are synthetic (coloured shapes on plain backgrounds): the model knows nothing "
                    "about photographs.")
        if self.is_flickr8k:
            seen = f"; this model trained on {format_number(trained_on)} of them" if trained_on else ""
            return (f"Flickr8k is small (about 8,000 photos{seen}) and centred on people and dogs in everyday scenes; "
                    "captions of other kinds of images will be generic or wrong, and the model repeats the annotators' "
                    "habits and biases (e.g. in how people are described by gender or age).")
        images = f"the {format_number(trained_on)} training images" if trained_on else "the training images"
        return (f"The model knows only what {images} of {self.name} show: captions of other kinds of images will be "
                "generic or wrong, and it repeats the habits and biases of the captions it learned from (e.g. in how "
                "people are described by gender or age).")


def describe_dataset(data_args: dict, results: dict, folder: Path | None) -> DatasetDescription:
    """The dataset of a run, from its arguments, its metrics.json (`results`) and its test_captions.json."""
    given = data_args.get("dataset") or results.get("dataset") or "unknown"
    hub_id = hub_dataset_id(given)
    if hub_id is None:
        path = Path(given).expanduser()
        name = (path.resolve().name if path.exists() else path.name) or given
    else:
        name = hub_id
    split_images = {}
    if isinstance(results.get("num_train_images"), int):
        split_images["train"] = results["num_train_images"]
    history = results.get("history") or []
    if history and isinstance(history[-1].get("num_images"), (int, float)):
        split_images["validation"] = int(history[-1]["num_images"])
    if isinstance((results.get("test") or {}).get("num_images"), int):
        split_images["test"] = results["test"]["num_images"]
    return DatasetDescription(
        name=name, hub_id=hub_id, config=data_args.get("dataset_config"), revision=data_args.get("revision"),
        # Only a synthetic dataset says what each image shows (scenes.json): its runs record content accuracy.
        synthetic="content_accuracy" in results,
        split_images=split_images,
        test_captions=_test_caption_counts(folder, split_images.get("test")),
    )


def _test_caption_counts(folder: Path | None, num_test_images: int | None) -> list[int]:
    """References per test image, from the run's test_captions.json ([] if absent, unreadable, or not this test)."""
    path = None if folder is None else Path(folder) / "test_captions.json"
    if path is None or not path.is_file():
        return []
    try:
        examples = json.loads(path.read_text())
        counts = [len(example["references"]) for example in examples]
    except (OSError, ValueError, TypeError, KeyError):
        logger.warning("%s cannot be read: the model card gives no caption counts", path)
        return []
    return counts if num_test_images in (None, len(counts)) else []


def describe_decoding(num_beams: int, length_penalty: float = 1.0) -> str:
    if num_beams == 1:
        return "greedy decoding"
    penalty = f", length penalty {format_number(length_penalty)}" if length_penalty != 1.0 else ""
    return f"beam search ({num_beams} beams{penalty})"


def model_repo_name(repo_id: str | None, folder: Path | None) -> str:
    """The model-index name: the Hub repository when there is one, else the name of the folder holding the model."""
    if repo_id and hub_repo_id(repo_id):
        return repo_id
    if repo_id:
        return Path(repo_id).name or repo_id
    return Path(folder).resolve().name if folder is not None else "show-attend-tell"


def hub_repo_id(name: str) -> bool:
    if Path(name).expanduser().exists() or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def python_string(text: str) -> str:
    """A Python string literal of `text` (JSON's is one: double quotes, backslash escapes)."""
    return json.dumps(text, ensure_ascii=False)


def attention_figure_link(folder: Path | None, repo_id: str | None) -> str | None:
    """Where the card shows the run's attention figure from: the file in the Hub repository once `repo_id` names
    one, else the file beside the card; None when the run wrote none."""
    if folder is None or not (Path(folder) / ATTENTION_EXAMPLE_FILE).is_file():
        return None
    if repo_id and hub_repo_id(repo_id):
        return f"https://huggingface.co/{repo_id}/resolve/main/{ATTENTION_EXAMPLE_FILE}"
    return ATTENTION_EXAMPLE_FILE


def render_model_card(config, results: dict, model_args: dict, training_args: dict, data_args: dict, repo_id: str | None = None,
                      example_image: str = "photo.jpg", folder: Path | None = None, space_id: str | None = None) -> ModelCard:
    """The Hub model card of a training run: the model's sizes from its saved `config` (the single source of
    truth), its numbers from `metrics.json` (`results`), how it was trained from its arguments, its dataset from
    those and the run `folder`'s test_captions.json and attention figure. The usage snippets load `repo_id`, else the
    folder; `space_id` names the Gradio Space of the model, which the card links."""
    test = results.get("test") or {}
    dataset = describe_dataset(data_args, results, folder)
    metric_keys = [k for k in METRIC_LABELS if isinstance(test.get(k), (int, float)) and math.isfinite(test[k])]
    eval_results = [
        EvalResult(
            task_type="image-to-text",
            task_name="Image Captioning",
            dataset_type=dataset.model_index_type,
            dataset_name=dataset.name,
            dataset_config=dataset.config,
            dataset_revision=dataset.revision,
            dataset_split=results.get("eval", {}).get("split", "test"),
            metric_type=METRIC_LABELS[key][0],
            metric_name=METRIC_LABELS[key][1],
            metric_value=float(test[key]),  # exact: the metadata is for machines
        )
        for key in metric_keys
    ]
    model_name = model_repo_name(repo_id, folder)
    load_from = repo_id or (str(folder) if folder is not None else "path/to/this/folder")
    encoder = model_args.get("encoder", "microsoft/resnet-152")
    card_data = ModelCardData(
        base_model=base_model_of(encoder),
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-to-text",
        tags=["image-captioning", "show-attend-tell", "resnet", "lstm", "attention", "hf-imgcap"],
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        metrics=sorted({METRIC_LABELS[k][0] for k in metric_keys}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    encoder_description = "ResNet-152 with random weights (a demo: no pretrained weights)" if encoder == "random" else f"ResNet ({encoder})"
    tokenizer = model_args.get("tokenizer", "bert-base-uncased")
    eval_settings = results.get("eval", {})
    num_beams = eval_settings.get("num_beams", training_args.get("eval_num_beams", 3))
    selection = results.get("best_model_selection") or {}
    best_bleu_4 = results.get("validation_best_bleu_4")
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        space_id=space_id,
        attention_figure=attention_figure_link(folder, repo_id),
        repo_id_python=python_string(load_from),
        repo_id_shell=shlex.quote(load_from),
        example_image_python=python_string(example_image),
        example_image_shell=shlex.quote(example_image),
        encoder_description=encoder_description,
        encoder_channels=config.encoder_hidden_size,
        image_size=config.image_size,
        grid=math.isqrt(config.num_regions),
        vocab_size=format_number(config.vocab_size),
        tokenizer_description="bert-base-uncased" if tokenizer == "bert-base-uncased" else (
            "the frequent words of the training captions" if tokenizer == "captions" else tokenizer),
        random_encoder=encoder == "random",
        test_metrics=bool(metric_keys),
        approximate_tokenizer=eval_settings.get("tokenizer") == "python",
        metric_rows=[{"name": METRIC_LABELS[k][1], "value": format_number(float(test[k]))} for k in metric_keys],
        num_beams=num_beams,
        decoding=describe_decoding(num_beams, eval_settings.get("length_penalty", training_args.get("eval_length_penalty", 1.0))),
        max_new_tokens=eval_settings.get("max_new_tokens", training_args.get("eval_max_new_tokens", 40)),
        num_test_images=format_number(test.get("num_images", 0)),
        split=eval_settings.get("split", "test"),
        dataset=dataset,
        blind=bool(eval_settings.get("blind")),
        best_bleu_4=format_number(float(best_bleu_4)) if isinstance(best_bleu_4, (int, float)) and best_bleu_4 >= 0 else "n/a",
        steps=format_number(results["steps"]) if isinstance(results.get("steps"), int) else "?",
        # metrics.json files from before --metric_for_best_model have no best_model_selection: they selected on BLEU-4.
        selection_metric=METRIC_LABELS.get(selection.get("metric", "bleu_4"), ("", "caption loss"))[1],
        selection_value=format_number(float(selection["value"])) if isinstance(selection.get("value"), (int, float)) else None,
        selected="value" not in selection or selection["value"] is not None,  # None: no validation ran
        **{k: format_number(getattr(config, k)) for k in ("embedding_size", "attention_size", "hidden_size", "dropout",
                                                          "attention_regularization")},
        batch_size=training_args.get("per_device_train_batch_size", training_args.get("batch_size")),  # batch_size in earlier runs' training_args.json
        **{k: format_number(training_args.get(k)) for k in ("learning_rate", "encoder_learning_rate", "grad_clip", "lr_decay_factor",
                                                            "warmup_ratio")},
        **{k: training_args.get(k) for k in ("finetune_encoder", "gradient_accumulation_steps", "lr_decay_patience",
                                             "early_stopping_patience", "mixed_precision", "lr_scheduler_type")},
    )


def saved_config(folder):
    """The `ShowAttendTellConfig` saved in `folder`: what the card says about the model comes from here."""
    if not (Path(folder) / "config.json").is_file():
        raise ValueError(f"{folder} holds no config.json: save the model there before writing its card")
    return ShowAttendTellConfig.from_pretrained(folder)


def write_model_card(folder, results: dict, model_args: dict, training_args: dict, data_args: dict, repo_id: str | None = None,
                     example_image: str = "photo.jpg", space_id: str | None = None) -> Path:
    card = render_model_card(saved_config(folder), results, model_args, training_args, data_args, repo_id=repo_id or training_args.get("hub_model_id"),
                             example_image=example_image, folder=Path(folder), space_id=space_id)
    path = Path(folder) / "README.md"
    if path.is_symlink():  # write the card in the folder, never through a link into some other file
        path.unlink()
    card.save(path)
    return path


def write_model_card_from_folder(folder, repo_id: str | None = None, example_image: str = "photo.jpg", space_id: str | None = None) -> Path:
    """Re-render `README.md` of a training output folder from its `metrics.json` and `training_args.json`."""
    folder = Path(folder)
    results = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    arguments = json.loads((folder / "training_args.json").read_text()) if (folder / "training_args.json").is_file() else {}
    return write_model_card(folder, results, arguments.get("model", {}), arguments.get("training", {}), arguments.get("data", {}),
                            repo_id, example_image, space_id)


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


def push_to_hub(folder, repo_id: str, token: str | None = None, private: bool | None = None, commit_message: str | None = None,
                space_id: str | None = None):
    """Upload a training output folder to `repo_id` in one commit: weights, config, code files, processor, card,
    metrics and the example attention image. The card links `space_id` when the model has a Space (`push_space`).
    The token comes from `token`, `HF_TOKEN` or `hf auth login`."""
    folder = Path(folder)
    hub_files(folder)  # refuses a folder without a model before anything is written or sent
    ModelCard.load(write_model_card_from_folder(folder, repo_id=repo_id, space_id=space_id))  # usage snippets name the repository; YAML parses
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


def push_space(folder, repo_id: str, space_id: str, space_dir=None, token: str | None = None, private: bool | None = None,
               hf_imgcap_requirement: str | None = None):
    """Write the Gradio Space of the model pushed to `repo_id` from `folder` (`hf_imgcap.space.folder.write_space`:
    the app loads `repo_id`; examples from the run's test set; `hf_imgcap_requirement` the requirements.txt line that
    installs hf-imgcap) into `space_dir` (a temporary folder if None) and upload it to the Space repository `space_id`
    in one commit."""
    import tempfile

    from hf_imgcap.space.folder import write_space

    with tempfile.TemporaryDirectory(prefix="hf-imgcap-space-") as scratch:
        space = write_space(str(folder), space_dir or scratch, repo_id=repo_id, hf_imgcap_requirement=hf_imgcap_requirement)
        api = HfApi(token=token)
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(space), repo_id=space_id, repo_type="space",
                                   commit_message=f"Gradio Space for {repo_id} (hf-imgcap)")
    logger.info("pushed the Space of %s to https://huggingface.co/spaces/%s", repo_id, space_id)
    return commit
