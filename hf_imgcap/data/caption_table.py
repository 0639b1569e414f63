# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""A folder of images with a caption table beside them that `datasets`' imagefolder would not read: a CSV / TSV /
JSON Lines file under another name than `metadata.*` (`captions.csv`, `annotations.csv`, Kaggle-style
`image,caption`; or one per split: `train.csv`, `val.csv`, `test.csv`), or a `metadata.csv` without the
`file_name` column imagefolder needs; or the COCO captions release (`annotations/captions_train2017.json`,
`captions_val2017.json` beside `train2017/`, `val2017/`).

The table is read with `datasets` (its csv / json builders); its image column holds paths relative to the table,
or bare file names of images anywhere in the folder (Kaggle's `captions.txt` names `1000268201.jpg` that lives in
`Images/`). The result is a `Dataset` per table (its `image` column an `Image()` feature over the resolved paths) that
`any_source` then reads like any other: captions grouped by image, lists written as text read, a `split` column
honoured, bad rows counted.
"""

import codecs
import csv
import io
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "json"}
METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
# Columns that name an image file, tried in this order when image_column= is not given.
IMAGE_PATH_COLUMNS = ("file_name", "image", "image_path", "image_file", "filename", "image_name", "img", "path", "file")


# Tables named after a split (`train.csv`, `val.csv`, `test.csv`): one split each.
TABLE_SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "dev": "validation",
                     "valid": "validation", "test": "test"}


def find_caption_tables(root: Path) -> dict[str, Path]:
    """split -> caption table, for a folder of images whose captions imagefolder would not read: its one table
    (all of it `train`), or tables named after splits (`train.csv`, `val.csv`, `test.csv`). Empty for a folder
    `datasets.load_dataset` reads as it is (an imagefolder with usable metadata files, parquet files, ...) or
    whose tables are ambiguous."""
    if any(_is_imagefolder_metadata(path) for name in METADATA_NAMES for path in root.rglob(name)):
        return {}
    coco = _coco_caption_files(root)
    if coco:
        return coco
    tables = sorted(path for path in root.iterdir() if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES)
    if not tables or not _has_images(root):
        return {}
    if len(tables) == 1 and tables[0].stem.lower() not in TABLE_SPLIT_NAMES:
        return {"train": tables[0]}
    by_split = {TABLE_SPLIT_NAMES.get(table.stem.lower()): table for table in tables}
    if None in by_split or len(by_split) != len(tables) or "train" not in by_split:
        return {}  # several tables, not one per split: nothing to choose by
    return by_split


def _is_imagefolder_metadata(path: Path) -> bool:
    """Whether imagefolder can link this metadata file to its images (it needs a `file_name` / `*_file_name`
    column, or the plural forms); a metadata.parquet is taken as such."""
    if path.suffix not in (".csv", ".jsonl"):
        return True
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            if path.suffix == ".csv":
                columns = next(csv.reader(handle), [])
            else:
                first = next((line for line in handle if line.strip()), "{}")
                columns = list(json.loads(first)) if first.strip().startswith("{") else []
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return True  # let `datasets` read it and say what is wrong
    return any(column.strip() in ("file_name", "file_names") or column.strip().endswith(("_file_name", "_file_names"))
               for column in columns)


def _has_images(root: Path) -> bool:
    extensions = image_extensions()
    return any(path.suffix.lower() in extensions and path.is_file() for path in root.rglob("*"))


def image_extensions() -> set[str]:
    return {extension.lower() for extension in PILImage.registered_extensions()}


def read_caption_table(table: Path, root: Path, report, image_column: str | None = None) -> Dataset:
    """The table as a `Dataset` whose `image` column is an `Image()` feature over the image files it names;
    unusable entries of a COCO file are counted in `report`."""
    from datasets import load_dataset

    if table.suffix.lower() == ".json":
        return read_coco_captions(table, root, report)
    builder = TABLE_SUFFIXES[table.suffix.lower()]
    options = _csv_options(table) if builder == "csv" else {}
    problem = text_table_problem(table, **options)
    if problem:
        raise ValueError(problem)
    try:
        data = load_dataset(builder, data_files=str(table), split="train", **options)
    except Exception as error:  # any parse error of the file: say which file, with the library's reason
        raise ValueError(f"{table}: cannot read it as a caption table ({type(error).__name__}: {error})") from error
    column = _image_path_column(data, image_column, table)
    paths = _resolve_image_paths(data.select_columns([column]).to_dict()[column], table.parent, root)
    logger.info("%s: captions from %s, images named in its column '%s'", root, table.name, column)
    # The names are replaced by the resolved paths; another column called `image` (not the one read) would clash.
    data = data.remove_columns([column] + [name for name in ("image",) if name in data.column_names and name != column])
    return data.add_column("image", paths, feature=Value("string")).cast_column("image", Image())


def text_table_problem(path: Path, delimiter: str = ",", skipinitialspace: bool = False) -> str | None:
    """The first thing in a CSV / TSV / JSON Lines file that `datasets` would stop at or misread, as
    `file:line: what is wrong`; None when there is none. `delimiter` and `skipinitialspace` as the file will be
    read with (pandas' defaults: "," and False). `datasets` reads such files whole and names neither the
    file nor (for JSON Lines) the right line; pandas takes a CSV's first row with one field too many as an index
    column and shifts every column silently."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"{path}: cannot be read ({error})"
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x}); save the file as UTF-8"
    if path.suffix.lower() == ".jsonl":
        return _json_lines_problem(path, text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=skipinitialspace)
    try:
        header = next(reader, [])
        for row in reader:
            if len(row) > len(header):
                return (f"{path}:{reader.line_num}: {len(row)} fields, but its header has {len(header)} "
                        f"({delimiter.join(header)}): quote a value that holds {delimiter!r} (\"a dog, running\")")
    except csv.Error as error:
        return f"{path}:{reader.line_num}: not a CSV row ({error})"
    return None


