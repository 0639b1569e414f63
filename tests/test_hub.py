"""The model card (rendered from a metrics file, snippets that run as written) and the Hub push, captured offline."""

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData, RepoUrl
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image

from hf_imgcap.hub import hub_files, push_to_hub, write_model_card, write_model_card_from_folder

from conftest import run_fresh_python, tiny_model, tiny_processor

METRICS = {
    "test": {"bleu_1": 0.6123456789, "bleu_2": 0.41, "bleu_3": 0.28, "bleu_4": 0.1987654321, "cider": 0.51,
             "rouge_l": 0.45, "meteor": 0.2, "num_images": 1000},
    "validation_best_bleu_4": 0.2,
    "steps": 1234,
    "num_train_images": 6000,
    "vocab_size": 30522,
    "eval": {"split": "test", "num_beams": 3, "max_new_tokens": 12, "bleu": "COCO-caption BLEU", "blind": False},
    "dataset": "jxie/flickr8k",
}
ARGUMENTS = {
    "model": {"encoder": "microsoft/resnet-152", "tokenizer": "bert-base-uncased", "embedding_size": 16, "attention_size": 16,
              "hidden_size": 16, "dropout": 0.0, "attention_regularization": 1.0, "image_size": 64},
    "training": {"learning_rate": 4e-4, "batch_size": 32, "gradient_accumulation_steps": 1, "grad_clip": 5.0, "lr_decay_factor": 0.8,
                 "lr_decay_patience": 8, "early_stopping_patience": 20, "mixed_precision": "no", "finetune_encoder": False,
                 "encoder_learning_rate": 1e-4, "eval_num_beams": 3},
    "data": {"dataset": "jxie/flickr8k"},
}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """What train.py leaves behind, with a tiny model: weights, code, processor, metrics, arguments, a picture."""
    folder = tmp_path_factory.mktemp("hub") / "run"
    model, processor = tiny_model(), tiny_processor()
    model.generation_config.max_new_tokens = 12
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "training_args.json").write_text(json.dumps(ARGUMENTS))
    Image.new("RGB", (8, 8)).save(folder / "attention_example.png")
    (folder / "checkpoints" / "step_00000001").mkdir(parents=True)  # must stay local
    (folder / "checkpoints" / "step_00000001" / "optimizer.bin").write_bytes(b"x")
    image = folder.parent / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    expected = processor.batch_decode(model.generate(**processor(images=[str(image)]), num_beams=3, max_new_tokens=12))
    return folder, image, expected


def code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.S)


def test_card_parses_and_carries_the_exact_numbers_of_the_metrics_file(run_folder):
    folder, _, _ = run_folder
    card = ModelCard.load(write_model_card_from_folder(folder, repo_id="someone/tiny-captioner"))
    data = card.data
    assert data.pipeline_tag == "image-to-text" and data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.datasets == ["jxie/flickr8k"] and "image-captioning" in data.tags
    assert set(data.metrics) == {"bleu", "cider", "rouge", "meteor"}
    results = {result.metric_name: result for result in data.eval_results}
    assert results["BLEU-1"].metric_value == METRICS["test"]["bleu_1"]  # exactly, not retyped or rounded
    assert results["BLEU-4"].metric_value == METRICS["test"]["bleu_4"]
    assert results["CIDEr-D"].metric_value == METRICS["test"]["cider"]
    assert all(r.dataset_split == "test" and r.dataset_name == "jxie/flickr8k" for r in results.values())
    text = card.text
    assert "beam search (3 beams)" in text and "Show, Attend and Tell" in text and "people" in text
    assert "trust_remote_code=True` runs the Python files" in text
    assert "| BLEU-4 | 0.1988 |" in text


def test_a_run_without_test_metrics_says_so(run_folder, tmp_path):
    shutil.copy(run_folder[0] / "config.json", tmp_path)
    card = ModelCard.load(write_model_card(tmp_path, {}, ARGUMENTS["model"], ARGUMENTS["training"], ARGUMENTS["data"]))
    assert "This run has no test metrics" in card.text
    assert not card.data.eval_results and "model-index" not in card.content
    assert not re.search(r"\| BLEU-\d \| [0-9.]+ \|", card.text)


