"""Training on your own data: any `datasets` source (imagefolder with a metadata file, a Hub id with a config and a
revision, named image / caption columns, a Dataset / DatasetDict object), splits made when a source has none."""

import csv
import importlib.util
import io
import json
import logging
import random

import datasets
import pytest
from PIL import Image

from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.data.feature_cache import images_fingerprint
from hf_imgcap.demo.scenes import draw_scene, random_scene

from conftest import REPO_ROOT

EXPECTED_FEATURES = datasets.Features(
    {"image": datasets.Image(), "image_id": datasets.Value("string"), "captions": datasets.List(datasets.Value("string"))}
)


def scenes(count, seed=0, size=48):
    """`count` (PIL image, five captions) pairs of the synthetic shapes world."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scene = random_scene(rng)
        out.append((draw_scene(scene, size, rng), scene.captions(rng)))
    return out


def jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def write_imagefolder(folder, pairs, metadata="csv", image_key="file_name", caption_key="text", one_row_per_caption=True):
    """An `imagefolder` the way its documentation shows it: images beside `metadata.csv` / `metadata.jsonl`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (image, captions) in enumerate(pairs):
        name = f"img_{index:03d}.jpg"
        image.save(folder / name)
        if one_row_per_caption:
            rows.extend({image_key: name, caption_key: caption} for caption in captions)
        else:
            rows.append({image_key: name, caption_key: captions})
    write_metadata(folder, rows, metadata)
    return [f"img_{index:03d}.jpg" for index in range(len(pairs))]


