# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Any `datasets` source as a captioning `DatasetDict`: a Hub id, a local folder `datasets.load_dataset` reads
(`imagefolder` with `metadata.jsonl` / `metadata.csv`, parquet, ...), a folder of images with a caption table
imagefolder would not read (see `caption_table`), or a `Dataset` / `DatasetDict` object.

Whatever the source, the result has train / validation / test splits and exactly the columns `image` (an `Image()`
feature), `image_id` (a string) and `captions` (a list of strings):

* the images come from `image_column`, else the `image` column, else the only `Image()` column (an `Image()`
  feature, file paths, encoded bytes, or `{bytes, path}` structs as pandas / pyarrow write them to parquet);
* the captions come from `caption_column` (a column of strings, of lists of strings, or of sentence objects
  such as Karpathy's `{"raw": ..., "tokens": [...]}`; a list of names for several columns), else from
  `caption_0..caption_N` (the `jxie/flickr8k` format), else from the first of `captions` / `caption` / `text` /
  `sentences` / `raw`; a string cell holding a list written as text (a CSV has no lists) is that list;
* rows that name the same image (an imagefolder `metadata.csv` with one `file_name,text` row per caption) become
  one image with all their captions, so an image is never in two splits;
* an image's id is the source's own (an `image_id` or `cocoid` column), else its file name;
* a source with one split whose rows have a `split` column (train / restval / val / validation / dev / test) is
  split by it; one without a validation and/or test split gets them carved from its train images by a seeded split.

Bad rows are skipped, counted and logged in the `LoadReport` like the Flickr8k layouts': empty or null captions,
images that are null, missing, undecodable or (for sources read from disk or the Hub) outside the dataset's files.
Only public `datasets` APIs are used.
"""

import contextlib
import hashlib
import logging
import os
import random
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Image, IterableDataset, IterableDatasetDict, LargeList, List, Value

from hf_imgcap.data.source_checks import SPLITS, LoadReport, image_problem, normalize_caption, path_outside
from hf_imgcap.data.caption_lists import CaptionListError, parse_caption_list
from hf_imgcap.data.caption_table import (METADATA_NAMES, TABLE_SUFFIXES, find_caption_tables, image_extensions,
                                          read_caption_table, text_table_problem)

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_NAMES = ("validation", "val", "dev", "valid")
CAPTION_COLUMN_NAMES = ("captions", "caption", "text", "sentences", "raw")  # tried in this order when none is named
CARVED_FRACTION = 0.1  # of the train images, for each evaluation split a source lacks
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}  # one such file named as the source: its builder


def load_datasets_source(source, *, dataset_config: str | None = None, revision: str | None = None,
                         image_column: str | None = None, caption_column=None, seed: int = 0,
                         verify_images: bool = True, num_threads: int = 4) -> tuple[DatasetDict, LoadReport]:
    """`source` (a Hub id or a folder for `datasets.load_dataset`, or a `Dataset` / `DatasetDict`) -> the
    captioning `DatasetDict` and the `LoadReport` of what was skipped."""
    if isinstance(source, (IterableDataset, IterableDatasetDict)):
        raise TypeError("a streaming (Iterable) dataset cannot be split and cached: load it without streaming=True")
    tables = {}  # split -> caption table beside a folder of images (see `caption_table`), when source is that
    if isinstance(source, (Dataset, DatasetDict)):
        if dataset_config is not None or revision is not None:
            raise ValueError("dataset_config / revision choose what datasets.load_dataset reads; they do not apply "
                             f"to a {type(source).__name__} object")
        name = f"<{type(source).__name__}>"
        splits = source if isinstance(source, DatasetDict) else DatasetDict({"train": source})
        report = LoadReport(name, "object", split_source=f"the splits of the {type(source).__name__}")
        roots = None  # the caller's own object: its image files are wherever the caller put them
    elif not isinstance(source, str):
        raise TypeError(f"source must be a dataset id or folder, a Dataset or a DatasetDict, not a {type(source).__name__}")
    else:
        from datasets import config, load_dataset
        from huggingface_hub.constants import HF_HUB_CACHE

        name = str(source)
        local_root = Path(source) if Path(source).is_dir() else None
        tables = find_caption_tables(local_root) if local_root is not None else {}
        data_file = Path(source) if Path(source).is_file() else None
        if data_file is not None:  # one file named directly: read as its folder would be, that file only
            local_root = data_file.parent
            if dataset_config is not None or revision is not None:
                raise ValueError(f"{name} is a file: dataset_config / revision choose what datasets.load_dataset "
                                 "reads from a Hub dataset or a folder and do not apply")
            if data_file.suffix.lower() in TABLE_SUFFIXES:
                tables = {"train": data_file}  # a caption table: its image names relative to its folder
            elif data_file.suffix.lower() not in DATA_FILE_BUILDERS:
                raise ValueError(f"{name} is a file, not a folder or a dataset id: pass a folder, or one "
                                 f"{' / '.join(sorted(set(DATA_FILE_BUILDERS) | set(TABLE_SUFFIXES)))} file")
        if tables and (dataset_config is not None or revision is not None):
            raise ValueError(f"{name} is a folder of images with caption table(s) ({', '.join(t.name for t in tables.values())}): "
                             "dataset_config / revision choose what datasets.load_dataset reads and do not apply")
        if tables:
            report = LoadReport(name, "table", split_source=", ".join(f"{split}: {table.name}" for split, table in tables.items()))
            splits = DatasetDict({split: read_caption_table(table, local_root, report, image_column)
                                   for split, table in tables.items()})
            image_column = None  # it named the tables' column of file names, now the `image` column
        else:
            report = LoadReport(name, "file" if data_file else "hub", split_source=f"the splits of {name}")
            if data_file is not None:
                with _load_errors_named(data_file):
                    splits = load_dataset(DATA_FILE_BUILDERS[data_file.suffix.lower()], data_files=str(data_file))
            elif local_root is not None:
                splits = _load_folder(local_root, dataset_config, revision)
            else:
                _refuse_an_old_folders_cache(source)
                splits = load_dataset(source, name=dataset_config, revision=revision)
        if local_root is not None:
            report.count_unused_images("uncaptioned_image", _unused_image_files(local_root, splits, image_column), local_root)
        # Image cells holding a path may point inside the dataset only: its folder when local, else the files
        # `datasets` downloaded for it.
        roots = [local_root] if local_root is not None else [Path(config.HF_DATASETS_CACHE), Path(HF_HUB_CACHE)]
        if not isinstance(splits, DatasetDict):
            splits = DatasetDict({"train": splits})
    splits = DatasetDict({split: _strip_column_names(data) for split, data in splits.items()})
    splits = _splits_from_split_column(splits, name, report)
    names = _split_names(splits, name)
    result = {}
    for split, found in names.items():
        if found is not None:
            try:
                result[split] = split_to_captions(
                    splits[found], f"{name}/{split}", report, roots, image_column=image_column,
                    caption_column=caption_column, verify_images=verify_images, num_threads=num_threads)
            except CaptionListError as error:
                files = ([str(tables[found])] if tables else _text_files(source, dataset_config, revision, found)
                         ) if isinstance(source, str) else []
                origin = f" (from {', '.join(files)})" if files else ""
                raise CaptionListError(f"{name}/{split}{origin}: {error}") from None
    return DatasetDict(_carve_missing_splits(result, name, seed, report)), report


def _unused_image_files(root: Path, splits, image_column: str | None) -> list[str]:
    """The image files under `root` that no row of `splits` names (relative paths); none when the rows hold their
    images inline rather than naming files (parquet files exported beside their images)."""
    named = set()
    for data in splits.values():
        column = image_column or "image"
        if column not in data.column_names:
            return []
        cells = data.with_format("arrow")[column]
        if not (cells.type.num_fields or _is_string_type(cells.type)):
            return []
        # A {bytes, path} cell with its bytes holds the image itself; its path names no file to read.
        inline = pc.is_valid(pc.struct_field(cells, "bytes")).to_pylist() if cells.type.num_fields else [False] * len(cells)
        files = {path for path, has_bytes in zip(_cell_paths(cells), inline) if path and not has_bytes}  # once per image
        named.update(os.path.realpath(path) for path in files)
    if not named:
        return []
    extensions = image_extensions()
    return [str(path.relative_to(root)) for path in sorted(root.rglob("*"))
            if path.suffix.lower() in extensions and os.path.realpath(path) not in named and path.is_file()]


# Folder names `datasets` takes as splits (its data_files.SPLIT_KEYWORDS).
SPLIT_FOLDER_NAMES = ("train", "training", "validation", "valid", "dev", "val", "test", "testing", "eval", "evaluation")


def _check_split_folder_metadata(root: Path) -> None:
    """With split folders (train/, test/, ...), `datasets` reads a metadata file inside each of them only: one at the
    top is ignored (the folder names become a `label` column) and a split folder of images without one fails with
    "Instruction 'test' corresponds to no data". Say so, with the fix."""
    split_folders = sorted(path for path in root.iterdir() if path.is_dir() and path.name.lower() in SPLIT_FOLDER_NAMES)
    if not split_folders:
        return
    has_metadata = {folder: any(any(folder.rglob(name)) for name in METADATA_NAMES) for folder in split_folders}
    top = [root / name for name in METADATA_NAMES if (root / name).is_file()]
    if top and not any(has_metadata.values()):
        wanted = ", ".join(f"{folder.name}/{top[0].name}" for folder in split_folders)
        raise ValueError(f"{root}: {top[0].name} is at the top, but the images are in split folders, where datasets "
                         f"looks for metadata: split it into {wanted}, each with file names relative to its folder")
    extensions = image_extensions()
    for folder, found in has_metadata.items():
        if any(has_metadata.values()) and not found and any(p.suffix.lower() in extensions for p in folder.rglob("*")):
            raise ValueError(f"{root}: {folder.name}/ holds images but no metadata file ({' / '.join(METADATA_NAMES)}), "
                             "which the other split folders have: add one, or move its images out")


def _load_folder(root: Path, dataset_config: str | None, revision: str | None):
    """`datasets.load_dataset` of a local folder (imagefolder, parquet, ...), its metadata files checked first and
    its errors naming the folder: `datasets` reports a broken metadata file without its name or line."""
    from datasets import load_dataset

    for metadata in sorted(path for name in METADATA_NAMES[:2] for path in root.rglob(name)):
        problem = text_table_problem(metadata)
        if problem:
            raise ValueError(problem)
    _check_split_folder_metadata(root)
    with _load_errors_named(root):
        return load_dataset(str(root), name=dataset_config, revision=revision)


@contextlib.contextmanager
def _load_errors_named(path: Path):
    """A `datasets` error while reading local `path` as a ValueError that names it, with the library's reason and
    its cause's (DatasetGenerationError wraps the real one)."""
    try:
        yield
    except Exception as error:
        reasons = [f"{type(error).__name__}: {error}"]
        if error.__cause__ is not None:
            reasons.append(f"{type(error.__cause__).__name__}: {error.__cause__}")
        raise ValueError(f"{path}: datasets cannot read it ({'; caused by '.join(reasons)})") from error


def _refuse_an_old_folders_cache(name: str) -> None:
    """Offline, `datasets` answers a name it cannot reach on the Hub from its cache, and keeps a local folder it
    loaded earlier under the folder's bare name: a bare name that is no folder here could load an old copy of
    another folder. Names with an owner (`owner/name`) are cached apart from folders and pass."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    if "/" in name or not config.HF_HUB_OFFLINE:
        return
    cached = Path(config.HF_DATASETS_CACHE).expanduser() / camelcase_to_snakecase(name)
    if cached.is_dir():
        raise ValueError(f"no folder '{name}' in {Path.cwd()}, and the Hub is offline: the datasets cache holds a "
                         f"copy under that name ({cached}), maybe of another folder called '{name}' loaded earlier. "
                         f"Pass the folder's path (./{name} from its parent folder), or a Hub dataset as owner/name")


_CAPTION_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")


def _text_files(source: str, dataset_config: str | None, revision: str | None, split: str) -> list[str]:
    """The caption files (csv, jsonl, parquet, ...; not the images) `datasets` read for `split` of `source`, to name
    them in an error; [] when they cannot be told."""
    from datasets import load_dataset_builder

    try:
        data_files = load_dataset_builder(source, name=dataset_config, revision=revision).config.data_files or {}
        files = [str(file) for file in data_files.get(split, [])]
    except Exception:  # only for an error message: never hide the error being reported
        return []
    return [file for file in files if file.lower().endswith(_CAPTION_FILE_SUFFIXES)][:5]


def _strip_column_names(data: Dataset) -> Dataset:
    """` text` -> `text`: CSV headers are often typed with a space after each comma (unless that name is taken)."""
    renames = {name: name.strip() for name in data.column_names
               if name != name.strip() and name.strip() and name.strip() not in data.column_names}
    return data.rename_columns(renames) if renames else data


SPLIT_COLUMN = "split"
SPLIT_VALUES = {"train": "train", "restval": "train", **{name: "validation" for name in VALIDATION_SPLIT_NAMES},
                "test": "test"}


def _splits_from_split_column(splits: DatasetDict, source: str, report: LoadReport) -> DatasetDict:
    """A source with one split whose rows say their split in a `split` column (Karpathy-style annotations, a
    metadata file with a split field): that split, not a random one. `restval` is train, as in Karpathy's files."""
    if set(splits) != {"train"} or SPLIT_COLUMN not in splits["train"].column_names:
        return splits
    data = splits["train"]
    values = data.select_columns([SPLIT_COLUMN]).to_dict()[SPLIT_COLUMN]
    unknown = sorted({str(value) for value in values if not isinstance(value, str) or value.strip().lower() not in SPLIT_VALUES})
    if unknown:
        raise ValueError(f"{source}: column '{SPLIT_COLUMN}' holds {', '.join(map(repr, unknown[:10]))}, not a split "
                         f"name ({', '.join(SPLIT_VALUES)}); fix those rows, or rename the column (the splits are then made at random)")
    rows = defaultdict(list)
    for row, value in enumerate(values):
        rows[SPLIT_VALUES[value.strip().lower()]].append(row)
    report.split_source = f"the '{SPLIT_COLUMN}' column of {source}"
    logger.info("%s: splits from its '%s' column: %s", source, SPLIT_COLUMN,
                ", ".join(f"{split} {len(rows[split])} rows" for split in SPLITS if split in rows))
    return DatasetDict({split: data.select(rows[split]) for split in SPLITS if split in rows})


def _split_names(splits: DatasetDict, source: str) -> dict[str, str | None]:
    """train / validation / test -> the source's name for it (`val`, `dev`, ... count as validation), or None."""
    if "train" not in splits:
        raise ValueError(f"{source} has no 'train' split (found {', '.join(sorted(splits)) or 'none'})")
    names = {"train": "train", "validation": next((n for n in VALIDATION_SPLIT_NAMES if n in splits), None),
             "test": "test" if "test" in splits else None}
    unused = sorted(set(splits) - set(names.values()))
    if unused:
        logger.warning("%s: split(s) %s are not used (only train, validation (or %s) and test are)", source,
                       ", ".join(unused), " / ".join(VALIDATION_SPLIT_NAMES[1:]))
    return names


# ---------------------------------------------------------------------------------------------- columns
def _is_text(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _is_text_list(feature) -> bool:
    return isinstance(feature, (List, LargeList)) and _is_text(feature.feature)


def _is_image_struct(feature) -> bool:
    """`{bytes, path}`: an image as `datasets` stores it, in a parquet file written without its Image() feature
    (by pandas or pyarrow)."""
    return isinstance(feature, dict) and "bytes" in feature and set(feature) <= {"bytes", "path"}


SENTENCE_TEXT_FIELDS = ("raw", "caption", "text", "sentence")  # the text of a sentence object, in this order


def _sentence_text_field(feature) -> str | None:
    """For a list of objects (Karpathy's `sentences: [{"raw": ..., "tokens": [...]}]`), the field holding the text."""
    if not (isinstance(feature, (List, LargeList)) and isinstance(feature.feature, dict)):
        return None
    return next((name for name in SENTENCE_TEXT_FIELDS if _is_text(feature.feature.get(name))), None)


def find_image_column(data: Dataset, requested: str | None, where: str) -> str:
    columns = data.column_names
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"{where}: no image column '{requested}' (columns: {', '.join(columns)}); "
                             "pass the column that holds the images as image_column= / --image_column")
        name = requested
    elif "image" in columns:
        name = "image"
    else:
        found = [column for column in columns if isinstance(data.features[column], Image)]
        if len(found) != 1:
            why = "no column holds images" if not found else f"several columns hold images ({', '.join(found)})"
            raise ValueError(f"{where}: no 'image' column and {why} (columns: {', '.join(columns)}); "
                             "pass image_column= / --image_column")
        name = found[0]
    feature = data.features[name]
    if not (isinstance(feature, Image) or _is_text(feature) or feature in (Value("binary"), Value("large_binary"))
            or _is_image_struct(feature)):
        raise ValueError(f"{where}: image column '{name}' holds {feature}, not images (an Image() feature, file "
                         "paths or encoded bytes)")
    return name


def find_caption_columns(data: Dataset, requested, where: str) -> list[str]:
    columns = data.column_names
    if requested is not None:
        names = [requested] if isinstance(requested, str) else list(requested)
        missing = [name for name in names if name not in columns]
        if missing:
            raise ValueError(f"{where}: no caption column {', '.join(map(repr, missing))} (columns: {', '.join(columns)}); "
                             "pass the column that holds the captions as caption_column= / --caption_column")
    else:
        names = sorted((c for c in columns if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c[len("caption_"):]))
        names = names or [c for c in CAPTION_COLUMN_NAMES if c in columns][:1]
        if not names:
            raise ValueError(f"{where}: no caption column found (looked for caption_0..caption_N, then "
                             f"{', '.join(CAPTION_COLUMN_NAMES)}; columns: {', '.join(columns)}); "
                             "pass caption_column= / --caption_column")
    for name in names:
        feature = data.features[name]
        if isinstance(feature, (List, LargeList)) and isinstance(feature.feature, dict) and not _sentence_text_field(feature):
            raise ValueError(f"{where}: caption column '{name}' holds objects with the fields "
                             f"{', '.join(sorted(feature.feature))}: none of them is the text ({', '.join(SENTENCE_TEXT_FIELDS)})")
        if not (_is_text(feature) or _is_text_list(feature) or _sentence_text_field(feature)):
            raise ValueError(f"{where}: caption column '{name}' holds {feature}, not text (a string or a "
                             "list of strings per row)")
    return names


# ---------------------------------------------------------------------------------------------- one split
# A source's own image ids, in order of preference: `image_id` (COCO's annotations and most caption datasets),
# `cocoid` (Karpathy's COCO splits). Not `imgid` / `img_id`: those number one file's rows, and the file name says more.
SOURCE_ID_COLUMNS = ("image_id", "cocoid")


def split_to_captions(data: Dataset, where: str, report: LoadReport, roots: list[Path] | None, *,
                      image_column: str | None = None, caption_column=None, verify_images: bool = True,
                      num_threads: int = 4) -> Dataset:
    """One split -> `image`, `image_id`, `captions`, one row per usable image. Only the caption columns are read
    into Python and the image cells are checked in place: the image column stays where it is (a memory-mapped
    Arrow file), so nothing copies the images."""
    data = data.with_format(None)  # a user's torch / custom format must not change what is read here
    image_name = find_image_column(data, image_column, where)
    caption_names = find_caption_columns(data, caption_column, where)
    cells = data.with_format("arrow")[image_name]  # Arrow {bytes, path} structs (or paths / bytes), not decoded
    paths = _cell_paths(cells)
    id_name = next((name for name in SOURCE_ID_COLUMNS if name in data.column_names and name != image_name), None)
    ids = data.select_columns([id_name]).to_dict()[id_name] if id_name else None
    report.image_ids_from_source |= id_name is not None
    texts = data.select_columns(caption_names).to_dict()
    for column in caption_names:  # sentence objects -> their text
        text_field = _sentence_text_field(data.features[column])
        if text_field is not None:
            texts[column] = [None if sentences is None else [s.get(text_field) if isinstance(s, dict) else None for s in sentences]
                             for sentences in texts[column]]

    groups = _group_rows_by_image(cells, paths)
    first_rows, all_captions, image_ids = [], [], []
    lists_as_text = set()
    for rows in groups:
        captions = [caption for row in rows
                    for caption in _row_captions(texts, caption_names, row, where, report, lists_as_text)]
        first = rows[0]
        if not captions:
            report.skip("image_without_captions", f"{where} row {first} ({paths[first] or 'no file name'}): no captions; skipped")
            continue
        first_rows.append(first)
        all_captions.append(captions)
        given_id = ids[first] if ids is not None else None
        image_ids.append(str(given_id) if given_id is not None else paths[first] or f"{where.rsplit('/', 1)[-1]}-{first}")
    if lists_as_text:
        logger.info("%s: column(s) %s hold lists of captions written as text: read as lists", where,
                    ", ".join(sorted(lists_as_text)))
    problems = image_problems(cells, first_rows, roots, verify_images, num_threads)
    for first, captions in zip(first_rows, all_captions):
        if first in problems:
            kind, reason = problems[first]
            report.skip(kind, f"{where} row {first} ({paths[first] or 'no file name'}): {reason}; its {len(captions)} captions skipped")
    if ids is None:  # names of the images kept: one refused never makes the others' ids longer
        kept = [k for k, first in enumerate(first_rows) if first not in problems]
        for k, name in zip(kept, _short_names([image_ids[k] for k in kept])):
            image_ids[k] = name

    # Columns are added at full length and rows selected last: `add_column` on a selection would copy the images.
    column_ids, column_captions = [""] * len(data), [[] for _ in range(len(data))]
    for first, image_id, captions in zip(first_rows, image_ids, all_captions):
        column_ids[first], column_captions[first] = image_id, captions
    keep = [first for first in first_rows if first not in problems]
    reshaped = data.select_columns([image_name])
    if image_name != "image":
        reshaped = reshaped.rename_column(image_name, "image")
    reshaped = reshaped.add_column("image_id", column_ids, feature=Value("string"))
    reshaped = reshaped.add_column("captions", column_captions, feature=List(Value("string")))
    reshaped = reshaped.cast_column("image", Image())
    return reshaped if keep == list(range(len(reshaped))) else reshaped.select(keep)


def _short_names(paths: list[str]) -> list[str]:
    """Unique image ids from file paths: the file names; where two images share one (`cats/1.jpg`, `dogs/1.jpg`),
    the paths below the folder they share; images that still share an id (inline images all called `image.jpg`)
    numbered by occurrence (`image.jpg#2`)."""
    names = [Path(path).name for path in paths]
    if len(set(names)) < len(names):
        try:
            common = os.path.commonpath(paths)
        except ValueError:  # absolute and relative paths mixed
            common = ""
        if common and common not in paths:
            names = [os.path.relpath(path, common) for path in paths]
    seen, unique = Counter(), []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def _cell_paths(cells) -> list[str | None]:
    if cells.type.num_fields:  # {bytes, path} structs
        return pc.struct_field(cells, "path").to_pylist()
    if _is_string_type(cells.type):  # a column of file paths
        return cells.to_pylist()
    return [None] * len(cells)  # a column of encoded bytes


def _is_string_type(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _group_rows_by_image(cells, paths: list) -> list[list[int]]:
    """Rows grouped by the image they hold, in order of first appearance: the same file (path), or for inline images
    the same path and the same bytes (hashed only where paths repeat or are missing: usually never)."""
    has_bytes = pc.is_valid(pc.struct_field(cells, "bytes")).to_pylist() if cells.type.num_fields else (
        [False] * len(cells) if _is_string_type(cells.type) else pc.is_valid(cells).to_pylist())
    path_count = defaultdict(int)
    for path in paths:
        path_count[path] += 1
    groups = {}
    for row, path in enumerate(paths):
        if has_bytes[row] and (path is None or path_count[path] > 1):
            key = ("bytes", path, _digest(cells, row))
        elif has_bytes[row] or path:
            key = ("path", path)
        else:
            key = ("null", row)  # no image at all: counted later, never merged with another row
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def _digest(cells, row: int) -> str:
    cell = cells[row].as_py()
    data = cell["bytes"] if isinstance(cell, dict) else cell
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _row_captions(texts: dict, caption_names: list[str], row: int, where: str, report: LoadReport,
                  lists_as_text: set | None = None) -> list[str]:
    """The row's captions from every caption column (a string or a list of strings each), normalised; empty and
    null ones counted and named. A string holding a list written as text (a CSV has no list type) is that list
    (see `caption_lists`); the columns where that happened are added to `lists_as_text`."""
    captions = []
    for column in caption_names:
        value = texts[column][row]
        if isinstance(value, str):
            try:
                parsed = parse_caption_list(value)
            except CaptionListError as error:
                raise CaptionListError(
                    f"row {row}: column '{column}' holds {_shorten(value)}, which looks like a list of captions "
                    f"written as text but cannot be read as one: {error}. Write the list as JSON "
                    '(["a dog", "a cat"]), or one row per caption') from None
            if parsed is not None:
                value = parsed
                if lists_as_text is not None:
                    lists_as_text.add(column)
        items = [(column, value)] if not isinstance(value, list) else [(f"{column}[{k}]", v) for k, v in enumerate(value)]
        for label, text in items:
            caption = normalize_caption(text) if isinstance(text, str) else ""
            if caption:
                captions.append(caption)
            else:
                report.skip("empty_caption", f"{where} row {row}: {label} is {'null' if text is None else 'empty'}; skipped")
    return captions


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


_CHECK_CHUNK = 256  # image cells decoded at a time: bounded memory for a million-image split


def image_problems(cells, indices: list[int], roots: list[Path] | None, verify_images: bool,
                   num_threads: int) -> dict[int, tuple[str, str]]:
    """row -> (kind, reason) for the image cells among `indices` that must not be used: a null cell (always), a
    URL or a path outside `roots` (always, unless `roots` is None: `datasets` would open it), and with
    `verify_images` whatever `load_image` would refuse (undecodable bytes, a missing file). What is checked is what
    `datasets` will open: the bytes when the cell has them, else its path as written."""
    from datasets.utils.file_utils import is_local_path

    problems = {}
    with ThreadPoolExecutor(max_workers=num_threads) as pool:  # Pillow releases the GIL while decoding
        for start in range(0, len(indices), _CHECK_CHUNK):  # a chunk of cells in memory at a time
            to_decode = []
            for index in indices[start : start + _CHECK_CHUNK]:
                cell = cells[index].as_py()
                if isinstance(cell, dict):
                    data, path = cell.get("bytes"), cell.get("path")
                else:  # a plain binary or string column
                    data, path = (cell, None) if isinstance(cell, (bytes, bytearray)) else (None, cell)
                if data is None and not path:
                    problems[index] = ("undecodable_image", "no image (the cell is empty)")
                elif data is None and roots is not None and not is_local_path(path):
                    problems[index] = ("path_outside_dataset", f"the image is a URL ({path}), not a file of the dataset")
                elif data is None and roots is not None and (outside := path_outside(Path(path), roots)):
                    problems[index] = ("path_outside_dataset", outside)
                elif verify_images:
                    to_decode.append((index, data if data is not None else path))
            for (index, _), reason in zip(to_decode, pool.map(image_problem, [image for _, image in to_decode])):
                if reason is not None:
                    problems[index] = ("undecodable_image", f"cannot decode or use: {reason}")
    return dict(sorted(problems.items()))


# ---------------------------------------------------------------------------------------------- splits
def _carve_missing_splits(result: dict, source: str, seed: int, report: LoadReport) -> dict:
    """Validation and/or test splits the source lacks, carved from its (already grouped, cleaned) train images by a
    seeded shuffle: by image, so no image is in two splits. The rest of train keeps its order."""
    missing = [split for split in SPLITS if split not in result]
    if not missing:
        return result
    train = result["train"]
    size = max(1, round(len(train) * CARVED_FRACTION))
    if len(train) <= size * len(missing):
        raise ValueError(f"{source} has no {' or '.join(missing)} split and only {len(train)} usable train images: "
                         f"too few to carve {len(missing)} × {size} images from and still train. {report.summary()}")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    for k, split in enumerate(missing):
        result[split] = train.select(sorted(order[k * size : (k + 1) * size]))
    result["train"] = train.select(sorted(order[len(missing) * size :]))
    report.seeded_splits = (*report.seeded_splits, *missing)
    report.split_source = (f"{report.split_source}; {' and '.join(missing)} carved from train by a seeded random split "
                           f"by image (seed {seed}, {size} images each)")
    logger.info("%s has no %s split: made from %d of its %d train images (seed %d); train %d, validation %d, test %d",
                source, " or ".join(missing), size * len(missing), len(train), seed,
                *(len(result[split]) for split in SPLITS))
    return {split: result[split] for split in SPLITS}
