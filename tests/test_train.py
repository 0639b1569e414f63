"""train.py end to end: training, Hub-ready output, exact resume, checkpoint integrity, real 2-process DDP, --help."""

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hf_imgcap import ShowAttendTellForConditionalGeneration
from hf_imgcap.evaluation.caption_metrics import tokenize_captions
from hf_imgcap.training import loop as training_loop
from hf_imgcap.training.checkpointing import CheckpointError
from hf_imgcap.training.run_metrics import load_run_metrics
from hf_imgcap.training.output_folder import RunFiles
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.demo.presets import DEMO_PRESET

from conftest import launch_two_processes, REPO_ROOT

spec = importlib.util.spec_from_file_location("train_script", REPO_ROOT / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "flickr8k"
    return write_synthetic_flickr8k(root, num_train=16, num_val=5, num_test=5, image_size=64, seed=3)


def tiny_args(data, encoder, output_dir, cache_dir, *extra):
    """A training run on the tiny ResNet folder `encoder` (the `tiny_encoder` fixture) at 64×64, with a small decoder and
    vocabulary."""
    return [
        "--dataset", str(data), "--output_dir", str(output_dir), "--cache_dir", str(cache_dir),
        "--encoder", str(encoder), "--image_size", "64", "--tokenizer", "captions", "--caption_vocab_size", "80",
        "--embedding_size", "24", "--attention_size", "24", "--hidden_size", "24", "--dropout", "0",
        "--batch_size", "8", "--learning_rate", "3e-3", "--eval_num_beams", "2", "--eval_max_new_tokens", "12",
        "--report_to", "none", "--seed", "7", *extra,
    ]


def run(argv):
    model_args, data_args, args = train_script.parse_args(argv)
    return train_script.train(model_args, data_args, args)


def last_checkpoint_weights(output_dir):
    checkpoints = sorted((output_dir / "checkpoints").glob("step_*"))
    return checkpoints[-1].name, load_file(checkpoints[-1] / "model.safetensors")


@pytest.mark.slow
def test_short_training_reduces_the_loss_and_writes_a_loadable_hub_folder(data, tmp_path, tiny_encoder):
    # A learning rate that moves the tiny decoder within 4 epochs of 10 steps.
    results = run(tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--num_epochs", "4", "--learning_rate", "1e-2"))
    history = results["history"]
    assert len(history) == 4 and all(entry["num_images"] == 5 for entry in history)
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"bleu_1", "bleu_4", "cider", "rouge_l"} and metrics["test"]["num_images"] == 5
    for name in ("model.safetensors", "config.json", "modeling_show_attend_tell.py", "processor_config.json",
                 "tokenizer.json", "training_args.json", "README.md"):
        assert (out / name).is_file(), name
    model = ShowAttendTellForConditionalGeneration.from_pretrained(out)
    assert model.config.vocab_size == results["vocab_size"]
    assert not model.config.whiten_features  # the paper's per-channel standardisation unless asked
    # The loss went down: the first and last training losses of a fresh run with logged steps.
    losses = json.loads((out / "metrics.json").read_text())["train_loss_by_epoch"]
    assert losses[-1] < 0.9 * losses[0]
    # metrics.json is a RunMetrics: typed, and written in the published layout (the model card reads these keys).
    recorded = load_run_metrics(out / "metrics.json")
    # Training knows nothing of scenes: a synthetic dataset's run records what any run records.
    assert list(metrics) == ["test", "validation_best_bleu_4", "history", "train_loss_by_epoch", "steps",
                             "nonfinite_steps_skipped", "eval", "dataset", "num_train_images", "training", "vocab_size",
                             "best_model_selection"]
    assert recorded.to_dict() == metrics and recorded.train_loss_by_epoch == losses
    assert recorded.eval.num_beams == 2 and recorded.eval.split == "test" and recorded.training.steps == recorded.steps == 40
    assert recorded.training.device == "cpu" and recorded.vocab_size == results["vocab_size"]
    assert recorded.eval.tokenizer == tokenize_captions(["a dog"]).tokenizer  # "ptb" where Java runs, else "python"


def test_metrics_json_keeps_the_published_keys_and_files_with_the_demos_old_keys_still_load(tmp_path):
    """metrics.json holds the published keys only; files of earlier versions, which held the demo's content scores,
    still load."""
    from hf_imgcap.training.run_metrics import EvalSettings, RunMetrics, TrainingRecord

    record = RunMetrics(test={"bleu_4": 0.2}, validation_best_bleu_4=0.2, history=[], steps=3, nonfinite_steps_skipped=0,
                        eval=EvalSettings(num_beams=3, max_new_tokens=20), dataset="jxie/flickr8k", num_train_images=6000,
                        training=TrainingRecord(steps=3, mixed_precision="no", num_processes=1, device="cpu"), vocab_size=30522)
    record.save(tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert "content_accuracy" not in written and "feature_probe" not in written
    assert load_run_metrics(tmp_path) == record
    (tmp_path / "metrics.json").write_text(json.dumps({**written, "content_accuracy": {}, "feature_probe": {}}))
    assert load_run_metrics(tmp_path) == record


def test_a_metrics_json_that_is_not_a_run_record_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test": {}, "steps": 3}))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not a metrics.json of an hf-imgcap run: .*missing .*history"):
        load_run_metrics(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_run_metrics(path)


@pytest.mark.slow
def test_stop_mid_epoch_and_resume_equals_an_uninterrupted_run(data, tmp_path, tiny_encoder):
    cache = tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, tmp_path / "straight", cache, "--num_epochs", "2"))
    # 16 images × 5 captions / batch 8 = 10 steps per epoch: stop at step 13, in the middle of epoch 2.
    run(tiny_args(data, tiny_encoder, tmp_path / "resumed", cache, "--num_epochs", "2", "--max_steps", "13", "--checkpoint_every_steps", "13"))
    run(tiny_args(data, tiny_encoder, tmp_path / "resumed", cache, "--num_epochs", "2", "--resume"))
    straight_name, straight = last_checkpoint_weights(tmp_path / "straight")
    resumed_name, resumed = last_checkpoint_weights(tmp_path / "resumed")
    assert straight_name == resumed_name == "step_00000020"
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_corrupt_or_partial_checkpoints_are_refused_with_a_clear_error(data, tmp_path, tiny_encoder):
    out = tmp_path / "out"
    run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--num_epochs", "1"))
    latest = sorted((out / "checkpoints").glob("step_*"))[-1]
    with open(latest / "optimizer.bin", "r+b") as handle:  # flip bytes in the middle
        handle.seek(100)
        handle.write(b"\x00\xff\x00\xff")
    with pytest.raises(CheckpointError, match=r"optimizer.bin does not match its checksum"):
        run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--num_epochs", "2", "--resume"))
    (latest / "manifest.json").unlink()  # as if the save had been cut off before sealing
    with pytest.raises(CheckpointError, match="is partial"):
        run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--num_epochs", "2", "--resume_from", str(latest)))