def write_metadata(folder, rows, metadata):
    if metadata == "csv":
        with open(folder / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def all_ids(dataset):
    return {split: list(dataset[split]["image_id"]) for split in ("train", "validation", "test")}


# ---------------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_with_split_folders_and_one_csv_row_per_caption(tmp_path):
    """`metadata.csv` with `file_name,text`, several rows per image: one image with all its captions."""
    pairs = scenes(9)
    root = tmp_path / "shapes"
    names = {}
    for split, chunk in (("train", pairs[:5]), ("validation", pairs[5:7]), ("test", pairs[7:])):
        names[split] = write_imagefolder(root / split, chunk, metadata="csv")
    dataset = load_caption_dataset(str(root))
    assert dataset["train"].features == EXPECTED_FEATURES
    assert set(dataset) == {"train", "validation", "test"}
    assert all_ids(dataset) == names
    assert dataset["train"][1]["captions"] == pairs[1][1]  # the five rows of img_001.jpg, in file order
    assert dataset["test"][1]["captions"] == pairs[8][1]
    image = dataset["validation"][0]["image"]
    assert isinstance(image, Image.Image) and image.size == (48, 48)


def test_imagefolder_with_a_list_of_captions_per_row_and_only_train_gets_seeded_splits_by_image(tmp_path, caplog):
    pairs = scenes(20, seed=1)
    names = write_imagefolder(tmp_path / "one_folder", pairs, metadata="jsonl", caption_key="captions",
                              one_row_per_caption=False)
    with caplog.at_level(logging.INFO):
        first, report = load_caption_dataset(str(tmp_path / "one_folder"), seed=3, return_report=True)
    ids = all_ids(first)
    assert [len(ids[split]) for split in ("train", "validation", "test")] == [16, 2, 2]
    assert sorted(ids["train"] + ids["validation"] + ids["test"]) == names  # every image once, in one split
    assert ids["train"] == sorted(ids["train"])  # train keeps the source's order
    assert "no validation or test split" in caplog.text and "16" in caplog.text  # the sizes are logged
    assert "seed 3" in report.split_source
    by_name = dict(zip(names, (captions for _, captions in pairs)))
    assert all(row["captions"] == by_name[row["image_id"]] for row in first["test"])
    again = load_caption_dataset(str(tmp_path / "one_folder"), seed=3)
    other = load_caption_dataset(str(tmp_path / "one_folder"), seed=4)
    assert all_ids(again) == ids and all_ids(other) != ids


def test_several_rows_per_image_never_end_up_in_two_splits(tmp_path):
    """The split made for a train-only source is by image, not by row."""
    pairs = scenes(12, seed=2)
    names = write_imagefolder(tmp_path / "rows", pairs, metadata="csv")
    dataset = load_caption_dataset(str(tmp_path / "rows"))
    ids = all_ids(dataset)
    assert sorted(ids["train"] + ids["validation"] + ids["test"]) == names
    assert all(len(captions) == 5 for split in dataset.values() for captions in split["captions"])


def test_train_and_test_without_validation_carves_validation_from_train(tmp_path):
    pairs = scenes(14, seed=4)
    train_names = write_imagefolder(tmp_path / "tt" / "train", pairs[:11])
    test_names = write_imagefolder(tmp_path / "tt" / "test", pairs[11:])
    dataset = load_caption_dataset(str(tmp_path / "tt"))
    ids = all_ids(dataset)
    assert ids["test"] == test_names  # the source's own test split is kept as it is
    assert len(ids["validation"]) == 1 and sorted(ids["train"] + ids["validation"]) == train_names


def test_images_with_the_same_file_name_in_different_folders_get_distinct_ids(tmp_path):
    folder = tmp_path / "animals"
    rows = []
    for kind, pairs in (("cats", scenes(6, seed=15)), ("dogs", scenes(6, seed=16))):
        (folder / kind).mkdir(parents=True)
        for index, (image, captions) in enumerate(pairs):
            image.save(folder / kind / f"{index}.jpg")
            rows.append({"file_name": f"{kind}/{index}.jpg", "text": captions[0]})
    write_metadata(folder, rows, "csv")
    dataset = load_caption_dataset(str(folder))
    ids = [i for split in dataset.values() for i in split["image_id"]]
    assert sorted(ids) == sorted(row["file_name"] for row in rows)


def test_images_no_caption_names_are_counted_and_logged(tmp_path, caplog):
    """An image file in the folder that no metadata row names is not used: counted and logged, never dropped unsaid."""
    root = tmp_path / "photos"
    names = write_imagefolder(root, scenes(12, seed=2), metadata="csv")
    (root / "extra").mkdir()
    for name in ("uncaptioned.jpg", "extra/also uncaptioned.png"):
        scenes(1, seed=9)[0][0].save(root / name)
    (root / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert sorted(all_ids(dataset)["train"] + all_ids(dataset)["validation"] + all_ids(dataset)["test"]) == names
    assert report.counts == {"uncaptioned_image": 2} and "uncaptioned.jpg" in caplog.text


def test_bad_rows_of_an_imagefolder_are_counted_named_and_logged(tmp_path, caplog):
    pairs = scenes(8, seed=5)
    folder = tmp_path / "broken"
    names = write_imagefolder(folder, pairs, metadata="jsonl", caption_key="captions", one_row_per_caption=False)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    rows[1]["captions"] = ["   ", None, "a real caption"]  # an empty and a null caption: skipped, the image stays
    rows[2]["captions"] = None  # a null cell: the image has no captions
    rows.append({"file_name": "ghost.jpg", "captions": ["an image that is not there"]})  # missing file
    (folder / names[3]).write_bytes(b"not a jpeg")  # undecodable
    write_metadata(folder, rows, "jsonl")
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(folder), return_report=True)
    assert report.counts == {"empty_caption": 3, "image_without_captions": 1, "undecodable_image": 2}
    assert "row 1: captions[0] is empty" in caplog.text and "row 1: captions[1] is null" in caplog.text
    assert "row 2: captions is null" in caplog.text
    assert "ghost.jpg" in caplog.text and "no such image file" in caplog.text
    assert names[3] in caplog.text
    kept = [i for split in dataset.values() for i in split["image_id"]]
    assert sorted(kept) == sorted(set(names) - {names[2], names[3]})
    captions = {i: c for split in dataset.values() for i, c in zip(split["image_id"], split["captions"])}
    assert captions[names[1]] == ["a real caption"]


# ---------------------------------------------------------------------------------------------- columns
def object_dataset(pairs, **columns):
    """A `datasets.Dataset` with the images in `img` and the columns given as callables of (index, captions)."""
    data = {"img": [{"bytes": jpeg_bytes(image), "path": f"photo_{k}.jpg"} for k, (image, _) in enumerate(pairs)]}
    for name, make in columns.items():
        data[name] = [make(k, captions) for k, (_, captions) in enumerate(pairs)]
    features = datasets.Features({"img": datasets.Image(), **{
        name: datasets.List(datasets.Value("string")) if isinstance(values[0], list) else datasets.Value("string")
        for name, values in data.items() if name != "img"}})
    return datasets.Dataset.from_dict(data, features=features)


def test_a_datasetdict_object_with_named_image_and_caption_columns(tmp_path):
    pairs = scenes(10, seed=6)
    splits = datasets.DatasetDict({
        "train": object_dataset(pairs[:6], sentences=lambda k, c: c, note=lambda k, c: "ignored"),
        "val": object_dataset(pairs[6:8], sentences=lambda k, c: c, note=lambda k, c: "ignored"),
        "test": object_dataset(pairs[8:], sentences=lambda k, c: c, note=lambda k, c: "ignored"),
    })
    dataset = load_caption_dataset(splits, image_column="img", caption_column="sentences")
    assert dataset["validation"].features == EXPECTED_FEATURES  # `val` read as validation, other columns dropped
    assert all_ids(dataset) == {"train": [f"photo_{k}.jpg" for k in range(6)], "validation": ["photo_0.jpg", "photo_1.jpg"],
                                "test": ["photo_0.jpg", "photo_1.jpg"]}
    assert dataset["test"][1]["captions"] == pairs[9][1]
    assert dataset["train"][0]["image"].size == (48, 48)


def test_a_single_string_caption_column_and_a_dataset_object_taken_as_train(tmp_path):
    pairs = scenes(20, seed=7)
    single = object_dataset(pairs, description=lambda k, c: c[0])
    dataset = load_caption_dataset(single, image_column="img", caption_column="description", seed=0)
    assert [len(dataset[s]) for s in ("train", "validation", "test")] == [16, 2, 2]
    assert all(len(captions) == 1 for captions in dataset["train"]["captions"])


def test_several_caption_columns_are_still_found_without_naming_them(tmp_path):
    columns = {f"caption_{k}": (lambda k: lambda i, c: f"caption number {k} of image {i}")(k) for k in (2, 0, 1, 10)}
    dataset = load_caption_dataset(object_dataset(scenes(10, seed=8), **columns), image_column="img")
    rows = [row for split in dataset.values() for row in split]
    first = next(row for row in rows if row["image_id"] == "photo_0.jpg")
    # In numeric order (caption_10 after caption_2), whatever the column order.
    assert first["captions"] == [f"caption number {k} of image 0" for k in (0, 1, 2, 10)]


def test_rows_of_the_same_inline_image_without_a_file_name_are_one_image(tmp_path):
    """Images held as bytes only (e.g. made from PIL images, no path), one row per caption and two caption columns
    named in Python: rows with the same bytes are one image."""
    pairs = scenes(10, seed=14)
    encoded = [jpeg_bytes(image) for image, _ in pairs]
    rows = [(k, c) for k, (_, captions) in enumerate(pairs) for c in captions[:2]]
    ds = datasets.Dataset.from_dict(
        {"picture": [{"bytes": encoded[k], "path": None} for k, _ in rows], "en": [c for _, c in rows],
         "en_alt": [c.upper() for _, c in rows]},
        features=datasets.Features({"picture": datasets.Image(), "en": datasets.Value("string"), "en_alt": datasets.Value("string")}))
    dataset = load_caption_dataset(ds, caption_column=["en", "en_alt"], seed=1)  # the only Image column: found
    loaded = [row for split in dataset.values() for row in split.cast_column("image", datasets.Image(decode=False))]
    assert len(loaded) == 10
    by_bytes = {row["image"]["bytes"]: row["captions"] for row in loaded}
    first, second = pairs[0][1][:2]
    assert by_bytes[encoded[0]] == [first, first.upper(), second, second.upper()]


@pytest.mark.parametrize("argument, value, message", [
    ("caption_column", "sentence", r"no caption column 'sentence' \(columns: img, caption\)"),
    ("image_column", "picture", r"no image column 'picture' \(columns: img, caption\)"),
    ("caption_column", "img", r"caption column 'img' holds Image.*not text"),
])
def test_a_missing_or_wrong_column_is_named_with_the_available_columns(argument, value, message):
    ds = object_dataset(scenes(4, seed=9), caption=lambda k, c: c[0])
    kwargs = {"image_column": "img", argument: value}
    with pytest.raises(ValueError, match=message):
        load_caption_dataset(ds, **kwargs)


def test_without_any_caption_column_the_error_says_what_was_looked_for():
    ds = object_dataset(scenes(4, seed=9), label=lambda k, c: "x")
    with pytest.raises(ValueError, match=r"no caption column found .*caption_0\.\.caption_N.*columns: img, label.*--caption_column"):
        load_caption_dataset(ds, image_column="img")


# ---------------------------------------------------------------------------------------------- Hub ids
def test_dataset_config_chooses_the_configuration_of_a_local_dataset_repository(tmp_path):
    """A script-free dataset repository (a local folder with a README.md declaring two configs), read by
    `datasets.load_dataset(folder, name=...)` for real, offline."""
    repo = tmp_path / "repo"
    for config, offset in (("short", 0), ("long", 20)):
        for split in ("train", "test"):
            pairs = scenes(12 if split == "train" else 3, seed=offset + len(split))
            ds = object_dataset(pairs, sentences=lambda k, c, config=config: [f"{config} {text}" for text in c])
            (repo / config).mkdir(parents=True, exist_ok=True)
            ds.to_parquet(repo / config / f"{split}.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train.parquet\n"
                  f"  - split: test\n    path: {c}/test.parquet\n" for c in ("short", "long"))
        + "---\n# two configurations\n"
    )
    for config in ("short", "long"):
        dataset = load_caption_dataset(str(repo), dataset_config=config, image_column="img", caption_column="sentences")
        captions = [c for split in dataset.values() for row in split["captions"] for c in row]
        assert captions and all(c.startswith(f"{config} ") for c in captions)
        assert len(dataset["test"]) == 3 and len(dataset["validation"]) == 1  # carved from the 12 train images


