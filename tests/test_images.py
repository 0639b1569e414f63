"""Images as people have them, through every entry point: load_image, the processor, the dataset loader
(verify_images), the feature-cache build, the CLI and the pipeline.

Every image is generated here with Pillow. Good kinds must load as a viewer shows them (pixel values checked);
bad kinds must give a `ValueError` naming the file and the reason, and batch jobs must report and skip them.
"""

import io
import json
import logging
import re
import shutil
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from hf_imgcap import PIPELINE_TASK
from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.cli import main
from hf_imgcap.data.feature_cache import build_feature_cache
from hf_imgcap.models.show_attend_tell.image_loading import ImageLoadError, load_image, verify_image
from hf_imgcap.demo.scenes import write_synthetic_flickr8k

from conftest import tiny_model, tiny_processor

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------------------------------------- image makers
def close(pixel, expected, tolerance=8) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def red_left_half(size=(60, 40)) -> Image.Image:
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    return image


def png_with_claimed_size(path: Path, width: int, height: int) -> Path:
    """A 1×1 PNG whose IHDR claims width×height (CRC fixed): a decompression bomb's header, a few bytes on disk."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over chunk type + data
    path.write_bytes(bytes(data))
    return path


def jpeg_with_claimed_size(path: Path, width: int, height: int) -> Path:
    """An 8×8 JPEG whose SOF0 marker claims width×height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # FF C0, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def write_good_images(folder: Path) -> dict[str, Path]:
    """One file per kind that must load; see GOOD_CHECKS for what each must look like."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    def save(name, image, **options):
        paths[name] = folder / name
        image.save(paths[name], **options)

    save("gray.png", Image.new("L", (16, 16), 77))
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent *black*: must come out white
    rgba.paste((255, 0, 0, 255), (0, 0, 4, 4))
    rgba.putpixel((10, 10), (0, 0, 0, 128))
    save("transparent.png", rgba)
    save("gray_alpha.png", Image.new("LA", (16, 16), (0, 0)))
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    palette.paste(1, (0, 0, 8, 16))
    save("palette.png", palette)
    save("palette_transparent.png", palette, transparency=0)  # index 0 (black) is transparent
    save("palette_transparent.gif", palette, transparency=0)
    save("cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    save("gray16.png", Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)))
    for orientation in (6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif{orientation}.jpg", red_left_half(), exif=exif, quality=95)
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, (0, 255, 0), BLUE)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("animated.png", frames[0], save_all=True, append_images=frames[1:])
    save("one_pixel.png", Image.new("RGB", (1, 1), (9, 99, 199)))
    return paths


# name -> (size after loading, {pixel: expected colour})
GOOD_CHECKS = {
    "gray.png": ((16, 16), {(5, 5): (77, 77, 77)}),
    "transparent.png": ((16, 16), {(8, 8): WHITE, (1, 1): RED, (10, 10): (127, 127, 127)}),
    "gray_alpha.png": ((16, 16), {(8, 8): WHITE}),
    "palette.png": ((16, 16), {(2, 2): RED, (12, 2): (0, 0, 0)}),
    "palette_transparent.png": ((16, 16), {(2, 2): RED, (12, 2): WHITE}),
    "palette_transparent.gif": ((16, 16), {(2, 2): RED, (12, 2): WHITE}),
    "cmyk.jpg": ((16, 16), {(8, 8): RED}),
    "gray16.png": ((16, 16), {(8, 8): (128, 128, 128)}),  # 32768 / 257, not clipped to 255
    # 60×40, red left half, stored sideways: a viewer shows 40×60 with red on top (6) or at the bottom (8).
    "exif6.jpg": ((40, 60), {(20, 10): RED, (20, 50): BLUE}),
    "exif8.jpg": ((40, 60), {(20, 10): BLUE, (20, 50): RED}),
    "animated.gif": ((16, 16), {(8, 8): RED}),  # the first frame
    "animated.png": ((16, 16), {(8, 8): RED}),
    "one_pixel.png": ((1, 1), {(0, 0): (9, 99, 199)}),
}


def write_bad_images(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, regex the error must match after the path)."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = io.BytesIO()
    red_left_half((200, 150)).save(jpeg, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    Image.new("RGB", (3000, 1), RED).save(folder / "spacer.png")
    refused_by_pillow = r"over the pixel limit, refused before decoding as a possible decompression bomb"
    return {
        # Over twice Pillow's limit: Pillow refuses while reading the header; we say so with the path.
        "bomb_header.png": (png_with_claimed_size(folder / "bomb_header.png", 20000, 20000), refused_by_pillow),
        "bomb_header.jpg": (jpeg_with_claimed_size(folder / "bomb_header.jpg", 50000, 50000), refused_by_pillow),
        # Between 1× and 2× Pillow's limit: our own check, with the size.
        "bomb_120mp.png": (png_with_claimed_size(folder / "bomb_120mp.png", 12000, 10000),
                           r"12000×10000 = 120,000,000 pixels is over the pixel limit of 89,478,485"),
        "truncated.jpg": (folder / "truncated.jpg", r"cannot decode image \(.*\)"),
        "notes.jpg": (folder / "notes.jpg", r"not an image Pillow can read"),
        "spacer.png": (folder / "spacer.png", r"3000×1 is more elongated than 100:1"),
        "missing.jpg": (folder / "missing.jpg", r"no such image file"),
    }


BAD_NAMES = ["bomb_header.png", "bomb_header.jpg", "bomb_120mp.png", "truncated.jpg", "notes.jpg", "spacer.png", "missing.jpg"]
BAD_FILES = [name for name in BAD_NAMES if name != "missing.jpg"]  # the ones that exist


def error_pattern(path, reason: str) -> str:
    """The message of a bad image: "<path>: <reason>"."""
    return f"^{re.escape(str(path))}: {reason}"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model gains nothing from threads, and on a shared 2-core machine OpenMP's waiting between threads
    made each small op up to 100× slower (0.75 s instead of 5 ms per caption, measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_good_images(root / "good"), write_bad_images(root / "bad")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model, processor = tiny_model(), tiny_processor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


# ---------------------------------------------------------------------------------------------- load_image
def test_the_test_images_are_what_they_claim(images):
    good, bad = images
    modes = {name: Image.open(path).mode for name, path in good.items()}
    assert modes["gray.png"] == "L" and modes["transparent.png"] == "RGBA" and modes["palette.png"] == "P"
    assert modes["cmyk.jpg"] == "CMYK" and modes["gray16.png"] in ("I;16", "I")
    assert Image.open(good["exif6.jpg"]).getexif()[0x0112] == 6 and Image.open(good["exif6.jpg"]).size == (60, 40)
    assert Image.open(good["animated.gif"]).n_frames == 3
    assert bad["bomb_header.png"][0].stat().st_size < 100  # a bomb's header costs nothing on disk


@pytest.mark.parametrize("name", sorted(GOOD_CHECKS))
def test_good_kinds_load_as_a_viewer_shows_them(images, name):
    size, pixels = GOOD_CHECKS[name]
    with Image.open(images[0][name]) as opened:
        sources = (images[0][name], str(images[0][name]), opened)  # Path, str, a PIL image opened by the user
        loaded_all = [load_image(source) for source in sources]
    for loaded in loaded_all:
        assert loaded.mode == "RGB" and loaded.size == size
        for xy, expected in pixels.items():
            assert close(loaded.getpixel(xy), expected), (name, xy, loaded.getpixel(xy), expected)
    verify_image(images[0][name])  # the dataset loader's check agrees


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_kinds_raise_a_value_error_naming_the_file_and_the_reason(images, name):
    path, reason = images[1][name]
    for check in (load_image, verify_image):
        with pytest.raises(ValueError, match=error_pattern(path, reason)) as caught:
            check(str(path))
        assert isinstance(caught.value, ImageLoadError) and caught.value.name == str(path)


def test_bombs_are_refused_from_the_header_without_decoding(images, monkeypatch):
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original(self))
    for name in ("bomb_header.png", "bomb_header.jpg", "bomb_120mp.png", "spacer.png"):
        path, reason = images[1][name]
        with pytest.raises(ValueError, match=reason):
            load_image(path)
        with pytest.raises(ValueError, match=reason):
            verify_image(path)
    assert decoded == []
    # An in-memory image is checked before conversion too: mode "1" is 11 MB here, its RGB copy would be 270 MB.
    huge = Image.new("1", (10000, 9000))
    with pytest.raises(ValueError, match=r"^image #0: 10000×9000 = 90,000,000 pixels is over the pixel limit"):
        tiny_processor()(images=[huge])
    # A trusted large image goes through with a larger limit.
    assert load_image(Image.new("1", (10000, 9000)), max_pixels=10**8).size == (10000, 9000)


def test_broken_exif_is_ignored_like_a_viewer_does(images, tmp_path):
    data = bytearray(images[0]["exif6.jpg"].read_bytes())
    tiff = data.index(b"Exif\x00\x00") + 6
    data[tiff + 4 : tiff + 8] = b"\xff\xff\xff\x7f"  # IFD offset far past the end
    (tmp_path / "bad_exif.jpg").write_bytes(bytes(data))
    loaded = load_image(tmp_path / "bad_exif.jpg")
    assert loaded.size == (60, 40) and close(loaded.getpixel((10, 20)), RED)  # pixels fine, rotation unknown


def test_folders_and_non_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=error_pattern(tmp_path, r"no such image file \(it is a folder\)")):
        load_image(tmp_path)
    with pytest.raises(ValueError, match=error_pattern("/dev/null", "not a regular file")):
        load_image("/dev/null")  # a device or FIFO is not read (it could block forever)
    too_long = tmp_path / ("x" * 300 + ".jpg")
    with pytest.raises(ValueError, match=error_pattern(too_long, r"cannot access the file \(File name too long\)")):
        load_image(too_long)
    with pytest.raises(ValueError, match="^image.bin: not an image Pillow can read"):
        load_image(b"\x00" * 100, name="image.bin")


def test_image_bytes_and_file_objects_load(images):
    data = images[0]["exif6.jpg"].read_bytes()
    assert load_image(data).size == (40, 60)
    with open(images[0]["exif6.jpg"], "rb") as handle:
        assert load_image(handle).size == (40, 60)
    with pytest.raises(ValueError, match="^upload.jpg: cannot decode image"):
        load_image(data[: len(data) // 2], name="upload.jpg")


def encoded_samples() -> dict[str, bytes]:
    """Small images in every format a folder of photos tends to hold (EXIF where the format carries it)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    noise = Image.effect_noise((20, 20), 60).convert("RGB")
    samples = {}
    for name, image, options in [
        ("PNG", noise, {"exif": exif}), ("JPEG", noise, {"exif": exif}), ("GIF", noise.convert("P"), {}),
        ("TIFF", noise, {}), ("BMP", noise, {}), ("WEBP", noise, {"exif": exif}),
        ("PNG", Image.new("I;16", (20, 20), 1000), {}), ("PNG", Image.new("RGBA", (20, 20), (1, 2, 3, 4)), {}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, name, **options)
        samples[f"{name}-{image.mode}"] = buffer.getvalue()
    return samples


SAMPLES = encoded_samples()


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.floats(0, 1)),
)
def test_corrupted_files_give_a_value_error_or_an_rgb_image(sample, flips, keep):
    """Whatever the damage, the decoders' many exception types come out as one ValueError naming the file."""
    data = bytearray(SAMPLES[sample])
    for where, value in flips:
        data[int(where * len(data))] = value
    if keep is not None:
        data = data[: int(keep * len(data))]
    try:
        image = load_image(bytes(data), name="upload.bin")
    except ImageLoadError as error:
        assert str(error).startswith("upload.bin: ")
    else:
        assert image.mode == "RGB"