@pytest.mark.slow
def test_help_documents_every_flag_and_each_is_accepted():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    flags = sorted(set(re.findall(r"--([a-z_]+)", result.stdout)) - {"help"})
    fields = {f.name: f for cls in (train_script.ModelArguments, train_script.DataArguments, train_script.TrainingArguments)
              for f in cls.__dataclass_fields__.values()}
    assert set(flags) >= set(fields), set(fields) - set(flags)
    assert "HF_IMGCAP_DEBUG=1" in result.stdout  # how to see the traceback of an error
    for name, field in fields.items():
        assert field.metadata.get("help"), f"--{name} has no help text"
        default = field.default
        if isinstance(default, bool):
            argv = [f"--{name}"] if not default else [f"--no_{name}"]
            expected = not default
        else:
            value = {int: "3", float: "0.25", str: "x"}.get(type(default), "3")
            argv, expected = [f"--{name}", value], None
        parsed = train_script.parse_args(argv)
        got = next(getattr(a, name) for a in parsed if hasattr(a, name))
        if expected is not None:
            assert got == expected, name


def free_port() -> int:
    with socket.socket() as probe:  # not the default 29500: another run on this machine may hold it
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(os.cpu_count() is None, reason="needs processes")
def test_two_process_ddp_equals_one_process_with_double_batch(data, tmp_path, tiny_encoder):
    """Real DDP: two gloo ranks on the CPU, launched the way users launch it."""
    cache = tmp_path / "cache"
    common = ["--num_epochs", "1", "--max_steps", "3", "--checkpoint_every_steps", "3"]
    single = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *tiny_args(data, tiny_encoder, tmp_path / "one", cache, *common)],
        capture_output=True, text=True, timeout=600,
    )
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    returncode, stdout, stderr = launch_two_processes([REPO_ROOT / "train.py", *tiny_args(data, tiny_encoder, tmp_path / "two", cache, *common, "--batch_size", "4")],
                                                      env, timeout=600, port=free_port())
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    # The single run used batch 8; the two ranks used 4 each (batch_size is per process).
    _, one = last_checkpoint_weights(tmp_path / "one")
    _, two = last_checkpoint_weights(tmp_path / "two")
    # Equal up to float summation order (one process uses 2 threads, each rank 1), which Adam can amplify on
    # near-zero gradients to a small fraction of one step (lr 3e-3).
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-4, msg=key)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["test"]["num_images"] == 5  # 5 images over 2 ranks: each counted once
    assert len(json.loads((tmp_path / "two" / "test_captions.json").read_text())) == 5


@pytest.mark.slow
def test_gradient_accumulation_gives_the_update_of_one_batch_twice_as_large(data, tmp_path, tiny_encoder):
    """Micro-batches of one optimizer step are weighted by the step's token and caption counts, not their own: two
    micro-batches of 4 captions (of different lengths) make exactly the step of one batch of 8."""
    cache, common = tmp_path / "cache", ["--max_steps", "3", "--checkpoint_every_steps", "3", "--eval_num_beams", "1"]
    run(tiny_args(data, tiny_encoder, tmp_path / "large", cache, *common, "--batch_size", "8"))
    run(tiny_args(data, tiny_encoder, tmp_path / "accumulated", cache, *common, "--batch_size", "4", "--gradient_accumulation_steps", "2"))
    _, large = last_checkpoint_weights(tmp_path / "large")
    name, accumulated = last_checkpoint_weights(tmp_path / "accumulated")
    assert name == "step_00000003"  # three optimizer steps, not three micro-batches
    # Equal up to float summation order (dropout is 0 in tiny_args), which depends on the product kernels: with the
    # input gradients through BLAS (as on Intel CPUs) one element of 14,592 moved 1.3e-5. Adam divides each gradient
    # element by its own running size, so a near-zero gradient turns that order into a visible step; micro-batches
    # weighted by their own counts instead of the step's move some weights by over 1e-2.
    for key in large:
        torch.testing.assert_close(accumulated[key], large[key], rtol=1e-5, atol=1e-4, msg=key)


@pytest.mark.slow
def test_finetuning_the_encoder_trains_it_from_the_images(data, tmp_path, tiny_encoder):
    out = tmp_path / "out"
    run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--finetune_encoder", "--max_steps", "2", "--batch_size", "4",
                  "--checkpoint_every_steps", "2", "--encoder_learning_rate", "1e-3"))
    trained = load_file(sorted((out / "checkpoints").glob("step_*"))[-1] / "model.safetensors")
    fresh = train_script.build_model(train_script.ModelArguments(encoder=str(tiny_encoder), image_size=64, embedding_size=24,
                                                                 attention_size=24, hidden_size=24),
                                     train_script.default_tokenizer(), finetune_encoder=True)
    key = "encoder.embedder.embedder.convolution.weight"
    torch.testing.assert_close(fresh.state_dict()[key], load_file(tiny_encoder / "model.safetensors")[key.removeprefix("encoder.")])
    assert not torch.equal(trained[key], fresh.state_dict()[key])
    config = json.loads((out / "config.json").read_text())
    assert config["freeze_encoder"] is False


@pytest.mark.slow
def test_bf16_mixed_precision_trains(data, tmp_path, tiny_encoder):
    # Its own process: Accelerate keeps one mixed-precision setting per process.
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"),
                             *tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--mixed_precision", "bf16", "--num_epochs", "2")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert all(math.isfinite(loss) for loss in results["train_loss_by_epoch"])
    assert results["train_loss_by_epoch"][-1] < results["train_loss_by_epoch"][0]


def test_impossible_option_combinations_are_refused_before_training():
    for argv, message in ((["--blind", "--finetune_encoder"], "--blind"), (["--push_to_hub"], "--hub_model_id"),
                          (["--scst_baseline", "mean", "--scst_num_samples", "1"], "--scst_baseline mean needs --scst_num_samples ≥ 2"),
                          (["--scst_epochs", "2", "--finetune_encoder"], "--scst_epochs .* --finetune_encoder"),
                          (["--warmup_ratio", "0.1"], "--warmup_ratio .* --lr_scheduler_type")):
        model_args, data_args, args = train_script.parse_args(argv)
        with pytest.raises(ValueError, match=message):
            train_script.train(model_args, data_args, args)


# ---------------------------------------------------------------------------------------------- argument checks
# One nonsense value per argument that takes a value; each must be refused, naming the argument and the value,
# before any data is read.
NONSENSE = {
    "dataset": "",
    "dataset_config": " ",
    "revision": "",
    "image_column": " ",
    "caption_column": "",
    "image_dir": "/nonexistent/images",
    "cache_dir": "FILE",
    "max_train_images": "0",
    "max_eval_images": "-1",
    "num_workers": "-2",
    "encoder": " ",
    "tokenizer": "",
    "caption_vocab_size": "2",
    "embedding_size": "0",
    "attention_size": "-4",
    "hidden_size": "0",
    "dropout": "1.5",
    "attention_regularization": "-1",
    "image_size": "8",
    "max_caption_length": "1",
    "output_dir": "FILE",
    "seed": "-1",
    "num_train_epochs": "0",
    "max_steps": "0",
    "per_device_train_batch_size": "0",
    "gradient_accumulation_steps": "0",
    "learning_rate": "-0.001",
    "encoder_learning_rate": "0",
    "grad_clip": "-5",
    "lr_decay_factor": "1.5",
    "lr_scheduler_type": "cosine_annealing",
    "warmup_ratio": "1.0",
    "metric_for_best_model": "bleu_5",
    "lr_decay_patience": "0",
    "early_stopping_patience": "0",
    "mixed_precision": "fp64",
    "report_to": "tensorbored",
    "eval_num_beams": "0",
    "eval_max_new_tokens": "0",
    "per_device_eval_batch_size": "0",
    "eval_length_penalty": "nan",
    "checkpoint_every_steps": "-1",
    "save_total_limit": "0",
    "resume_from_checkpoint": "/nonexistent/checkpoints/step_00000001",
    "max_nonfinite_steps": "0",
    "hub_model_id": "not a/valid//id",
    "scst_epochs": "-1",
    "scst_learning_rate": "nan",
    "scst_num_samples": "0",
    "scst_baseline": "median",
}


