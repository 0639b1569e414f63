# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Run the frozen encoder once per image and keep its output on disk.

The encoder is frozen, so its output is a pure function of the image: compute it once per image (not per
caption, not per epoch), store the `(regions, channels)` map in fp16 (7×7×2048×2 B = 200 KB per image:
1.6 GB for Flickr8k, 25 GB for COCO) and memory-map it when reading, so it is never all in RAM.

A cache lives in `<cache_dir>/<encoder key>/<images key>/` where the encoder key hashes the encoder weights,
the image preprocessing and the feature format, and the images key hashes the image files (path, size,
modification time). A changed encoder or preprocessing never reuses stale features; an interrupted build
resumes where it stopped; a cache is only used once its `meta.json` says it is complete.

Several builders (training runs, an `evaluate` run) may share one cache folder: a file lock lets one of them
build a given cache while the others wait and then reuse it, and every file that records progress is replaced
atomically (a unique temporary name, then `os.replace`), so a kill at any moment leaves a cache that either resumes
or is refused with a message naming it.

The processes of one multi-process run (`accelerate launch`, passing `accelerator=`) build a cache together: each
encodes its shard of the images into the shared `features.npy` (disjoint rows), records its progress in its own
`shard-<rank>-of-<N>.json`, and the main process marks the cache complete once every shard is done. Shards are
whole batches, so every image is encoded in the same batch as in a one-process build: the cache holds the same
images with the same valid mask, and features equal up to fp16 rounding (a process may run the convolutions with
another thread count, which sums in another order), N times sooner.
"""

import hashlib
import json
import logging
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, Image
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from hf_imgcap.data.encoder_inference import image_features_for_inference
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import (
    STANDARDIZE_PER,
    WHITENING_EPSILON,
    standard_deviation,
    whitening_matrix,
)


logger = logging.getLogger(__name__)

# Bump when what is stored changes meaning (e.g. the normalisation in get_image_features).
FEATURE_FORMAT_VERSION = "rms-normalized-fp16-v1"
# statistics.npz: per-(region, channel) mean and variance. Version 1 (no "format" key) held the mean and one scale.
STATISTICS_FORMAT = "mean-variance-v2"
# covariance.npz: the (channels, channels) covariance around the per-(region, channel) mean, for feature whitening.
COVARIANCE_FORMAT = "channel-covariance-v1"


# ---------------------------------------------------------------------------------------------- keys
def encoder_fingerprint(model, processor, encoder_dtype=None) -> str:
    """Hash of everything that determines the features: encoder weights, preprocessing, feature format, and the
    autocast dtype of the encoder pass when there is one."""
    digest = hashlib.sha256(FEATURE_FORMAT_VERSION.encode())
    if encoder_dtype is not None:
        digest.update(f"autocast {encoder_dtype}".encode())
    digest.update(str(model.config.image_size).encode())
    digest.update(processor.image_processor.to_json_string().encode())
    for name, tensor in sorted(model.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def images_fingerprint(dataset: Dataset) -> str:
    """Hash of a split's images, in order: a file by its path, size and modification time; an image stored inline
    in Arrow (as on the Hub) by its bytes (read from the memory map; a fast hash next to encoding it)."""
    column = _image_structs(dataset)
    digest = hashlib.sha256()
    for chunk in column.chunks:
        paths, blobs = pc.struct_field(chunk, "path").to_pylist(), pc.struct_field(chunk, "bytes")
        for path, blob in zip(paths, blobs):
            if blob.is_valid:
                digest.update(hashlib.blake2b(blob.as_buffer(), digest_size=16).digest())
                continue
            try:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except (OSError, TypeError):  # a missing file / no path: the build reports it; it must not abort the key
                digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def _image_structs(dataset: Dataset):
    """The `image` column as Arrow `{bytes, path}` structs, in the dataset's row order, without reading the bytes
    into Python."""
    return dataset.cast_column("image", Image(decode=False)).with_format("arrow")["image"]


# ---------------------------------------------------------------------------------------------- reading
class FeatureCache:
    """A complete cache: `cache[i]` is image i's `(regions, channels)` fp16 tensor, read from a memory map.

    Pages of a memory map that have been read count towards the process's resident memory until they are
    released, so every `release_every` reads the mapping is told it may drop them (`MADV_DONTNEED`; the data
    stays in the OS page cache). Resident memory therefore stays bounded whatever the cache size (Flickr8k
    1.6 GB, COCO 25 GB). Pickling (DataLoader workers) carries only the folder; the worker maps the file again.
    """

    # Images read between releases. A read can map a whole page-cache folio around it (up to 2 MB on recent Linux
    # kernels, ten times a 7×7×2048 fp16 image): at most ~64 MB mapped at once, for one system call per 32 reads.
    release_every = 32
    model_input = "encoder_hidden_states"  # the model argument its rows are (the encoder's features, to standardise)

    def __init__(self, folder):
        self.folder = Path(folder)
        self._reads = 0
        self.meta = _read_meta(self.folder)
        if self.meta is None:
            raise ValueError(f"{self.folder} is not a feature cache (it has no meta.json)")
        if not self.meta.get("complete"):
            raise ValueError(f"feature cache {self.folder} is incomplete ({self.meta.get('done', 0)} of {self.meta.get('num_images')} "
                             "images): building it again resumes it")
        shape = tuple(self.meta.get("shape", ()))
        self.features = _load_array(self.folder, "features.npy", shape, np.float16, mmap_mode="r")
        self.valid = _load_array(self.folder, "valid.npy", shape[:1], np.uint8).astype(bool)

    def __len__(self):
        return self.features.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        features = torch.from_numpy(np.array(self.features[index]))
        self._count_reads(1)
        return features

    def batch(self, indices) -> torch.Tensor:
        """Features of several images as one `(batch, regions, channels)` fp16 tensor (sorted reads are faster)."""
        indices = np.asarray(indices)
        features = torch.from_numpy(self.features[indices])
        self._count_reads(len(indices))
        return features

    def _count_reads(self, count):
        self._reads += count
        if self._reads >= self.release_every:
            self._reads = 0
            mapping = getattr(self.features, "_mmap", None)
            if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
                mapping.madvise(mmap.MADV_DONTNEED)

    def __getstate__(self):
        return {"folder": self.folder}

    def __setstate__(self, state):
        self.__init__(state["folder"])

    def statistics(self, chunk_size: int = 256, per: str = STANDARDIZE_PER) -> tuple[torch.Tensor, torch.Tensor]:
        """What `model.set_feature_statistics` takes, over the valid images: the per-(region, channel) mean and the
        `(regions, channels)` standard deviation to divide by (see `standard_deviation` for `per` and the floor).
        The mean and variance are computed once in a streaming pass, then kept in the cache's statistics.npz."""
        mean, variance = self._moments(chunk_size)
        return mean, standard_deviation(variance, per=per)

    def _moments(self, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-(region, channel) mean and variance (over images), read from statistics.npz or computed and kept there.
        A file of an earlier version (one global scale, no variance) cannot give per-channel statistics: recomputed."""
        stats_file = self.folder / "statistics.npz"
        if stats_file.is_file():
            try:
                with np.load(stats_file) as stats:
                    if str(stats["format"]) == STATISTICS_FORMAT:
                        return torch.from_numpy(stats["mean"]), torch.from_numpy(stats["variance"])
                    logger.info("%s is of another version (%s); computing the statistics again", stats_file, stats["format"])
            except KeyError:
                logger.info("%s is from an earlier version (one global scale); computing per-channel statistics", stats_file)
            except (OSError, ValueError, EOFError) as error:  # derived data: recompute it
                logger.warning("%s is damaged (%s); computing the statistics again", stats_file, error)
        valid = np.flatnonzero(self.valid)
        if len(valid) == 0:
            raise ValueError(f"feature cache {self.folder} has no valid image to compute statistics from")
        total = np.zeros(self.features.shape[1:], dtype=np.float64)
        total_sq = np.zeros(self.features.shape[1:], dtype=np.float64)
        for start in range(0, len(valid), chunk_size):
            chunk = self.batch(valid[start : start + chunk_size]).numpy().astype(np.float64)
            total += chunk.sum(0)
            total_sq += np.square(chunk).sum(0)
        mean = total / len(valid)
        variance = np.maximum(total_sq / len(valid) - np.square(mean), 0.0).astype(np.float32)
        mean = mean.astype(np.float32)
        _atomic_save_npz(stats_file, mean=mean, variance=variance, num_images=np.int64(len(valid)),
                         format=np.str_(STATISTICS_FORMAT))
        return torch.from_numpy(mean), torch.from_numpy(variance)

    def whitening(self, std: torch.Tensor, epsilon: float = WHITENING_EPSILON, chunk_size: int = 256) -> torch.Tensor:
        """The `(channels, channels)` ZCA matrix that `model.set_feature_statistics(mean, std, whitening)` takes for
        `std` from `statistics()` (see `whitening_matrix`). The covariance is computed once, kept in covariance.npz."""
        return whitening_matrix(self._channel_covariance(chunk_size), std, epsilon)

    def _channel_covariance(self, chunk_size: int) -> torch.Tensor:
        """Covariance of the channels around the per-(region, channel) mean, pooled over every region of every valid
        image (a second pass: it needs the mean). float64, `(channels, channels)`."""
        covariance_file = self.folder / "covariance.npz"
        if covariance_file.is_file():
            try:
                with np.load(covariance_file) as stored:
                    if str(stored["format"]) == COVARIANCE_FORMAT:
                        return torch.from_numpy(stored["covariance"])
            except (OSError, ValueError, EOFError, KeyError) as error:  # derived data: recompute it
                logger.warning("%s is damaged (%s); computing the covariance again", covariance_file, error)
        mean, _ = self._moments(chunk_size)
        mean = mean.double()
        valid = np.flatnonzero(self.valid)
        channels = mean.shape[-1]
        total = torch.zeros(channels, channels, dtype=torch.float64)
        started = time.perf_counter()
        for start in range(0, len(valid), chunk_size):
            centered = (self.batch(valid[start : start + chunk_size]).double() - mean).reshape(-1, channels).float()
            total += (centered.T @ centered).double()  # centred values: float32 products, float64 sums
        covariance = total / (len(valid) * mean.shape[0])
        _atomic_save_npz(covariance_file, covariance=covariance.numpy(), format=np.str_(COVARIANCE_FORMAT))
        logger.info("channel covariance of %d images computed in %.1f s (kept in %s)", len(valid),
                    time.perf_counter() - started, covariance_file)
        return covariance

    @property
    def invalid_images(self) -> list:
        return self.meta.get("invalid", [])


# ---------------------------------------------------------------------------------------------- building
class _ImagePixels(torch.utils.data.Dataset):
    """Turns images `start..end-1` into pixel_values (through the processor) in DataLoader workers; a bad image
    becomes an error message, never an exception. Rows are read one at a time from the (memory-mapped) dataset, so
    memory does not grow with its size."""

    def __init__(self, dataset: Dataset, start: int, end: int, processor):
        self.images = dataset.select_columns(["image"]).cast_column("image", Image(decode=False))
        self.start, self.end = start, end
        self.processor = processor

    def __len__(self):
        return self.end - self.start

    def __getitem__(self, index):
        struct = self.images[self.start + index]["image"]
        name = struct.get("path") or f"image #{self.start + index}"
        try:
            source = struct["path"] if struct.get("bytes") is None else struct["bytes"]
            return index, self.processor.image_pixel_values([source], names=[name])[0], None
        except ValueError as error:
            return index, None, str(error)


def _collate_pixels(items):
    good = [(index, pixels) for index, pixels, error in items if error is None]
    errors = [(index, error) for index, pixels, error in items if error is not None]
    pixels = torch.stack([pixels for _, pixels in good]) if good else None
    return [index for index, _ in good], pixels, errors


def build_feature_cache(
    model,
    processor,
    dataset: Dataset,
    cache_dir,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    description: str = "caching features",
    show_progress: bool = True,
    accelerator=None,
    encoder_dtype: torch.dtype | None = None,
) -> FeatureCache:
    """Encode every image of `dataset` once with `model.get_image_features` and store the result; return the
    cache. A complete cache with the same keys is reused without running the encoder. Images become pixels
    through `processor` (the model's `ShowAttendTellProcessor`), its size guards included.

    `accelerator` (an `accelerate.Accelerator` or `PartialState`): with several processes, every process must call
    this; each encodes its shard of the images (see the module docstring) and all return the complete cache.
    `encoder_dtype` (e.g. `torch.bfloat16`): run the encoder under autocast in that dtype, a mixed-precision pass
    (`train.py` does with `--mixed_precision bf16` / `fp16`); such a cache is kept apart from the full-precision one."""
    folder = Path(cache_dir) / encoder_fingerprint(model, processor, encoder_dtype)[:16] / images_fingerprint(dataset)[:16]
    with torch.autocast(model.device.type, dtype=encoder_dtype or torch.float32, enabled=encoder_dtype is not None):
        if accelerator is not None and accelerator.num_processes > 1:
            return _build_sharded(model, processor, dataset, folder, accelerator, batch_size=batch_size, num_workers=num_workers,
                                  description=description, show_progress=show_progress)
        meta = _read_meta(folder)
        if meta and meta.get("complete"):  # complete caches are never written again: no lock needed to read one
            logger.info("%s: reusing the feature cache in %s", description, folder)
            return FeatureCache(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # One builder per cache: the others wait here, then find it complete and reuse it.
        lock = _acquire_build_lock(folder, description)
        try:
            meta = _read_meta(folder)
            if meta and meta.get("complete"):
                logger.info("%s: reusing the feature cache in %s", description, folder)
                return FeatureCache(folder)
            return _build_locked(model, processor, dataset, folder, meta, batch_size=batch_size, num_workers=num_workers,
                                 description=description, show_progress=show_progress)
        finally:
            lock.release()


def _acquire_build_lock(folder: Path, description: str) -> FileLock:
    lock = FileLock(folder / "build.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("%s: another process is building the feature cache in %s; waiting for it", description, folder)
        lock.acquire()
    return lock


def _shape(model, dataset) -> tuple:
    return len(dataset), model.config.num_regions, model.config.encoder_hidden_size


def _start_or_resume(folder: Path, shape: tuple, meta, description: str, shards: int, batch_size: int):
    """The progress of an interrupted build split the same way (shards of whole batches), if its files are whole; else a fresh
    build: a preallocated `features.npy` (sparse on disk; batches are written in place, never all held in RAM),
    an all-zero `valid.npy` and a `meta.json` saying nothing is done. Returns `(meta, valid)`."""
    valid = None
    # Shards are runs of whole batches: their progress files only fit a build with the same shards and batch size.
    same_split = meta is not None and meta.get("shards", 1) == shards and (shards == 1 or meta.get("shard_batch_size") == batch_size)
    if same_split and tuple(meta.get("shape", ())) == shape:
        try:
            _load_array(folder, "features.npy", shape, np.float16, mmap_mode="r")
            valid = _load_array(folder, "valid.npy", shape[:1], np.uint8)
        except ValueError as error:
            logger.warning("%s: %s; starting over", description, error)
            valid = None
    elif meta is not None and not meta.get("complete"):
        logger.info("%s: the interrupted build in %s was split into other shards (%s of batches of %s); starting over",
                    description, folder, meta.get("shards", 1), meta.get("shard_batch_size", "?"))
    if valid is not None:
        return meta, valid
    for leftover in folder.glob("shard-*-of-*.json"):
        leftover.unlink(missing_ok=True)
    np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=shape).flush()
    valid = np.zeros(shape[0], dtype=np.uint8)
    _atomic_write(folder / "valid.npy", lambda handle: np.save(handle, valid))
    meta = {"complete": False, "done": 0, "num_images": shape[0], "shape": list(shape), "invalid": [],
            "format": FEATURE_FORMAT_VERSION, "seconds": 0.0, "shards": shards, **({"shard_batch_size": batch_size} if shards > 1 else {})}
    _atomic_write_json(folder / "meta.json", meta)
    return meta, valid


def _build_locked(model, processor, dataset, folder: Path, meta, *, batch_size, num_workers,
                  description, show_progress) -> FeatureCache:
    shape = _shape(model, dataset)
    num_images = shape[0]
    meta, valid = _start_or_resume(folder, shape, meta, description, shards=1, batch_size=batch_size)
    done = meta["done"]
    if done:
        logger.info("%s: resuming an interrupted build at image %d of %d", description, done, num_images)

    def save_progress(progress):  # valid.npy, then meta.json that says how far it is
        _atomic_write(folder / "valid.npy", lambda handle: np.save(handle, valid))
        _atomic_write_json(folder / "meta.json", progress)

    _encode_images(model, processor, dataset, folder, range(done, num_images), meta, save_progress, valid, batch_size=batch_size,
                   num_workers=num_workers, description=description, show_progress=show_progress)
    meta["complete"] = True
    _atomic_write_json(folder / "meta.json", meta)
    _log_built(description, num_images - done, meta, folder)
    return FeatureCache(folder)


def _shard_range(num_images: int, rank: int, shards: int, batch_size: int) -> range:
    """Rank `rank`'s images: a run of whole batches (the batches of a one-process build), about 1/shards of them."""
    batches = -(-num_images // batch_size)
    first, last = rank * batches // shards, (rank + 1) * batches // shards
    return range(min(first * batch_size, num_images), min(last * batch_size, num_images))


def _build_sharded(model, processor, dataset, folder: Path, accelerator, *, batch_size, num_workers,
                   description, show_progress) -> FeatureCache:
    """Every process of a run encodes its shard into the shared files. The main process holds the build lock (other
    runs wait for the cache as they would for one builder), prepares or resumes the files, and seals the cache."""
    rank, shards, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    shape = _shape(model, dataset)
    lock = None
    try:
        if main:
            folder.mkdir(parents=True, exist_ok=True)
            lock = _acquire_build_lock(folder, description)
            meta = _read_meta(folder)
            if not (meta and meta.get("complete")):
                _start_or_resume(folder, shape, meta, description, shards, batch_size)
        accelerator.wait_for_everyone()  # the files exist (or the cache is complete) before any process writes
        meta = _read_meta(folder)
        if meta.get("complete"):
            if main:
                logger.info("%s: reusing the feature cache in %s", description, folder)
        else:
            shard = _shard_range(shape[0], rank, shards, batch_size)
            progress_file = folder / f"shard-{rank}-of-{shards}.json"
            progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {"done": 0, "invalid": [], "seconds": 0.0}
            _encode_images(model, processor, dataset, folder, range(shard.start + progress["done"], shard.stop), progress,
                           lambda progress: _atomic_write_json(progress_file, progress), None, batch_size=batch_size,
                           num_workers=num_workers, description=f"{description} (process {rank + 1}/{shards})",
                           show_progress=show_progress and main)
        accelerator.wait_for_everyone()  # every shard is written
        if main and not meta.get("complete"):
            _seal_shards(folder, meta, shards, batch_size, description)
        accelerator.wait_for_everyone()
    finally:
        if lock is not None:
            lock.release()
    return FeatureCache(folder)


def _seal_shards(folder: Path, meta: dict, shards: int, batch_size: int, description: str):
    """Main process: merge the shards' progress into `valid.npy` and `meta.json` and mark the cache complete."""
    num_images = meta["num_images"]
    valid = np.zeros(num_images, dtype=np.uint8)
    invalid, seconds = [], 0.0
    for rank in range(shards):
        shard = _shard_range(num_images, rank, shards, batch_size)
        progress = json.loads((folder / f"shard-{rank}-of-{shards}.json").read_text()) if len(shard) else {"done": 0, "invalid": [], "seconds": 0.0}
        if progress["done"] != len(shard):
            raise RuntimeError(f"feature cache {folder}: process {rank} encoded {progress['done']} of its {len(shard)} images")
        valid[shard.start : shard.stop] = 1
        for entry in progress["invalid"]:
            valid[entry["index"]] = 0
        invalid += progress["invalid"]
        seconds = max(seconds, progress["seconds"])  # the shards ran side by side
    _atomic_write(folder / "valid.npy", lambda handle: np.save(handle, valid))
    meta.update(complete=True, done=num_images, invalid=sorted(invalid, key=lambda entry: entry["index"]), seconds=seconds)
    _atomic_write_json(folder / "meta.json", meta)
    for rank in range(shards):
        (folder / f"shard-{rank}-of-{shards}.json").unlink(missing_ok=True)
    _log_built(f"{description} ({shards} processes)", num_images, meta, folder)


def _encode_images(model, processor, dataset, folder: Path, images: range, progress: dict, save_progress, valid, *,
                   batch_size, num_workers, description, show_progress):
    """Encode `images` into their rows of `features.npy`. After every batch: the features are flushed to disk, then
    `progress` (`done` counts the images handled, `invalid` lists the bad ones, `seconds`) is saved with
    `save_progress(progress)`, so a kill in between only repeats that batch. `valid` (or None) is marked per image."""
    shape = _shape(model, dataset)
    features_file = folder / "features.npy"
    loader = torch.utils.data.DataLoader(
        _ImagePixels(dataset, images.start, images.stop, processor),
        batch_size=batch_size,
        num_workers=_default_workers() if num_workers is None else num_workers,
        collate_fn=_collate_pixels,
    )
    header_size = np.load(features_file, mmap_mode="r").offset
    row_bytes = int(np.prod(shape[1:])) * 2
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    progress_bar = tqdm(total=len(images), desc=description, unit="img", disable=not show_progress)
    try:
        with open(features_file, "r+b") as out, image_features_for_inference(model) as image_features, torch.inference_mode():
            for indices, pixels, errors in loader:
                for index, error in errors:
                    progress["invalid"].append({"index": images.start + index, "reason": error})
                    logger.warning("%s: skipped %s", description, error)
                if indices:
                    features = image_features(pixels.to(model.device)).to("cpu", torch.float16).numpy()
                    for row, index in enumerate(indices):
                        out.seek(header_size + (images.start + index) * row_bytes)
                        out.write(features[row].tobytes())
                        if valid is not None:
                            valid[images.start + index] = 1
                progress["done"] += len(indices) + len(errors)
                # Features first, then what marks them done: a kill in between only repeats this batch.
                out.flush()
                os.fsync(out.fileno())
                progress["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                save_progress(progress)
                progress_bar.update(len(indices) + len(errors))
    finally:
        progress_bar.close()
        model.train(was_training)


def _log_built(description: str, encoded: int, meta: dict, folder: Path):
    logger.info(
        "%s: %d images in %.1f s (%.3f s/image), %d skipped, cache in %s",
        description, encoded, meta["seconds"], meta["seconds"] / max(encoded, 1), len(meta["invalid"]), folder,
    )
def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _rebuild_hint(folder: Path) -> str:
    return f"delete the folder {folder} and run again to rebuild it"


def _read_meta(folder: Path) -> dict | None:
    """A cache's `meta.json`, or None when there is none yet."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("shape"), list) or not isinstance(meta.get("done"), int):
            raise ValueError("not a feature-cache description")
        return meta
    except (OSError, ValueError) as error:
        raise ValueError(f"feature cache {folder} is damaged: meta.json cannot be read ({error}); {_rebuild_hint(folder)}") from None


def _load_array(folder: Path, name: str, shape: tuple, dtype, mmap_mode=None) -> np.ndarray:
    """Load one of the cache's arrays, checking that it is whole and has the shape and type `meta.json` says."""
    try:
        array = np.load(folder / name, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # missing, truncated, or not an .npy file
        raise ValueError(f"feature cache {folder} is damaged: {name} cannot be read ({error}); {_rebuild_hint(folder)}") from None
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise ValueError(f"feature cache {folder} is damaged: {name} holds {array.dtype} {array.shape}, meta.json says "
                         f"{np.dtype(dtype)} {tuple(shape)}; {_rebuild_hint(folder)}")
    return array


def _atomic_write(path: Path, write):
    """Write a file through `write(binary_handle)` under a unique temporary name, then move it into place: readers
    and other writers only ever see a whole file, and concurrent writers never share a temporary file."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _atomic_write_json(path: Path, data: dict):
    _atomic_write(path, lambda handle: handle.write(json.dumps(data).encode()))


def _atomic_save_npz(path: Path, **arrays):
    _atomic_write(path, lambda handle: np.savez(handle, **arrays))