# ---------------------------------------------------------------------------------------------- arrays, tensors
def test_arrays_and_tensors_in_either_channel_order_give_the_same_image():
    rgb = np.asarray(red_left_half((12, 8)))  # (8, 12, 3) uint8
    expected = np.asarray(load_image(rgb))
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    same = [
        chw,  # numpy (C, H, W)
        torch.from_numpy(chw),  # torchvision.io.read_image's layout: uint8 (C, H, W)
        torch.from_numpy(chw).float() / 255,  # ToTensor's layout: float (C, H, W) in [0, 1]
        (torch.from_numpy(chw).float() / 255).to(torch.bfloat16),
        torch.from_numpy(rgb.copy()),  # (H, W, C) tensor: unambiguous, accepted
        rgb.astype(np.float32),  # float in [0, 255]
        rgb.astype(np.uint16) * 257,  # 16-bit data
    ]
    for index, image in enumerate(same):
        tolerance = 2 if getattr(image, "dtype", None) == torch.bfloat16 else 0
        assert np.abs(np.asarray(load_image(image), dtype=int) - expected).max() <= tolerance, index
    # Ambiguous (3, 4, 3): numpy reads channels-last (PIL's layout), torch channels-first (torch's).
    square = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    assert load_image(square).size == (4, 3) and load_image(torch.from_numpy(square)).size == (3, 4)
    # 16-bit mid-gray as a uint16 array: 128, as for a 16-bit PNG (not clipped to 255).
    assert load_image(np.full((4, 4), 32768, dtype=np.uint16)).getpixel((0, 0)) == (128, 128, 128)


