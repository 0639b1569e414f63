# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Images that are in train and in an evaluation split (or in validation and test): the model is then scored on
images it trained on (or its selection on images it is tested on), and its numbers are inflated.

An image is the same image as another when it is the same file, has the same bytes (a copy under another name), or
(where a lossless format is involved) decodes to the same pixels (a PNG saved again with other settings or
metadata, the same picture as BMP, a JPEG decoded and saved as PNG). A file name alone proves nothing: split
folders often restart their numbering, so `train/0001.jpg` and `test/0001.jpg` are usually different photos. An
`image_id` the source itself gives (COCO ids, ...) does name the photo: the same one in two splits is the same image,
even re-encoded.

What it costs: every image file is read and hashed once (8,000 Flickr-sized JPEGs, 876 MB, on 2 busy cores: 7 s,
against 35 s for `verify_images` to decode them in the same run). Pixels are decoded only for
images in a format other than JPEG whose size matches an image of another split, and for the JPEGs of the same
size as such an image: never for an all-JPEG dataset; for an all-PNG dataset of one image size, about one more
`verify_images` pass. Two JPEG files with different bytes are taken as different images (they could decode the same
only by differing in metadata; finding that would mean decoding every image).
"""

import hashlib  # sha256: hardware-accelerated on most CPUs (SHA-NI, ARMv8), faster than blake2b there
import io
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

EVALUATION_ORDER = ("train", "validation", "test")  # an image is left out of the later split of the two
MAX_NAMED = 5  # overlapping images named in the warning; the count says how many more
_JPEG_MAGIC = b"\xff\xd8\xff"
_CHUNK = 256  # image cells read at a time: bounded memory for inline images


@dataclass
class _Fingerprint:
    keys: list = field(default_factory=list)  # ("file", path), ("bytes", digest), ("pixels", size, digest)
    is_jpeg: bool = True
    size: tuple | None = None  # (width, height), read from the header where pixels may be compared


@dataclass
class Overlap:
    split: str
    row: int
    image_id: str
    earlier_split: str
    earlier_image_id: str


def find_split_overlap(dataset: DatasetDict, num_threads: int = 4, by_image_id: bool = False) -> list[Overlap]:
    """The images of validation that are also in train, and of test that are also in train or validation.
    `by_image_id`: the `image_id`s are the source's own (COCO ids, ...), so an equal id is the same image too."""
    splits = [split for split in EVALUATION_ORDER if split in dataset]
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        prints = {split: _map_cells(pool, _fingerprint, dataset[split]) for split in splits}
        _add_pixel_keys(pool, dataset, prints)
    seen, overlaps = {}, []
    for split in splits:
        image_ids = dataset[split].select_columns(["image_id"]).to_dict()["image_id"]
        for row, fingerprint in enumerate(prints[split]):
            if by_image_id:
                fingerprint.keys.append(("image_id", image_ids[row]))
            earlier = next((seen[key] for key in fingerprint.keys if key in seen and seen[key][0] != split), None)
            if earlier is not None:
                overlaps.append(Overlap(split, row, image_ids[row], earlier[0], earlier[1]))
            for key in fingerprint.keys:
                seen.setdefault(key, (split, image_ids[row]))
    return overlaps


def leave_out_split_overlap(dataset: DatasetDict, report, allow: bool, num_threads: int = 4) -> DatasetDict:
    """`dataset` without the evaluation images that are also in an earlier split (counted in `report` as
    `split_overlap` and named in a warning), or with them and a warning when `allow`."""
    overlaps = find_split_overlap(dataset, num_threads, by_image_id=report.image_ids_from_source)
    by_split = defaultdict(list)
    for overlap in overlaps:
        by_split[overlap.split].append(overlap)
    result = dict(dataset)
    for split, found in by_split.items():
        earlier = " or ".join(dict.fromkeys(overlap.earlier_split for overlap in found))
        what = f"{len(found)} {split} image{'s' if len(found) > 1 else ''}"
        examples = ", ".join(f"{o.image_id} (= {o.earlier_split} {o.earlier_image_id})" for o in found[:MAX_NAMED])
        examples += " ..." if len(found) > MAX_NAMED else ""
        how = "the same file, file contents, pixels" + (" or image_id" if report.image_ids_from_source else "")
        same = f"{report.source}: {what} also in {earlier} ({how}): {examples}"
        if allow:
            logger.warning("%s; kept (allow_split_overlap): %s scores include images the model saw in %s", same,
                           split, earlier)
            continue
        report.skip("split_overlap", f"{same}; left out of {split} so that its scores are not inflated (pass "
                    "allow_split_overlap=True / --allow_split_overlap to keep them)", count=len(found))
        left_out = {overlap.row for overlap in found}
        result[split] = dataset[split].select([row for row in range(len(dataset[split])) if row not in left_out])
    return DatasetDict(result)


