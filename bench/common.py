"""Shared helpers for the benchmarks: medians of interleaved repeats, the machine's matmul rate, a table printer.

The machines are shared and noisy, so every figure is the median of several repeats, and the two things a ratio
compares are measured alternately in the same process run.
"""

import os
import platform
import statistics
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def seconds(fn, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(functions: dict, repeats: int = 5, warmup: int = 1) -> dict:
    """Median seconds of each function, measured in turn (a, b, a, b, ...) so that noise hits all alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_gflops(dtype=torch.float32, size=1024, repeats=5) -> float:
    """This machine's dense matmul rate now (GFLOP/s), the median of `repeats` (size×size)·(size×size) products."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    seconds_each = interleaved({"mm": lambda: [torch.mm(a, b) for _ in range(4)]}, repeats=repeats)["mm"] / 4
    return 2 * size**3 / seconds_each / 1e9


def table(headers, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