def test_processor_gives_the_same_pixels_for_a_tensor_an_array_and_a_pil_image(processor):
    image = red_left_half((70, 64))
    chw = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
    reference = processor(images=[image]).pixel_values
    for other in (chw, chw.numpy(), np.asarray(image)):
        torch.testing.assert_close(processor(images=[other]).pixel_values, reference, rtol=0, atol=0)
    for single in (chw.numpy(), np.asarray(image)):  # one array, not in a list: one image
        torch.testing.assert_close(processor(images=single).pixel_values, reference, rtol=0, atol=0)


def test_one_chw_tensor_is_never_split_into_grayscale_images(processor):
    """`processor(images=tensor)` iterates over the tensor (the processor wraps only numpy arrays): each 2-D slice
    is refused with a hint instead of silently becoming C grayscale images."""
    chw = torch.rand(3, 20, 30)
    try:
        batch = processor(images=chw)
    except ValueError as error:
        assert "images=[tensor]" in str(error)
    else:
        assert batch.pixel_values.shape[0] == 1


def test_one_chw_tensor_is_one_image(processor):
    chw = torch.rand(3, 20, 30)
    torch.testing.assert_close(processor(images=chw).pixel_values, processor(images=[chw]).pixel_values)


@pytest.mark.parametrize(
    "image, message",
    [
        (torch.randn(3, 8, 8), r"float values .* outside \[0, 1\] and \[0, 255\]: already normalised"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), 1000, dtype=np.int64), r"int64 values 1000..1000 are outside 0..255"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), r"4-D array is a batch: pass a list"),
        (torch.zeros(8, 8), r"2-D tensor .* \(1, H, W\)"),
        (np.zeros((4, 4), dtype=np.complex64), "dtype complex64 are not images"),
        (np.zeros((3, 1000), dtype=np.uint8), "more elongated than 100:1"),
    ],
)
def test_arrays_that_are_not_images_are_refused_not_clipped(processor, image, message):
    with pytest.raises(ValueError, match=f"^image #0: .*{message}"):
        processor(images=[image])