def value_arguments():
    return [f.name for cls in (train_script.ModelArguments, train_script.DataArguments, train_script.TrainingArguments)
            for f in dataclasses.fields(cls) if not isinstance(f.default, bool)]


# Today's names of arguments that transformers' TrainingArguments spells differently: kept as aliases.
ALIASES = {"num_epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size", "eval_batch_size": "per_device_eval_batch_size",
           "checkpoints_to_keep": "save_total_limit", "resume_from": "resume_from_checkpoint", "resume": "resume_from_checkpoint",
           "cpu": "use_cpu"}


@pytest.mark.slow
def test_training_arguments_spelled_as_in_transformers_or_as_before_mean_the_same():
    help_text = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True, timeout=120).stdout
    for old, new in ALIASES.items():
        value = {"resume": [], "cpu": [], "resume_from": ["/some/run/checkpoints/step_00000004"]}.get(old, ["7"])
        by_old_name = train_script.parse_args([f"--{old}", *value])[2]
        by_new_name = train_script.parse_args([f"--{new}", *value])[2]
        assert dataclasses.asdict(by_old_name) == dataclasses.asdict(by_new_name), old
        assert getattr(by_new_name, new) != getattr(train_script.TrainingArguments(), new), old  # the value arrived
        # One entry in --help, the alias named beside it.
        assert re.search(rf"--{new}(?: [A-Z_\[\]]+)?, (?:--[\w-]+(?: [A-Z_\[\]]+)?, )*--{old}\b", help_text), old
    assert not hasattr(train_script.TrainingArguments(), "num_epochs")
    # --resume_from_checkpoint alone (as --resume): the newest checkpoint; with a folder: that one.
    latest, folder = train_script.parse_args(["--resume"])[2], train_script.parse_args(["--resume_from_checkpoint", "/r/step_1"])[2]
    assert (latest.resume, latest.resume_from) == (True, None) and (folder.resume, folder.resume_from) == (True, "/r/step_1")
    none = train_script.parse_args([])[2]
    assert (none.resume, none.resume_from) == (False, None)


def test_every_argument_that_takes_a_value_has_a_nonsense_case():
    assert set(value_arguments()) <= set(NONSENSE), f"add a nonsense case for {set(value_arguments()) - set(NONSENSE)}"


