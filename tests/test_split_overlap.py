"""An image in train and in an evaluation split inflates the scores: found by file, by file contents and by decoded
pixels (whatever the names), left out of the evaluation split with a warning, or kept on request."""

import io
import json
import logging
import shutil

import datasets
import pytest
from PIL import Image

import train as train_script
from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.demo.scenes import write_synthetic_flickr8k

from test_own_data import all_ids, jpeg_bytes, scenes, write_imagefolder


def split_folders(root, train, validation, test):
    """An imagefolder with train/ validation/ test/ folders, one metadata.csv row per caption."""
    return {split: write_imagefolder(root / split, pairs) for split, pairs in
            (("train", train), ("validation", validation), ("test", test))}


def test_copies_of_train_images_under_other_names_are_left_out_of_validation_and_test(tmp_path, caplog):
    pairs = scenes(17, seed=30)
    root = tmp_path / "copies"
    names = split_folders(root, pairs[:10], pairs[10:13], pairs[13:])
    # Two test images and one validation image are byte-for-byte copies of train images, under their own names;
    # a test image is also a copy of a validation image.
    shutil.copy(root / "train" / names["train"][3], root / "test" / names["test"][0])
    shutil.copy(root / "train" / names["train"][7], root / "test" / names["test"][2])
    shutil.copy(root / "train" / names["train"][5], root / "validation" / names["validation"][1])
    shutil.copy(root / "validation" / names["validation"][2], root / "test" / names["test"][1])
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    ids = all_ids(dataset)
    assert ids["train"] == names["train"]  # training data is never thrown away
    assert ids["validation"] == [names["validation"][0], names["validation"][2]]
    assert ids["test"] == [names["test"][3]]
    assert report.counts["split_overlap"] == 4
    assert "1 validation image" in caplog.text and "3 test images" in caplog.text
    assert f"{names['test'][0]} (= train {names['train'][3]})" in caplog.text  # named, with its twin
    assert f"{names['test'][1]} (= validation {names['validation'][2]})" in caplog.text
    assert "allow_split_overlap" in caplog.text  # how to keep them


def overlapping_imagefolder(root, seed=31):
    """train / test folders where test's first image is a copy of train's first: returns its name."""
    pairs = scenes(12, seed=seed)
    names = split_folders(root, pairs[:8], pairs[8:10], pairs[10:])
    shutil.copy(root / "train" / names["train"][0], root / "test" / names["test"][0])
    return names


def test_allow_split_overlap_keeps_them_and_still_says_so(tmp_path, caplog):
    names = overlapping_imagefolder(tmp_path / "kept")
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(tmp_path / "kept"), allow_split_overlap=True, return_report=True)
    assert all_ids(dataset)["test"] == names["test"] and "split_overlap" not in report.counts
    assert "1 test image" in caplog.text and "kept" in caplog.text


def save(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("rewrite", [
    lambda image: save(image, "PNG", compress_level=1),            # another compression level
    lambda image: save(image, "PNG", pnginfo=_text_chunk()),        # metadata added
    lambda image: save(image, "BMP"),                                # another format
], ids=["png_compression", "png_metadata", "bmp"])
def test_the_same_pixels_in_different_bytes_are_found(tmp_path, rewrite):
    pairs = scenes(12, seed=32)
    root = tmp_path / "pixels"
    for split, chunk in (("train", pairs[:8]), ("validation", pairs[8:10]), ("test", pairs[10:])):
        (root / split).mkdir(parents=True)
        rows = []
        for index, (image, captions) in enumerate(chunk):
            name = f"{split}_{index}.png"
            (root / split / name).write_bytes(save(image, "PNG", compress_level=9))
            rows.extend({"file_name": name, "text": caption} for caption in captions)
        if split == "test":  # the first test image: train's third, re-saved
            (root / split / "test_0.png").unlink()
            rows = [dict(row, file_name="copy.bmp" if rewrite(pairs[0][0])[:2] == b"BM" else "copy.png")
                    if row["file_name"] == "test_0.png" else row for row in rows]
            copy = root / split / rows[0]["file_name"]
            copy.write_bytes(rewrite(pairs[2][0]))
            assert copy.read_bytes() != (root / "train" / "train_2.png").read_bytes()
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset, report = load_caption_dataset(str(root), return_report=True)
    assert all_ids(dataset)["test"] == ["test_1.png"] and report.counts["split_overlap"] == 1


def _text_chunk():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "exported again")
    return info


