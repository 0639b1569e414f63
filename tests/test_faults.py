"""Training faults: non-finite losses, preemption (SIGTERM to a real process), a failed checkpoint write."""

import errno
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hf_imgcap import ShowAttendTellForConditionalGeneration
from hf_imgcap.training.checkpointing import CheckpointManager, verify_checkpoint
from hf_imgcap.demo.scenes import write_synthetic_flickr8k

from conftest import REPO_ROOT
from test_train import last_checkpoint_weights, run, tiny_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_flickr8k(tmp_path_factory.mktemp("faults") / "flickr8k", num_train=16, num_val=4, num_test=4,
                                    image_size=64, seed=5)


def poison_losses(monkeypatch, bad_calls):
    """Make the training forward return a NaN loss on the given (0-based) calls, as a bad batch would."""
    original = ShowAttendTellForConditionalGeneration.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if self.training and outputs.loss is not None:
            if calls["n"] in bad_calls:
                outputs.loss = outputs.loss * float("nan")
            calls["n"] += 1
        return outputs

    monkeypatch.setattr(ShowAttendTellForConditionalGeneration, "forward", forward)


@pytest.mark.slow
def test_non_finite_losses_are_skipped_and_counted(data, tmp_path, monkeypatch, tiny_encoder):
    poison_losses(monkeypatch, bad_calls={3, 4})
    results = run(tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--num_epochs", "1", "--max_nonfinite_steps", "3"))
    assert results["nonfinite_steps_skipped"] == 2
    assert results["steps"] == 10 - 2  # 10 batches, two skipped: no optimizer step for them


def test_too_many_non_finite_losses_in_a_row_stop_with_the_last_good_checkpoint_intact(data, tmp_path, monkeypatch, tiny_encoder):
    poison_losses(monkeypatch, bad_calls=set(range(4, 10**6)))
    with pytest.raises(RuntimeError, match=r"3 non-finite losses in a row: stopping\. The last good checkpoint is .*step_00000004"):
        run(tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--num_epochs", "1", "--max_nonfinite_steps", "3",
                      "--checkpoint_every_steps", "2"))
    latest = CheckpointManager(tmp_path / "out" / "checkpoints").latest()
    assert verify_checkpoint(latest)["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(latest / "model.safetensors").values())


@pytest.mark.slow
def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_valid_and_resumable(data, tmp_path, monkeypatch, tiny_encoder):
    import accelerate

    original = accelerate.Accelerator.save_state
    saves = {"n": 0}

    def save_state(self, output_dir=None, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # the second checkpoint: write part of it, then the disk is full
            original(self, output_dir, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "save_state", save_state)
    with pytest.raises(RuntimeError, match=r"could not write the checkpoint of step 4 .*No space left.*checkpoints/step_00000002, is intact"):
        run(tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--num_epochs", "1", "--checkpoint_every_steps", "2"))
    checkpoints = CheckpointManager(tmp_path / "out" / "checkpoints")
    assert [p.name for p in checkpoints.complete_checkpoints()] == ["step_00000002"]
    assert verify_checkpoint(checkpoints.latest())["global_step"] == 2
    monkeypatch.setattr(accelerate.Accelerator, "save_state", original)
    results = run(tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--num_epochs", "1", "--resume"))
    assert results["steps"] == 10


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_exits_zero_and_resume_equals_an_uninterrupted_run(data, tmp_path, tiny_encoder):
    arguments = ["--num_epochs", "6", "--early_stopping_patience", "100", "--eval_num_beams", "1"]
    command = [sys.executable, str(REPO_ROOT / "train.py")]
    straight = subprocess.run([*command, *tiny_args(data, tiny_encoder, tmp_path / "straight", tmp_path / "cache", *arguments)],
                              capture_output=True, text=True, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "preempted"
    process = subprocess.Popen([*command, *tiny_args(data, tiny_encoder, out, tmp_path / "cache", *arguments)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "step_00000010").is_dir():  # the first epoch is done: we are mid-run
        assert process.poll() is None and time.time() < deadline, "training ended or hung before the first epoch finished"
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert "SIGTERM received" in stdout + stderr and "continue with --resume" in stdout + stderr
    stopped_at = verify_checkpoint(CheckpointManager(out / "checkpoints").latest())["global_step"]
    assert 10 < stopped_at < 60

    resumed = subprocess.run([*command, *tiny_args(data, tiny_encoder, out, tmp_path / "cache", *arguments, "--resume")],
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight_name, straight_weights = last_checkpoint_weights(tmp_path / "straight")
    resumed_name, resumed_weights = last_checkpoint_weights(out)
    assert straight_name == resumed_name == "step_00000060"
    for key in straight_weights:
        torch.testing.assert_close(resumed_weights[key], straight_weights[key], rtol=0, atol=0, msg=key)
    # The interrupted epoch's recorded loss is the whole epoch's, as in the uninterrupted run.
    straight_losses, resumed_losses = (json.loads((folder / "metrics.json").read_text())["train_loss_by_epoch"]
                                       for folder in (tmp_path / "straight", out))
    assert resumed_losses == pytest.approx(straight_losses, abs=1e-4)


def test_a_run_that_took_no_optimizer_step_fails_and_writes_no_model(data, tmp_path, monkeypatch, tiny_encoder):
    poison_losses(monkeypatch, bad_calls=set(range(10**6)))  # every batch is unusable
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"the run took 0 optimizer steps \(10 batches, 10 with a non-finite loss\): no model was written"):
        run(tiny_args(data, tiny_encoder, out, tmp_path / "cache", "--num_epochs", "2", "--max_nonfinite_steps", "1000"))
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert not (out / "checkpoints" / "best").exists() and not (out / "metrics.json").exists()