def test_hub_id_config_and_revision_reach_load_dataset(monkeypatch, tmp_path):
    """No network: `datasets.load_dataset` is monkeypatched to record its arguments and return a small in-memory
    DatasetDict, as the Hub would after downloading."""
    pairs = scenes(12, seed=10)
    calls = []

    def recording_load_dataset(path, *args, **kwargs):
        calls.append((path, args, kwargs))
        return datasets.DatasetDict({"train": object_dataset(pairs, sentences=lambda k, c: c)})

    monkeypatch.setattr(datasets, "load_dataset", recording_load_dataset)
    dataset = load_caption_dataset("someone/shapes", dataset_config="full", revision="3f2a9c1",
                                   image_column="img", caption_column="sentences")
    assert calls == [("someone/shapes", (), {"name": "full", "revision": "3f2a9c1"})]
    assert sum(len(dataset[s]) for s in dataset) == 12


def test_a_flickr8k_folder_refuses_column_arguments_it_cannot_use(tmp_path):
    from hf_imgcap.demo.scenes import write_synthetic_flickr8k

    root = write_synthetic_flickr8k(tmp_path / "f8k", num_train=3, num_val=1, num_test=1, image_size=32)
    with pytest.raises(ValueError, match=r"flickr8k layout.*caption_column='text'"):
        load_caption_dataset(str(root), caption_column="text")


