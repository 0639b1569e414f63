# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Captioning data as a `datasets.DatasetDict`, from wherever users have it.

One call, `load_caption_dataset(source)`, returns train / validation / test splits with the columns
`image` (an `Image()` feature, decoded lazily), `image_id` (a string) and `captions` (a list of strings). `source`
is any of:

* a local folder in one of the three published Flickr8k layouts, detected automatically and read here:
  - the original text release: `Flicker8k_Dataset/*.jpg`, `Flickr8k.token.txt` (`name.jpg#k<TAB>caption`),
    `Flickr_8k.{train,dev,test}Images.txt`;
  - Kaggle: `Images/`, `captions.txt` (CSV `image,caption`); the official split files of the text release when
    they sit beside `captions.txt` (or one folder down, e.g. `Flickr8k_text/`, or in the folder above), else a
    seeded split by image;
  - Karpathy: `dataset_flickr8k.json` / `dataset_flickr30k.json` / `dataset_coco.json` (or the same format under
    another name) with its own split;
* anything else `datasets.load_dataset` reads (a Hub id such as the default `jxie/flickr8k`, with a config name
  and a revision; an `imagefolder` with `metadata.jsonl` / `metadata.csv`; parquet, ...), a folder of images with
  a caption table beside them (`captions.csv`, `train.csv` / `val.csv` / `test.csv`, ...; COCO's
  `annotations/captions_*.json`), or a `Dataset` /
  `DatasetDict` object: see `hf_imgcap.data.any_source` for how its image and caption columns are found, rows of
  the same image grouped, and missing validation / test splits made.

Whatever the source, an image that is also in an earlier split (train, then validation, then test) is left out of
the later one, counted and named, unless `allow_split_overlap=True` (see `hf_imgcap.data.split_overlap`).

Images of the Flickr8k layouts are read from inside the dataset folder only (or an `image_dir` passed
explicitly): absolute paths, `..` and symlinks leading elsewhere are refused and counted as
`path_outside_dataset`, whatever the caption file says.

