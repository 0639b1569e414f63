"""The CPU choices inside the decoder's kernels, each measured against the plain alternative, interleaved:

- a recurrence's per-step product (a few rows times a 2048 × 2048 or 4608 × 512 weight, forward `x @ W.T`) as a BLAS
  matmul (`torch.matmul`) and through oneDNN's inner product (`fast_linear`), at 32 down to 1 rows;
- the output layer's forward (436 tokens × vocabulary 30,522, about one batch of captions) the same two ways;
- the same per-step products' input gradients (`grad @ W`): BLAS reading the weight as stored, and oneDNN, which
  needs `W.T` contiguous (one transposing copy per forward, timed in its own column; over a caption batch's ~26
  positions it is made once), with the kernel's choice on this CPU (`_mkl_fast_paths`);
- tanh of a (32, 49, 512) attention energy: `torch.tanh` against 2σ(2x) − 1 in place, and the largest difference,
  with generation's choice on this CPU (`fast_tanh`);
- page faults and seconds per decoder training step (vocabulary 30,522) with glibc's default malloc thresholds and
  with `keep_freed_memory_for_reuse` (what train.py sets), each in a fresh process.

    python bench/bench_kernels.py [--quick] [--repeats 5]
"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_arguments, interleaved, load, machine, matmul_rates, require_device, table  # noqa: E402

from hf_imgcap.models.show_attend_tell.fused_teacher_forcing import _mkl_fast_paths, _tanh, fast_linear  # noqa: E402

STEP_WEIGHTS = {"context 2048 -> 2048": (2048, 2048), "hidden 512 -> 4608": (4608, 512)}


def products(repeats: int, quick: bool) -> list:
    rows = []
    rate = matmul_rates(dtypes=(torch.float32,))[torch.float32]
    shapes = [(name, m, out, inp) for name, (out, inp) in STEP_WEIGHTS.items() for m in ((32, 4) if quick else (32, 16, 4, 1))]
    shapes.append(("output layer 512 -> 30522", 436, 30522, 512))
    for name, m, out, inp in shapes:
        x, weight = torch.randn(m, inp), torch.randn(out, inp)
        with torch.no_grad():
            times = interleaved({"blas": lambda: torch.matmul(x, weight.t()), "onednn": lambda: fast_linear(x, weight)},
                                repeats=repeats)
        flops = 2 * m * out * inp
        rows.append([name, m, f"{flops / times['blas'] / 1e9:.0f}", f"{flops / times['onednn'] / 1e9:.0f}",
                     f"{times['blas'] / times['onednn']:.2f}x"])
    rows.append(["dense 1024 x 1024 x 1024 matmul", "", f"{rate:.0f}", "", ""])
    return rows


def input_grad_products(repeats: int, quick: bool) -> list:
    rows = []
    for name, (out, inp) in STEP_WEIGHTS.items():
        weight = torch.randn(out, inp)
        copy = interleaved({"transpose": lambda: weight.t().contiguous()}, repeats=repeats)["transpose"]
        transposed = weight.t().contiguous()
        for m in ((32, 4) if quick else (32, 16, 4, 1)):
            grad = torch.randn(m, out)
            with torch.no_grad():
                times = interleaved({"blas": lambda: grad @ weight, "onednn": lambda: fast_linear(grad, transposed)}, repeats=repeats)
            flops = 2 * m * out * inp
            rows.append([name, m, f"{flops / times['blas'] / 1e9:.0f}", f"{flops / times['onednn'] / 1e9:.0f}",
                         f"{times['blas'] / times['onednn']:.2f}x", f"{copy * 1e3:.2f}"])
    return rows


def tanh_row(repeats: int) -> list:
    energy = torch.randn(32, 49, 512) * 3
    scratch = torch.empty_like(energy)
    times = interleaved({"tanh": lambda: torch.tanh(energy), "sigmoid": lambda: _tanh(scratch.copy_(energy))}, repeats=repeats * 10)
    difference = (torch.tanh(energy) - _tanh(energy.clone())).abs().max().item()
    return [f"{times['tanh'] * 1e3:.2f}", f"{times['sigmoid'] * 1e3:.2f}", f"{times['tanh'] / times['sigmoid']:.2f}x", f"{difference:.1e}"]


CHILD = """
import json, resource, sys, time, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
import bench_training as bt
from hf_imgcap.data.feature_cache import FeatureCache
from hf_imgcap.training.freed_memory import keep_freed_memory_for_reuse
kept = keep_freed_memory_for_reuse() if sys.argv[2] == "kept" else False
cache = FeatureCache(bt.write_feature_cache(Path(tempfile.mkdtemp()) / "cache", 64))
batch = bt.fixed_batch(bt.training_loader(cache, 30522, 64, 0), "cpu")
model, optimizer = bt.build_ours(30522, cache, "cpu")
step = lambda: bt.model_step(lambda: bt.ours_loss(model, batch), optimizer)
for _ in range(2):
    step()
seconds, faults = [], []
for _ in range(int(sys.argv[3])):
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    step()
    seconds.append(time.perf_counter() - started)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "seconds": seconds, "faults": faults}))
"""


def freed_memory_rows(repeats: int) -> list:
    results = {}
    for round_ in range(2):  # alternating fresh processes: the machine's drift hits both alike
        for mode in ("default", "kept"):
            output = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).resolve().parent), mode, str(repeats)],
                                    capture_output=True, text=True, check=True).stdout
            run = json.loads(output.strip().splitlines()[-1])
            results.setdefault(mode, {"seconds": [], "faults": [], "kept": run["kept"]})
            results[mode]["seconds"] += run["seconds"]
            results[mode]["faults"] += run["faults"]
    rows = []
    for mode, label in (("default", "glibc defaults"), ("kept", "keep_freed_memory_for_reuse()")):
        figures = results[mode]
        applied = "" if mode == "default" or figures["kept"] else " (not applied: not glibc)"
        rows.append([label + applied, f"{statistics.median(figures['faults']):.0f}", f"{statistics.median(figures['seconds']) * 1e3:.0f}"])
    return rows


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; 2 with --quick)")
    args = parser.parse_args(argv)
    if require_device(args.device).type != "cpu":
        print("skipped: these are the CPU paths' choices (oneDNN, glibc malloc); nothing to compare on a GPU")
        return
    repeats = args.repeats or (2 if args.quick else 5)
    print(f"machine: {machine()}; {load()}\n")
    print(table(["per-step product (forward)", "rows", "BLAS GFLOP/s", "oneDNN GFLOP/s", "oneDNN speed-up"], products(repeats, args.quick)))
    print()
    print(table(["per-step product (input gradient)", "rows", "BLAS GFLOP/s", "oneDNN GFLOP/s", "oneDNN speed-up",
                 "W.T copy ms"], input_grad_products(repeats, args.quick)))
    print(f"the kernel computes input gradients through {'BLAS' if _mkl_fast_paths() else 'oneDNN'} on this CPU")
    print()
    print(table(["tanh of a (32, 49, 512) energy", "torch.tanh ms", "2σ(2x) − 1 ms", "speed-up", "largest difference"],
                [["attention, one step", *tanh_row(repeats)]]))
    print(f"generation's attention computes tanh with {'torch.tanh' if _mkl_fast_paths() else '2σ(2x) − 1'} on this CPU")
    print()
    print(table(["decoder training step, vocab 30522, model only", "page faults per step", "ms per step"], freed_memory_rows(repeats)))
    print(f"\nmedians of {repeats} interleaved repeats; {load()}")


if __name__ == "__main__":
    main()
