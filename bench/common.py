"""Shared helpers for the benchmarks: medians of interleaved repeats, the machine's matmul rate, a table printer.

The machines are shared and noisy, so every figure is the median of several repeats, and the two things a ratio
compares are measured alternately in the same process run.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def load() -> str:
    """The 1, 5 and 15 minute load averages: on a shared machine the absolute figures depend on them."""
    try:
        return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "load average unknown"


def commit() -> str:
    """The short commit of the checkout the benchmarks run from (with '+changes' when the tree is not clean)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def bench_arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (a short smoke run) and --device."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer repeats and sizes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser


def require_device(device: str) -> torch.device:
    """The device to benchmark on; a missing GPU ends the benchmark cleanly (exit 0) with a printed line."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {device} asked for, and this machine has no CUDA GPU")
        sys.exit(0)
    return torch.device(device)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(functions: dict, repeats: int = 5, warmup: int = 1, device="cpu") -> dict:
    """Each function's (wall, CPU) seconds per repeat, measured in turn (a, b, a, b, ...) so that noise hits all alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def interleaved(functions: dict, repeats: int = 5, warmup: int = 1, device="cpu") -> dict:
    """Median wall seconds of each function, measured in turn (see `interleaved_times`)."""
    times = interleaved_times(functions, repeats, warmup, device)
    return {name: statistics.median(wall for wall, _ in values) for name, values in times.items()}


def matmul_gflops(dtype=torch.float32, size=1024, repeats=5, device="cpu") -> float:
    """This machine's dense matmul rate now (GFLOP/s), the median of `repeats` (size×size)·(size×size) products."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    seconds_each = interleaved({"mm": lambda: [torch.mm(a, b) for _ in range(4)]}, repeats=repeats, device=device)["mm"] / 4
    return 2 * size**3 / seconds_each / 1e9


def matmul_rates(device="cpu", rounds: int = 3, dtypes=(torch.float32, torch.bfloat16)) -> dict:
    """Dense matmul rates (GFLOP/s) of `dtypes` measured now, interleaved, so that a bf16 figure is divided by the
    bf16 rate and not the fp32 one. The best of `rounds`: other work on a shared machine only ever slows a
    measurement down, and a share of the machine's rate must not look larger because the yardstick was slowed."""
    rates = {dtype: [] for dtype in dtypes}
    for _ in range(rounds):
        for dtype in rates:
            rates[dtype].append(matmul_gflops(dtype, repeats=3, device=device))
    return {dtype: max(values) for dtype, values in rates.items()}


def table(headers, rows) -> str:
    """A markdown table (first column left-aligned, the figures right-aligned) that docs can paste as it is."""
    widths = [max(len(str(h)), 3, *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "| " + " | ".join(("-" * (w - 1) + ":") if i else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def flickr8k_like_lengths(count: int, seed: int = 0, longest: int = 40) -> "np.ndarray":
    """Caption lengths in tokens ([CLS] caption [SEP]) drawn like Flickr8k's BERT-tokenised captions: about 12 words
    on average, right-skewed (a few run past 30), each word about one WordPiece, plus the final period and the two
    special tokens. An approximation of the distribution's shape, not a sample of the data set."""
    import numpy as np

    words = 3 + np.random.default_rng(seed).gamma(shape=4.0, scale=2.2, size=count)
    return np.clip(np.round(words).astype(int) + 3, 6, longest)


def caption_pairs(images: int, vocab: int, captions_per_image: int = 5, seed: int = 1):
    """A `datasets.Dataset` of (image_index, input_ids) rows like `tokenize_captions` makes, five captions per
    image with Flickr8k-like lengths: [CLS]=2 ... [SEP]=3, the other ids random."""
    import numpy as np
    from datasets import Dataset

    count = images * captions_per_image
    lengths = flickr8k_like_lengths(count, seed=seed)
    generator = np.random.default_rng(seed)
    ids = [[2, *generator.integers(5, vocab, int(length) - 2).tolist(), 3] for length in lengths]
    return Dataset.from_dict({"image_index": [i // captions_per_image for i in range(count)], "input_ids": ids})


def write_feature_cache(folder: Path, images: int, regions: int = 49, channels: int = 2048) -> Path:
    """A complete feature cache (the on-disk format `FeatureCache` reads: fp16 features.npy, valid.npy, meta.json)
    of random N(0, 1) features; kept and reused when the folder already holds one of that shape."""
    import json

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    shape = [images, regions, channels]
    meta_file = folder / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("shape") == shape:
        return folder
    features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=tuple(shape))
    generator = np.random.default_rng(0)
    for start in range(0, images, 256):
        features[start : start + 256] = generator.standard_normal((min(256, images - start), regions, channels), dtype=np.float32)
    features.flush()
    del features
    np.save(folder / "valid.npy", np.ones(images, dtype=np.uint8))
    meta_file.write_text(json.dumps({"complete": True, "done": images, "num_images": images, "shape": shape, "invalid": []}))
    return folder