# ---------------------------------------------------------------------------------------------- the feature cache key
def test_the_feature_cache_key_of_inline_images_depends_on_the_images_only():
    """Images stored inline (Hub parquet) are keyed by their bytes: the same images reached another way reuse the
    cache; a changed image does not."""
    pairs = scenes(6, seed=11)
    full = datasets.Dataset.from_dict({
        "image": [{"bytes": jpeg_bytes(image), "path": f"photo_{k}.jpg"} for k, (image, _) in enumerate(pairs)],
        "image_id": [f"photo_{k}.jpg" for k in range(len(pairs))], "captions": [captions for _, captions in pairs],
    }, features=EXPECTED_FEATURES).select(range(1, 6))  # a selection, as the splits made from train are
    rebuilt = datasets.Dataset.from_dict(full.cast_column("image", datasets.Image(decode=False)).to_dict(),
                                         features=full.features)  # the same rows, built anew (another fingerprint)
    assert images_fingerprint(rebuilt) == images_fingerprint(full)
    rows = full.cast_column("image", datasets.Image(decode=False)).to_dict()
    rows["image"][1] = {"bytes": jpeg_bytes(scenes(1, seed=99)[0][0]), "path": rows["image"][1]["path"]}
    changed = datasets.Dataset.from_dict(rows, features=full.features)
    assert images_fingerprint(changed) != images_fingerprint(full)
    assert images_fingerprint(full.select([1, 0])) != images_fingerprint(full.select([0, 1]))  # order matters


