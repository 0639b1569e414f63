"""Resident memory while training from a full-size feature cache (8,091 Flickr8k images × 49 × 2048 fp16 = 1.6 GB).

Writes a cache of that size (random features, the real on-disk format), then: one pass reading every image's
features through the training dataset, and training steps of the Show-Attend-Tell decoder (vocabulary 30,522,
batch 32) from a shuffled DataLoader. Resident memory (VmRSS) is sampled after every batch. The same is measured
with the cache's page release switched off, to show what it saves.

    python bench/bench_memory.py [--steps 60] [--folder /tmp/hf_imgcap_bench_cache]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402
from hf_imgcap.data.feature_cache import FeatureCache  # noqa: E402
from hf_imgcap.data.training_data import CaptionPairs, collate_captions  # noqa: E402
from datasets import Dataset  # noqa: E402

IMAGES, REGIONS, CHANNELS, VOCAB = 8091, 49, 2048, 30522


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def write_cache(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "meta.json").is_file():
        return folder
    features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(IMAGES, REGIONS, CHANNELS))
    generator = np.random.default_rng(0)
    for start in range(0, IMAGES, 256):
        features[start : start + 256] = generator.standard_normal((min(256, IMAGES - start), REGIONS, CHANNELS), dtype=np.float32)
    features.flush()
    del features
    np.save(folder / "valid.npy", np.ones(IMAGES, dtype=np.uint8))
    (folder / "meta.json").write_text(json.dumps({"complete": True, "done": IMAGES, "num_images": IMAGES, "shape": [IMAGES, REGIONS, CHANNELS], "invalid": []}))
    return folder


def pairs():
    generator = np.random.default_rng(1)
    ids = []
    for _ in range(IMAGES * 5):
        length = int(generator.integers(10, 17))
        ids.append([2, *generator.integers(5, VOCAB, length - 2).tolist(), 3])
    return Dataset.from_dict({"image_index": [i // 5 for i in range(IMAGES * 5)], "input_ids": ids})


def measure(cache_folder, caption_pairs, steps, release) -> dict:
    cache = FeatureCache(cache_folder)
    cache.release_every = 256 if release else 10**12
    examples = CaptionPairs(caption_pairs, features=cache)
    peak = rss_mb()
    # 1. Every image's features read once, in order (what one epoch touches).
    start = time.perf_counter()
    for first in range(0, IMAGES, 64):
        cache.batch(range(first, min(first + 64, IMAGES)))
        peak = max(peak, rss_mb())
    read_seconds = time.perf_counter() - start
    # 2. Training steps from a shuffled DataLoader.
    config = ShowAttendTellConfig(vocab_size=VOCAB, pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
                                  encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, CHANNELS], embedding_size=8))
    model = ShowAttendTellForConditionalGeneration(config).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-4, fused=True)
    loader = torch.utils.data.DataLoader(examples, batch_size=32, shuffle=True, collate_fn=collate_captions)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        batch.pop("image_index")
        loss = model(**batch, return_logits=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        peak = max(peak, rss_mb())
    del model, optimizer
    return {"peak_rss_mb": peak, "read_seconds": read_seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--folder", default="/tmp/hf_imgcap_bench_cache")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    folder = write_cache(Path(args.folder))
    size_gb = (folder / "features.npy").stat().st_size / 1e9
    caption_pairs = pairs()
    released = measure(folder, caption_pairs, args.steps, release=True)
    kept = measure(folder, caption_pairs, args.steps, release=False)
    rows = [
        ["pages released every 256 reads (hf-imgcap)", f"{released['peak_rss_mb']:.0f}", f"{IMAGES / released['read_seconds']:.0f}"],
        ["pages kept mapped", f"{kept['peak_rss_mb']:.0f}", f"{IMAGES / kept['read_seconds']:.0f}"],
    ]
    print(table(["feature cache", "peak RSS (MB)", "cache reads (images/s)"], rows))
    print(f"summary: training from a {size_gb:.2f} GB cache of {IMAGES} images peaks at {released['peak_rss_mb'] / 1024:.2f} GB "
          f"resident ({kept['peak_rss_mb'] / 1024:.2f} GB without releasing pages; goal < 3 GB)")
    return {"released": released, "kept": kept}


if __name__ == "__main__":
    main()
