"""Resident memory while training from a feature cache, each variant in a fresh process, at two cache sizes.

Writes caches of random features in the real on-disk format (fp16, 49 × 2048 per image: 8,091 images = Flickr8k =
1.6 GB), then for each (cache size, page release on / off) starts a new Python process that reads every image's
features once (what an epoch touches) and runs training steps of the decoder (vocabulary 30,522, batch 32) from
train.py's shuffled DataLoader. It samples after every batch, and reports the peaks of:
- RssAnon: the process's own memory (model, optimizer, batches);
- RssFile: pages of mapped files resident in the process: the libraries (torch's alone are hundreds of MB) and the
  cache's memory map, hence its growth during the run too (file pages are also page cache, which the kernel can drop:
  they cost the machine less than anonymous memory);
- the cgroup's memory.current when readable, else MemTotal − MemAvailable: the whole machine's (or container's)
  memory in use, which includes every other process on it, so only its growth during the run says something.

    python bench/bench_memory.py [--quick] [--sizes 2000 8091] [--steps 40] [--folder /tmp/hf_imgcap_bench_caches]
"""

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_arguments, caption_pairs, load, machine, require_device, table, write_feature_cache  # noqa: E402

from hf_imgcap.data.feature_cache import FeatureCache  # noqa: E402

VOCAB, CHANNELS = 30522, 2048
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory.current")


def process_memory_mb() -> dict:
    """VmRSS, RssAnon and RssFile of this process (MB), from /proc/self/status."""
    wanted = {"VmRSS", "RssAnon", "RssFile"}
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key = line.split(":", 1)[0]
            if key in wanted:
                values[key] = int(line.split()[1]) / 1024
    return values


def machine_memory_mb() -> tuple[str, float]:
    """(what was read, MB in use): the cgroup's memory.current when readable, else MemTotal − MemAvailable."""
    try:
        return "cgroup memory.current", int(CGROUP_MEMORY.read_text()) / 2**20
    except (OSError, ValueError):
        with open("/proc/meminfo") as meminfo:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in meminfo}
        return "MemTotal - MemAvailable", (fields["MemTotal"] - fields["MemAvailable"]) / 1024


class Peaks:
    def __init__(self):
        self.source, self.machine_start = machine_memory_mb()
        self.peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0, "machine": self.machine_start}
        self.file_start = process_memory_mb()["RssFile"]  # the mapped libraries (torch's alone are hundreds of MB)

    def sample(self):
        for key, value in process_memory_mb().items():
            self.peak[key] = max(self.peak[key], value)
        self.peak["machine"] = max(self.peak["machine"], machine_memory_mb()[1])


def child(folder: Path, images: int, steps: int, release: bool) -> dict:
    """One variant, in this (fresh) process."""
    import torch

    from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration
    from hf_imgcap.data.training_data import CaptionPairs, collate_captions
    from hf_imgcap.training.freed_memory import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()  # as train.py does
    peaks = Peaks()
    cache = FeatureCache(folder)
    if not release:
        cache.release_every = 10**12
    # 1. Every image's features read once, in order (what one epoch touches).
    started = time.perf_counter()
    for first in range(0, images, 64):
        cache.batch(range(first, min(first + 64, images)))
        peaks.sample()
    read_seconds = time.perf_counter() - started
    # 2. Training steps as train.py takes them: shuffled DataLoader, gradient clipping, fused Adam.
    config = ShowAttendTellConfig(vocab_size=VOCAB, pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
                                  encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, CHANNELS], embedding_size=8))
    model = ShowAttendTellForConditionalGeneration(config).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-4, fused=True)
    loader = torch.utils.data.DataLoader(CaptionPairs(caption_pairs(images, VOCAB), features=cache), batch_size=32,
                                         shuffle=True, collate_fn=collate_captions)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        batch.pop("image_index")
        model(**batch, return_logits=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad()
        peaks.sample()
    return {**peaks.peak, "file_start": peaks.file_start, "machine_start": peaks.machine_start, "machine_source": peaks.source,
            "reads_per_s": images / read_seconds}


def run_fresh(folder: Path, images: int, steps: int, release: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), "--images", str(images), "--steps", str(steps)]
    result = subprocess.run(command + ([] if release else ["--keep-pages"]), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--sizes", type=int, nargs=2, default=None, help="cache sizes in images (default 2000 8091; 300 600 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per variant (default 40; 5 with --quick)")
    parser.add_argument("--folder", default="/tmp/hf_imgcap_bench_caches", help="where the caches are written (kept for reuse)")
    parser.add_argument("--child", help=argparse_hidden())
    parser.add_argument("--images", type=int, help=argparse_hidden())
    parser.add_argument("--keep-pages", action="store_true", help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child), args.images, args.steps, release=not args.keep_pages)))
        return None
    require_device(args.device)
    if args.device != "cpu":
        print(f"note: memory is measured on the CPU path; --device {args.device} does not change it")
    sizes = args.sizes or ([300, 600] if args.quick else [2000, 8091])
    steps = args.steps or (5 if args.quick else 40)
    print(f"machine: {machine()}; {load()}\n")
    rows, source = [], None
    for images in sizes:
        folder = write_feature_cache(Path(args.folder) / f"cache_{images}", images)
        size_gb = (folder / "features.npy").stat().st_size / 1e9
        for release in (True, False):
            result = run_fresh(folder, images, steps, release)
            source = result["machine_source"]
            rows.append([f"{images} images ({size_gb:.2f} GB)", f"every {FeatureCache.release_every} reads (hf-imgcap)" if release else "kept mapped",
                         f"{result['RssAnon']:.0f}", f"{result['RssFile']:.0f} ({result['RssFile'] - result['file_start']:+.0f})", f"{result['VmRSS']:.0f}",
                         f"{result['machine'] - result['machine_start']:+.0f}", f"{result['reads_per_s']:.0f}"])
    print(table(["cache", "pages released", "peak RssAnon (MB)", "peak RssFile (MB) (growth)", "peak VmRSS (MB)",
                 f"growth of {source} (MB)", "cache reads (images/s)"], rows))
    print(f"\neach row a fresh process; {steps} training steps (vocab {VOCAB}, batch 32) after one read of every image; {load()}")
    print(f"summary: training from the {sizes[-1]}-image cache peaks at {rows[-2][2]} MB anonymous + {rows[-2][3]} MB file-backed "
          f"resident memory with page release ({rows[-1][3]} MB file-backed without)")
    return rows


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