Bad data is skipped, counted and logged with file and line (see `LoadReport`); a split left empty stops
the load with an error that says why.
"""

import codecs
import csv
import functools
import json
import logging
import random
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Image, List, Value

from hf_imgcap.data.any_source import load_datasets_source
from hf_imgcap.data.caption_table import image_extensions
from hf_imgcap.data.source_checks import SPLITS, LoadReport, image_problem, normalize_caption, path_outside
from hf_imgcap.data.split_overlap import leave_out_split_overlap

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "jxie/flickr8k"
IMAGE_DIR_NAMES = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images", "flickr30k-images", "flickr30k_images")
KAGGLE_SPLIT_SIZES = (6000, 1000)  # train, validation; the rest is test (the original release's sizes)


# ---------------------------------------------------------------------------------------------- entry point
def load_caption_dataset(
    source=DEFAULT_DATASET,
    *,
    dataset_config: str | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    caption_column=None,
    image_dir: str | None = None,
    seed: int = 0,
    verify_images: bool = True,
    num_threads: int = 4,
    allow_split_overlap: bool = False,
    return_report: bool = False,
):
    """Load a captioning dataset as a `DatasetDict` with `train` / `validation` / `test` splits and the columns
    `image`, `image_id`, `captions`.

    Args:
        source: a local folder in the original Flickr8k, Kaggle or Karpathy layout (detected from the files
            present); else anything `datasets.load_dataset` reads: a Hub dataset id (`jxie/flickr8k`,
            `user/name`), a local `imagefolder` with `metadata.jsonl` / `metadata.csv`, a parquet folder, ...;
            a folder of images with a caption table (csv / tsv / jsonl, or COCO's `captions_*.json`) beside
            them; the path of one such table or of one parquet file; or a `datasets.Dataset`
            (taken as the train split, or split by its `split` column) / `DatasetDict` object.
        dataset_config: the configuration (subset) name, `load_dataset(source, name=...)`.
        revision: branch, tag or commit of a Hub dataset, `load_dataset(source, revision=...)`.
        image_column: the column holding the images (default `image`, or the only `Image()` column); for a
            caption table, its column of image file names (default the first of `file_name`, `image`,
            `image_path`, `image_file`, `filename`, `image_name`, `img`, `path`, `file`).
        caption_column: the column holding the captions, a string or a list of strings per row (or a list of
            such column names); default `caption_0..caption_N`, else the first of `captions`, `caption`, `text`,
            `sentences`, `raw`.
        image_dir: where the images of a Flickr8k-layout folder are, if not in one of the usual folders next to
            the caption file.
        seed: seeds the split of sources that have none (Kaggle layout; a `datasets` source with only a train
            split, or no validation split).
        verify_images: decode every image once (at reduced JPEG scale: ~1 ms each) and skip those that do
            not decode, so that no DataLoader worker meets a broken file later.
        allow_split_overlap: keep validation / test images that are also in train (or test images also in
            validation). By default they are left out of the later split, counted as `split_overlap` and named in a
            warning: scores on images the model trained on are inflated. The same image is the same file, the
            same bytes under another name, the same pixels, or the same `image_id` when the source gives its own
            (see `hf_imgcap.data.split_overlap`).
        return_report: also return the `LoadReport`.
    """
    is_object = not isinstance(source, (str, Path))
    name = f"<{type(source).__name__}>" if is_object else str(source)
    path = None if is_object else Path(source)
    layout = detect_layout(path) if path is not None and path.is_dir() else None
    if layout is None:
        if image_dir is not None:
            raise ValueError(f"image_dir= / --image_dir is for the Flickr8k folder layouts; {name} is read by "
                             "`datasets`: its image paths come from the dataset itself")
        dataset, report = load_datasets_source(
            source if is_object else str(source), dataset_config=dataset_config, revision=revision, image_column=image_column,
            caption_column=caption_column, seed=seed, verify_images=verify_images, num_threads=num_threads)
    else:
        given = [f"{arg}={value!r}" for arg, value in (("dataset_config", dataset_config), ("revision", revision),
                 ("image_column", image_column), ("caption_column", caption_column)) if value is not None]
        if given:
            raise ValueError(f"{name} is a Flickr8k folder in the {layout} layout, whose files say where the images "
                             f"and captions are: {', '.join(given)} applies only to sources read by `datasets`")
        report = LoadReport(str(path), layout)
        reader = {"flickr8k": _read_flickr8k, "kaggle": _read_kaggle, "karpathy": _read_karpathy}[layout]
        records = reader(path, Path(image_dir) if image_dir else None, report, seed)
        if verify_images:
            records = _drop_undecodable(records, report, num_threads)
        dataset = DatasetDict({split: _records_to_dataset(records[split]) for split in SPLITS})
    dataset = leave_out_split_overlap(dataset, report, allow_split_overlap, num_threads)
    for split in SPLITS:
        if len(dataset[split]) == 0:
            hint = (" Images outside the dataset folder (e.g. behind a symlink) are refused: pass image_dir= to read "
                    "them from another folder." if report.counts["path_outside_dataset"] else "")
            if report.counts["missing_image"] and layout is not None:
                hint += (" The images the caption file names were not found where it says: pass image_dir= / "
                         "--image_dir with the folder that holds them.")
            if report.counts["split_overlap"]:
                hint += (" Images also in an earlier split are left out of the later one: pass "
                         "allow_split_overlap=True / --allow_split_overlap to keep them.")
            raise ValueError(f"split '{split}' of {name} is empty after loading. {report.summary()}{hint}")
    logger.info(
        "%s: %s; %s", name, ", ".join(f"{s} {len(dataset[s])} images" for s in SPLITS), report.summary()
    )
    return (dataset, report) if return_report else dataset


def detect_layout(root: Path) -> str | None:
    """`flickr8k`, `kaggle` or `karpathy` from the files in `root` (or one folder down), else None."""
    if _find(root, "Flickr8k.token.txt"):
        return "flickr8k"
    if find_karpathy_json(root):
        return "karpathy"
    if _find(root, "captions.txt"):
        return "kaggle"
    return None


_KARPATHY_PEEK_BYTES = 1 << 16  # the first image entry is well inside this


def find_karpathy_json(root: Path) -> Path | None:
    """Karpathy's split file: `dataset_*.json` (or one folder down), else a top-level `*.json` under another name
    whose start has the format's keys (`images`, `sentences`, `split`): it is shared under many names."""
    named = _find(root, "dataset_*.json")
    if named is not None:
        return named
    for candidate in sorted(root.glob("*.json")):
        try:
            with open(candidate, "rb") as handle:
                start = handle.read(_KARPATHY_PEEK_BYTES)
        except OSError:
            continue
        if all(key in start for key in (b'"images"', b'"sentences"', b'"split"', b'"filename"')):
            return candidate
    return None


def _find(root: Path, pattern: str) -> Path | None:
    for candidate in sorted(root.glob(pattern)) + sorted(root.glob(f"*/{pattern}")):
        if candidate.is_file():
            return candidate
    return None


def _find_image_dir(root: Path, caption_file: Path, image_dir: Path | None) -> Path:
    if image_dir is not None:
        if not image_dir.is_dir():
            raise ValueError(f"image_dir {image_dir} is not a folder")
        return image_dir
    for base in dict.fromkeys([caption_file.parent, root]):
        for name in IMAGE_DIR_NAMES:
            if (base / name).is_dir():
                return base / name
    raise ValueError(
        f"no image folder found next to {caption_file} (looked for {', '.join(IMAGE_DIR_NAMES)}); pass image_dir="
    )


# ---------------------------------------------------------------------------------------------- local layouts
def _read_lines(path: Path, report: LoadReport):
    """Yield (line number, text) of the non-blank lines of a text file; lines that are not UTF-8 are skipped and
    reported. Lines end at LF, CRLF or a lone CR (old Mac files), so line numbers match an editor's; a UTF-8
    byte-order mark (Windows editors) is dropped."""
    number = 0
    with open(path, "rb") as handle:
        for chunk in handle:  # each chunk ends at LF, so a CRLF pair is never split
            for raw in chunk.splitlines():
                number += 1
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    report.skip(
                        "not_utf8",
                        f"{path.name}:{number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); skipped",
                    )
                    continue
                if line.strip():
                    yield number, line


def _add_caption(captions: dict, image_names: set, name: str, caption: str, where: str, report: LoadReport,
                 outside_names: dict | None = None) -> None:
    """Keep one caption line or count it as exactly one skip. `outside_names`: image name -> why its file (a
    symlink) is refused as lying outside the dataset folder."""
    if not name:
        report.skip("no_image_name", f"{where}: no image name; skipped")
        return
    caption = normalize_caption(caption)
    if not caption:
        report.skip("empty_caption", f"{where}: empty caption for {name}; skipped")
        return
    if outside_names and name in outside_names:
        report.skip("path_outside_dataset", f"{where}: image '{name}': {outside_names[name]}; caption skipped")
        return
    if name not in image_names:
        report.skip("missing_image", f"{where}: image '{name}' is not in the image folder; caption skipped")
        return
    captions[name].append(caption)


def _image_names(image_dir: Path, roots: list[Path] | None = None) -> tuple[set[str], dict[str, str]]:
    """The image files of `image_dir` that lie inside `roots` (default: `image_dir`), and name -> reason for those
    that do not (symlinks pointing elsewhere): never read, whatever the caption file says."""
    inside, outside = set(), {}
    for path in image_dir.iterdir():
        if path.is_file():
            reason = path_outside(path, roots or [image_dir])
            if reason is None:
                inside.add(path.name)
            else:
                outside[path.name] = reason
    return inside, outside


def _dataset_roots(root: Path, image_dir: Path | None) -> list[Path]:
    """The folders images may be read from: the dataset folder, and an image folder the user named explicitly."""
    return [root] if image_dir is None else [root, image_dir]


# ---------------------------------------------------------------------------------------------- original release
def read_token_file(token_file: Path, image_names: set[str], report: LoadReport,
                    outside_names: dict | None = None) -> dict[str, list[str]]:
    """`Flickr8k.token.txt` (`name.jpg#k<TAB>caption` lines) -> {image name: captions}, in file order.
    Every non-blank line is kept or counted once in `report`."""
    captions = defaultdict(list)
    for number, line in _read_lines(token_file, report):
        where = f"{token_file.name}:{number}"
        if "\t" not in line:
            report.skip("no_tab", f"{where}: no tab between image and caption; skipped")
            continue
        key, caption = line.split("\t", 1)
        name = re.sub(r"#\d+$", "", key.strip())  # "name.jpg#3" -> "name.jpg"
        _add_caption(captions, image_names, name, caption, where, report, outside_names)
    return captions


def _captioned_images(root: Path, caption_name: str, read_captions, image_dir: Path | None, report: LoadReport) -> tuple:
    """What the Flickr8k and Kaggle layouts share: their caption file, the image folder beside it (or `image_dir`),
    the usable image names in it, name -> reason for those refused, and the captions of the usable images."""
    caption_file = _find(root, caption_name)
    found_dir = _find_image_dir(root, caption_file, image_dir)
    image_names, outside_names = _image_names(found_dir, _dataset_roots(root, image_dir))
    captions = read_captions(caption_file, image_names, report, outside_names)
    extensions = image_extensions()
    report.count_unused_images("uncaptioned_image", sorted(name for name in image_names if not captions.get(name)
                                                           and Path(name).suffix.lower() in extensions), found_dir)
    return caption_file, found_dir, image_names, outside_names, captions


def _read_flickr8k(root: Path, image_dir: Path | None, report: LoadReport, seed: int) -> dict:
    token_file, image_dir, image_names, outside_names, captions = _captioned_images(
        root, "Flickr8k.token.txt", read_token_file, image_dir, report)
    split_files = _find_split_files(root, token_file)
    missing = [OFFICIAL_SPLIT_FILES[split] for split, path in split_files.items() if path is None]
    if missing:
        raise ValueError(f"{root}: split file {', '.join(missing)} not found")
    return _split_by_files(split_files, captions, image_dir, image_names, report, outside_names)


OFFICIAL_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "validation": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}


