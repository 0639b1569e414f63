"""Run every benchmark, each in a fresh process (so that one's memory does not count against the next), and
print their tables.

    python bench/run_all.py            # about 10 minutes on 2 CPU cores
"""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("Decoder training (captions/s, forward + backward + Adam step)", "bench_training.py"),
    ("Caption generation (images/s)", "bench_generation.py"),
    ("Feature cache build (images/s)", "bench_cache.py"),
    ("Resident memory while training from a full-size cache", "bench_memory.py"),
]


def main():
    print(f"# hf-imgcap benchmarks on {machine()}, {time.strftime('%Y-%m-%d')}\n", flush=True)
    failed = []
    for title, script in BENCHMARKS:
        print(f"## {title}  (python bench/{script})", flush=True)
        started = time.perf_counter()
        if subprocess.run([sys.executable, str(HERE / script)]).returncode != 0:
            failed.append(script)
        print(f"({time.perf_counter() - started:.0f} s)\n", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