# ---------------------------------------------------------------------------------------------- processor
def test_processor_takes_every_good_kind_in_one_batch(images, processor):
    paths = [str(images[0][name]) for name in sorted(GOOD_CHECKS)]
    batch = processor(images=paths)
    assert batch.pixel_values.shape == (len(paths), 3, 64, 64) and torch.isfinite(batch.pixel_values).all()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_processor_names_the_bad_file_alone_and_in_a_batch(images, processor, name):
    path, reason = images[1][name]
    with pytest.raises(ValueError, match=error_pattern(path, reason)):
        processor(images=str(path))
    with pytest.raises(ValueError, match=error_pattern(path, reason)):
        processor(images=[str(images[0]["gray.png"]), path], text=["a caption", "another"])


# ---------------------------------------------------------------------------------------------- dataset loader
def test_dataset_loader_keeps_good_kinds_and_skips_bad_ones_by_path(images, tmp_path, caplog):
    root = write_synthetic_flickr8k(tmp_path / "Flickr8k", num_train=20, num_val=2, num_test=2, image_size=48)
    folder = root / "Flicker8k_Dataset"
    train = (root / "Flickr_8k.trainImages.txt").read_text().split()
    good_names, bad_names = sorted(GOOD_CHECKS), BAD_FILES
    # Each kind under a Flickr8k file name (Pillow reads the content, not the extension).
    sources = [images[0][name] for name in good_names] + [images[1][name][0] for name in bad_names]
    for target, source in zip(train, sources):
        shutil.copy(source, folder / target)
    missing = train[len(sources)]
    (folder / missing).unlink()
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert report.counts == {"undecodable_image": len(bad_names), "missing_image": 5, "split_missing_image": 1}
    for target, name in zip(train[len(good_names) :], bad_names):
        reason = images[1][name][1]
        assert any(m.startswith(f"{folder / target}: cannot decode or use: ") for m in report.messages), name
        assert str(folder / target) in caplog.text
        assert re.search(reason, caplog.text), name
    assert f"image '{missing}' is not in the image folder" in caplog.text
    kept = dataset["train"]["image_id"]
    assert kept == train[: len(good_names)] + train[len(sources) + 1 :]
    # What was kept decodes, through datasets and through load_image, as a viewer shows it.
    for row in dataset["train"].select(range(len(good_names))):
        assert load_image(row["image"]).mode == "RGB"
    exif_row = dataset["train"][good_names.index("exif6.jpg")]
    assert load_image(exif_row["image"]).size == (40, 60)