def _find_split_files(root: Path, caption_file: Path) -> dict[str, Path | None]:
    """split -> the text release's split file beside the caption file or in the dataset root (or one folder down
    from either, e.g. `Flickr8k_text/`), else in the folder above the root or its `Flickr8k_text/` (the text
    release unpacked next to the image download); None when absent."""

    def find(name: str) -> Path | None:
        found = _find(caption_file.parent, name) or _find(root, name)
        for folder in (root.parent, root.parent / "Flickr8k_text"):
            found = found or (folder / name if (folder / name).is_file() else None)
        return found

    return {split: find(name) for split, name in OFFICIAL_SPLIT_FILES.items()}


def _split_by_files(split_files: dict, captions: dict, image_dir: Path, image_names: set, report: LoadReport,
                    outside_names: dict | None = None) -> dict:
    """Records of each split in the order of its split file; images named but unusable, and captioned images in
    no split file, are counted."""
    report.split_source = "official split files " + ", ".join(str(path) for path in split_files.values())
    logger.info("%s: splits from %s", report.source, report.split_source)
    records = {}
    for split, split_file in split_files.items():
        names = []
        for number, line in _read_lines(split_file, report):
            name = line.strip()
            where = f"{split_file.name}:{number}"
            if outside_names and name in outside_names:
                report.skip("split_missing_image", f"{where}: image '{name}': {outside_names[name]}; skipped")
            elif name not in image_names:
                report.skip("split_missing_image", f"{where}: image '{name}' is not in {image_dir.name}/; skipped")
            elif not captions.get(name):
                report.skip("split_image_without_captions", f"{where}: image '{name}' has no captions; skipped")
            else:
                names.append(name)
        records[split] = [(image_dir / name, name, captions[name]) for name in names]
    # The real release captions 8,092 images but its split files name 8,000: say what is left out, once.
    in_splits = {name for split_records in records.values() for _, name, _ in split_records}
    outside = [name for name in captions if captions[name] and name not in in_splits]
    if outside:
        report.counts["image_in_no_split"] += len(outside)
        logger.info("%s: %d captioned images are in no split file and are not used (e.g. %s)",
                    report.source, len(outside), outside[0])
    return records