@pytest.mark.slow
def test_the_cards_usage_snippets_work_as_written(run_folder):
    folder, image, expected = run_folder
    card = ModelCard.load(write_model_card_from_folder(folder, repo_id=str(folder), example_image=str(image)))
    python_snippets = code_blocks(card.text, "python")
    assert len(python_snippets) == 3
    installed, remote, pipeline_snippet = python_snippets
    for snippet, block in ((installed, False), (remote, True), (pipeline_snippet, True)):
        result = run_fresh_python(snippet, cwd=folder.parent, block_package=block)
        assert result.returncode == 0, result.stderr[-3000:]
        assert expected[0] in result.stdout, (snippet, result.stdout)
    (bash,) = code_blocks(card.text, "bash")
    command = shlex.split(bash.strip())
    assert command[0] == "hf-imgcap"
    script = Path(sys.executable).with_name("hf-imgcap")  # installed next to this interpreter, whatever PATH says
    result = subprocess.run([str(script), *command[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected[0] in result.stdout


@pytest.mark.slow
def test_push_uploads_everything_remote_loading_needs_in_one_commit(run_folder, tmp_path, monkeypatch):
    folder, image, expected = run_folder
    commits = []

    def fake_create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        commits.append({"repo_id": repo_id, "operations": list(operations), "message": commit_message})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message=commit_message,
                          commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    push_to_hub(folder, "someone/tiny-captioner", token="hf_test")

    assert len(commits) == 1 and commits[0]["repo_id"] == "someone/tiny-captioner"
    uploaded = {op.path_in_repo: op for op in commits[0]["operations"]}
    required = {"config.json", "generation_config.json", "model.safetensors", "configuration_show_attend_tell.py",
                "modeling_show_attend_tell.py", "processing_show_attend_tell.py", "image_loading.py",
                "pipeline_show_attend_tell.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                "README.md", "metrics.json", "attention_example.png"}
    assert required <= set(uploaded), required - set(uploaded)
    assert not any(name.startswith("checkpoints/") for name in uploaded)
    card = ModelCard(open(uploaded["README.md"].path_or_fileobj, encoding="utf-8").read())
    assert card.data.eval_results[0].metric_value == METRICS["test"]["bleu_1"]
    assert 'from_pretrained("someone/tiny-captioner", trust_remote_code=True)' in card.text

    # A folder made only of the uploaded files loads with remote code, offline, and captions the same.
    hub_copy = tmp_path / "hub_copy"
    hub_copy.mkdir()
    for name, operation in uploaded.items():
        shutil.copy(operation.path_or_fileobj, hub_copy / name)
    code = f"""
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(hub_copy)!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({str(hub_copy)!r}, trust_remote_code=True)
print(processor.batch_decode(model.generate(**processor(images=[{str(image)!r}]), num_beams=3, max_new_tokens=12)))
"""
    result = run_fresh_python(code, cwd=tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert repr(expected) in result.stdout


def test_only_the_models_own_files_at_the_top_of_the_folder_are_uploaded(run_folder, tmp_path):
    folder, _, _ = run_folder
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    model_files = sorted(p.name for p in run.iterdir() if p.is_file())
    # Shards of a large model and its index belong to it as well.
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"):
        (run / shard).write_bytes(b"{}")
    model_files += ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    # What users keep in an output folder, named like the model's files or matching the old patterns.
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "hf_secret"}')
    decoys = {
        "notes/credentials.json": "{}", "notes/config.json": "{}", "data/Flickr8k.token.txt": "x", "data/model.safetensors": "x",
        ".git/config": "x", ".git/HEAD.json": "{}", ".env": "HF_TOKEN=hf_secret", ".hidden.json": "{}", "._README.md": "x",
        "checkpoints/best/config.json": "{}", "runs/events.txt": "x", "scratch.py": "print(1)", "captions.txt": "x",
        "api_keys.json": "{}", "photo.png": "x", "model.bin": "x",
    }
    for name, text in decoys.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    (run / "credentials.json").symlink_to(secret)
    (run / "added_tokens.json").symlink_to(secret)  # a symlink with a name the model could use
    (run / "vocab.txt").mkdir()  # a folder with a model file's name
    chosen = hub_files(run)
    assert all(path.parent == run for path in chosen)
    assert sorted(path.name for path in chosen) == sorted(model_files)
    assert not any(path.is_symlink() for path in chosen)


def test_a_folder_without_a_model_is_not_pushed(tmp_path):
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="config.json"):
        hub_files(tmp_path)


def test_card_states_the_sizes_of_the_saved_config_not_the_training_arguments(run_folder, tmp_path):
    """The config is the single source of truth for the card's model sizes, not training_args.json (whose defaults,
    224 px and 2048 channels, would describe some other model for a run with a tiny encoder or arguments that do not
    re-declare the sizes)."""
    folder = tmp_path / "run"
    shutil.copytree(run_folder[0], folder)
    arguments = {**ARGUMENTS, "model": {"encoder": "random", "tokenizer": "bert-base-uncased"}}  # no sizes
    (folder / "training_args.json").write_text(json.dumps(arguments))
    text = ModelCard.load(write_model_card_from_folder(folder)).text
    config = tiny_model().config
    assert f"turns a 64×64 image into a 2×2 grid of {config.encoder_hidden_size}-channel features" in text
    assert "Decoder: embedding 16, attention 16, LSTM 16, dropout 0," in text
    assert f"{config.vocab_size:,}-token WordPiece vocabulary" in text
    assert "None" not in text


# --- every card the project renders loads with huggingface_hub and has valid metadata ------------------------
DEMO_METRICS = {  # what `train.py --demo` records: a local synthetic dataset, a random encoder, a small vocabulary
    "test": {"bleu_1": 0.5, "bleu_2": 0.3, "bleu_3": 0.2, "bleu_4": 0.1, "cider": 0.4, "rouge_l": 0.4, "num_images": 60},
    "validation_best_bleu_4": 0.1, "steps": 100, "num_train_images": 500,
    "eval": {"split": "test", "num_beams": 3, "max_new_tokens": 20, "blind": False},
}
CARD_CASES = {
    "pretrained encoder, Hub dataset": (METRICS, ARGUMENTS["model"], {"dataset": "jxie/flickr8k"}, "microsoft/resnet-152"),
    "demo": (DEMO_METRICS, {"encoder": "random", "tokenizer": "captions"}, {"dataset": "outputs/demo/synthetic_flickr8k"}, None),
    "no metrics": ({}, ARGUMENTS["model"], {"dataset": "jxie/flickr8k"}, "microsoft/resnet-152"),
    "random encoder": (METRICS, {**ARGUMENTS["model"], "encoder": "random"}, {"dataset": "jxie/flickr8k"}, None),
    "torchvision encoder": (METRICS, {**ARGUMENTS["model"], "encoder": "torchvision:resnet152"}, ARGUMENTS["data"], None),
    "local .pth encoder": (METRICS, {**ARGUMENTS["model"], "encoder": "weights/resnet152.pth"}, ARGUMENTS["data"], None),
}


@pytest.mark.parametrize("case", sorted(CARD_CASES))
def test_every_rendered_card_loads_and_its_metadata_validates(run_folder, tmp_path, case):
    from huggingface_hub import ModelCardData

    results, model_args, data_args, base_model = CARD_CASES[case]
    shutil.copy(run_folder[0] / "config.json", tmp_path)
    path = write_model_card(tmp_path, results, model_args, ARGUMENTS["training"], data_args, repo_id="someone/captioner")
    card = ModelCard.load(path)
    data = card.data
    assert data.base_model == base_model  # the encoder checkpoint when it is a Hub model, else absent
    assert ("base_model" in card.content) == (base_model is not None)
    assert data.pipeline_tag == "image-to-text" and data.library_name == "transformers" and data.license == "apache-2.0"
    assert "{{" not in card.content and "{%" not in card.content  # nothing of the template left unrendered
    # The metadata survives huggingface_hub's own parsing and rebuilding (model-index included) unchanged.
    rebuilt = ModelCardData(**data.to_dict())
    assert rebuilt.to_dict() == data.to_dict()
    assert bool(data.eval_results) == bool(results)
    for result in data.eval_results or []:
        assert result.task_type == "image-to-text" and result.dataset_type and result.metric_type
    # A Hub `datasets` entry must be a Hub dataset id: a local folder (the demo's) is not listed there.
    assert data.datasets == (["jxie/flickr8k"] if data_args["dataset"] == "jxie/flickr8k" else None)


def test_the_root_model_card_is_the_template_the_package_renders():
    from hf_imgcap.hub import TEMPLATE

    root = Path(__file__).resolve().parents[1] / "model_card.md"
    assert root.read_text() == TEMPLATE.read_text()
    assert "{{ card_data }}" in root.read_text()  # a template, rendered per run (the tests above load the results)


# --- the card describes the run it belongs to ----------------------------------------------------------------------
def run_results(num_train, num_validation, num_test, num_beams=3, **extra) -> dict:
    """metrics.json of a run with these split sizes (validation: the size its history records)."""
    return {
        "test": {"bleu_1": 0.6123456789, "bleu_4": 0.1987654321, "cider": 1.23456789, "num_images": num_test},
        "validation_best_bleu_4": 0.2, "steps": 10, "num_train_images": num_train,
        "history": [{"epoch": 1, "step": 10, "train_loss": 3.2, "bleu_4": 0.2, "cider": 0.5, "num_images": num_validation}],
        "eval": {"split": "test", "num_beams": num_beams, "max_new_tokens": 12, "blind": False},
        **extra,
    }


def rendered_card(run_folder, folder, results, data_args, training_args=None, num_test_captions=None, **kwargs) -> ModelCard:
    """The card write_model_card leaves in `folder` (a run folder with the tiny model's config.json), after
    test_captions.json with `num_test_captions` references per test image when given."""
    folder.mkdir(parents=True)
    shutil.copy(run_folder[0] / "config.json", folder)
    if num_test_captions is not None:
        examples = [{"image_id": f"{i}.jpg", "caption": "a dog runs", "references": ["a dog runs on grass"] * num_test_captions}
                    for i in range(results["test"]["num_images"])]
        (folder / "test_captions.json").write_text(json.dumps(examples))
    path = write_model_card(folder, results, ARGUMENTS["model"], training_args or ARGUMENTS["training"], data_args, **kwargs)
    card = ModelCard.load(path)
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()  # huggingface_hub parses it back whole
    assert "{{" not in card.content and "{%" not in card.content
    return card


def is_hub_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def test_the_card_of_a_run_on_a_local_dataset_that_is_not_flickr8k_describes_that_dataset(run_folder, tmp_path):
    photos = tmp_path / "data" / "holiday_photos"
    photos.mkdir(parents=True)
    card = rendered_card(run_folder, tmp_path / "run", run_results(40, 10, 12), {"dataset": str(photos)}, num_test_captions=3)
    text = card.text
    assert "Flickr8k" not in text and "8,000" not in text and "people and dogs" not in text
    assert "`holiday_photos` (a local folder): 40 training, 10 validation and 12 test images" in text
    assert "36 reference captions (3 per image)" in text
    assert "the 40 training images of holiday_photos" in text  # the limitations name this dataset
    results = card.data.eval_results
    assert results and all(r.dataset_name == "holiday_photos" for r in results)
    # No Hub id made up from a folder name (neither a bare name nor user/name): the Hub would link it to a stranger's dataset.
    assert all("holiday_photos" in r.dataset_type and not is_hub_id(r.dataset_type) for r in results)
    assert card.data.datasets is None


@pytest.mark.parametrize("source", ["hub", "local folder"])
def test_the_card_of_a_flickr8k_run_states_its_splits_and_caption_counts(run_folder, tmp_path, source):
    dataset = "jxie/flickr8k" if source == "hub" else str(tmp_path / "Flickr8k")
    if source == "local folder":
        (tmp_path / "Flickr8k").mkdir()
    card = rendered_card(run_folder, tmp_path / "run", run_results(6000, 1000, 1000), {"dataset": dataset}, num_test_captions=5)
    text = card.text
    assert "6,000 training, 1,000 validation and 1,000 test images" in text and "5,000 reference captions (5 per image)" in text
    assert "Flickr8k is small" in text and "people and dogs" in text
    assert "0.67/0.195" in text  # the paper's numbers are a reference for Flickr8k alone
    types = {r.dataset_type for r in card.data.eval_results}
    if source == "hub":
        assert types == {"jxie/flickr8k"} and card.data.datasets == ["jxie/flickr8k"]
        assert "[jxie/flickr8k](https://huggingface.co/datasets/jxie/flickr8k)" in text
    else:
        assert len(types) == 1 and not is_hub_id(types.pop()) and card.data.datasets is None


def test_numbers_in_the_card_are_rounded_to_4_significant_digits(run_folder, tmp_path):
    training = {**ARGUMENTS["training"], "learning_rate": 4.225771273359608e-09, "lr_decay_factor": 0.123456789,
                "grad_clip": 5.0}
    results = run_results(40, 10, 12, best_model_selection={"metric": "loss", "epoch": 1, "value": 0.000123456789})
    card = rendered_card(run_folder, tmp_path / "run", results, {"dataset": "someone/photos"}, training_args=training)
    text = card.text
    assert "learning rate 4.226e-09" in text and "× 0.1235 after" in text and "gradient clipping 5," in text
    assert "(0.0001235)" in text  # the selection value (a loss), plain while it reads well
    assert "| BLEU-4 | 0.1988 |" in text and "| CIDEr-D | 1.235 |" in text
    decimals = re.findall(r"\d+\.\d+", text)
    too_long = [number for number in decimals if len(number.replace(".", "").lstrip("0")) > 4]
    assert decimals and not too_long, too_long  # no number anywhere in the text with more than 4 significant digits
    by_name = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert by_name["CIDEr-D"] == 1.23456789  # the metadata keeps the exact value


@pytest.mark.parametrize("tokenizer", ["ptb", "python", None])
def test_the_card_says_when_its_scores_are_not_comparable_with_published_ones(run_folder, tmp_path, tokenizer):
    """Scores tokenised by the Python approximation (Java could not run) are not COCO-comparable: the card says so."""
    results = run_results(40, 10, 12)
    results["eval"]["tokenizer"] = tokenizer
    text = " ".join(rendered_card(run_folder, tmp_path / "run", results, {"dataset": "someone/photos"}).text.split())
    warning = "pure-Python approximation of pycocoevalcap's PTB tokenizer (Java could not run), so these scores are not comparable"
    assert (warning in text) == (tokenizer == "python")


@pytest.mark.parametrize("num_beams, phrase", [(1, "greedy decoding"), (3, "beam search (3 beams)")])
def test_the_card_names_the_decoding(run_folder, tmp_path, num_beams, phrase):
    card = rendered_card(run_folder, tmp_path / "run", run_results(40, 10, 12, num_beams=num_beams), {"dataset": "someone/photos"})
    assert f"Scored by generating captions ({phrase}, at most 12 new tokens)" in card.text
    assert "1 beams" not in card.text and ("beam search" in card.text) == (num_beams > 1)


def test_the_model_index_names_the_hub_repository_or_else_the_output_folder(run_folder, tmp_path):
    local = rendered_card(run_folder, tmp_path / "my-captioner-run", run_results(40, 10, 12), {"dataset": "someone/photos"})
    assert local.data.model_name == "my-captioner-run" and local.text.lstrip().startswith("# my-captioner-run")
    pushed = rendered_card(run_folder, tmp_path / "run", run_results(40, 10, 12), {"dataset": "someone/photos"},
                           repo_id="someone/tiny-captioner")
    assert pushed.data.model_name == "someone/tiny-captioner"
    assert "show-attend-tell-captioner" not in local.content + pushed.content


def test_the_usage_snippets_are_valid_python_and_shell_whatever_the_names(run_folder, tmp_path):
    folder = tmp_path / 'run "one" it\'s'
    image = "my photo's \\ \"best\".jpg"
    card = rendered_card(run_folder, folder, run_results(40, 10, 12), {"dataset": "someone/photos"}, example_image=image)
    snippets = code_blocks(card.text, "python")
    assert len(snippets) == 3
    for snippet in snippets:
        strings = {node.value for node in ast.walk(ast.parse(snippet)) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert str(folder) in strings and image in strings  # the loading path (no hub id: the folder) and the image
    (bash,) = code_blocks(card.text, "bash")
    assert shlex.split(bash) == ["hf-imgcap", "caption", image, "--model", str(folder), "--num-beams", "3"]


# --- the card shows the attention figure and links the Space -------------------------------------------------------
def test_the_card_shows_the_runs_attention_figure(run_folder, tmp_path):
    folder, _, _ = run_folder
    local = ModelCard.load(write_model_card_from_folder(folder)).text
    assert "](attention_example.png)" in local  # beside the card in the folder
    pushed = ModelCard.load(write_model_card_from_folder(folder, repo_id="someone/tiny-captioner")).text
    assert "](https://huggingface.co/someone/tiny-captioner/resolve/main/attention_example.png)" in pushed
    without = tmp_path / "run"
    without.mkdir()
    shutil.copy(folder / "config.json", without)
    assert "attention_example.png" not in ModelCard.load(write_model_card(without, METRICS, **arguments())).text


def arguments() -> dict:
    return {"model_args": ARGUMENTS["model"], "training_args": ARGUMENTS["training"], "data_args": ARGUMENTS["data"]}


def test_the_card_links_the_space_when_there_is_one(run_folder):
    folder, _, _ = run_folder
    card = ModelCard.load(write_model_card_from_folder(folder, repo_id="someone/tiny-captioner", space_id="someone/tiny-captioner-demo"))
    assert "[someone/tiny-captioner-demo](https://huggingface.co/spaces/someone/tiny-captioner-demo)" in card.text
    assert "huggingface.co/spaces" not in ModelCard.load(write_model_card_from_folder(folder, repo_id="someone/tiny-captioner")).text


def test_push_with_a_space_uploads_the_space_and_the_cards_snippets_name_the_repository(run_folder, tmp_path, monkeypatch, capsys):
    from huggingface_hub import SpaceCard

    from hf_imgcap.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_folder[0], run, ignore=shutil.ignore_patterns("checkpoints"))
    repos, commits, spaces = [], [], []

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        commits.append((repo_id, sorted(op.path_in_repo for op in operations)))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message=commit_message or "",
                          commit_description="", oid="0" * 40)

    def upload_folder(self, folder_path, repo_id, repo_type=None, **kwargs):
        files = {str(path.relative_to(folder_path)): path.read_text() for path in Path(folder_path).rglob("*") if path.is_file()}
        spaces.append((repo_id, repo_type, files))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: repos.append((repo_id, kwargs)) or RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert main(["push", str(run), "--repo-id", "someone/tiny-captioner", "--space-id", "someone/tiny-demo",
                 "--hf-imgcap-requirement", "hf-imgcap @ git+https://example.org/me/hf-imgcap.git@v9"]) == 0
    assert "https://huggingface.co/spaces/someone/tiny-demo" in capsys.readouterr().out
    assert [repo_id for repo_id, _ in repos] == ["someone/tiny-captioner", "someone/tiny-demo"]
    assert repos[1][1]["repo_type"] == "space" and repos[1][1]["space_sdk"] == "gradio"
    (space_id, repo_type, files), = spaces
    assert space_id == "someone/tiny-demo" and repo_type == "space"
    assert {"app.py", "requirements.txt", "README.md"} <= set(files)
    assert 'MODEL = "someone/tiny-captioner"' in files["app.py"]
    assert files["requirements.txt"].splitlines()[0] == "hf-imgcap @ git+https://example.org/me/hf-imgcap.git@v9"
    assert SpaceCard(files["README.md"]).data.models == ["someone/tiny-captioner"]

    card = ModelCard.load(run / "README.md").text
    assert "https://huggingface.co/spaces/someone/tiny-demo" in card
    assert str(run) not in card and "path/to/this/folder" not in card
    assert card.count('from_pretrained("someone/tiny-captioner"') == 4  # both snippets, model and processor


def test_push_refuses_a_bad_space_id_before_uploading(run_folder, monkeypatch, capsys):
    from hf_imgcap.cli import main

    monkeypatch.setattr(HfApi, "create_commit", lambda *args, **kwargs: pytest.fail("nothing may be uploaded"))
    assert main(["push", str(run_folder[0]), "--repo-id", "someone/x", "--space-id", "not a space"]) == 2
    assert "--space-id 'not a space'" in capsys.readouterr().err
    assert main(["push", str(run_folder[0]), "--repo-id", "someone/x", "--space-dir", "somewhere"]) == 2
    assert "--space-dir needs --space-id" in capsys.readouterr().err
    assert main(["push", str(run_folder[0]), "--repo-id", "someone/x", "--hf-imgcap-requirement", "hf-imgcap"]) == 2
    assert "--hf-imgcap-requirement needs --space-id" in capsys.readouterr().err