@pytest.mark.parametrize("name", sorted(NONSENSE))
def test_a_nonsense_argument_is_refused_before_any_data_is_read(name, data, tmp_path, monkeypatch, tiny_encoder):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    value = str(a_file) if NONSENSE[name] == "FILE" else NONSENSE[name]

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the arguments were checked")

    monkeypatch.setattr(train_script, "load_caption_dataset", no_data)
    argv = tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", f"--{name}", value)
    parsed = next(getattr(group, name) for group in train_script.parse_args(argv) if hasattr(group, name))
    with pytest.raises(ValueError) as refused:
        run(argv)
    assert f"--{name} {parsed!r}" in str(refused.value)  # names the argument and the value as given
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, value, reason", [
    ("encoder", "./no_such_encoder", "no such file or folder"),
    ("encoder", "FILE", "is a file"),
    ("encoder", "FOLDER", "no config.json"),
    ("tokenizer", "../no_such_tokenizer", "no such file or folder"),
    ("tokenizer", "FILE", "is a file"),
    ("tokenizer", "FOLDER", "no tokenizer"),
])
def test_an_encoder_or_tokenizer_path_that_holds_none_is_refused_before_any_data_is_read(name, value, reason, data, tmp_path, monkeypatch, tiny_encoder):
    paths = {"FILE": tmp_path / "notes.txt", "FOLDER": tmp_path / "photos"}
    paths["FILE"].write_text("not a model")
    paths["FOLDER"].mkdir()
    value = str(paths.get(value, value))
    monkeypatch.setattr(train_script, "load_caption_dataset", lambda *a, **k: pytest.fail("data read before the check"))
    with pytest.raises(ValueError) as refused:
        run(tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", f"--{name}", value))
    assert f"--{name} {value!r}" in str(refused.value) and reason in str(refused.value)


@pytest.mark.parametrize("name, where", [("output_dir", "outputs/run1"), ("output_dir", "."), ("cache_dir", "features")])
def test_an_output_or_cache_folder_inside_the_dataset_folder_is_refused(name, where, data, tmp_path, monkeypatch, tiny_encoder):
    """datasets reads every file under a dataset folder: a run's records written there break every later load of it."""
    dataset = tmp_path / "photos"
    shutil.copytree(data, dataset)
    folders = {"output_dir": tmp_path / "out", "cache_dir": tmp_path / "cache", name: dataset / where}
    monkeypatch.setattr(train_script, "load_caption_dataset", lambda *a, **k: pytest.fail("data read before the check"))
    with pytest.raises(ValueError) as refused:
        run(tiny_args(dataset, tiny_encoder, folders["output_dir"], folders["cache_dir"]))
    assert f"--{name}" in str(refused.value) and "inside the dataset folder" in str(refused.value)
    assert not (dataset / "outputs").exists() and not (dataset / "features").exists()


def test_a_run_ended_by_max_steps_mid_epoch_leaves_a_checkpoint_that_resume_continues(data, tmp_path, tiny_encoder, caplog):
    """10 batches an epoch: --max_steps 3 ends inside the first; --resume with a larger --max_steps goes on from step 3."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, out, cache, "--num_train_epochs", "2", "--max_steps", "3", "--eval_num_beams", "1"))
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000003"]
    assert "no model was selected on validation" in (out / "README.md").read_text()
    with caplog.at_level("INFO"):
        run(tiny_args(data, tiny_encoder, out, cache, "--num_train_epochs", "2", "--max_steps", "5", "--eval_num_beams", "1", "--resume"))
    assert "resumed from" in caplog.text and "step 3)" in caplog.text and "starting from scratch" not in caplog.text
    assert json.loads((out / "checkpoints" / "step_00000005" / "training_state.json").read_text())["global_step"] == 5


# ---------------------------------------------------------------------------------------------- one run per output_dir
@pytest.mark.slow
def test_a_second_run_in_a_used_output_dir_is_refused_unless_resumed_or_overwritten(data, tmp_path, tiny_encoder):
    out, cache = tmp_path / "out", tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2"))
    (out / "notes").mkdir()
    (out / "notes" / "credentials.json").write_text("{}")  # the user's own files in the folder
    (out / "my_results.csv").write_text("a,b\n")
    second = tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2", "--hidden_size", "16")
    with pytest.raises(ValueError, match=r"holds a previous training run.*--resume.*--overwrite_output_dir"):
        run(second)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 24  # untouched

    run([*second, "--overwrite_output_dir"])
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 16
    _, weights = last_checkpoint_weights(out)
    assert weights["lstm.weight_hh"].shape == (4 * 16, 16)  # the checkpoints are the new run's alone
    assert len(list((out / "checkpoints").glob("step_*"))) == 1
    assert (out / "notes" / "credentials.json").is_file() and (out / "my_results.csv").is_file()


def test_overwrite_deletes_only_what_a_run_wrote(tmp_path):
    from hf_imgcap.training.output_folder import RunFiles
    from hf_imgcap.training.run_arguments import check_output_dir, remove_run_outputs

    out = tmp_path / "out"
    written_by_a_run = ["checkpoints/step_00000002/model.safetensors", "runs/hf_imgcap/events.out.tfevents.1",
                        "blind_baseline/config.json", "config.json", "generation_config.json", "model.safetensors",
                        "modeling_show_attend_tell.py", "image_loading.py", "processor_config.json", "tokenizer.json",
                        "tokenizer_config.json", "metrics.json", "training_args.json", "test_captions.json",
                        "attention_example.png", "README.md"]
    users = ["notes/credentials.json", "data.csv", "synthetic_flickr8k/Flickr8k.token.txt", "feature_cache/meta.json"]
    for name in written_by_a_run + users:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    top_level = {name.split("/")[0] for name in written_by_a_run}

    # A folder without the record of what a run wrote (a run from before it existed): nothing is deleted; the
    # refusal names the files and says how to go on.
    for overwrite in (False, True):
        with pytest.raises(ValueError) as refused:
            check_output_dir(out, resume=False, overwrite=overwrite)
        message = str(refused.value)
        assert f"--output_dir {out} holds" in message and "no run_files.json" in message and "--resume" in message
        assert "rm -r " in message and str(out / "checkpoints") in message and all(name in message for name in top_level)
        assert not any(name.split("/")[0] in message for name in users)
    assert check_output_dir(out, resume=True, overwrite=False) == []  # --resume continues that run (and takes it over)

    RunFiles(out, top_level, training_started=True).save()  # what the run recorded
    with pytest.raises(ValueError, match=rf"--output_dir {out} holds a previous training run"):
        check_output_dir(out, resume=False, overwrite=False)
    assert check_output_dir(out, resume=True, overwrite=True) == []  # continuing the run deletes nothing
    remove_run_outputs(check_output_dir(out, resume=False, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["data.csv", "feature_cache", "notes", "synthetic_flickr8k"]
    assert all((out / name).is_file() for name in users)

    # A file named like a run's output that the record does not list (put there later): refused, named, kept.
    (out / "metrics.json").write_text("{}")
    RunFiles(out, {"config.json"}, training_started=True).save()
    with pytest.raises(ValueError, match=r"holds metrics.json: a training run writes files of that name, but no recorded run wrote it"):
        check_output_dir(out, resume=False, overwrite=True)
    assert (out / "metrics.json").read_text() == "{}"


def test_a_resume_that_takes_over_a_run_from_before_the_record_never_makes_it_look_like_leftovers(tmp_path):
    """A --resume of a run folder without run_files.json records that run's files as its own. Killed while it sets up,
    the folder must still count as a trained run (refused without --overwrite_output_dir), not as an untrained start
    whose files the next run clears."""
    from hf_imgcap.training.output_folder import RunFiles
    from hf_imgcap.training.run_arguments import check_output_dir

    out = tmp_path / "out"
    (out / "checkpoints" / "step_00000010").mkdir(parents=True)
    for name in ("training_args.json", "config.json", "model.safetensors"):
        (out / name).write_text("x")
    assert check_output_dir(out, resume=True, overwrite=False) == []
    RunFiles.begin(out, creating=("training_args.json", "checkpoints"), remember=("training_args.json",),
                   adopt=("checkpoints", "config.json", "model.safetensors", "training_args.json"))  # then killed
    with pytest.raises(ValueError, match="holds a previous training run"):
        check_output_dir(out, resume=False, overwrite=False)
    assert (out / "checkpoints" / "step_00000010").is_dir()


def test_the_demo_replaces_its_own_previous_run_and_can_still_resume():
    _, _, args = train_script.parse_args(["--demo"])
    assert args.overwrite_output_dir and not args.resume
    _, _, args = train_script.parse_args(["--demo", "--resume"])
    assert args.resume  # --resume wins: check_output_dir deletes nothing when continuing


def test_resume_with_a_different_model_size_names_each_differing_argument_before_reading_data(data, tmp_path, monkeypatch, tiny_encoder):
    out, cache = tmp_path / "out", tmp_path / "cache"

    def crash(*args, **kwargs):
        raise RuntimeError("the machine went down")

    monkeypatch.setattr(training_loop, "evaluate_captioner", crash)  # the run dies after its step-2 checkpoint
    with pytest.raises(RuntimeError, match="went down"):
        run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2"))
    assert (out / "checkpoints" / "step_00000002").is_dir()

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the resume was checked")

    monkeypatch.setattr(train_script, "load_caption_dataset", no_data)
    changed = ["--hidden_size", "16", "--embedding_size", "20"]
    with pytest.raises(ValueError) as refused:
        run(tiny_args(data, tiny_encoder, out, cache, "--resume", *changed))
    message = str(refused.value)
    assert "--hidden_size 16 (the run being resumed used 24)" in message
    assert "--embedding_size 20 (the run being resumed used 24)" in message
    assert "attention_size" not in message  # only what differs
    with pytest.raises(ValueError, match=r"--hidden_size 16 \(the run being resumed used 24\)"):
        run(tiny_args(data, tiny_encoder, tmp_path / "elsewhere", cache, "--resume_from", str(out / "checkpoints" / "step_00000002"), *changed))


def test_a_run_from_before_feature_whitening_resumes_only_without_it(data, tmp_path, monkeypatch, tiny_encoder):
    """A run folder saved before --whiten_features existed trained without whitening: resuming it with whitening is
    refused naming the argument; without (the default) passes the check."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2", "--whiten_features", "false"))
    args_file = out / "training_args.json"
    recorded = json.loads(args_file.read_text())
    assert recorded["model"].pop("whiten_features") is False
    args_file.write_text(json.dumps(recorded))  # the earlier layout: no such key

    def no_data(*args, **kwargs):
        raise AssertionError("the resume check passed")

    monkeypatch.setattr(train_script, "load_caption_dataset", no_data)
    with pytest.raises(ValueError, match=r"--whiten_features True \(the run being resumed used False\)"):
        run(tiny_args(data, tiny_encoder, out, cache, "--resume", "--whiten_features"))
    with pytest.raises(AssertionError, match="the resume check passed"):
        run(tiny_args(data, tiny_encoder, out, cache, "--resume"))


# ---------------------------------------------------------------------------------------------- the launcher decides
@pytest.mark.slow
def test_the_launchers_mixed_precision_is_used_and_cpu_is_a_flag(data, tmp_path, tiny_encoder):
    """`accelerate launch --mixed_precision bf16 train.py` trains in bf16 (train.py passes no precision of its own)."""
    out = tmp_path / "out"
    launch = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "bf16", "--dynamo_backend", "no", str(REPO_ROOT / "train.py"),
         *tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--max_steps", "2", "--cpu")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
    trained = json.loads((out / "metrics.json").read_text())["training"]
    assert trained["mixed_precision"] == "bf16" and trained["device"] == "cpu"
    assert trained["steps"] == 2
    recorded = json.loads((out / "training_args.json").read_text())["training"]
    assert recorded["mixed_precision"] == "bf16" and recorded["use_cpu"] is True  # what the card and a resume see
    assert "precision: bf16" in (out / "README.md").read_text()