# ---------------------------------------------------------------------------------------------- Kaggle
def is_kaggle_header(row: list[str]) -> bool:
    return [field.strip().lower() for field in row] == ["image", "caption"]


def read_kaggle_captions(caption_file: Path, image_names: set[str], report: LoadReport,
                         outside_names: dict | None = None) -> dict[str, list[str]]:
    """Kaggle's `captions.txt` (CSV `image,caption`, optional header) -> {image name: captions}, in file order.
    Every non-blank line other than the header is kept or counted once in `report`.

    Parsed line by line (a quoted caption cannot span lines in this file): an unbalanced quote then spoils one
    line, not the rest of the file, and every message has its line number. A file whose first line has a tab before
    any comma is read as tab-separated (re-uploads write it so, commas unquoted in the captions)."""
    captions = defaultdict(list)
    first, delimiter = True, None
    for number, line in _read_lines(caption_file, report):
        where = f"{caption_file.name}:{number}"
        if delimiter is None:
            delimiter = "\t" if "\t" in line.split(",", 1)[0] else ","
            if delimiter == "\t":
                logger.info("%s: tab-separated (its first line has a tab before any comma)", caption_file)
        try:
            row = next(csv.reader([line], delimiter=delimiter))
        except csv.Error as error:  # e.g. a field over csv.field_size_limit()
            report.skip("bad_csv_row", f"{where}: not a CSV row ({error}); skipped")
            first = False
            continue
        if first and is_kaggle_header(row):
            first = False
            continue
        first = False
        if len(row) < 2:
            expected = "image,caption" if delimiter == "," else "image<TAB>caption"
            report.skip("no_caption", f"{where}: expected '{expected}'; skipped")
            continue
        name = row[0].strip()
        if name not in image_names and Path(name).name in image_names:
            name = Path(name).name  # named with its folder ("Images/1000268201.jpg")
        # An unquoted caption with delimiters splits into more fields: join them back.
        _add_caption(captions, image_names, name, delimiter.join(row[1:]), where, report, outside_names)
    return captions