# ---------------------------------------------------------------------------------------------- feature cache
def image_dataset(paths) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [str(p) for p in paths]}).cast_column("image", datasets.Image())


def build(dataset, cache_dir):
    model, processor = tiny_model(), tiny_processor()
    cache = build_feature_cache(model, processor, dataset, cache_dir, batch_size=4, num_workers=0, show_progress=False)
    return model, processor, cache


def test_feature_cache_reports_bad_images_by_path_and_caches_the_rest(images, tmp_path, caplog):
    good = [images[0][name] for name in sorted(GOOD_CHECKS)]
    bad = {name: images[1][name] for name in BAD_FILES}
    paths = good[:5] + [path for path, _ in bad.values()] + good[5:]
    with caplog.at_level(logging.WARNING):
        model, processor, cache = build(image_dataset(paths), tmp_path / "cache")
    bad_indices = list(range(5, 5 + len(bad)))
    assert [i for i, valid in enumerate(cache.valid) if not valid] == bad_indices
    assert [entry["index"] for entry in cache.invalid_images] == bad_indices
    for entry, (path, reason) in zip(cache.invalid_images, bad.values()):
        assert re.match(error_pattern(path, reason), entry["reason"]), entry
        assert str(path) in caplog.text
    good_indices = [i for i in range(len(paths)) if i not in bad_indices]
    with torch.no_grad():
        direct = model.get_image_features(processor(images=[str(paths[i]) for i in good_indices]).pixel_values)
    # Within one fp16 step: the cache encoded in other batches than this direct run.
    torch.testing.assert_close(cache.batch(good_indices).float(), direct.half().float(), rtol=2e-3, atol=2e-3)


def test_feature_cache_reports_a_missing_file_instead_of_stopping(images, tmp_path):
    missing = images[1]["missing.jpg"][0]
    _, _, cache = build(image_dataset([images[0]["gray.png"], missing]), tmp_path / "cache")
    assert cache.valid.tolist() == [True, False] and "no such image file" in cache.invalid_images[0]["reason"]


