# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Open images the way a photo viewer shows them, or fail with a `ValueError` that names the file.

Imported relatively by the processor, so it travels with the model's remote code: keep it dependency-free
(Pillow and NumPy only).
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own decompression-bomb threshold (about 89.5 megapixels). Checked before decoding, from the header.
MAX_IMAGE_PIXELS = 89_478_485


def describe(image, index=None) -> str:
    """A short name for error messages: the path when there is one."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    filename = getattr(image, "filename", None)
    if filename:
        return str(filename)
    return f"image #{index}" if index is not None else f"{type(image).__name__} image"


def load_image(image, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None) -> Image.Image:
    """Return an 8-bit RGB `PIL.Image` from a path, a PIL image or an `(H, W[, C])` uint8 array.

    Handles EXIF orientation, transparency (composited on white), palette, CMYK, 16-bit and float
    images, and animated images (first frame). Raises `ValueError` naming the image and the reason for
    a missing file, something that is not an image, a truncated file or a decompression bomb.
    """
    name = name or describe(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{name}: no such image file")
        try:
            with Image.open(path) as opened:
                return _to_rgb(opened, max_pixels, name)
        except UnidentifiedImageError:
            raise ValueError(f"{name}: not an image Pillow can read (unknown or corrupt format)") from None
        except Image.DecompressionBombError as error:
            raise ValueError(f"{name}: refused as a possible decompression bomb ({error})") from None
        except (OSError, SyntaxError) as error:  # truncated data, broken headers
            raise ValueError(f"{name}: cannot decode image ({error})") from None
    if isinstance(image, Image.Image):
        try:
            return _to_rgb(image, max_pixels, name)
        except (OSError, SyntaxError) as error:
            raise ValueError(f"{name}: cannot decode image ({error})") from None
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, name)
    raise ValueError(f"{name}: expected a file path, a PIL.Image or a numpy array, got {type(image).__name__}")


def _to_rgb(image: Image.Image, max_pixels: int, name: str) -> Image.Image:
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"{name}: empty image ({width}×{height})")
    if width * height > max_pixels:
        raise ValueError(
            f"{name}: {width}×{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
            "(a possible decompression bomb); pass a larger max_pixels if the image is trusted"
        )
    if getattr(image, "is_animated", False):
        image.seek(0)  # first frame
    image.load()  # decode now so that truncated data fails here, not later
    image = ImageOps.exif_transpose(image)  # rotate as a viewer shows it
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    else:  # 16-bit samples (mode "I" is how Pillow opens 16-bit grayscale PNGs)
        scaled = values / 257.0
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def _array_to_rgb(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{name}: array of shape {array.shape} is not an (H, W), (H, W, 3) or (H, W, 4) image")
    if array.size == 0:
        raise ValueError(f"{name}: empty image array of shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return _to_rgb(Image.fromarray(array), MAX_IMAGE_PIXELS, name)
