"""Loading Flickr8k in every published layout, and every kind of bad data."""

import json
import logging
import os

import datasets
import pytest
from PIL import Image

from hf_imgcap.data.caption_datasets import detect_layout, load_caption_dataset, normalize_caption
from hf_imgcap.models.show_attend_tell.image_loading import load_image
from hf_imgcap.demo.scenes import write_synthetic_flickr8k

SIZES = dict(num_train=12, num_val=3, num_test=3, image_size=48)


def as_rows(dataset_dict):
    """split -> sorted (image file name, captions) rows: what must agree between layouts."""
    return {
        split: sorted((os.path.basename(row["image"]["path"]), tuple(row["captions"])) for row in data.cast_column("image", datasets.Image(decode=False)))
        for split, data in dataset_dict.items()
    }


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {layout: write_synthetic_flickr8k(root / layout, layout=layout, **SIZES) for layout in ("flickr8k", "kaggle", "karpathy")}


def test_every_layout_is_detected_and_loads_to_the_same_datasetdict(layouts):
    loaded = {}
    for layout, root in layouts.items():
        assert detect_layout(root) == layout
        dataset, report = load_caption_dataset(str(root), return_report=True)
        assert set(dataset) == {"train", "validation", "test"}
        assert dataset["train"].features["image"] == datasets.Image()
        assert dataset["train"].features["captions"] == datasets.Sequence(datasets.Value("string"))
        assert not report.counts
        first = dataset["train"][0]
        assert isinstance(first["image"], Image.Image) and len(first["captions"]) == 5
        # Images stay where they are: the column holds the original paths, no bytes were copied.
        assert dataset["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"] is None
        loaded[layout] = as_rows(dataset)
    # Official splits (original + Karpathy) agree exactly; Kaggle has none, so compare the images overall.
    assert loaded["flickr8k"] == loaded["karpathy"]
    everything = lambda rows: sorted(r for split in rows.values() for r in split)
    assert everything(loaded["kaggle"]) == everything(loaded["flickr8k"])


def test_official_split_files_are_honoured(layouts):
    root = layouts["flickr8k"]
    dataset = load_caption_dataset(str(root))
    for split, file_split in (("train", "train"), ("validation", "dev"), ("test", "test")):
        listed = (root / f"Flickr_8k.{file_split}Images.txt").read_text().split()
        assert dataset[split]["image_id"] == listed


def test_kaggle_split_is_seeded_and_deterministic(layouts):
    first = load_caption_dataset(str(layouts["kaggle"]), seed=0)
    again = load_caption_dataset(str(layouts["kaggle"]), seed=0)
    other = load_caption_dataset(str(layouts["kaggle"]), seed=1)
    assert first["train"]["image_id"] == again["train"]["image_id"]
    assert first["train"]["image_id"] != other["train"]["image_id"]
    assert (len(first["train"]), len(first["validation"]), len(first["test"])) == (13, 2, 3)  # 6000/1000/rest of 8091


def test_text_files_one_folder_down_are_found(tmp_path):
    root = write_synthetic_flickr8k(tmp_path / "ds", **SIZES)
    (root / "Flickr8k_text").mkdir()
    for name in ("Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt"):
        (root / name).rename(root / "Flickr8k_text" / name)
    assert len(load_caption_dataset(str(root))["train"]) == 12