# ---------------------------------------------------------------------------------------------- train.py
spec = importlib.util.spec_from_file_location("train_script_own_data", REPO_ROOT / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)


@pytest.mark.slow
def test_train_py_on_an_imagefolder_with_image_and_caption_columns(tmp_path, tiny_encoder):
    """`train.py --dataset <imagefolder> --image_column photo --caption_column description`: imagefolder names the
    image column after `photo_file_name`; only a train split, so validation and test are carved from it."""
    folder = tmp_path / "my_photos"
    write_imagefolder(folder, scenes(20, seed=12, size=64), metadata="csv", image_key="photo_file_name",
                      caption_key="description")
    argv = [
        "--dataset", str(folder), "--image_column", "photo", "--caption_column", "description",
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
        "--encoder", str(tiny_encoder), "--image_size", "64", "--tokenizer", "captions", "--caption_vocab_size", "60",
        "--embedding_size", "16", "--attention_size", "16", "--hidden_size", "16", "--dropout", "0",
        "--batch_size", "16", "--num_epochs", "1", "--max_steps", "2", "--eval_num_beams", "1",
        "--eval_max_new_tokens", "6", "--report_to", "none",
    ]
    results = train_script.train(*train_script.parse_args(argv))
    assert results["test"]["num_images"] == 2
    saved = json.loads((tmp_path / "out" / "training_args.json").read_text())["data"]
    assert (saved["image_column"], saved["caption_column"]) == ("photo", "description")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_train_py_passes_the_dataset_arguments_on(monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def recording_loader(source, **kwargs):
        seen.update(kwargs, source=source)
        raise Stop

    monkeypatch.setattr(train_script, "load_caption_dataset", recording_loader)
    argv = ["--dataset", "someone/shapes", "--dataset_config", "full", "--revision", "v2", "--image_column", "img",
            "--caption_column", "sentences", "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    with pytest.raises(Stop):
        train_script.train(*train_script.parse_args(argv))
    assert {k: seen[k] for k in ("source", "dataset_config", "revision", "image_column", "caption_column")} == {
        "source": "someone/shapes", "dataset_config": "full", "revision": "v2", "image_column": "img",
        "caption_column": "sentences"}


def test_the_readme_trainer_recipe_trains_on_a_loaded_imagefolder(tmp_path):
    """README "Training on your own data": the loaded splits go into `Trainer` with a collator made from the
    processor (one random caption per image and batch)."""
    from transformers import Trainer, TrainingArguments

    from conftest import tiny_model, tiny_processor

    write_imagefolder(tmp_path / "my_photos", scenes(10, seed=13, size=64), metadata="csv")
    data = load_caption_dataset(str(tmp_path / "my_photos"))
    model, processor = tiny_model().train(), tiny_processor()

    def collate(rows):
        batch = processor(images=[row["image"] for row in rows], text=[random.choice(row["captions"]) for row in rows])
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return dict(batch)

    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                             remove_unused_columns=False, report_to="none", save_strategy="no", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], data_collator=collate)
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not (p.detach() == before[name]).all() for name, p in model.named_parameters() if name in before)


# ---------------------------------------------------------------------------------------------- a list of captions as text
# Captions with the characters that make writing a list as text tricky: apostrophes, double quotes, commas, brackets.
AWKWARD_CAPTIONS = ["a man's dog runs", 'he says "sit" to the dog', "a dog, a cat, and a bird", "a dog [left] and a cat"]