def test_the_same_file_name_with_other_contents_is_not_an_overlap(tmp_path):
    """Split folders often restart their numbering: train/0001.jpg and test/0001.jpg are different photos."""
    pairs = scenes(12, seed=33)
    names = split_folders(tmp_path / "numbered", pairs[:8], pairs[8:10], pairs[10:])
    assert set(names["train"]) >= set(names["test"])  # the same names in both
    dataset, report = load_caption_dataset(str(tmp_path / "numbered"), return_report=True)
    assert all_ids(dataset) == names and not report.counts


def test_an_image_named_in_two_split_files_of_the_flickr8k_layout_is_left_out_of_test(tmp_path, caplog):
    root = write_synthetic_flickr8k(tmp_path / "Flickr8k", num_train=6, num_val=2, num_test=3, image_size=32)
    train = (root / "Flickr_8k.trainImages.txt").read_text().split()
    test_file = root / "Flickr_8k.testImages.txt"
    test_file.write_text(test_file.read_text() + train[4] + "\n")
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert train[4] not in dataset["test"]["image_id"] and len(dataset["test"]) == 3
    assert report.counts["split_overlap"] == 1 and f"{train[4]} (= train {train[4]})" in caplog.text


def test_inline_images_of_a_dataset_object_are_compared_by_their_bytes():
    pairs = scenes(14, seed=34)
    encoded = [jpeg_bytes(image) for image, _ in pairs]
    encoded[12] = encoded[1]  # a test image that is train's second, under another name

    def split(rows):
        return datasets.Dataset.from_dict(
            {"image": [{"bytes": encoded[k], "path": f"photo_{k}.jpg"} for k in rows],
             "captions": [pairs[k][1] for k in rows]},
            features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}))

    dataset = load_caption_dataset(datasets.DatasetDict({"train": split(range(10)), "validation": split([10, 11]),
                                                         "test": split([12, 13])}))
    assert dataset["test"]["image_id"] == ["photo_13.jpg"]


def test_an_evaluation_split_made_only_of_train_images_is_refused_with_the_reason(tmp_path):
    pairs = scenes(12, seed=35)
    root = tmp_path / "all_copies"
    split_folders(root, pairs[:10], pairs[10:11], pairs[:2])  # test is two train images
    with pytest.raises(ValueError, match=r"split 'test'.*empty.*2 × split_overlap.*allow_split_overlap"):
        load_caption_dataset(str(root))
    assert len(load_caption_dataset(str(root), allow_split_overlap=True)["test"]) == 2


def test_train_py_passes_allow_split_overlap_on(monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def recording_loader(source, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(train_script, "load_caption_dataset", recording_loader)
    for extra, expected in (([], False), (["--allow_split_overlap"], True)):
        argv = ["--dataset", "someone/shapes", "--output_dir", str(tmp_path / f"out{expected}"), "--report_to", "none", *extra]
        with pytest.raises(Stop):
            train_script.train(*train_script.parse_args(argv))
        assert seen["allow_split_overlap"] is expected


def test_a_jpeg_decoded_and_saved_as_png_is_the_same_image(tmp_path):
    pairs = scenes(12, seed=36)
    root = tmp_path / "decoded"
    names = split_folders(root, pairs[:8], pairs[8:10], pairs[10:])
    with Image.open(root / "train" / names["train"][6]) as jpeg:
        decoded = jpeg.convert("RGB")
    (root / "test" / names["test"][1]).write_bytes(save(decoded, "PNG"))  # a PNG under a .jpg name: Pillow reads it
    dataset = load_caption_dataset(str(root))
    assert all_ids(dataset)["test"] == [names["test"][0]]


def test_the_same_image_id_given_by_the_source_is_the_same_image(tmp_path, caplog):
    """A source with its own `image_id` column (COCO ids, ...): the same id in train and test is the same photo, even
    re-encoded (other bytes, other pixels). Ids the loader makes from file names prove nothing (see above)."""
    pairs = scenes(14, seed=37)

    def split(rows, quality=75):
        return datasets.Dataset.from_dict(
            {"image": [{"bytes": save(pairs[k][0], "JPEG", quality=quality), "path": None} for k in rows],
             "image_id": [f"coco_{k}" for k in rows], "captions": [pairs[k][1] for k in rows]},
            features=datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("string"),
                                        "captions": datasets.List(datasets.Value("string"))}))

    # Test's second image is train's coco_1 re-encoded at another quality: other bytes, other pixels, same id.
    source = datasets.DatasetDict({"train": split(range(10)), "validation": split([10, 11]), "test": split([12, 1], quality=40)})
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(source, return_report=True)
    assert dataset["test"]["image_id"] == ["coco_12"] and report.counts["split_overlap"] == 1
    assert "coco_1 (= train coco_1)" in caplog.text