@pytest.mark.slow
def test_tracker_logs_go_to_output_dir_runs(data, tmp_path, tiny_encoder):
    out = tmp_path / "out"
    argv = tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--max_steps", "2")
    argv[argv.index("--report_to") + 1] = "tensorboard"
    run(argv)
    events = sorted(path.relative_to(out).parts[0] for path in out.rglob("events.out.tfevents.*"))
    assert events and set(events) == {"runs"}, events


# ---------------------------------------------------------------------------------------------- one source of truth
MODEL_SIZE_ARGUMENTS = ("embedding_size", "attention_size", "hidden_size", "dropout", "attention_regularization", "image_size")


def test_model_size_arguments_take_default_and_help_from_the_config():
    """The config states the sizes once: train.py's defaults and --help are the config's, not re-declared numbers."""
    from hf_imgcap import ShowAttendTellConfig, ShowAttendTellProcessor

    config, processor_defaults = ShowAttendTellConfig(), ShowAttendTellProcessor()
    fields = {f.name: f for f in dataclasses.fields(train_script.ModelArguments)}
    for name in MODEL_SIZE_ARGUMENTS:
        assert fields[name].default == getattr(config, name), name
    assert fields["max_caption_length"].default == processor_defaults.max_caption_length
    # The help is the config's documentation of the value (its Args: section), word for word.
    assert fields["attention_regularization"].metadata["help"] == (
        "Weight λ of the doubly stochastic attention term λ·Σ_regions(1 − Σ_t α)².")
    assert fields["image_size"].metadata["help"].startswith("Side of the (square, center-cropped) images the processor makes;")
    assert "7×7 = 49 at 224" in fields["image_size"].metadata["help"]  # a continuation line of the docstring
    assert fields["max_caption_length"].metadata["help"] == "Captions are truncated to this many tokens, [CLS] and [SEP] included."


def test_a_training_state_in_the_checkpoint_layout_of_earlier_runs_loads_and_continues_selecting_on_bleu_4():
    """`--resume` of a run folder written before --metric_for_best_model: its training_state.json has these keys."""
    def plateau():
        return torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), mode="max")

    earlier = plateau()
    for bleu in (0.3, 0.2, 0.1):
        earlier.step(bleu)
    saved = json.loads(json.dumps({
        "epoch": 2, "step_in_epoch": 3, "global_step": 23, "best_bleu_4": 0.3, "epochs_without_improvement": 2,
        "nonfinite_in_a_row": 0, "nonfinite_total": 1,
        "history": [{"epoch": 1, "step": 10, "train_loss": 4.1, "bleu_4": 0.3}, {"epoch": 2, "step": 20, "train_loss": 3.2, "bleu_4": 0.2}],
        "scheduler": earlier.state_dict(),
    }))
    scheduler = plateau()
    state = training_loop.TrainState.from_checkpoint(saved, scheduler)
    assert (state.epoch, state.step_in_epoch, state.global_step, state.nonfinite_total) == (2, 3, 23, 1)
    assert scheduler.num_bad_epochs == 2 and scheduler.best == 0.3  # the scheduler continues where it was
    # Those runs selected on BLEU-4: the best value and its epoch carry over, so a worse epoch is not kept.
    assert (state.metric_for_best_model, state.best_metric, state.best_epoch) == ("bleu_4", 0.3, 1)
    assert state.best_entry()["bleu_4"] == 0.3
    again = training_loop.TrainState.from_checkpoint(json.loads(json.dumps(state.to_checkpoint())), plateau())
    assert again == state  # and it is saved in the current layout, which loads back the same
    no_validation_yet = training_loop.TrainState.from_checkpoint({**saved, "best_bleu_4": -1.0, "history": []}, plateau())
    assert no_validation_yet.best_metric is None and no_validation_yet.best_epoch == 0


@pytest.mark.slow
def test_the_scheduler_is_checkpointed_by_accelerate_and_a_run_folder_of_the_earlier_layout_still_resumes(data, tmp_path, tiny_encoder):
    import hashlib

    cache = tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, tmp_path / "straight", cache, "--num_epochs", "2", "--lr_decay_patience", "1"))
    out = tmp_path / "resumed"
    run(tiny_args(data, tiny_encoder, out, cache, "--num_epochs", "1", "--lr_decay_patience", "1"))
    checkpoint = sorted((out / "checkpoints").glob("step_*"))[-1]
    state_file = checkpoint / "training_state.json"
    assert (checkpoint / "custom_checkpoint_0.pkl").is_file() and "scheduler" not in json.loads(state_file.read_text())
    # Rewrite the checkpoint as earlier versions wrote it: the scheduler's state inside training_state.json.
    scheduler_state = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "scheduler": scheduler_state}))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for p in sorted(checkpoint.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    run(tiny_args(data, tiny_encoder, out, cache, "--num_epochs", "2", "--lr_decay_patience", "1", "--resume"))
    straight_name, straight = last_checkpoint_weights(tmp_path / "straight")
    resumed_name, resumed = last_checkpoint_weights(out)
    assert straight_name == resumed_name
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    newest = sorted((out / "checkpoints").glob("step_*"))[-1]
    assert torch.load(newest / "custom_checkpoint_0.pkl", weights_only=False) == torch.load(
        sorted((tmp_path / "straight" / "checkpoints").glob("step_*"))[-1] / "custom_checkpoint_0.pkl", weights_only=False)


@pytest.mark.slow
def test_resuming_with_another_metric_for_best_model_is_refused_naming_both(data, tmp_path, monkeypatch, tiny_encoder):
    out, cache = tmp_path / "out", tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2", "--metric_for_best_model", "cider"))
    with pytest.raises(ValueError, match=r"--metric_for_best_model 'loss' \(the run being resumed used 'cider'\)"):
        run(tiny_args(data, tiny_encoder, out, cache, "--resume", "--metric_for_best_model", "loss"))
    # A run from before training_args.json recorded the metric (it selected on BLEU-4): refused by the checkpoint.
    recorded = json.loads((out / "training_args.json").read_text())
    del recorded["training"]["metric_for_best_model"]
    (out / "training_args.json").write_text(json.dumps(recorded))
    checkpoint = out / "checkpoints" / "step_00000002"
    state = json.loads((checkpoint / "training_state.json").read_text())
    state["metric_for_best_model"] = "bleu_4"
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    monkeypatch.setattr(training_loop, "verify_checkpoint", lambda folder: json.loads((folder / "training_state.json").read_text()))
    with pytest.raises(ValueError, match=r"selects its best model on 'bleu_4', not 'cider'; pass --metric_for_best_model bleu_4"):
        run(tiny_args(data, tiny_encoder, out, cache, "--resume", "--metric_for_best_model", "cider"))


@pytest.mark.slow
def test_the_best_model_is_selected_on_the_chosen_metric_in_its_direction(data, tmp_path, tiny_encoder):
    """--metric_for_best_model loss keeps the epoch of the lowest validation loss, whatever BLEU-4 did; metrics.json
    says what selected it, and the final model is that epoch's."""
    out = tmp_path / "out"
    results = run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--num_epochs", "4", "--learning_rate", "3e-2",
                            "--metric_for_best_model", "loss", "--early_stopping_patience", "10", "--checkpoints_to_keep", "10"))
    history = results["history"]
    assert all(math.isfinite(entry["loss"]) for entry in history)  # every epoch records its validation loss
    best = min(history, key=lambda entry: entry["loss"])
    assert results["best_model_selection"] == {"metric": "loss", "value": best["loss"], "epoch": best["epoch"]}  # 4 digits
    assert results["validation_best_bleu_4"] == best["bleu_4"]
    final = load_file(out / "model.safetensors")
    at_best = [checkpoint for checkpoint in sorted((out / "checkpoints").glob("step_*"))  # one per epoch end
               if json.loads((checkpoint / "training_state.json").read_text())["epoch"] == best["epoch"]]
    assert len(at_best) == 1
    weights = load_file(at_best[0] / "model.safetensors")
    assert all(torch.equal(final[key], weights[key]) for key in final)