def _json_lines_problem(path: Path, text: str) -> str | None:
    first_kinds = {}  # key -> (kind of its first non-null value, line)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            return f"{path}:{number}: not a JSON object ({error})"
        if not isinstance(row, dict):
            return f"{path}:{number}: not a JSON object (a JSON {type(row).__name__})"
        for key, value in row.items():
            kind = _json_kind(value)
            if kind is None:
                continue
            first_kind, first_line = first_kinds.setdefault(key, (kind, number))
            if kind != first_kind:
                return (f"{path}:{number}: '{key}' is {kind} here but {first_kind} in line {first_line}: a column "
                        "holds one type (datasets cannot read the mix)")
    return None


def _json_kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true / false"
    return {str: "text", int: "a number", float: "a number", list: "a list", dict: "an object"}[type(value)]


CSV_DELIMITERS = ",\t|;"


def _csv_options(table: Path) -> dict:
    """The delimiter of a CSV / TSV caption table, told from its header line: a comma unless the header has none
    and has exactly one of tab, `|` (Kaggle's Flickr30k `results.csv`) or `;` (Excel in many locales). Spaces
    after a delimiter (`image_name| comment`) are not part of the names or values."""
    try:
        with open(table, encoding="utf-8-sig", errors="replace") as handle:
            header = handle.readline()
    except OSError:
        header = ""
    others = [delimiter for delimiter in CSV_DELIMITERS[1:] if delimiter in header]
    delimiter = "\t" if table.suffix.lower() == ".tsv" else others[0] if "," not in header and len(others) == 1 else ","
    return {"delimiter": delimiter, "skipinitialspace": True}


def _image_path_column(data: Dataset, requested: str | None, table: Path) -> str:
    text_columns = [name for name, feature in data.features.items()
                    if isinstance(feature, Value) and feature.dtype in ("string", "large_string")]
    if requested is not None:
        if requested not in text_columns:
            raise ValueError(f"{table}: no column '{requested}' of image file names (text columns: "
                             f"{', '.join(text_columns) or 'none'}); pass the right image_column= / --image_column")
        return requested
    found = next((name for name in IMAGE_PATH_COLUMNS if name in text_columns), None)
    if found is None:
        raise ValueError(f"{table}: no column of image file names (looked for {', '.join(IMAGE_PATH_COLUMNS)}; "
                         f"columns: {', '.join(data.column_names)}); pass image_column= / --image_column")
    return found


