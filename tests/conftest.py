"""Shared fixtures: tiny configs so that the whole suite runs in minutes on 2 CPU cores."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, ShowAttendTellProcessor
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import default_image_processor

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE_SIZE = 64  # a 2×2 region map with the tiny ResNet below

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' models are tiny: a second intra-op thread buys nothing, and on a shared machine (other jobs on the same
# cores) the threads' spin-waits make each step many times slower. Child processes inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def parse_flag_from_env(key: str, default: bool = False) -> bool:
    """An on/off environment variable, read as transformers' `parse_flag_from_env` reads `RUN_SLOW` (without importing
    `transformers.testing_utils`, which costs seconds): a value that is neither yes nor no is an error, not a no."""
    value = os.environ.get(key)
    if value is None:
        return default
    if value.strip().lower() in ("y", "yes", "t", "true", "on", "1"):
        return True
    if value.strip().lower() in ("n", "no", "f", "false", "off", "0", ""):
        return False
    raise ValueError(f"If set, {key} must be yes or no (1/true/yes or 0/false/no), not {value!r}.")


RUN_SLOW = parse_flag_from_env("RUN_SLOW")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` tests (subprocess launches of train.py or the CLI, 2-process runs, real-size models) run only
    with RUN_SLOW=1: the default tier stays a few minutes on 2 CPU cores."""
    if RUN_SLOW:
        return
    skip_slow = pytest.mark.skip(reason="slow test: run the slow tier with `RUN_SLOW=1 python -m pytest -q -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts without accelerate's process-wide state: an `Accelerator` made by one test (a Trainer, an
    in-process train.py) would otherwise refuse another test's mixed precision, as accelerate's own tests reset it."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_config(**overrides) -> ShowAttendTellConfig:
    """A 4-stage bottleneck ResNet with one block per stage and 16-unit decoder."""
    values = dict(
        encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], embedding_size=8),
        embedding_size=16,
        attention_size=16,
        hidden_size=16,
        dropout=0.0,
        image_size=TINY_IMAGE_SIZE,
    )
    values.update(overrides)
    return ShowAttendTellConfig(**values)


def tiny_model(seed=0, **overrides) -> ShowAttendTellForConditionalGeneration:
    """A tiny model with non-trivial feature statistics, so every path exercises the standardisation (and, with
    `whiten_features=True`, a whitening matrix that mixes the channels)."""
    torch.manual_seed(seed)
    model = ShowAttendTellForConditionalGeneration(tiny_config(**overrides)).eval()
    whitening = None
    if model.config.whiten_features:  # symmetric, as a ZCA matrix is
        channels = model.config.encoder_hidden_size
        mixing = torch.randn(channels, channels) / channels**0.5
        whitening = torch.eye(channels) + 0.5 * (mixing + mixing.T)
    model.set_feature_statistics(torch.randn_like(model.feature_mean) * 0.1, 0.5, whitening)
    return model


def taught_captioner(vocab=40, start=1, end=2, pad=0, images=6, regions=4, channels=64, steps=100):
    """A tiny model taught one caption per image (`steps` fast Adam steps) and those images' features: image i's
    caption has 3 + i words of its own, then the end token, so captions end on their own at different lengths, as a
    trained captioner's do."""
    model = tiny_model(vocab_size=vocab, pad_token_id=pad, bos_token_id=start, eos_token_id=end,
                       decoder_start_token_id=start).train()
    torch.manual_seed(0)
    features = torch.randn(images, regions, channels)
    captions = [[start, *[3 + (image * 7 + position * 5) % (vocab - 3) for position in range(3 + image)], end]
                for image in range(images)]
    longest = max(map(len, captions))
    input_ids = torch.tensor([caption + [pad] * (longest - len(caption)) for caption in captions])
    attention_mask = (input_ids != pad).long()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(steps):
        loss = model(encoder_hidden_states=features, input_ids=input_ids, attention_mask=attention_mask,
                     labels=input_ids.masked_fill(attention_mask == 0, -100), return_logits=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = pad
    return model, features


def tiny_processor() -> ShowAttendTellProcessor:
    return ShowAttendTellProcessor(image_processor=default_image_processor(TINY_IMAGE_SIZE))


# Makes `import hf_imgcap` fail in a child process although the package is installed: proves that a saved
# folder loads through its own copied code files alone.
BLOCK_HF_IMGCAP = """
import sys
class _BlockHfImgcap:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_imgcap" or name.startswith("hf_imgcap."):
            raise ImportError("hf_imgcap is blocked in this process")
sys.meta_path.insert(0, _BlockHfImgcap())
"""


def run_fresh_python(code: str, cwd, extra_env=None, timeout=300, block_package=False) -> subprocess.CompletedProcess:
    """Run code in a new interpreter, offline, from `cwd`; with `block_package`, `hf_imgcap` cannot be imported."""
    if block_package:
        code = BLOCK_HF_IMGCAP + code
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def processor():
    return tiny_processor()


# ResNet-152's layout (bottleneck blocks, 4 stages, stride 32) with one block per stage and 128 output channels.
TINY_ENCODER_CONFIG = dict(layer_type="bottleneck", depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], embedding_size=16)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A saved transformers `ResNetModel` folder (random weights) for train.py's `--encoder`: a 2×2 region map at
    64×64 from 35k parameters, so that a training run spends its time on the code under test, not on ResNet-152's
    58M (240 MB per saved model)."""
    from transformers import ResNetConfig, ResNetModel

    folder = tmp_path_factory.mktemp("tiny_encoder")
    with torch.random.fork_rng():  # the same weights in every session, without moving the tests' random state
        torch.manual_seed(0)
        ResNetModel(ResNetConfig(**TINY_ENCODER_CONFIG)).save_pretrained(folder)
    return folder


def launch_two_processes(script_and_args: list, env: dict, timeout: int, port: int) -> tuple[int, str, str]:
    """`accelerate launch` with 2 gloo processes on the CPU; on a timeout the launcher and both ranks are killed (never
    leave a hung rank behind). Returns (returncode, stdout, stderr)."""
    import signal

    launch = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *map(str, script_and_args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        stdout, stderr = launch.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        stdout, stderr = launch.communicate()
    return launch.returncode, stdout, stderr
