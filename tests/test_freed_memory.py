"""train.py keeps the memory a step frees for the next step: a large tensor allocated again after being freed
reuses the same pages instead of faulting in fresh ones from the kernel."""

import os
import platform
import subprocess
import sys

import pytest

PAGE_FAULTS_PER_REALLOCATION = """
import resource, sys, torch
from hf_imgcap.training.freed_memory import keep_freed_memory_for_reuse
if sys.argv[1] == "keep":
    assert keep_freed_memory_for_reuse()
source = torch.ones(64, 1024, 1024 // 4)  # 64 MB, above glibc's largest default mmap threshold
for _ in range(2):
    copy = source.clone(); del copy
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    copy = source.clone(); del copy
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_reallocation(mode: str) -> float:
    # glibc's own defaults: no preloaded allocator, no malloc tuning from the environment
    env = {key: value for key, value in os.environ.items()
           if key not in ("LD_PRELOAD", "GLIBC_TUNABLES") and not key.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", PAGE_FAULTS_PER_REALLOCATION, mode], capture_output=True, text=True,
                            check=True, env=env)
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_freed_large_tensor_is_reused_instead_of_faulted_in_again():
    pages = 64 * 1024 * 1024 // 4096
    assert faults_per_reallocation("default") > pages / 2  # glibc returns it to the kernel: every page faults again
    assert faults_per_reallocation("keep") < pages / 20  # kept in the heap: the same pages, already mapped


def test_train_py_keeps_freed_memory(monkeypatch, capsys):
    import train

    calls = []
    monkeypatch.setattr(train, "keep_freed_memory_for_reuse", lambda: calls.append(True) or True)
    assert train.main(["--help"]) == 0
    assert calls == [True]
