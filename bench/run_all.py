"""Run every benchmark, each in a fresh process (so that one's memory and threads do not count against the next),
and print one set of markdown tables headed by the commit, the machine and its load.

    python bench/run_all.py                 # several minutes on 2 CPU cores
    python bench/run_all.py --quick         # a short smoke run of every benchmark
    python bench/run_all.py --device cuda   # the same comparisons on a GPU (skipped, exit 0, without one)
    python bench/run_all.py --only bench_training.py bench_generation.py

The machines these run on are often shared: every comparison inside a benchmark is interleaved (a, b, a, b, ...),
and each benchmark prints the load average with its results; absolute figures move with the load, ratios much less.
"""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_arguments, commit, load, machine, require_device  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("Decoder training (captions/s)", "bench_training.py"),
    ("What each of the training step's optimisations buys", "bench_ablation.py"),
    ("The kernels' CPU choices: oneDNN products, tanh, freed memory", "bench_kernels.py"),
    ("Feature whitening's share of a training step", "bench_whitening.py"),
    ("Caption generation", "bench_generation.py"),
    ("Resident memory while training from a feature cache", "bench_memory.py"),
    ("Feature cache build (images/s)", "bench_cache.py"),
]


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--only", nargs="+", metavar="SCRIPT", choices=[script for _, script in BENCHMARKS],
                        help="run only these benchmarks")
    args = parser.parse_args(argv)
    require_device(args.device)
    print(f"# hf-imgcap benchmarks at commit {commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"machine: {machine()}; device {args.device}; {load()}\n", flush=True)
    failed = []
    for title, script in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        options = ["--device", args.device] + (["--quick"] if args.quick else [])
        print(f"## {title}\n\n`python bench/{script} {' '.join(options)}`\n", flush=True)
        started = time.perf_counter()
        if subprocess.run([sys.executable, str(HERE / script), *options]).returncode != 0:
            failed.append(script)
        print(f"\n({time.perf_counter() - started:.0f} s; {load()})\n", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
