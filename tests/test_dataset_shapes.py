"""Datasets in shapes their owners chose, not ours: parquet written by pandas, Karpathy-style sentence objects, a
caption table next to an image folder, a `split` column, upper-case extensions, paths into subfolders."""

import csv
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hf_imgcap.data.caption_datasets import load_caption_dataset

from test_own_data import jpeg_bytes, scenes

SPLITS = ("train", "validation", "test")


def captions_by_id(dataset):
    return {row_id: captions for split in SPLITS for row_id, captions in
            zip(dataset[split]["image_id"], dataset[split]["captions"])}


def ids_by_split(dataset):
    return {split: sorted(dataset[split]["image_id"]) for split in SPLITS}


def test_parquet_written_by_pandas_or_pyarrow_without_datasets_metadata(tmp_path):
    """The `jxie/flickr8k` columns (image + caption_0..caption_4), but the image a plain {bytes, path} struct: what
    `pandas.to_parquet` / `pyarrow` write, without the Image() feature `datasets` records in the file."""
    pairs = scenes(20, seed=40)
    (tmp_path / "data").mkdir()
    expected = {}
    for split, rows in (("train", range(14)), ("validation", range(14, 17)), ("test", range(17, 20))):
        table = {"image": [{"bytes": jpeg_bytes(pairs[k][0]), "path": f"{k}.jpg"} for k in rows]}
        for c in range(5):
            table[f"caption_{c}"] = [pairs[k][1][c] for k in rows]
        expected.update({f"{k}.jpg": pairs[k][1] for k in rows})
        pq.write_table(pa.table(table), tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    dataset = load_caption_dataset(str(tmp_path))
    assert captions_by_id(dataset) == expected and len(dataset["validation"]) == 3
    assert dataset["test"][0]["image"].size == (48, 48)


def test_parquet_images_as_bytes_only_and_a_list_column(tmp_path):
    pairs = scenes(20, seed=41)
    pq.write_table(pa.table({"image": [{"bytes": jpeg_bytes(image), "path": None} for image, _ in pairs],
                             "captions": [captions for _, captions in pairs]}), tmp_path / "train.parquet")
    dataset = load_caption_dataset(str(tmp_path))
    assert sorted(len(c) for c in captions_by_id(dataset).values()) == [5] * 20


@pytest.mark.parametrize("id_column, expected", [("cocoid", lambda k: str(1000 + k)), ("image_id", lambda k: f"im-{k}"),
                                                  ("img_id", lambda k: f"{k}.jpg")], ids=["cocoid", "image_id", "img_id"])
def test_the_sources_own_image_ids_name_the_images(tmp_path, id_column, expected):
    """COCO ids (`cocoid`, Karpathy's COCO splits) and `image_id` columns name the images, as a COCO evaluation
    expects; a row number such as Flickr30k's `img_id` does not, the file name says more."""
    pairs = scenes(12, seed=43)
    values = {"cocoid": [1000 + k for k in range(12)], "image_id": [f"im-{k}" for k in range(12)], "img_id": list(range(12))}
    pq.write_table(pa.table({"image": [{"bytes": jpeg_bytes(image), "path": f"{k}.jpg"} for k, (image, _) in enumerate(pairs)],
                             "captions": [captions for _, captions in pairs], id_column: values[id_column]}),
                   tmp_path / "train.parquet")
    assert captions_by_id(load_caption_dataset(str(tmp_path))) == {expected(k): c for k, (_, c) in enumerate(pairs)}


def test_one_data_file_named_directly(tmp_path):
    """`--dataset path/to/file.parquet` (or a caption table's path): that file, as its folder would be read."""
    pairs = scenes(20, seed=44)
    (tmp_path / "exports").mkdir()
    file = tmp_path / "exports" / "photos.parquet"
    pq.write_table(pa.table({"image": [{"bytes": jpeg_bytes(image), "path": f"{k}.jpg"} for k, (image, _) in enumerate(pairs)],
                             "caption": [captions for _, captions in pairs]}), file)
    (tmp_path / "exports" / "other.parquet").write_bytes(b"not read: only the file named is")
    for k, (image, _) in enumerate(pairs):  # the images it was exported from, beside it: it holds them inline
        image.save(tmp_path / "exports" / f"{k}.jpg")
    dataset, report = load_caption_dataset(str(file), return_report=True)
    assert captions_by_id(dataset) == {f"{k}.jpg": captions for k, (_, captions) in enumerate(pairs)}
    assert not report.counts
    with pytest.raises(ValueError, match=r"other\.parquet: datasets cannot read it"):
        load_caption_dataset(str(tmp_path / "exports" / "other.parquet"))

    expected = write_caption_table(tmp_path / "mine", scenes(20, seed=45))
    assert captions_by_id(load_caption_dataset(str(tmp_path / "mine" / "captions.csv"))) == expected

    (tmp_path / "notes.txt").write_text("a dog")
    with pytest.raises(ValueError, match=r"notes\.txt is a file.*\.parquet"):
        load_caption_dataset(str(tmp_path / "notes.txt"))


def test_offline_a_bare_name_that_is_no_folder_here_is_not_read_from_an_earlier_folders_cache(tmp_path, monkeypatch):
    """Offline, `datasets` answers a name it cannot find on the Hub from its cache, where a local folder loaded
    earlier is kept under its bare name: `--dataset photos` run from the wrong directory would train on an old copy
    of some other `photos` folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    pairs = scenes(20, seed=46)
    (tmp_path / "project" / "photos").mkdir(parents=True)
    pq.write_table(pa.table({"image": [{"bytes": jpeg_bytes(image), "path": f"{k}.jpg"} for k, (image, _) in enumerate(pairs)],
                             "caption": [captions for _, captions in pairs]}), tmp_path / "project" / "photos" / "train.parquet")
    monkeypatch.chdir(tmp_path / "project")
    assert len(load_caption_dataset("photos")["train"]) == 16  # the folder, by its relative name
    assert any((tmp_path / "datasets_cache").iterdir())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"no folder 'photos' in .*offline.*cache.*\./photos.*owner/name"):
        load_caption_dataset("photos")


def test_karpathy_style_sentence_objects_in_a_metadata_file(tmp_path):
    """`sentences: [{"raw": ..., "tokens": [...]}, ...]` as in Karpathy's json, here in an imagefolder."""
    pairs = scenes(12, seed=42)
    with open(tmp_path / "metadata.jsonl", "w") as handle:
        for k, (image, captions) in enumerate(pairs):
            image.save(tmp_path / f"{k}.jpg")
            sentences = [{"raw": c, "tokens": c.lower().split(), "sentid": 5 * k + i} for i, c in enumerate(captions)]
            handle.write(json.dumps({"file_name": f"{k}.jpg", "sentences": sentences}) + "\n")
    assert captions_by_id(load_caption_dataset(str(tmp_path))) == {f"{k}.jpg": c for k, (_, c) in enumerate(pairs)}


def test_sentence_objects_without_any_text_field_are_refused_naming_the_fields(tmp_path):
    pairs = scenes(12, seed=42)
    with open(tmp_path / "metadata.jsonl", "w") as handle:
        for k, (image, _) in enumerate(pairs):
            image.save(tmp_path / f"{k}.jpg")
            handle.write(json.dumps({"file_name": f"{k}.jpg", "sentences": [{"tokens": ["a"], "sentid": k}]}) + "\n")
    with pytest.raises(ValueError, match=r"'sentences'.*sentid.*tokens"):
        load_caption_dataset(str(tmp_path))


def write_caption_table(root, pairs, name="captions.csv", image_folder="images", header=("image", "caption"),
                        extension=".jpg", with_folder_in_path=False):
    """Images in `root/image_folder`, and a CSV beside them with one row per caption (not named metadata.csv)."""
    (root / image_folder).mkdir(parents=True)
    with open(root / name, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for k, (image, captions) in enumerate(pairs):
            image.save(root / image_folder / f"photo_{k}{extension}", format="JPEG")
            for caption in captions:
                writer.writerow([f"{image_folder}/photo_{k}{extension}" if with_folder_in_path else f"photo_{k}{extension}", caption])
    return {f"photo_{k}{extension}": captions for k, (_, captions) in enumerate(pairs)}


@pytest.mark.parametrize("name, header, extension, with_folder_in_path", [
    ("captions.csv", ("image", "caption"), ".jpg", False),           # Kaggle's columns, bare file names
    ("annotations.csv", ("image_path", "text"), ".JPG", True),       # paths into the subfolder, upper-case extension
    ("metadata.csv", ("image", "caption"), ".jpg", False),           # the imagefolder name, but no file_name column
])
def test_a_caption_table_next_to_a_folder_of_images(tmp_path, caplog, name, header, extension, with_folder_in_path):
    expected = write_caption_table(tmp_path / "mine", scenes(20, seed=43), name=name, header=header,
                                   extension=extension, with_folder_in_path=with_folder_in_path)
    with caplog.at_level(logging.INFO):
        dataset, report = load_caption_dataset(str(tmp_path / "mine"), return_report=True)
    assert captions_by_id(dataset) == expected and not report.counts
    assert name in caplog.text  # says which file it read the captions from


def test_a_caption_table_names_the_images_it_cannot_find(tmp_path, caplog):
    root = tmp_path / "mine"
    expected = write_caption_table(root, scenes(20, seed=44))
    with open(root / "captions.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(["ghost.jpg", "a photo that is not there"])
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert captions_by_id(dataset) == expected and "ghost.jpg" in caplog.text and report.counts


def imagefolder_with_metadata(root, name, lines, count=12, encoding="utf-8"):
    """Images img_0.jpg ... beside a metadata file written line by line as given (a broken one, for these tests)."""
    root.mkdir(parents=True)
    for k, (image, _) in enumerate(scenes(count, seed=48)):
        image.save(root / f"img_{k}.jpg")
    (root / name).write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return root


@pytest.mark.parametrize("bad_row, caption", [(0, "a dog, running"), (5, "a dog, running"), (5, ' "a dog, running"')])
def test_a_metadata_csv_row_with_more_fields_than_its_header_is_named(tmp_path, bad_row, caption):
    """An unquoted comma in a caption: pandas shifts every column (in the first row) or stops with "Expected 2
    fields in line 7" (later): the error names the file, its line and the fix. A quote after a space does not
    quote for pandas."""
    lines = ["file_name,text"] + [f"img_{k}.jpg,a dog {k}" for k in range(12)]
    lines[1 + bad_row] = f"img_{bad_row}.jpg,{caption}"
    root = imagefolder_with_metadata(tmp_path / "photos", "metadata.csv", lines)
    with pytest.raises(ValueError, match=rf"metadata\.csv:{2 + bad_row}: 3 fields.*header has 2.*quote"):
        load_caption_dataset(str(root))


def test_column_names_with_spaces_around_them_are_found(tmp_path):
    """`file_name, text`: a space after the comma, as people type CSV headers."""
    lines = ["file_name, text"] + [f"img_{k}.jpg, a dog {k}" for k in range(12)]
    root = imagefolder_with_metadata(tmp_path / "photos", "metadata.csv", lines)
    dataset = load_caption_dataset(str(root))
    assert sorted(c for split in SPLITS for captions in dataset[split]["captions"] for c in captions) == sorted(
        f"a dog {k}" for k in range(12))


def test_split_folders_whose_metadata_datasets_would_not_read_are_refused_with_the_fix(tmp_path):
    """With train/ and test/ folders, `datasets` reads a metadata file inside each split folder only: one at the top
    is ignored (it makes a `label` column of the folder names instead), and a split folder without one fails."""
    pairs = scenes(12, seed=49)
    root = tmp_path / "top"
    rows = ["file_name,text"]
    for k, (image, captions) in enumerate(pairs):
        split = "train" if k < 8 else "test"
        (root / split).mkdir(parents=True, exist_ok=True)
        image.save(root / split / f"{k}.jpg")
        rows.append(f"{split}/{k}.jpg,{captions[0]}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"metadata\.csv is at the top.*test/metadata\.csv, train/metadata\.csv"):
        load_caption_dataset(str(root))

    (root / "metadata.csv").rename(root / "train" / "metadata.csv")
    with pytest.raises(ValueError, match=r"test/ holds images but no metadata file"):
        load_caption_dataset(str(root))


def test_metadata_files_that_are_not_utf8_or_not_json_lines_are_named_with_their_line(tmp_path):
    lines = ["file_name,text"] + [f"img_{k}.jpg,un café {k}" for k in range(12)]
    root = imagefolder_with_metadata(tmp_path / "latin1", "metadata.csv", lines, encoding="latin-1")
    with pytest.raises(ValueError, match=r"metadata\.csv:2: not valid UTF-8"):
        load_caption_dataset(str(root))

    rows = [json.dumps({"file_name": f"img_{k}.jpg", "text": f"a dog {k}"}) for k in range(12)]
    rows.insert(5, "")
    rows.insert(9, '{"file_name": "img_3.jpg", "text": "broken"')
    root = imagefolder_with_metadata(tmp_path / "broken", "metadata.jsonl", rows)
    with pytest.raises(ValueError, match=r"metadata\.jsonl:10: not a JSON object"):
        load_caption_dataset(str(root))

    rows = [json.dumps({"file_name": f"img_{k}.jpg", "text": 42 if k == 4 else f"a dog {k}"}) for k in range(12)]
    root = imagefolder_with_metadata(tmp_path / "number", "metadata.jsonl", rows)
    with pytest.raises(ValueError, match=r"metadata\.jsonl:5: 'text' is a number.*text in line 1"):
        load_caption_dataset(str(root))


def test_a_split_column_chooses_the_splits(tmp_path):
    """Karpathy-style annotations as a table (e.g. Flickr30k's `raw` JSON list, `split`, `filename`), or a
    metadata.csv with a `split` column: the file's own split, not a random one."""
    pairs = scenes(16, seed=45)
    split_of = ["train"] * 10 + ["val"] * 3 + ["test"] * 3
    (tmp_path / "flickr30k-images").mkdir()
    with open(tmp_path / "flickr_annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["raw", "sentids", "split", "filename", "img_id"])
        for k, (image, captions) in enumerate(pairs):
            image.save(tmp_path / "flickr30k-images" / f"{k}.jpg")
            writer.writerow([json.dumps(captions), json.dumps(list(range(5 * k, 5 * k + 5))), split_of[k], f"{k}.jpg", k])
    dataset = load_caption_dataset(str(tmp_path))
    assert ids_by_split(dataset) == {"train": sorted(f"{k}.jpg" for k in range(10)),
                                     "validation": ["10.jpg", "11.jpg", "12.jpg"], "test": ["13.jpg", "14.jpg", "15.jpg"]}
    assert dataset["test"][0]["captions"] == pairs[13][1]


def test_a_split_column_in_an_imagefolder_metadata_file(tmp_path):
    pairs = scenes(16, seed=46)
    rows = []
    for k, (image, captions) in enumerate(pairs):
        image.save(tmp_path / f"{k}.jpg")
        split = "train" if k < 10 else "validation" if k < 13 else "test"
        rows.append({"file_name": f"{k}.jpg", "captions": captions, "split": split})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_caption_dataset(str(tmp_path))
    assert ids_by_split(dataset) == {"train": sorted(f"{k}.jpg" for k in range(10)),
                                     "validation": ["10.jpg", "11.jpg", "12.jpg"], "test": ["13.jpg", "14.jpg", "15.jpg"]}


def test_an_unknown_split_name_is_refused_with_the_names_found(tmp_path):
    pairs = scenes(12, seed=47)
    rows = []
    for k, (image, captions) in enumerate(pairs):
        image.save(tmp_path / f"{k}.jpg")
        rows.append({"file_name": f"{k}.jpg", "text": captions[0], "split": "train" if k < 8 else "holdout"})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r"'split'.*holdout"):
        load_caption_dataset(str(tmp_path))


def test_a_jsonl_text_column_with_paths_into_a_subfolder_and_upper_case_extensions(tmp_path):
    pairs = scenes(12, seed=48)
    (tmp_path / "images" / "2024").mkdir(parents=True)
    rows = []
    for k, (image, captions) in enumerate(pairs):
        image.save(tmp_path / "images" / "2024" / f"IMG_{k}.JPG", format="JPEG")
        rows.extend({"file_name": f"images/2024/IMG_{k}.JPG", "text": caption} for caption in captions[:2])
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert captions_by_id(load_caption_dataset(str(tmp_path))) == {f"IMG_{k}.JPG": c[:2] for k, (_, c) in enumerate(pairs)}


def test_one_caption_table_per_split(tmp_path):
    pairs = scenes(16, seed=49)
    (tmp_path / "images").mkdir()
    for split, rows in (("train", range(10)), ("val", range(10, 13)), ("test", range(13, 16))):
        with open(tmp_path / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "caption"])
            for k in rows:
                pairs[k][0].save(tmp_path / "images" / f"{k}.jpg")
                writer.writerows([f"{k}.jpg", caption] for caption in pairs[k][1])
    dataset = load_caption_dataset(str(tmp_path))
    assert ids_by_split(dataset) == {"train": sorted(f"{k}.jpg" for k in range(10)),
                                     "validation": ["10.jpg", "11.jpg", "12.jpg"], "test": ["13.jpg", "14.jpg", "15.jpg"]}
    assert dataset["validation"][0]["captions"] == pairs[10][1]


def test_a_caption_table_cannot_reach_images_outside_the_dataset_folder(tmp_path, caplog):
    scenes(1, seed=50)[0][0].save(tmp_path / "secret.jpg")
    root = tmp_path / "mine"
    expected = write_caption_table(root, scenes(20, seed=50))
    with open(root / "captions.csv", "a", newline="") as handle:
        csv.writer(handle).writerows([["../secret.jpg", "an image outside"], [str(tmp_path / "secret.jpg"), "absolute"]])
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert captions_by_id(dataset) == expected and report.counts["path_outside_dataset"] == 2


def test_a_caption_table_folder_refuses_dataset_config_and_revision(tmp_path):
    write_caption_table(tmp_path / "mine", scenes(4, seed=51))
    with pytest.raises(ValueError, match=r"captions.csv.*dataset_config / revision"):
        load_caption_dataset(str(tmp_path / "mine"), revision="v2")


@pytest.mark.parametrize("delimiter", ["| ", ";", "\t"])
def test_a_caption_table_with_another_delimiter(tmp_path, delimiter):
    """Kaggle's Flickr30k `results.csv` is `image_name| comment_number| comment`; Excel in many locales writes `;`."""
    pairs = scenes(12, seed=52)
    root = tmp_path / "flickr30k"
    (root / "flickr30k_images").mkdir(parents=True)
    lines = [delimiter.join(["image_name", "comment_number", "comment"])]
    for k, (image, captions) in enumerate(pairs):
        image.save(root / "flickr30k_images" / f"{k}.jpg")
        lines += [delimiter.join([f"{k}.jpg", str(i), caption]) for i, caption in enumerate(captions)]
    (root / "results.csv").write_text("\n".join(lines) + "\n")
    dataset = load_caption_dataset(str(root), caption_column="comment")
    assert captions_by_id(dataset) == {f"{k}.jpg": captions for k, (_, captions) in enumerate(pairs)}


def write_coco(root, pairs, splits):
    """The COCO captions release: `annotations/captions_<split>2017.json` ({images: [{id, file_name}], annotations:
    [{image_id, id, caption}]}) next to `train2017/`, `val2017/`, and other annotation files that hold no captions."""
    (root / "annotations").mkdir(parents=True)
    expected = {}
    for split, rows in splits.items():
        (root / f"{split}2017").mkdir()
        images, annotations = [], []
        for k in rows:
            name = f"{k:012d}.jpg"
            pairs[k][0].save(root / f"{split}2017" / name)
            images.append({"id": 1000 + k, "file_name": name, "height": 48, "width": 48})
            annotations += [{"image_id": 1000 + k, "id": 10 * k + i, "caption": c} for i, c in enumerate(pairs[k][1])]
            expected[1000 + k] = pairs[k][1]
        (root / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps({"images": images, "annotations": []}))
    return expected


def test_the_coco_captions_release(tmp_path):
    pairs = scenes(24, seed=53)
    expected = write_coco(tmp_path / "coco", pairs, {"train": range(20), "val": range(20, 24)})
    dataset, report = load_caption_dataset(str(tmp_path / "coco"), return_report=True)
    assert captions_by_id(dataset) == {str(image_id): captions for image_id, captions in expected.items()}
    # COCO's own ids (`images[].id`), as its result files and the Karpathy split's `cocoid` name the images.
    assert sorted(dataset["validation"]["image_id"]) == [str(1000 + k) for k in range(20, 24)]
    assert len(dataset["test"]) == 2 and len(dataset["train"]) == 18  # COCO has no test captions: carved from train
    assert not report.counts


def test_coco_annotations_of_missing_images_are_counted(tmp_path, caplog):
    pairs = scenes(24, seed=54)
    root = tmp_path / "coco"
    expected = write_coco(root, pairs, {"train": range(20), "val": range(20, 24)})
    (root / "train2017" / f"{3:012d}.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert captions_by_id(dataset) == {str(image_id): captions for image_id, captions in expected.items() if image_id != 1003}
    assert report.counts and f"{3:012d}.jpg" in caplog.text


def test_coco_annotations_that_cannot_be_used_are_counted_and_named(tmp_path, caplog):
    """A caption that is not text (a number, a list) and an annotation of an image the file does not list: each
    counted once in the report, named by file and index, and the rest of the file loads."""
    pairs = scenes(24, seed=55)
    root = tmp_path / "coco"
    expected = write_coco(root, pairs, {"train": range(20), "val": range(20, 24)})
    file = root / "annotations" / "captions_train2017.json"
    data = json.loads(file.read_text())
    data["annotations"][1]["caption"] = 42
    data["annotations"][2]["caption"] = ["a", "list"]
    data["annotations"].append({"image_id": 99999, "id": 5, "caption": "an image nobody listed"})
    file.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert report.counts == {"malformed_caption": 2, "unknown_image": 1}
    assert "captions_train2017.json: annotations[1]" in caplog.text and "42" in caplog.text
    assert "captions_train2017.json: annotations[100]" in caplog.text and "99999" in caplog.text
    kept = captions_by_id(dataset)
    assert kept["1000"] == [c for k, c in enumerate(expected[1000]) if k not in (1, 2)]
    assert all(kept[str(image_id)] == captions for image_id, captions in expected.items() if image_id != 1000)


def test_a_karpathy_split_file_under_another_name(tmp_path):
    """Karpathy's format is shared under many names (`flickr8k_karpathy.json`, `coco_karpathy.json`, ...)."""
    from hf_imgcap.demo.scenes import write_synthetic_flickr8k

    root = write_synthetic_flickr8k(tmp_path / "k", layout="karpathy", num_train=8, num_val=2, num_test=2, image_size=32)
    reference = load_caption_dataset(str(root))
    (root / "dataset_flickr8k.json").rename(root / "karpathy_flickr8k.json")
    (root / "notes.json").write_text(json.dumps({"about": "not captions"}))
    renamed, report = load_caption_dataset(str(root), return_report=True)
    assert report.layout == "karpathy" and "karpathy_flickr8k.json" in report.split_source
    assert all(renamed[split]["image_id"] == reference[split]["image_id"] for split in SPLITS)
