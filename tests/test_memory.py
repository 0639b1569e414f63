"""Long jobs stream: captioning a folder with the CLI and building the feature cache use the same memory for
2,000 images as for 200.

Measured in a fresh process (so nothing else in the test session counts), per job: the peak resident memory
(sampled every 5 ms from /proc) and the peak of Python allocations (tracemalloc; includes NumPy buffers). The
images are 96×96, so keeping each decoded image (27 KB) or its pixel tensor (49 KB) around would add 50-100 MB
over 2,000 images and fail the RSS bound (checked: keeping every decoded image adds 80 MB); the tracemalloc bound
catches ~1 KB of Python objects kept per image.

The child fixes glibc's malloc thresholds: by default glibc raises its mmap threshold as large blocks are freed,
after which freed memory stays in the heap and the resident set creeps towards a plateau by an amount that varies
from run to run (25-190 MB between 200 and 2,000 images here, with nothing kept). With fixed thresholds it follows
the memory in use: 6-12 MB of growth, the same in every run.
"""

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_fresh_python, tiny_model, tiny_processor

COUNTS = {"warmup": 16, "small": 200, "large": 2000}
RSS_BOUND_MB = 30
PYTHON_BOUND_MB = 2

CHILD = r"""
import ctypes, io, json, os, sys, threading, time, tracemalloc
from pathlib import Path

try:  # glibc: fixed thresholds (its initial values) turn off the dynamic mmap threshold; see the module docstring
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: blocks this large are mmapped, and unmapped when freed
    _libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD: free memory at the top of the heap beyond this is returned
except (OSError, AttributeError):  # another C library: its own behaviour
    pass

MODEL, IMAGES, CACHE = __PATHS__  # filled in by the test
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class PeakRSS:
    # A sampling thread: ru_maxrss is a lifetime maximum and cannot give one peak per job.
    def __enter__(self):
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


class LineCounter(io.TextIOBase):
    # Stands in for stdout: counts the result lines without keeping them.
    lines = 0

    def write(self, text):
        self.lines += text.count("\n")
        return len(text)


def measure(job) -> dict:
    tracemalloc.reset_peak()
    with PeakRSS() as rss:
        started = time.perf_counter()
        done = job()
        seconds = time.perf_counter() - started
    return {"rss_peak_mb": rss.peak, "python_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20,
            "seconds": seconds, "done": done}


def caption(folder):
    from hf_imgcap.cli import main

    def job():
        counter = sys.stdout = LineCounter()
        try:
            code = main(["caption", folder, "--model", MODEL, "--batch-size", "64", "--num-beams", "1",
                         "--max-new-tokens", "4", "--json"])
        finally:
            sys.stdout = sys.__stdout__
        return {"exit_code": code, "captioned": counter.lines}
    return job


def cache(folder, out):
    import datasets
    from transformers import AutoModel, AutoProcessor
    import hf_imgcap  # registers the auto classes
    from hf_imgcap.data.feature_cache import build_feature_cache

    model, processor = AutoModel.from_pretrained(MODEL).eval(), AutoProcessor.from_pretrained(MODEL)

    def job():
        paths = sorted(str(path) for path in Path(folder).iterdir())
        dataset = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
        built = build_feature_cache(model, processor, dataset, out, batch_size=64, num_workers=0,
                                    show_progress=False)
        return {"cached": int(built.valid.sum())}
    return job


import torch
torch.set_num_threads(1)  # tiny model; threads only wait for each other on a shared machine
tracemalloc.start()
results = {}
for name in ("warmup", "small", "large"):  # warm-up first: one-off allocations must not count for "small"
    results[f"caption_{name}"] = measure(caption(os.path.join(IMAGES, name)))
for name in ("warmup", "small", "large"):
    results[f"cache_{name}"] = measure(cache(os.path.join(IMAGES, name), os.path.join(CACHE, name)))
print("RESULT" + json.dumps(results))
"""


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):  # all different, two colours each: small PNGs, 27 KB decoded
        image = Image.new("RGB", (96, 96), ((index * 37) % 256, (index * 91) % 256, (index * 13) % 256))
        image.paste((255 - index % 256, 40, 90), (0, 0, 48, 96))
        image.save(folder / f"{index:05d}.png")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc to sample resident memory")
    root = tmp_path_factory.mktemp("memory")
    model, processor = tiny_model(), tiny_processor()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    for name, count in COUNTS.items():
        write_images(root / "images" / name, count)
    paths = repr([str(root / "model"), str(root / "images"), str(root / "cache")])
    result = run_fresh_python(CHILD.replace("__PATHS__", paths), cwd=root, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.split("RESULT", 1)[1])
    print(json.dumps(results, indent=1), file=sys.stderr)  # shown with -s or on failure: the numbers behind the bounds
    return results


@pytest.mark.slow
@pytest.mark.parametrize("job", ["caption", "cache"])
def test_memory_does_not_grow_with_the_number_of_images(measured, job):
    small, large = measured[f"{job}_small"], measured[f"{job}_large"]
    if job == "caption":
        assert small["done"] == {"exit_code": 0, "captioned": COUNTS["small"]}
        assert large["done"] == {"exit_code": 0, "captioned": COUNTS["large"]}
    else:
        assert small["done"] == {"cached": COUNTS["small"]} and large["done"] == {"cached": COUNTS["large"]}
    rss_growth = large["rss_peak_mb"] - small["rss_peak_mb"]
    python_growth = large["python_peak_mb"] - small["python_peak_mb"]
    numbers = f"{job}: 200 images {small}, 2000 images {large}"
    assert rss_growth < RSS_BOUND_MB, numbers
    assert python_growth < PYTHON_BOUND_MB, numbers