def write_caption_list_csv(folder, count, write_cell, seed=20):
    """An imagefolder whose metadata.csv has one row per image and its captions in one cell, written by
    `write_cell(list of captions)`. Returns {file name: captions}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for index, (image, captions) in enumerate(scenes(count, seed=seed)):
        name = f"img_{index:03d}.jpg"
        image.save(folder / name)
        expected[name] = AWKWARD_CAPTIONS[index % 2 :] + captions[:2]
    write_metadata(folder, [{"file_name": name, "captions": write_cell(captions)} for name, captions in expected.items()], "csv")
    return expected


def numpy_repr(captions):
    """What pandas writes for a list column read from parquet (a numpy array per cell): no commas, long rows wrapped."""
    import numpy as np

    return str(np.array(captions, dtype=object))


def loaded_captions(dataset):
    return {row_id: captions for split in dataset.values() for row_id, captions in zip(split["image_id"], split["captions"])}


@pytest.mark.parametrize("write_cell", [json.dumps, str, numpy_repr], ids=["json", "python_literal", "numpy_repr"])
def test_a_csv_cell_holding_a_list_of_captions_is_read_as_several_captions(tmp_path, write_cell):
    """`metadata.csv` with one row per image: the list written as JSON, as Python writes it (what `df.to_csv` of a
    list column gives) or as numpy writes it (`df.to_csv` of a list column read from parquet)."""
    expected = write_caption_list_csv(tmp_path / "lists", 12, write_cell)
    assert any("\n" in write_cell(captions) for captions in expected.values()) or write_cell is not numpy_repr
    dataset, report = load_caption_dataset(str(tmp_path / "lists"), return_report=True)
    assert loaded_captions(dataset) == expected
    assert not report.counts


def test_pandas_to_csv_of_a_list_column_round_trips(tmp_path):
    pandas = pytest.importorskip("pandas")
    folder = tmp_path / "pandas"
    folder.mkdir()
    expected = {}
    for index, (image, captions) in enumerate(scenes(12, seed=21)):
        image.save(folder / f"{index}.jpg")
        expected[f"{index}.jpg"] = AWKWARD_CAPTIONS + captions[:1]
    pandas.DataFrame({"file_name": list(expected), "captions": list(expected.values())}).to_csv(folder / "metadata.csv", index=False)
    assert loaded_captions(load_caption_dataset(str(folder))) == expected


@pytest.mark.parametrize("cell, why", [
    ("['a dog', 'a cat'", "not closed"),                # cut off (a spreadsheet's cell limit, a bad export)
    ("['a dog', 3]", "not a string"),                   # a list, but not of captions
    ('["a dog", "a cat"] and more', "after the list"),
    ("['a dog' 'a cat', 'a bird']", "commas"),         # some commas: Python would glue 'a dog' 'a cat' together
    ("[f'a {dog}']", "string"),                          # code, never run
    ("[b'a dog']", "bytes"),
])
def test_a_cell_that_looks_like_a_list_but_cannot_be_read_is_refused_naming_file_column_and_row(tmp_path, cell, why):
    write_caption_list_csv(tmp_path / "bad", 12, json.dumps)
    rows = list(csv.DictReader(open(tmp_path / "bad" / "metadata.csv")))
    rows[4]["captions"] = cell
    write_metadata(tmp_path / "bad", rows, "csv")
    with pytest.raises(ValueError) as raised:
        load_caption_dataset(str(tmp_path / "bad"))
    message = str(raised.value)
    assert "metadata.csv" in message and "'captions'" in message and "row 4" in message and cell[:10] in message
    assert why in message


def test_captions_that_merely_start_with_a_bracket_stay_captions(tmp_path):
    folder = tmp_path / "brackets"
    pairs = scenes(12, seed=22)
    write_imagefolder(folder, pairs, metadata="csv")
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    rows[0]["text"], rows[1]["text"], rows[2]["text"] = "[a dog] on the beach", "[sic] a dgo", "[]a"
    write_metadata(folder, rows, "csv")
    dataset, report = load_caption_dataset(str(folder), return_report=True)
    assert loaded_captions(dataset)["img_000.jpg"][:3] == ["[a dog] on the beach", "[sic] a dgo", "[]a"]
    assert not report.counts


def test_a_list_column_keeps_working_from_jsonl_parquet_and_a_dataset_object(tmp_path):
    pairs = scenes(12, seed=23)
    expected = {f"img_{k:03d}.jpg": AWKWARD_CAPTIONS + captions[:1] for k, (_, captions) in enumerate(pairs)}
    with_awkward = [(image, expected[f"img_{k:03d}.jpg"]) for k, (image, _) in enumerate(pairs)]
    write_imagefolder(tmp_path / "jsonl", with_awkward, metadata="jsonl", caption_key="captions", one_row_per_caption=False)
    assert loaded_captions(load_caption_dataset(str(tmp_path / "jsonl"))) == expected
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": jpeg_bytes(image), "path": name} for (image, _), name in zip(pairs, expected)],
         "captions": list(expected.values())},
        features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}))
    (tmp_path / "parquet").mkdir()
    ds.to_parquet(tmp_path / "parquet" / "train.parquet")
    assert loaded_captions(load_caption_dataset(str(tmp_path / "parquet"))) == expected
    assert loaded_captions(load_caption_dataset(ds)) == expected