def _read_kaggle(root: Path, image_dir: Path | None, report: LoadReport, seed: int) -> dict:
    caption_file, image_dir, image_names, outside_names, captions = _captioned_images(
        root, "captions.txt", read_kaggle_captions, image_dir, report)

    # The official split files, when the user put them next to captions.txt: the same split as the papers.
    split_files = _find_split_files(root, caption_file)
    found = [path for path in split_files.values() if path is not None]
    if len(found) == len(split_files):
        return _split_by_files(split_files, captions, image_dir, image_names, report, outside_names)
    if found:  # a partial set is a mistake, not a reason to invent a split the user did not ask for
        missing = [OFFICIAL_SPLIT_FILES[split] for split, path in split_files.items() if path is None]
        raise ValueError(f"{root}: found {', '.join(map(str, found))} but not {', '.join(missing)}: add the missing "
                         "split file(s), or remove the others to use a seeded random split")

    names = sorted(captions)
    random.Random(seed).shuffle(names)
    train_size, val_size = KAGGLE_SPLIT_SIZES
    if train_size + val_size >= len(names):  # a smaller collection: keep the proportions of 6000/1000/rest of 8091
        train_size, val_size = round(len(names) * 6000 / 8091), round(len(names) * 1000 / 8091)
    report.split_source = f"seeded random split (seed {seed}, {train_size}/{val_size}/rest images; no official split files found)"
    report.seeded_splits = ("train", "validation", "test")
    logger.info("%s: splits from a %s", caption_file, report.split_source)
    bounds = {"train": (0, train_size), "validation": (train_size, train_size + val_size), "test": (train_size + val_size, None)}
    return {
        split: [(image_dir / name, name, captions[name]) for name in names[start:stop]]
        for split, (start, stop) in bounds.items()
    }


# ---------------------------------------------------------------------------------------------- Karpathy
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}


def read_karpathy_json(json_file: Path, root: Path, image_dir: Path | None, report: LoadReport) -> dict[str, list]:
    """Karpathy's `dataset_*.json` -> {split: [(image path, image id, captions)]}.

    Every caption (`images[i].sentences[k]`) is kept or counted once in `report`; an entry that cannot be used
    (no file name, unknown split, image not found, ...) counts all its captions under one kind, an entry with no
    captions at all counts once. Raises `ValueError` if the file is not a Karpathy split file at all."""
    images = _karpathy_images(json_file)
    records = {split: [] for split in SPLITS}
    # The usual image folder, looked up once and only if an entry needs it (COCO entries all have a filepath).
    find_default_dir = functools.lru_cache(maxsize=1)(lambda: _find_image_dir(root, json_file, None))
    for index, entry in enumerate(images):
        where = f"{json_file.name}: images[{index}]"
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        units = len(sentences) if isinstance(sentences, list) and sentences else 1
        problem = _karpathy_entry_problem(entry, sentences)
        if problem is None:
            path = _karpathy_image_path(entry, root, image_dir, find_default_dir)
            # Absolute filepath / filename, `..` and symlinks must not lead out of the dataset: checked before
            # the file is even looked at.
            outside = path_outside(path, _dataset_roots(root, image_dir))
            if outside is not None:
                problem = ("path_outside_dataset", outside)
            elif not _is_file(path):
                problem = ("missing_image", f"image file {path} not found")
        if problem is not None:
            kind, reason = problem
            skipped = "skipped" if units == 1 else f"its {units} captions skipped"
            report.skip(kind, f"{where}: {reason}; {skipped}", count=units)
            continue
        captions = _karpathy_captions(sentences, where, entry["filename"], report)
        if captions:
            cocoid = entry.get("cocoid")
            image_id = str(cocoid) if isinstance(cocoid, (int, str)) and not isinstance(cocoid, bool) else entry["filename"]
            records[KARPATHY_SPLITS[entry["split"]]].append((path, image_id, captions))
    return records