@pytest.mark.slow
def test_a_step_schedule_with_warmup_spans_the_whole_run(data, tmp_path, tiny_encoder):
    """--lr_scheduler_type cosine --warmup_ratio: the learning rate rises over the warmup steps and reaches 0 at the
    last optimizer step of --num_epochs (16 images × 5 captions / batch 8 = 10 steps per epoch)."""
    out = tmp_path / "out"
    run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--num_epochs", "2", "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.25",
                  "--checkpoint_every_steps", "1", "--checkpoints_to_keep", "20"))
    rates = {}
    for checkpoint in sorted((out / "checkpoints").glob("step_*")):
        state = json.loads((checkpoint / "training_state.json").read_text())
        scheduler = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)  # Accelerate saves it
        rates[state["global_step"]] = scheduler["_last_lr"][0]
    assert sorted(rates) == list(range(1, 21))
    assert rates[1] == pytest.approx(3e-3 * 1 / 5) and rates[5] == pytest.approx(3e-3)  # 5 warmup steps
    assert all(rates[s] > rates[s + 1] for s in range(5, 20)) and rates[20] == pytest.approx(0.0, abs=1e-12)


def test_every_demo_preset_names_an_argument_and_applies():
    """A renamed argument (e.g. --num_epochs -> --num_train_epochs) once left its demo preset behind, silently."""
    model_args, data_args, args = train_script.parse_args(["--demo"])
    values = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **dataclasses.asdict(args)}
    assert {name: values[name] for name in DEMO_PRESET} == DEMO_PRESET


def test_an_option_given_with_the_demo_wins_over_its_preset_even_when_it_equals_the_default():
    """`--demo --scst_epochs 0` trains no SCST epoch: an option given on the command line beats the preset, also when it equals the default."""
    model_args, _, args = train_script.parse_args(["--demo", "--scst_epochs", "0", "--num_epochs", "120", "--whiten_features", "false",
                                                   "--learning_rate", "1e-3"])
    assert (args.scst_epochs, args.num_train_epochs, model_args.whiten_features, args.learning_rate) == (0, 120, False, 1e-3)
    assert args.learning_rate == 1e-3 and args.scst_learning_rate == DEMO_PRESET["scst_learning_rate"]  # the others keep their presets


# ---------------------------------------------------------------------------------------------- trackers
def only_installed(monkeypatch, *names):
    """Pretend that only these trackers' packages are installed (whatever this machine has)."""
    import accelerate.tracking
    from accelerate.utils import LoggerType

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [LoggerType(name) for name in names])


@pytest.mark.parametrize("report_to, tracker, package", [
    ("wandb", "wandb", "pip install wandb"),
    ("tensorboard,comet_ml", "comet_ml", "pip install comet_ml"),
    ("all, mlflow", "mlflow", "pip install mlflow"),  # named next to "all", it is still asked for by name
])
def test_a_tracker_whose_package_is_missing_is_refused_before_any_data_is_read(report_to, tracker, package, data, tmp_path, monkeypatch, tiny_encoder):
    """Accelerate drops a tracker it cannot import with a debug message: the run trained for hours untracked."""
    only_installed(monkeypatch, "tensorboard")

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the trackers were checked")

    monkeypatch.setattr(train_script, "load_caption_dataset", no_data)
    argv = tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--report_to", report_to)
    with pytest.raises(ValueError) as refused:
        run(argv)
    message = str(refused.value)
    assert f"--report_to {report_to!r}" in message and f"'{tracker}' is not installed" in message and package in message
    assert not (tmp_path / "out").exists()


def test_installed_trackers_all_and_none_keep_their_meaning(tmp_path, monkeypatch):
    from hf_imgcap.training.run_arguments import make_accelerator, validate_arguments

    only_installed(monkeypatch, "tensorboard")
    for report_to in ("tensorboard", "none", "all", "all,tensorboard", " tensorboard "):
        model_args, data_args, args = train_script.parse_args(["--report_to", report_to, "--output_dir", str(tmp_path / "out")])
        validate_arguments(model_args, data_args, args)  # accepted
    # "all" is Accelerate's: every tracker whose package is installed (tensorboard is a dependency); spaces are trimmed.
    for report_to, trackers in (("all", ["tensorboard"]), (" tensorboard ", ["tensorboard"]), ("none", [])):
        args = train_script.parse_args(["--report_to", report_to, "--output_dir", str(tmp_path / "out")])[2]
        assert [str(tracker) for tracker in make_accelerator(args).log_with] == trackers, report_to


# ---------------------------------------------------------------------------------------------- errors at the command line
def main_exit(argv, capsys) -> tuple[int, str]:
    """`python train.py ARGV` in this process: the exit status and stderr."""
    try:
        code = train_script.main(argv)
    except SystemExit as exit_request:  # what `sys.exit(main())` would end with
        code = exit_request.code
    return code, capsys.readouterr().err


def an_imagefolder_dataset(folder):
    """A datasets imagefolder: two images and metadata.csv with a `text` column."""
    from PIL import Image

    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / name)
    (folder / "metadata.csv").write_text("file_name,text\na.png,a red square\nb.png,another red square\n")
    return folder


def test_user_errors_are_one_message_on_stderr_and_exit_status_2(data, tmp_path, capsys, monkeypatch, tiny_encoder):
    """A wrong value, a used --output_dir, a column the dataset lacks, a folder that holds no model: the user's to
    fix, so the message (prefixed with the program) and no Python traceback; status 2 as argparse's own errors."""
    monkeypatch.delenv("HF_IMGCAP_DEBUG", raising=False)
    used = tmp_path / "used"
    used.mkdir()
    (used / "training_args.json").write_text("{}")
    RunFiles(used, {"training_args.json"}, training_started=True).save()
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    cases = {
        "invalid arguments:\n  --learning_rate -1.0: must be a positive number": ["--learning_rate", "-1"],
        f"--output_dir {used} holds a previous training run": ["--output_dir", str(used)],
        "no caption column 'description'": ["--dataset", str(an_imagefolder_dataset(tmp_path / "photos")),
                                            "--caption_column", "description"],
        str(not_a_model): ["--encoder", str(not_a_model), "--tokenizer", "bert-base-uncased"],
    }
    for number, (message, extra) in enumerate(cases.items()):
        code, err = main_exit(tiny_args(data, tiny_encoder, tmp_path / f"out{number}", tmp_path / "cache", *extra), capsys)
        assert code == 2, (extra, err)
        assert "Traceback" not in err, err
        # (stderr may also hold datasets' progress bars; "  --flag value: why" lines continue an invalid-arguments message)
        assert [line for line in err.splitlines() if "error" in line and not line.startswith("  --")] == [
            line for line in err.splitlines() if line.startswith("train.py: error: ")]
        assert message in err[err.index("train.py: error: "):], err

    code, err = main_exit(["--no_such_flag", "3"], capsys)  # argparse's usage error, not a ValueError from deep inside
    assert code == 2 and "Traceback" not in err and "train.py: error: unrecognized arguments: --no_such_flag 3" in err, err