def test_hub_format_parquet_loads_without_copying_images(layouts, tmp_path):
    """`jxie/flickr8k` format (image + caption_0..caption_4), here from a local folder, which takes the same
    `datasets.load_dataset` path as the Hub id."""
    reference = load_caption_dataset(str(layouts["flickr8k"]))
    features = datasets.Features({"image": datasets.Image(), **{f"caption_{k}": datasets.Value("string") for k in range(5)}})
    (tmp_path / "data").mkdir()
    for split in ("train", "validation", "test"):
        rows = {"image": [], **{f"caption_{k}": [] for k in range(5)}}
        for row in reference[split].cast_column("image", datasets.Image(decode=False)):
            path = row["image"]["path"]
            rows["image"].append({"path": os.path.basename(path), "bytes": open(path, "rb").read()})
            for k in range(5):
                rows[f"caption_{k}"].append(row["captions"][k])
        rows["caption_3"][0] = "   "  # one empty caption: skipped and counted
        rows["caption_2"][1] = "\u200b\u200d\u2060"  # zero-width characters only: as empty
        datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    hub, report = load_caption_dataset(str(tmp_path), return_report=True)
    assert report.layout == "hub" and report.counts == {"empty_caption": 6}
    assert hub["train"]["image_id"] == reference["train"]["image_id"]
    assert hub["train"][2]["captions"] == reference["train"][2]["captions"]
    assert hub["train"][1]["captions"] == [c for k, c in enumerate(reference["train"][1]["captions"]) if k != 2]
    assert len(hub["train"][0]["captions"]) == 4
    assert isinstance(hub["test"][0]["image"], Image.Image)


