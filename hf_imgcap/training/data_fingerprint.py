# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What a run trains and is scored on, in a few bytes: per split, the number of images and a hash of their ids and
captions. A checkpoint records it, so that a resumed run can refuse other data (another --dataset, the same folder
with other files, other --max_train_images or carved splits of another --seed) instead of mixing two runs."""

import hashlib
import json

SPLITS = ("train", "validation", "test")


def split_fingerprint(split) -> dict:
    """`{"images": n, "sha256": ...}` of a split with `image_id` and `captions` columns (the images are not decoded)."""
    content = json.dumps([[str(image_id), list(captions)] for image_id, captions in zip(split["image_id"], split["captions"])],
                         ensure_ascii=False)
    return {"images": len(split), "sha256": hashlib.sha256(content.encode("utf-8")).hexdigest()}


def data_fingerprint(dataset: str, splits: dict) -> dict:
    """The record of `splits` (name -> split) read from --dataset `dataset`."""
    return {"dataset": dataset, "splits": {name: split_fingerprint(splits[name]) for name in SPLITS if name in splits}}


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """One line per split whose images or captions differ between `saved` (the run being resumed) and `current`."""
    differences = []
    for name in SPLITS:
        before, now = saved.get("splits", {}).get(name), current["splits"].get(name)
        if before is None or now is None or before == now:
            continue
        if before["images"] != now["images"]:
            differences.append(f"{name} split: {now['images']} images (the run being resumed had {before['images']} images)")
        else:
            differences.append(f"{name} split: other images or captions ({now['images']} images, as in the run being resumed)")
    return differences
