"""Run one benchmark against the code of several git revisions, alternating (A, B, A, B, ...) so that the machine's
drift hits every revision alike, and print each run's summary line.

The benchmark script is this checkout's (the same measurement for every revision); only the `hf_imgcap` package it
imports comes from the revision, checked out into a temporary git worktree.

    python bench/compare_revisions.py 0f38cbc HEAD --bench bench_training.py --rounds 3 --repeats 5
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def git(*args, cwd=REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def run_once(bench: str, source: Path, bench_args: list) -> str:
    # PYTHONPATH first on sys.path: the revision's hf_imgcap shadows an installed (editable) one. The check below
    # makes sure of it rather than trusting it.
    env = dict(os.environ, PYTHONPATH=str(source))
    probe = subprocess.run([sys.executable, "-c", "import hf_imgcap; print(hf_imgcap.__file__)"], env=env, cwd=source,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(probe).resolve().is_relative_to(source.resolve()):
        sys.exit(f"{source}: the benchmark would import hf_imgcap from {probe}, not from this revision")
    result = subprocess.run([sys.executable, str(HERE / bench), *bench_args], env=env, cwd=source, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"{bench} failed on {source}:\n{result.stderr[-3000:]}")
    return result.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions; WORKTREE means this checkout as it is on disk")
    parser.add_argument("--bench", default="bench_training.py")
    parser.add_argument("--rounds", type=int, default=3)
    args, bench_args = parser.parse_known_args(argv)  # the rest goes to the benchmark, e.g. --repeats 5
    with tempfile.TemporaryDirectory() as scratch:
        sources = {}
        for revision in args.revisions:
            if revision == "WORKTREE":
                sources[revision] = REPO
                continue
            commit = git("rev-parse", "--short", revision)
            path = Path(scratch) / commit
            git("worktree", "add", "--detach", str(path), commit)
            sources[f"{revision} ({commit})"] = path
        try:
            outputs = {name: [] for name in sources}
            for round_ in range(args.rounds):
                for name, path in sources.items():
                    output = run_once(args.bench, path, bench_args)
                    outputs[name].append(output)
                    summary = [line for line in output.splitlines() if line.startswith("summary")]
                    print(f"round {round_ + 1}  {name:>24}: {summary[-1] if summary else output[-300:]}", flush=True)
            print()
            for name, runs in outputs.items():  # every round's full table: the spread is the noise
                for round_, output in enumerate(runs, 1):
                    print(f"=== {name}, round {round_} ===\n{output}")
        finally:
            for name, path in sources.items():
                if path != REPO:
                    git("worktree", "remove", "--force", str(path))
    return outputs


if __name__ == "__main__":
    main()