# ---------------------------------------------------------------------------------------------- bad data
@pytest.fixture
def broken_flickr8k(tmp_path):
    """The original layout with every kind of problem the real world has."""
    root = write_synthetic_flickr8k(tmp_path / "Flickr8k", **SIZES)
    images = root / "Flicker8k_Dataset"
    train = (root / "Flickr_8k.trainImages.txt").read_text().split()
    token_file = root / "Flickr8k.token.txt"
    lines = token_file.read_bytes().splitlines(keepends=True)
    extra = [
        b"no tab in this line at all\n",                                   # no tab
        b"\tcaption without an image name\n",                              # no image name
        b"2258277193_586949ec62.jpg.1#0\tthe bogus key of the real file\n",  # bogus .jpg.1 key
        f"{train[0]}#5\t   \n".encode(),                                   # whitespace-only caption
        f"{train[0]}#6\tcaf\xe9 in latin-1\n".encode("latin-1"),            # not UTF-8
        f"{train[1]}#5\ta dog &amp; a cat\n".encode(),                     # HTML entity: kept, decoded
    ]
    token_file.write_bytes(b"".join(lines[:10] + extra + lines[10:]))
    # A split file naming a missing image.
    with open(root / "Flickr_8k.trainImages.txt", "a") as handle:
        handle.write("9999999999_nothere.jpg\n")
    # An image that does not decode (truncated) and a text file named .jpg.
    data = (images / train[2]).read_bytes()
    (images / train[2]).write_bytes(data[: len(data) // 2])
    (images / train[3]).write_text("this is not a jpeg")
    return root, train


def test_bad_data_is_counted_logged_and_the_good_rows_stay(broken_flickr8k, caplog):
    root, train = broken_flickr8k
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert report.counts == {
        "no_tab": 1,
        "no_image_name": 1,
        "missing_image": 1,
        "empty_caption": 1,
        "not_utf8": 1,
        "split_missing_image": 1,
        "undecodable_image": 2,
    }
    log = caplog.text
    assert "Flickr8k.token.txt:11: no tab" in log
    assert "Flickr8k.token.txt:12: no image name" in log
    assert "Flickr8k.token.txt:13: image '2258277193_586949ec62.jpg.1' is not in the image folder" in log
    assert "Flickr8k.token.txt:14: empty caption" in log
    assert "Flickr8k.token.txt:15: not valid UTF-8 (byte 0xe9" in log
    assert "Flickr_8k.trainImages.txt:13: image '9999999999_nothere.jpg' is not in Flicker8k_Dataset/" in log
    assert f"{train[2]}: cannot decode" in log and f"{train[3]}: cannot decode" in log
    ids = dataset["train"]["image_id"]
    assert ids == [name for name in train if name not in (train[2], train[3])]  # the good rows, in order
    by_id = dict(zip(ids, dataset["train"]["captions"]))
    assert len(by_id[train[0]]) == 5  # its two bad extra lines were dropped, its five good captions stay
    assert by_id[train[1]][-1] == "a dog & a cat"


def test_an_empty_split_stops_with_a_reason(tmp_path):
    root = write_synthetic_flickr8k(tmp_path / "ds", **SIZES)
    (root / "Flickr_8k.devImages.txt").write_text("missing_1.jpg\nmissing_2.jpg\n")
    with pytest.raises(ValueError, match=r"split 'validation' .* is empty.*2 × split_missing_image"):
        load_caption_dataset(str(root))


def test_karpathy_json_for_coco_style_filepaths(tmp_path):
    root = write_synthetic_flickr8k(tmp_path / "coco", layout="karpathy", **SIZES)
    data = json.loads((root / "dataset_flickr8k.json").read_text())
    (root / "val2014").mkdir()
    for entry in data["images"]:  # COCO keeps images under filepath/ and has a 'restval' split
        (root / "images" / entry["filename"]).rename(root / "val2014" / entry["filename"])
        entry["filepath"] = "val2014"
        entry["cocoid"] = entry["imgid"] + 1000
        if entry["split"] == "train" and entry["imgid"] % 2:
            entry["split"] = "restval"
    (root / "dataset_flickr8k.json").unlink()
    (root / "dataset_coco.json").write_text(json.dumps(data))
    dataset = load_caption_dataset(str(root))
    assert len(dataset["train"]) == 12  # restval counts as training data
    assert dataset["train"][0]["image_id"] == "1000"


def test_normalize_caption():
    assert normalize_caption("  A dog\t&amp;\u00a0a  cat.\n") == "A dog & a cat."
    assert normalize_caption("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert normalize_caption(" \t \n") == ""


def test_captioned_images_outside_every_split_file_are_counted(tmp_path):
    """The real release captions 8,092 images, but its split files name 8,000: the rest are reported, not dropped silently."""
    root = write_synthetic_flickr8k(tmp_path / "ds", **SIZES)
    test_names = (root / "Flickr_8k.testImages.txt").read_text().split()
    (root / "Flickr_8k.testImages.txt").write_text("".join(f"{n}\n" for n in test_names[:-1]))
    dataset, report = load_caption_dataset(str(root), return_report=True)
    assert report.counts["image_in_no_split"] == 1 and len(dataset["test"]) == 2


# ---------------------------------------------------------------------------------------------- Kaggle + official splits
def write_official_split_files(folder, names):
    """Split files of the real text release, with a membership unlike any seeded split: every third image is
    test, every fifth validation, two images are in no split (the real release captions 8,092, lists 8,000)."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = {"train": [], "dev": [], "test": []}
    for index, name in enumerate(names[:-2]):
        listed["test" if index % 3 == 0 else "dev" if index % 5 == 0 else "train"].append(name)
    for file_split, members in listed.items():
        (folder / f"Flickr_8k.{file_split}Images.txt").write_text("".join(f"{n}\n" for n in members))
    return {"train": listed["train"], "validation": listed["dev"], "test": listed["test"]}


@pytest.mark.parametrize("where", [".", "Flickr8k_text", "../Flickr8k_text"])
def test_kaggle_layout_uses_the_official_split_files_when_present(tmp_path, where, caplog):
    """Kaggle's captions.txt has no split; with the text release's split files beside it (or in a
    Flickr8k_text/ folder inside or next to the dataset) the splits must be exactly the paper's, not a seeded
    shuffle."""
    root = write_synthetic_flickr8k(tmp_path / "kaggle", layout="kaggle", **SIZES)
    names = sorted(p.name for p in (root / "Images").iterdir())
    expected = write_official_split_files(root / where, names)
    with caplog.at_level(logging.INFO, logger="hf_imgcap.data.caption_datasets"):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    for split in ("train", "validation", "test"):
        assert dataset[split]["image_id"] == expected[split]
    assert report.counts == {"image_in_no_split": 2}
    assert "Flickr_8k.trainImages.txt" in report.split_source and "Flickr_8k.trainImages.txt" in caplog.text
    # Without the files: the seeded split, and the log says so.
    for path in (root / where).glob("Flickr_8k.*Images.txt"):
        path.unlink()
    _, report = load_caption_dataset(str(root), return_report=True)
    assert report.split_source.startswith("seeded random split")


@pytest.mark.parametrize("header", [True, False])
def test_a_tab_separated_kaggle_captions_file_reads_like_the_comma_one(tmp_path, header):
    """Re-uploads of Kaggle's Flickr8k write captions.txt with tabs; captions may then hold commas unquoted."""
    root = write_synthetic_flickr8k(tmp_path / "kaggle", layout="kaggle", **SIZES)
    reference = load_caption_dataset(str(root))
    rows = [line.split(",", 1) for line in (root / "captions.txt").read_text().splitlines()[1:]]
    rows[0][1] = "a dog, and a cat"
    (root / "captions.txt").write_text("".join(f"{name}\t{caption}\n" for name, caption in ([["image", "caption"]] if header else []) + rows))
    dataset, report = load_caption_dataset(str(root), return_report=True)
    assert not report.counts
    assert dataset["train"]["image_id"] == reference["train"]["image_id"]
    captions = {name: captions for split in dataset.values() for name, captions in zip(split["image_id"], split["captions"])}
    assert "a dog, and a cat" in captions[rows[0][0]]
    assert sum(map(len, captions.values())) == len(rows)


def test_kaggle_captions_may_name_images_with_their_folder(tmp_path):
    """`Images/1000268201.jpg` instead of `1000268201.jpg`, as some re-uploads write it."""
    root = write_synthetic_flickr8k(tmp_path / "kaggle", layout="kaggle", **SIZES)
    reference = load_caption_dataset(str(root))
    lines = (root / "captions.txt").read_text().splitlines()
    (root / "captions.txt").write_text("\n".join(lines[:1] + [f"Images/{line}" for line in lines[1:]]) + "\n")
    dataset, report = load_caption_dataset(str(root), return_report=True)
    assert not report.counts and dataset["train"]["image_id"] == reference["train"]["image_id"]


def test_kaggle_images_without_a_caption_line_are_counted(tmp_path, caplog):
    root = write_synthetic_flickr8k(tmp_path / "kaggle", layout="kaggle", **SIZES)
    Image.new("RGB", (32, 32)).save(root / "Images" / "uncaptioned.jpg")
    with caplog.at_level(logging.INFO):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert report.counts == {"uncaptioned_image": 1} and "uncaptioned.jpg" in caplog.text
    assert sum(len(split) for split in dataset.values()) == sum(SIZES[k] for k in ("num_train", "num_val", "num_test"))


def test_a_karpathy_file_whose_images_are_elsewhere_says_to_pass_image_dir(tmp_path):
    """Karpathy's COCO file names `filepath: train2014`; COCO's download may unpack to images/train2014/."""
    root = write_synthetic_flickr8k(tmp_path / "k", layout="karpathy", **SIZES)
    folder = next(root / name for name in ("Flicker8k_Dataset", "Images", "images") if (root / name).is_dir())
    data = json.loads((root / "dataset_flickr8k.json").read_text())
    for entry in data["images"]:
        entry["filepath"] = "train2014"
    (root / "dataset_flickr8k.json").write_text(json.dumps(data))
    (root / "downloads").mkdir()
    folder.rename(root / "downloads" / "train2014")
    with pytest.raises(ValueError, match=r"missing_image.*pass image_dir= / --image_dir"):
        load_caption_dataset(str(root))
    assert len(load_caption_dataset(str(root), image_dir=str(root / "downloads"))["train"]) == SIZES["num_train"]


def test_kaggle_layout_with_some_split_files_missing_is_refused(tmp_path):
    root = write_synthetic_flickr8k(tmp_path / "kaggle", layout="kaggle", **SIZES)
    write_official_split_files(root, sorted(p.name for p in (root / "Images").iterdir()))
    (root / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(ValueError, match=r"Flickr_8k\.devImages\.txt"):
        load_caption_dataset(str(root))


# ---------------------------------------------------------------------------------------------- Hub parquet: bad images
def write_hub_parquet(folder, reference, cells=None):
    """`reference` (a loaded DatasetDict) written in the `jxie/flickr8k` format: image bytes + caption_0..4.
    `cells` maps (split, row) to the image cell to write instead: None (a null cell), bytes, or a dict."""
    cells = cells or {}
    features = datasets.Features({"image": datasets.Image(), **{f"caption_{k}": datasets.Value("string") for k in range(5)}})
    (folder / "data").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        rows = {"image": [], **{f"caption_{k}": [] for k in range(5)}}
        for index, row in enumerate(reference[split].cast_column("image", datasets.Image(decode=False))):
            path = row["image"]["path"]
            cell = cells.get((split, index), {"path": os.path.basename(path), "bytes": open(path, "rb").read()})
            rows["image"].append({"path": f"bad_{split}_{index}.jpg", "bytes": cell} if isinstance(cell, bytes) else cell)
            for k in range(5):
                rows[f"caption_{k}"].append(row["captions"][k])
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", batch_size=100)
    return folder


def broken_hub_cells(folder):
    return {
        ("train", 0): None,                                                    # a null image cell
        ("train", 2): {"path": str(folder / "images" / "nothere.jpg"), "bytes": None},  # a file that does not exist
        ("validation", 1): b"\xff\xd8\xff garbage, not a JPEG",                 # undecodable bytes
        ("test", 0): b"not an image at all",                                   # the first test image (attention example)
    }


def test_hub_parquet_images_that_cannot_be_used_are_counted_named_and_left_out(layouts, tmp_path, caplog):
    reference = load_caption_dataset(str(layouts["flickr8k"]))
    folder = write_hub_parquet(tmp_path / "hub", reference, broken_hub_cells(tmp_path / "hub"))
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(folder), return_report=True)
    assert report.counts == {"undecodable_image": 4}
    assert "train row 0" in caplog.text and "no image" in caplog.text
    assert "nothere.jpg" in caplog.text and "no such image file" in caplog.text
    assert "bad_validation_1.jpg" in caplog.text and "bad_test_0.jpg" in caplog.text
    for split in ("train", "validation", "test"):
        broken = {index for (s, index) in broken_hub_cells(folder) if s == split}
        expected = [image_id for index, image_id in enumerate(reference[split]["image_id"]) if index not in broken]
        assert dataset[split]["image_id"] == expected
        for row in dataset[split]:  # what a DataLoader worker, the feature cache and the attention example read
            assert load_image(row["image"]).mode == "RGB"
    # Switched off on request: nothing decoded at load time, the rows stay (the null cell is still refused).
    unchecked, report = load_caption_dataset(str(folder), verify_images=False, return_report=True)
    assert len(unchecked["validation"]) == len(reference["validation"]) and report.counts == {"undecodable_image": 1}


# ---------------------------------------------------------------------------------------------- paths escaping the dataset
@pytest.fixture
def outside_image(tmp_path):
    """A perfectly good image outside the dataset folder: what an attacker's dataset would point at."""
    (tmp_path / "private").mkdir()
    path = tmp_path / "private" / "secret.jpg"
    Image.new("RGB", (48, 48), (200, 10, 10)).save(path)
    return path


def karpathy_with(root, changes):
    data = json.loads((root / "dataset_flickr8k.json").read_text())
    for index, entry in changes.items():
        data["images"][index].update(entry)
    (root / "dataset_flickr8k.json").write_text(json.dumps(data))
    return [entry["filename"] for entry in data["images"]]


@pytest.mark.parametrize("verify_images", [True, False])
def test_karpathy_paths_outside_the_dataset_are_refused(tmp_path, outside_image, caplog, verify_images):
    root = write_synthetic_flickr8k(tmp_path / "karpathy", layout="karpathy", **SIZES)
    escape = os.path.relpath(outside_image, root / "images")  # ../../private/secret.jpg
    names = karpathy_with(root, {
        0: {"filename": str(outside_image)},                                           # absolute filename
        1: {"filepath": str(outside_image.parent), "filename": outside_image.name},  # absolute filepath
        2: {"filename": escape},                                                       # ../ in the filename
        3: {"filepath": "..", "filename": os.path.relpath(outside_image, root.parent)},  # ../ in the filepath
    })
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), verify_images=verify_images, return_report=True)
    assert report.counts == {"path_outside_dataset": 4 * 5}  # every caption of the four entries
    for index in range(4):
        assert f"images[{index}]" in caplog.text
    assert "outside the dataset folder" in caplog.text and str(outside_image) in caplog.text
    assert dataset["train"]["image_id"] == names[4:12]
    paths = [row["image"]["path"] for split in dataset.values() for row in split.cast_column("image", datasets.Image(decode=False))]
    assert all(os.path.realpath(p).startswith(os.path.realpath(root)) for p in paths)


@pytest.mark.parametrize("layout", ["flickr8k", "kaggle", "karpathy"])
def test_symlinks_in_the_image_folder_pointing_outside_are_refused(tmp_path, outside_image, caplog, layout):
    root = write_synthetic_flickr8k(tmp_path / layout, layout=layout, **SIZES)
    folder = next(root / name for name in ("Flicker8k_Dataset", "Images", "images") if (root / name).is_dir())
    victim = sorted(folder.iterdir())[0]
    victim.unlink()
    victim.symlink_to(outside_image)
    inside = sorted(folder.iterdir())[1]
    (folder / "alias.jpg").symlink_to(inside)  # a link that stays inside is fine
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    # Its five captions; the original release also names it in a split file (counted like a missing image). No
    # caption names alias.jpg: an unused file of the image folder (Karpathy's file lists the images it uses).
    assert report.counts == {"path_outside_dataset": 5, **({"split_missing_image": 1} if layout == "flickr8k" else {}),
                             **({"uncaptioned_image": 1} if layout != "karpathy" else {})}
    assert victim.name in caplog.text and str(outside_image) in caplog.text
    assert victim.name not in [i for split in dataset.values() for i in split["image_id"]]


def test_hub_parquet_paths_outside_the_dataset_are_refused(layouts, tmp_path, outside_image, caplog):
    reference = load_caption_dataset(str(layouts["flickr8k"]))
    folder = tmp_path / "hub"
    (folder / "images").mkdir(parents=True)
    inside = folder / "images" / "inside.jpg"
    Image.new("RGB", (48, 48), (10, 200, 10)).save(inside)
    (folder / "images" / "link.jpg").symlink_to(outside_image)
    cells = {
        ("train", 0): {"path": str(outside_image), "bytes": None},                          # absolute, outside
        ("train", 1): {"path": str(folder / "images" / ".." / ".." / "private" / "secret.jpg"), "bytes": None},  # ../
        ("train", 2): {"path": str(folder / "images" / "link.jpg"), "bytes": None},         # symlink out
        ("train", 3): {"path": str(inside), "bytes": None},                                 # inside: kept
    }
    write_hub_parquet(folder, reference, cells)
    for verify_images in (True, False):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            dataset, report = load_caption_dataset(str(folder), verify_images=verify_images, return_report=True)
        assert report.counts == {"path_outside_dataset": 3}
        assert all(f"train row {index}" in caplog.text for index in range(3)) and "outside the dataset folder" in caplog.text
        assert dataset["train"]["image_id"] == ["inside.jpg", *reference["train"]["image_id"][4:]]