def test_the_traceback_of_a_user_error_is_shown_with_hf_imgcap_debug(data, tmp_path, capsys, monkeypatch, tiny_encoder):
    monkeypatch.setenv("HF_IMGCAP_DEBUG", "1")
    code, err = main_exit(tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--learning_rate", "-1"), capsys)
    assert code == 2 and "Traceback (most recent call last)" in err and "validate_arguments" in err
    assert err.rstrip().endswith("train.py: error: invalid arguments:\n  --learning_rate -1.0: must be a positive number"), err


def test_ctrl_c_exits_130_without_a_traceback_and_a_bug_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.delenv("HF_IMGCAP_DEBUG", raising=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_script, "train", interrupted)
    assert main_exit([], capsys) == (130, "train.py: interrupted\n")

    def bug(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(train_script, "train", bug)  # not the user's fault: Python's own report, with the traceback
    with pytest.raises(TypeError, match="unsupported operand"):
        train_script.main([])


@pytest.mark.slow
def test_train_py_exits_2_with_one_message_and_prints_names_escaped(tmp_path):
    """The script itself, as a shell runs it: asked to replace a previous run, it meets a dataset folder without
    data first. Names holding terminal control characters reach neither the log nor the error raw."""
    out = tmp_path / "run\x1b[2J"
    out.mkdir()
    (out / "training_args.json").write_text("{}")
    RunFiles(out, {"training_args.json"}, training_started=True).save()
    (out / "notes\u202etxt.md").write_text("the user's own file: kept")
    empty = tmp_path / "photos\x1b]0;pwned\x07"
    empty.mkdir()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--dataset", str(empty), "--output_dir", str(out),
                             "--overwrite_output_dir", "--cache_dir", str(tmp_path / "cache"), "--report_to", "none"],
                            capture_output=True, text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "HF_IMGCAP_DEBUG"})
    assert result.returncode == 2, result.stderr[-3000:]
    raw_controls = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
    assert not raw_controls.search(result.stdout) and not raw_controls.search(result.stderr), (result.stdout, result.stderr)
    # the data is read before the previous run is deleted: a run that cannot start loses nothing
    assert (out / "training_args.json").exists() and (out / "notes\u202etxt.md").exists()
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("train.py: error: "):]
    assert str(tmp_path / "photos\\x1b]0;pwned\\x07") in error and len(error.splitlines()) == 1, error


# ---------------------------------------------------------------------------------------------- what a run may write over
def refuse_data_reads(monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the output folder was checked")

    monkeypatch.setattr(train_script, "load_caption_dataset", no_data)


def folder_snapshot(folder):
    """Every entry under `folder`: a link's target, a file's bytes (None for a folder)."""
    return {str(path.relative_to(folder)): (str(path.readlink()) if path.is_symlink() else path.read_bytes() if path.is_file() else None)
            for path in sorted(folder.rglob("*"))}


def test_overwrite_refuses_a_folder_of_files_no_recorded_run_wrote(data, tmp_path, monkeypatch, tiny_encoder):
    """An encoder's folder given as --output_dir: its config.json, weights and vocab.txt are the user's, not a run's."""
    encoder = tmp_path / "my-encoder"
    encoder.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (encoder / name).write_text(f"the user's {name}")
    before = folder_snapshot(encoder)
    refuse_data_reads(monkeypatch)
    with pytest.raises(ValueError) as refused:
        run(tiny_args(data, tiny_encoder, encoder, tmp_path / "cache", "--overwrite_output_dir"))
    message = str(refused.value)
    assert str(encoder) in message and all(name in message for name in ("config.json", "model.safetensors", "vocab.txt"))
    assert folder_snapshot(encoder) == before


def test_a_new_run_refuses_a_folder_holding_files_or_links_it_would_write_over(data, tmp_path, monkeypatch, tiny_encoder):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("secret")
    (out / "README.md").write_text("# my experiments\n")  # the model card would replace it
    (out / "test_captions.json").symlink_to(victim)  # writing the test captions would write the victim
    (out / "notes.txt").write_text("mine")  # a name no run writes: never in the way
    before = folder_snapshot(out)
    refuse_data_reads(monkeypatch)
    for extra in ([], ["--overwrite_output_dir"]):
        with pytest.raises(ValueError) as refused:
            run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", *extra))
        message = str(refused.value)
        assert str(out) in message and "README.md" in message and "test_captions.json" in message and "notes.txt" not in message
    assert folder_snapshot(out) == before and victim.read_text() == "secret"


@pytest.mark.slow
def test_a_run_records_what_it_wrote_and_never_writes_through_links_planted_in_its_folder(data, tmp_path, tiny_encoder):
    out, cache, victims = tmp_path / "out", tmp_path / "cache", tmp_path / "victims"
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2"))
    recorded = json.loads((out / "run_files.json").read_text())["files"]
    assert sorted(recorded) == sorted(p.name for p in out.iterdir() if p.name != "run_files.json")
    # Links where the run writes its files (the card, the figure, the records, what save_pretrained writes): a resumed
    # run replaces each link by its own file and leaves the link's target alone.
    names = ["attention_example.png", "test_captions.json", "metrics.json", "README.md", "config.json", "model.safetensors",
             "tokenizer.json", "tokenizer_config.json", "processor_config.json", "modeling_show_attend_tell.py"]
    victims.mkdir()
    for name in names:
        (victims / name).write_text(f"victim {name}")
        (out / name).unlink()
        (out / name).symlink_to(victims / name)
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "3", "--checkpoint_every_steps", "2", "--resume"))
    for name in names:
        assert (victims / name).read_text() == f"victim {name}", name
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert ShowAttendTellForConditionalGeneration.from_pretrained(out).config.hidden_size == 24
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file or folder left