def test_feature_cache_reports_bad_inline_image_bytes_by_name(images, tmp_path):
    """The Hub format (`jxie/flickr8k` parquet) stores images as bytes inside the dataset."""
    rows = [{"path": "good.png", "bytes": images[0]["gray.png"].read_bytes()},
            {"path": "notes.jpg", "bytes": b"not an image"}]
    dataset = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    _, _, cache = build(dataset, tmp_path / "cache")
    assert cache.valid.tolist() == [True, False]
    assert cache.invalid_images[0]["reason"].startswith("notes.jpg: not an image Pillow can read")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_captions_the_good_kinds_reports_the_bad_ones_and_exits_1(images, saved_model, tmp_path, capsys):
    _, _, folder = saved_model
    mixed = tmp_path / "photos"
    mixed.mkdir()
    for path in images[0].values():
        shutil.copy(path, mixed / path.name)
    bad = {name: images[1][name] for name in BAD_FILES}
    for path, _ in bad.values():
        shutil.copy(path, mixed / path.name)
    missing = images[1]["missing.jpg"][0]
    code = main(["caption", str(mixed), str(missing), "--model", str(folder), "--num-beams", "2", "--max-new-tokens", "4",
                 "--batch-size", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 1, err
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["image"] for r in records) == sorted(str(mixed / name) for name in images[0])
    assert all(isinstance(r["caption"], str) for r in records)
    skipped = [line for line in err.splitlines() if line.startswith("hf-imgcap: skipped ")]
    for path, reason in [(mixed / name, reason) for name, (_, reason) in bad.items()] + [(missing, "no such image file")]:
        assert any(re.match(error_pattern(path, reason), line[len("hf-imgcap: skipped ") :]) for line in skipped), (path, err)
    total = len(images[0]) + len(bad) + 1
    assert len(skipped) == len(bad) + 1
    assert f"captioned {len(images[0])} of {total} images; {len(bad) + 1} could not be read" in err


def test_cli_survives_file_names_and_captions_its_output_cannot_encode(images, saved_model, tmp_path, capsys, monkeypatch):
    """A file name that is not UTF-8 (kept by Python as lone surrogates) and a stream without UTF-8 (Windows code
    pages, PYTHONIOENCODING=ascii) used to raise UnicodeEncodeError mid-run."""
    _, _, folder = saved_model
    photos = tmp_path / "photos"
    photos.mkdir()
    latin1_name = (bytes(photos) + b"/caf\xe9.png").decode("utf-8", "surrogateescape")  # as os.listdir gives it
    shutil.copy(images[0]["gray.png"], latin1_name)
    shutil.copy(images[0]["gray.png"], photos / "Zürich.png")
    argv = ["caption", str(photos), "--model", str(folder), "--num-beams", "1", "--max-new-tokens", "3"]
    assert main([*argv, "--json"]) == 0  # capsys: a strict UTF-8 stream
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["image"] for r in records) == sorted([latin1_name, str(photos / "Zürich.png")])  # lossless
    for as_json in (True, False):
        ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", newline="\n")
        monkeypatch.setattr("sys.stdout", ascii_out)
        assert main(argv + (["--json"] if as_json else [])) == 0
        ascii_out.flush()
        text = ascii_out.buffer.getvalue().decode("ascii")
        if as_json:
            assert sorted(json.loads(line)["image"] for line in text.splitlines()) == sorted(r["image"] for r in records)
        else:
            assert "Z\\xfcrich.png" in text and "caf\\xe9.png" in text  # the byte that is not UTF-8, as \xNN


# ---------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def captioner(saved_model):
    from transformers import pipeline

    return pipeline(PIPELINE_TASK, model=str(saved_model[2]))


def test_pipeline_captions_every_good_kind(images, saved_model, captioner):
    model, processor, _ = saved_model
    for name in sorted(GOOD_CHECKS):
        result = captioner(str(images[0][name]), num_beams=2, max_new_tokens=4)
        assert result == [{"generated_text": model.caption(images[0][name], processor, num_beams=2, max_new_tokens=4)}], name
    # A tensor or a (C, H, W) array in a single call: the same caption as the image itself.
    image = red_left_half((70, 64))
    chw = np.asarray(image).transpose(2, 0, 1).copy()
    expected = captioner(image, max_new_tokens=4)
    assert captioner(torch.from_numpy(chw), max_new_tokens=4) == expected
    assert captioner(chw, max_new_tokens=4) == expected


@pytest.mark.parametrize("name", BAD_NAMES)
def test_pipeline_names_the_bad_file(images, captioner, name):
    path, reason = images[1][name]
    with pytest.raises(ValueError, match=error_pattern(path, reason)):
        captioner(str(path), max_new_tokens=4)


# ---------------------------------------------------------------------------------------------- Hub parquet end to end
@pytest.fixture(scope="module")
def broken_hub_parquet(tmp_path_factory):
    """The default dataset's format with a null cell, a missing file and undecodable bytes in every split; the
    first test image (the one train.py draws its attention example from) is broken."""
    from test_caption_datasets import broken_hub_cells, write_hub_parquet

    root = tmp_path_factory.mktemp("hub")
    reference = load_caption_dataset(str(write_synthetic_flickr8k(root / "flickr8k", num_train=16, num_val=5, num_test=5, image_size=64, seed=3)))
    folder = write_hub_parquet(root / "hub", reference, broken_hub_cells(root / "hub"))
    return folder, reference


