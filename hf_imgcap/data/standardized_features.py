# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The decoder's input of every cached image, computed once: a feature cache standardised and whitened by a model.

A training run reads each image's features once per caption, every epoch (5 captions per image in Flickr8k and COCO).
With `config.whiten_features` the model turns them into its input with a `(regions, channels) × (channels, channels)`
product (49 × 2048 × 2048), about a tenth of a training step when it runs per caption. The statistics never change
during a run (they are buffers, fixed before training), so the decoder's input is a pure function of the image and
of them: it is computed once per image and kept next to the feature cache, in the same fp16 format, memory-mapped and
shared by every process of a run (the features of every image are at most as large as the cache: 1.6 GB for Flickr8k).

A kept array lives in `<feature cache>/standardized/<statistics key>/`; the key hashes everything that determines it
(the model's standardisation buffers, its code, its dtype), so other statistics never reuse a stale array. The folder
is a feature cache (meta.json, features.npy, valid.npy) that `FeatureCache` reads; it is complete once its meta.json
is written, and one builder at a time writes it (a file lock), so the processes of a run build it once.
"""

import hashlib
import inspect
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from hf_imgcap.data.feature_cache import FeatureCache, _atomic_write, _atomic_write_json, _read_meta

logger = logging.getLogger(__name__)

# Bump when what is stored changes meaning.
STANDARDIZED_FORMAT = "decoder-input-fp16-v1"
STATISTICS_BUFFERS = ("feature_mean", "feature_std", "feature_scale", "feature_whitening")
# The largest value fp16 holds: a decoder input beyond it cannot be kept in the cache's format.
FP16_MAX = float(np.finfo(np.float16).max)


class StandardizedFeatureCache(FeatureCache):
    """A `FeatureCache` whose rows are the decoder's input (`model.standardize_features` of the cached features):
    a model takes them as `image_embeds`, as they are."""

    model_input = "image_embeds"


def statistics_key(model) -> str:
    """Hash of everything that determines the decoder's input from the cached features: the format, the model's
    dtype, its standardisation's code and buffers."""
    digest = hashlib.sha256(STANDARDIZED_FORMAT.encode())
    digest.update(str(model.dtype).encode())
    try:  # the formula itself: an upgrade that changes it must not reuse arrays of the old one
        digest.update(inspect.getsource(type(model)._standardize).encode())
    except (OSError, TypeError):
        digest.update(type(model)._standardize.__qualname__.encode())
    for name in STATISTICS_BUFFERS:
        buffer = getattr(model, name, None)
        if buffer is not None:
            digest.update(name.encode())
            digest.update(buffer.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def standardized_feature_cache(cache: FeatureCache, model, chunk_size: int = 256) -> StandardizedFeatureCache:
    """The decoder's input of every valid image of `cache` under `model`'s statistics: read when it was kept before,
    otherwise computed once (on the model's device, `chunk_size` images at a time) and kept. Every process of a
    multi-process run may call this: one computes, the others wait for it and read."""
    folder = Path(cache.folder) / "standardized" / statistics_key(model)[:16]
    if _is_complete(folder):
        return StandardizedFeatureCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / "build.lock"):
        if not _is_complete(folder):
            _build(cache, model, folder, chunk_size)
    return StandardizedFeatureCache(folder)


def _is_complete(folder: Path) -> bool:
    try:
        meta = _read_meta(folder)
    except ValueError:  # derived data: a damaged description is rebuilt
        return False
    return bool(meta and meta.get("complete"))


@torch.no_grad()
def _build(cache: FeatureCache, model, folder: Path, chunk_size: int):
    started = time.perf_counter()
    shape = tuple(cache.features.shape)
    features_file = folder / "features.npy"
    partial = folder / f".features.{os.getpid()}.npy.tmp"
    # A zero-filled (sparse) file with the .npy header; rows are then written in place, so memory stays one chunk.
    header_size = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape).offset
    row_bytes = int(np.prod(shape[1:])) * 2
    valid = np.flatnonzero(cache.valid)
    try:
        with open(partial, "r+b") as out:
            for start in range(0, len(valid), chunk_size):
                indices = valid[start : start + chunk_size]
                inputs = model.standardize_features(cache.batch(indices).to(model.device)).float()
                _check_representable(inputs, indices, cache)
                rows = inputs.to("cpu", torch.float16).numpy()
                for row, index in zip(rows, indices):  # valid images are sorted: mostly sequential writes
                    out.seek(header_size + int(index) * row_bytes)
                    out.write(row.tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, features_file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _atomic_write(folder / "valid.npy", lambda handle: np.save(handle, cache.valid.astype(np.uint8)))
    _atomic_write_json(folder / "meta.json", {
        "complete": True, "done": shape[0], "shape": list(shape), "format": STANDARDIZED_FORMAT,
        "features_of": str(cache.folder), "whitened": bool(getattr(model.config, "whiten_features", False)),
    })
    logger.info("decoder input of %d images (standardised%s once per image) computed in %.1f s, kept in %s", len(valid),
                " and whitened" if model.config.whiten_features else "", time.perf_counter() - started, folder)


def _check_representable(inputs: torch.Tensor, indices, cache: FeatureCache):
    """Refuse, naming the image, a decoder input fp16 cannot hold (the per-caption path would compute it in fp32)."""
    bad = ~torch.isfinite(inputs) | (inputs.abs() > FP16_MAX)
    if bad.any():
        image = int(indices[int(bad.flatten(1).any(1).nonzero()[0])])
        raise ValueError(f"feature cache {cache.folder}: image {image}'s standardised features are not finite or exceed "
                         f"fp16's range ({FP16_MAX:g}); check the feature statistics (model.set_feature_statistics)")


__all__ = ["StandardizedFeatureCache", "standardized_feature_cache", "statistics_key"]