def test_resume_with_another_data_order_or_optimizer_setting_is_refused_naming_it(data, tmp_path, tiny_encoder):
    """A resumed run skips what the checkpoint trained on, in its order, with its optimizer's state: another batch size,
    seed or learning rate would skip the wrong captions or be recorded without being used."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2", "--eval_num_beams", "1"))
    before = folder_snapshot(out)
    for name, value, used in [("per_device_train_batch_size", "4", "8"), ("gradient_accumulation_steps", "2", "1"),
                              ("seed", "8", "7"), ("learning_rate", "0.01", "0.003"), ("dropout", "0.1", "0.0")]:
        with pytest.raises(ValueError) as refused:
            run(tiny_args(data, tiny_encoder, out, cache, "--resume", "--max_steps", "4", f"--{name}", value))
        assert f"--{name} {value} (the run being resumed used {used})" in str(refused.value)
    assert folder_snapshot(out) == before


@pytest.mark.slow
def test_resuming_an_earlier_checkpoint_keeps_the_best_model_of_that_point_not_a_later_one(data, tmp_path, tiny_encoder):
    """The validation loss falls every epoch, so each epoch's model is the best so far. Resumed from the end of epoch 2
    of a finished 3-epoch run, with 2 epochs asked for, the run's model is epoch 2's, not the abandoned epoch 3's."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["--metric_for_best_model", "loss", "--eval_num_beams", "1"]
    run(tiny_args(data, tiny_encoder, out, cache, "--num_train_epochs", "3", *common))
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [entry["loss"] for entry in history] == sorted((entry["loss"] for entry in history), reverse=True)  # falls
    epoch_2 = out / "checkpoints" / f"step_{history[1]['step']:08d}"
    run(tiny_args(data, tiny_encoder, out, cache, "--num_train_epochs", "2", "--resume_from_checkpoint", str(epoch_2), *common))
    final, expected = load_file(out / "model.safetensors"), load_file(epoch_2 / "model.safetensors")
    assert all(torch.equal(final[name], expected[name]) for name in expected)
    assert json.loads((out / "metrics.json").read_text())["best_model_selection"]["epoch"] == 2


def test_resume_with_another_number_of_processes_is_refused(data, tmp_path, tiny_encoder):
    out, cache = tmp_path / "out", tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2", "--eval_num_beams", "1"))
    state_file = out / "checkpoints" / "step_00000002" / "training_state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1
    state_file.write_text(json.dumps({**state, "num_processes": 2}))  # as a 2-process launch records it
    manifest = json.loads((state_file.parent / "manifest.json").read_text())
    manifest["files"]["training_state.json"] = {"bytes": state_file.stat().st_size,
                                                "sha256": hashlib.sha256(state_file.read_bytes()).hexdigest()}
    (state_file.parent / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="trained by 2 process"):
        run(tiny_args(data, tiny_encoder, out, cache, "--resume", "--max_steps", "4"))


@pytest.mark.slow
def test_resume_with_another_dataset_or_other_splits_is_refused_naming_both(data, tmp_path, tiny_encoder):
    out, cache = tmp_path / "out", tmp_path / "cache"
    run(tiny_args(data, tiny_encoder, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2"))
    before = folder_snapshot(out)
    other = write_synthetic_flickr8k(tmp_path / "other", num_train=16, num_val=5, num_test=5, image_size=64, seed=4)
    with pytest.raises(ValueError) as refused:
        run(tiny_args(other, tiny_encoder, out, cache, "--resume", "--max_steps", "4"))
    assert f"--dataset {str(other)!r} (the run being resumed used {str(data)!r})" in str(refused.value)
    # The same --dataset, but another training split (here fewer images): its fingerprint differs.
    with pytest.raises(ValueError) as refused:
        run(tiny_args(data, tiny_encoder, out, cache, "--resume", "--max_steps", "4", "--max_train_images", "12"))
    message = str(refused.value)
    assert "cannot resume" in message and str(data) in message
    assert "train split: 12 images" in message and "16 images" in message
    assert "validation split" not in message and "test split" not in message  # only what differs
    assert folder_snapshot(out) == before  # refused before anything was written


@pytest.mark.slow
def test_a_broken_first_test_image_or_a_failed_figure_does_not_cost_the_trained_model(tmp_path, monkeypatch, caplog, tiny_encoder):
    """With --no_verify_images the attention example is drawn from the first test image that decodes; a figure that
    cannot be drawn at all is logged, and the model, its records and its card are written anyway."""
    import logging

    import numpy as np
    from PIL import Image

    dataset = write_synthetic_flickr8k(tmp_path / "data", num_train=16, num_val=5, num_test=5, image_size=64, seed=3)
    test_names = (dataset / "Flickr_8k.testImages.txt").read_text().split()
    (dataset / "Flicker8k_Dataset" / test_names[0]).write_bytes(b"not a jpeg")
    drawn = []

    def failing_figure(image, *args, **kwargs):
        drawn.append(np.asarray(image))
        raise RuntimeError("the figure could not be drawn")

    monkeypatch.setattr(training_loop, "render_attention_map", failing_figure)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        run(tiny_args(dataset, tiny_encoder, out, tmp_path / "cache", "--max_steps", "2", "--no_verify_images"))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "test_captions.json", "README.md"):
        assert (out / name).is_file(), name
    assert not (out / "attention_example.png").exists()
    with Image.open(dataset / "Flicker8k_Dataset" / test_names[1]) as second:
        assert len(drawn) == 1 and np.array_equal(drawn[0], np.asarray(second.convert("RGB")))
    assert test_names[0] in caplog.text and "the figure could not be drawn" in caplog.text


def test_a_start_that_fails_before_training_leaves_the_folder_as_it_found_it(data, tmp_path, monkeypatch, tiny_encoder):
    from hf_imgcap.training.run_arguments import check_output_dir, remove_run_outputs

    no_test = write_synthetic_flickr8k(tmp_path / "no_test", num_train=8, num_val=2, num_test=0, image_size=64, seed=1)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(ValueError, match=r"split 'test' of .* is empty"):
        run(tiny_args(no_test, tiny_encoder, out, cache))
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = folder_snapshot(out)
    with pytest.raises(ValueError, match=r"split 'test' of .* is empty"):
        run(tiny_args(no_test, tiny_encoder, out, cache))
    assert folder_snapshot(out) == before

    # A failure later in the start, after the processor was saved: undone too. What the folder held at that moment
    # is what a kill there would leave: the next run is not refused, it clears those files.
    killed = tmp_path / "killed"

    def fail(*args, **kwargs):
        shutil.copytree(out, killed, symlinks=True)
        raise RuntimeError("out of memory while encoding")

    monkeypatch.setattr(train_script, "build_feature_cache", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(tiny_args(data, tiny_encoder, out, cache))
    assert folder_snapshot(out) == before
    assert (killed / "training_args.json").is_file() and (killed / "checkpoints" / "processor").is_dir()
    remove_run_outputs(check_output_dir(killed, resume=False, overwrite=False))
    assert folder_snapshot(killed) == before


@pytest.mark.slow
def test_the_epoch_stopped_by_sigterm_records_its_whole_mean_loss_after_the_resume(data, tmp_path, monkeypatch, tiny_encoder):
    cache, common = tmp_path / "cache", ["--num_epochs", "2", "--eval_num_beams", "1", "--early_stopping_patience", "10"]
    straight = run(tiny_args(data, tiny_encoder, tmp_path / "straight", cache, *common))
    original, calls = ShowAttendTellForConditionalGeneration.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 13:  # in the middle of epoch 2 (10 steps per epoch)
                signal.raise_signal(signal.SIGTERM)
        return outputs

    monkeypatch.setattr(ShowAttendTellForConditionalGeneration, "forward", forward)
    stopped = run(tiny_args(data, tiny_encoder, tmp_path / "preempted", cache, *common))
    assert stopped == {"stopped_by": "SIGTERM", "global_step": 13}
    monkeypatch.setattr(ShowAttendTellForConditionalGeneration, "forward", original)
    resumed = run(tiny_args(data, tiny_encoder, tmp_path / "preempted", cache, *common, "--resume"))
    assert len(resumed["train_loss_by_epoch"]) == 2
    assert resumed["train_loss_by_epoch"] == pytest.approx(straight["train_loss_by_epoch"], abs=1e-4)