def _karpathy_images(json_file: Path) -> list:
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is not an error.
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))
        images = data["images"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
        # ValueError covers JSONDecodeError and over-long integers; RecursionError absurdly deep nesting.
        raise ValueError(f"{json_file}: not a Karpathy split file ({type(error).__name__}: {error})") from None
    if not isinstance(images, list):
        raise ValueError(f"{json_file}: not a Karpathy split file ('images' is a {type(images).__name__}, not a list)")
    return images


def _karpathy_entry_problem(entry, sentences) -> tuple[str, str] | None:
    """(kind, reason) when an `images[i]` entry cannot be used as a whole, else None."""
    if not isinstance(entry, dict):
        return "malformed_entry", f"a {type(entry).__name__}, not an object"
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        return "no_image_name", "no filename"
    if not isinstance(entry.get("split"), str) or entry["split"] not in KARPATHY_SPLITS:
        return "unknown_split", f"unknown split {entry.get('split')!r} for {filename}"
    if not isinstance(entry.get("filepath") or "", str):
        return "malformed_entry", f"filepath {entry['filepath']!r} of {filename} is not a string"
    if not isinstance(sentences, list) or not sentences:
        return "image_without_captions", f"{filename} has no sentences"
    return None


def _karpathy_image_path(entry: dict, root: Path, image_dir: Path | None, find_default_dir) -> Path:
    filepath = entry.get("filepath") or ""
    if image_dir is not None:
        return image_dir / filepath / entry["filename"]
    if filepath:  # COCO: train2014/ or val2014/
        return root / filepath / entry["filename"]
    return find_default_dir() / entry["filename"]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a file name over the system's length limit: no such image
        return False


def _karpathy_captions(sentences: list, where: str, filename: str, report: LoadReport) -> list[str]:
    captions = []
    for k, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            report.skip("malformed_caption", f"{where}.sentences[{k}]: no 'raw' text for {filename}; skipped")
            continue
        caption = normalize_caption(raw)
        if caption:
            captions.append(caption)
        else:
            report.skip("empty_caption", f"{where}.sentences[{k}]: empty caption for {filename}; skipped")
    return captions


def _read_karpathy(root: Path, image_dir: Path | None, report: LoadReport, seed: int) -> dict:
    json_file = find_karpathy_json(root)
    report.split_source = f"the 'split' field of {json_file}"
    return read_karpathy_json(json_file, root, image_dir, report)


# ---------------------------------------------------------------------------------------------- images
def _drop_undecodable(records: dict, report: LoadReport, num_threads: int) -> dict:
    paths = [path for split in SPLITS for path, _, _ in records[split]]
    with ThreadPoolExecutor(max_workers=num_threads) as pool:  # Pillow releases the GIL while decoding
        reasons = dict(zip(paths, pool.map(image_problem, paths)))
    kept = {}
    for split in SPLITS:
        kept[split] = []
        for path, image_id, captions in records[split]:
            if reasons[path] is None:
                kept[split].append((path, image_id, captions))
            else:
                report.skip(
                    "undecodable_image", f"{path}: cannot decode or use: {reasons[path]}; its {len(captions)} captions skipped"
                )
    return kept


def _records_to_dataset(records: list) -> Dataset:
    data = {
        "image": [str(path) for path, _, _ in records],
        "image_id": [image_id for _, image_id, _ in records],
        "captions": [captions for _, _, captions in records],
    }
    features = Features({"image": Value("string"), "image_id": Value("string"), "captions": List(Value("string"))})
    return Dataset.from_dict(data, features=features).cast_column("image", Image())
