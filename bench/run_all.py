"""Run every benchmark, one after another in this process, and print their tables.

    python bench/run_all.py            # about 10 minutes on 2 CPU cores
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cache  # noqa: E402
import bench_generation  # noqa: E402
import bench_memory  # noqa: E402
import bench_training  # noqa: E402
from common import machine  # noqa: E402

BENCHMARKS = [
    ("Decoder training (captions/s, forward + backward + Adam step)", bench_training, []),
    ("Caption generation (images/s)", bench_generation, []),
    ("Feature cache build (images/s)", bench_cache, []),
    ("Resident memory while training from a full-size cache", bench_memory, []),
]


def main():
    print(f"# hf-imgcap benchmarks on {machine()}, {time.strftime('%Y-%m-%d')}\n")
    for title, module, argv in BENCHMARKS:
        print(f"## {title}  (python bench/{Path(module.__file__).name})")
        started = time.perf_counter()
        module.main(argv)
        print(f"({time.perf_counter() - started:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
