# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Keep the memory a training step frees in the process, for the next step to reuse.

glibc's malloc gives every freed block above its mmap threshold (32 MB at most, by default) back to the kernel, so
a step's largest tensors (the output layer's (tokens, vocabulary) log-probabilities, the gradients of the embedding
and the output layer: 50–60 MB each with a BERT vocabulary) come back as fresh pages that the kernel zero-fills
on first touch, at every step: tens of thousands of page faults and 7% of a decoder step on a 2-core CPU
(bench/bench_kernels.py). Raising malloc's thresholds keeps those blocks in the heap, as jemalloc or tcmalloc
(which PyTorch's CPU tuning guide recommends) would. The price: resident memory stays at its peak between steps.
"""

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_THRESHOLD = 1 << 30  # 1 GiB: larger than any one tensor of a training step


def keep_freed_memory_for_reuse() -> bool:
    """With glibc on Linux: serve large allocations from the heap and stop returning freed memory to the kernel.
    Returns whether the thresholds were set; elsewhere (another C library, another OS) it does nothing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt take other parameters
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