# ---------------------------------------------------------------------------------------------- fingerprints
def _map_cells(pool: ThreadPoolExecutor, function, split, rows=None) -> list:
    """`function(image cell as a dict or str)` for each of `rows` (default: all) of a split's image column, read a
    chunk of rows at a time (inline images can be the whole dataset: never all in memory)."""
    rows = list(range(len(split))) if rows is None else rows
    data = split.with_format("arrow")
    results = []
    for start in range(0, len(rows), _CHUNK):
        chunk = data[rows[start : start + _CHUNK]]["image"].to_pylist()
        results.extend(pool.map(function, chunk))
    return results


def _cell_source(cell):
    """(bytes or None, path or None) of an image cell: a {bytes, path} struct, a path or bytes."""
    if isinstance(cell, dict):
        return cell.get("bytes"), cell.get("path")
    return (cell, None) if isinstance(cell, (bytes, bytearray)) else (None, cell)


def _fingerprint(cell) -> _Fingerprint:
    data, path = _cell_source(cell)
    fingerprint = _Fingerprint()
    if data is None and path:
        fingerprint.keys.append(("file", _resolved(path)))
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(_JPEG_MAGIC))
                handle.seek(0)
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:  # unreadable: only the same path can tell
            return fingerprint
    elif data is not None:
        head, digest = bytes(data[: len(_JPEG_MAGIC)]), hashlib.sha256(data).hexdigest()
    else:
        return fingerprint  # no image at all
    fingerprint.keys.append(("bytes", digest))
    fingerprint.is_jpeg = head == _JPEG_MAGIC
    if not fingerprint.is_jpeg:
        fingerprint.size = _header_size(cell)
    return fingerprint


def _resolved(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return path


def _open(cell) -> Image.Image:
    data, path = _cell_source(cell)
    return Image.open(io.BytesIO(data) if data is not None else path)


def _header_size(cell) -> tuple | None:
    try:
        with _open(cell) as image:  # reads the header only
            return image.size
    except Exception:  # not an image Pillow reads: no pixels to compare
        return None


def _pixel_digest(cell) -> tuple | None:
    """The image as the model sees it (upright RGB): size and a digest of its pixels."""
    try:
        with _open(cell) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except Exception:
        return None
    return ("pixels", upright.size, hashlib.sha256(upright.tobytes()).hexdigest())


def _add_pixel_keys(pool: ThreadPoolExecutor, dataset: DatasetDict, prints: dict) -> None:
    """Pixel digests where they can find what the bytes cannot: images in a lossless format whose size matches an
    image of another split, and the JPEGs of the same size as such an image in another split."""
    lossless_sizes = defaultdict(set)  # size -> splits with a non-JPEG image of that size
    for split, fingerprints in prints.items():
        for fingerprint in fingerprints:
            if not fingerprint.is_jpeg and fingerprint.size is not None:
                lossless_sizes[fingerprint.size].add(split)
    if not lossless_sizes:
        return  # an all-JPEG dataset: nothing to decode
    for split, fingerprints in prints.items():  # JPEG sizes too, now that they can matter
        jpeg_rows = [row for row, fingerprint in enumerate(fingerprints) if fingerprint.is_jpeg and fingerprint.keys]
        for row, size in zip(jpeg_rows, _map_cells(pool, _header_size, dataset[split], jpeg_rows)):
            fingerprints[row].size = size
    all_sizes = defaultdict(set)
    for split, fingerprints in prints.items():
        for fingerprint in fingerprints:
            all_sizes[fingerprint.size].add(split)
    for split, fingerprints in prints.items():
        def worth_decoding(fingerprint):
            other_splits = (all_sizes if not fingerprint.is_jpeg else lossless_sizes)[fingerprint.size] - {split}
            return fingerprint.size is not None and bool(other_splits)

        rows = [row for row, fingerprint in enumerate(fingerprints) if worth_decoding(fingerprint)]
        for row, key in zip(rows, _map_cells(pool, _pixel_digest, dataset[split], rows)):
            if key is not None:
                fingerprints[row].keys.append(key)