def _resolve_image_paths(names: list, base: Path, root: Path) -> list[str | None]:
    """Each name as a path relative to the table's folder when that file exists, else the only image file of
    that name anywhere under `root`; else left relative to the table's folder (then counted as missing). Paths
    leading out of the dataset folder are refused later, like every other source's."""
    by_name = None
    resolved = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            resolved.append(None)  # no image: counted later
            continue
        candidate = base / name.strip()
        if not _is_file(candidate):
            if by_name is None:  # indexed once, only if some name needs it
                by_name = _images_by_name(root)
            found = by_name.get(Path(name.strip()).name, [])
            candidate = found[0] if len(found) == 1 else candidate
        resolved.append(str(candidate))
    return resolved


def _images_by_name(root: Path) -> dict[str, list[Path]]:
    extensions = image_extensions()
    index = defaultdict(list)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in extensions and path.is_file():
            index[path.name].append(path)
    return index


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- COCO
def _coco_caption_files(root: Path) -> dict[str, Path]:
    """split -> `captions_<split><year>.json` of the COCO release (in the folder or its `annotations/`), by the
    split its name says (`captions_val2017.json` -> validation)."""
    by_split = defaultdict(list)
    for file in sorted(root.glob("captions_*.json")) + sorted(root.glob("annotations/captions_*.json")):
        words = [word for word in re.split(r"[^a-z]+", file.stem.lower()) if word]
        split = next((TABLE_SPLIT_NAMES[word] for word in words if word in TABLE_SPLIT_NAMES), None)
        if split is not None:
            by_split[split].append(file)
    several = {split: files for split, files in by_split.items() if len(files) > 1}
    if several:
        listed = "; ".join(f"{split}: {', '.join(file.name for file in files)}" for split, files in several.items())
        raise ValueError(f"{root}: several COCO caption files for one split ({listed}); keep one per split")
    return {split: files[0] for split, files in by_split.items()} if "train" in by_split else {}


def read_coco_captions(file: Path, root: Path, report) -> Dataset:
    """A COCO captions file ({images: [{id, file_name}], annotations: [{image_id, caption}]}) as one row per image
    with all its captions and COCO's id for it, the images found by file name under `root` (COCO keeps them in
    `train2017/` ...). Annotations that cannot be used (a caption that is not text, an image the file does not
    list) are counted in `report` (a `LoadReport`) and named by their index."""
    images, annotations = _coco_tables(file)
    captions = defaultdict(list)
    known = {image.get("id") for image in images if isinstance(image, dict)}
    for index, annotation in enumerate(annotations):
        where = f"{file.name}: annotations[{index}]"
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        caption = annotation.get("caption") if isinstance(annotation, dict) else None
        if image_id not in known:
            report.skip("unknown_image", f"{where}: image_id {image_id!r} is not in the file's 'images' list; skipped")
        elif caption is not None and not isinstance(caption, str):
            report.skip("malformed_caption", f"{where}: the caption is {str(caption)[:80]!r}, not text; skipped")
        else:
            captions[image_id].append(caption)  # a null caption is counted with the empty ones, later
    listed = [image if isinstance(image, dict) else {} for image in images]
    rows = {
        "image": _resolve_image_paths([image.get("file_name") for image in listed], file.parent, root),
        "image_id": [None if image.get("id") is None else str(image.get("id")) for image in listed],
        "captions": [captions.get(image.get("id"), []) for image in listed],
    }
    logger.info("%s: captions from %s (%d images, %d annotations)", root, file.name, len(images), len(annotations))
    features = Features({"image": Value("string"), "image_id": Value("string"), "captions": List(Value("string"))})
    return Dataset.from_dict(rows, features=features).cast_column("image", Image())


def _coco_tables(file: Path) -> tuple[list, list]:
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
        images, annotations = data["images"], data["annotations"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise ValueError(f"{file}: not a COCO captions file ({type(error).__name__}: {error})") from None
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise ValueError(f"{file}: not a COCO captions file ('images' and 'annotations' must be lists)")
    return images, annotations