def test_cli_evaluate_leaves_out_broken_hub_images(broken_hub_parquet, saved_model, capsys):
    folder, reference = broken_hub_parquet
    _, _, model = saved_model
    common = ["evaluate", "--model", str(model), "--dataset", str(folder), "--no-meteor", "--num-beams", "1",
              "--max-new-tokens", "4", "--json"]
    for split in ("test", "validation"):
        assert main([*common, "--split", split]) == 0
        assert json.loads(capsys.readouterr().out)["num_images"] == len(reference[split]) - 1


@pytest.mark.slow
def test_training_on_broken_hub_images_skips_them_and_finishes(broken_hub_parquet, tmp_path, tiny_encoder):
    from test_train import run, tiny_args

    folder, reference = broken_hub_parquet
    results = run(tiny_args(folder, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--num_epochs", "1", "--num_workers", "1"))
    assert results["num_train_images"] == len(reference["train"]) - 2
    assert results["test"]["num_images"] == len(reference["test"]) - 1  # scored on real images only
    assert results["history"][0]["num_images"] == len(reference["validation"]) - 1
    assert (tmp_path / "out" / "attention_example.png").is_file()


def test_images_without_features_are_not_scored(images, tmp_path, caplog):
    """With verify_images off a broken file reaches the feature cache: its (all-zero) features must not be scored."""
    from hf_imgcap.evaluation.generation import evaluate_captioner

    paths = [images[0]["gray.png"], images[1]["truncated.jpg"][0], images[0]["exif6.jpg"]]
    split = image_dataset(paths).add_column("captions", [["a gray square"], ["a broken file"], ["a rotated photo"]])
    model, processor, cache = build(split, tmp_path / "cache")
    assert cache.valid.tolist() == [True, False, True]
    with caplog.at_level(logging.WARNING):
        metrics, predictions = evaluate_captioner(model, processor, split, features=cache, meteor=False,
                                                  num_beams=1, max_new_tokens=3, show_progress=False)
    assert metrics["num_images"] == 2 and predictions[1] is None and isinstance(predictions[0], str)
    assert str(paths[1]) in caplog.text


# ---------------------------------------------------------------------------------------------- one pixel path
def test_one_image_to_pixels_path_serves_cache_training_evaluation_and_caption(tmp_path):
    """The processor is the only place an image becomes pixel_values: evaluation, training on images, the feature
    cache and caption() give the same input and refuse the same images (the processor's size guard applies to all)."""
    from hf_imgcap.data.training_data import CaptionPairs, tokenize_captions
    from hf_imgcap.evaluation.generation import generate_captions

    model, processor = tiny_model(), tiny_processor()
    processor.max_image_pixels = 100 * 100
    rng = np.random.default_rng(0)
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.fromarray(rng.integers(0, 255, (80, 72, 3), dtype=np.uint8)).save(small)
    Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(large)

    def split_of(path):
        return datasets.Dataset.from_dict({"image": [str(path)], "captions": [["a square"]]}).cast_column("image", datasets.Image())

    options = dict(num_beams=1, max_new_tokens=4)
    expected = processor(images=[str(small)]).pixel_values
    pairs, _ = tokenize_captions(split_of(small), processor.tokenizer, max_length=8)
    assert torch.equal(CaptionPairs(pairs, images=split_of(small), processor=processor)[0]["pixel_values"], expected[0])
    cache = build_feature_cache(model, processor, split_of(small), tmp_path / "cache", num_workers=0, show_progress=False)
    with torch.no_grad():
        # The cache's encoder pass (BatchNorm folded, channels_last) rounds apart by at most one fp16 step.
        torch.testing.assert_close(cache[0].float(), model.get_image_features(expected)[0].half().float(), rtol=2**-10, atol=1e-4)
    shown = model.caption(str(small), processor, **options)
    assert generate_captions(model, processor, split_of(small), show_progress=False, **options) == [shown]

    # The processor's size guard holds on every path, with the file named.
    with pytest.raises(ValueError, match="large.png"):
        model.caption(str(large), processor, **options)
    with pytest.raises(ValueError, match="large.png"):
        generate_captions(model, processor, split_of(large), show_progress=False, **options)
    with pytest.raises(ValueError, match="large.png"):
        CaptionPairs(pairs, images=split_of(large), processor=processor)[0]
    refused = build_feature_cache(model, processor, split_of(large), tmp_path / "cache", num_workers=0, show_progress=False)
    assert refused.valid.tolist() == [False] and "large.png" in refused.invalid_images[0]["reason"]
