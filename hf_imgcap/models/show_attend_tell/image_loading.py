# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Open images the way a photo viewer shows them, or fail with a `ValueError` that names the image and says why.

Imported relatively by the processor, so it travels with the model's remote code: keep it dependency-free
(Pillow and NumPy only; torch tensors are recognised without importing torch).

Every failure is an `ImageLoadError` (a `ValueError`) whose text is "<name>: <reason>", where the name is the
path when there is one. Batch jobs (the CLI, the feature cache, dataset verification) rely on that: one bad image
is reported and skipped, never an exception of some other type that stops the whole run.
"""

import http.client
import io
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own decompression-bomb threshold (about 89.5 megapixels). Checked before decoding, from the header.
MAX_IMAGE_PIXELS = 89_478_485
# Images more elongated than this are refused before decoding: resizing the short side to the model's input
# (256 px) would make a huge intermediate (a 3000×1 spacer GIF needs 1.4 GB), and the center crop would keep
# under 1% of the image anyway. No photograph or panorama comes close.
MAX_ASPECT_RATIO = 100
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Image URLs: how long to wait for the server (per connection and read) and the most bytes read from it.
URL_TIMEOUT_SECONDS = 30.0
MAX_DOWNLOAD_BYTES = 200 * 2**20
URL_SCHEMES = ("http://", "https://")


class ImageLoadError(ValueError):
    """An image that cannot be used. `str(error)` is "<name>: <reason>"; both parts are also attributes."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason

    def __reduce__(self):  # picklable across DataLoader workers despite the two-argument constructor
        return type(self), (self.name, self.reason)


def describe(image, index: int | None = None) -> str:
    """A short name for error messages: the path when there is one, else `image #index` or the type."""
    if isinstance(image, (str, os.PathLike)):
        return str(image) or (f"image #{index} ('')" if index is not None else "''")  # "" is no path to name
    if isinstance(image, dict) and isinstance(image.get("path"), (str, os.PathLike)) and str(image["path"]):
        return str(image["path"])  # a `datasets` image: {"bytes": ..., "path": ...}
    filename = getattr(image, "filename", None) or getattr(image, "name", None)  # PIL image / open file
    if isinstance(filename, (str, os.PathLike)) and str(filename):
        return str(filename)
    if index is not None:
        return f"image #{index}"
    return f"{type(image).__module__.split('.')[0]}.{type(image).__name__}"  # e.g. numpy.ndarray, torch.Tensor


# ---------------------------------------------------------------------------------------------- entry points
def load_image(
    image,
    max_pixels: int = MAX_IMAGE_PIXELS,
    name: str | None = None,
    *,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    timeout: float | None = None,
    rescaled: bool = False,
) -> Image.Image:
    """Return an 8-bit RGB `PIL.Image` from a path, an http(s) URL, encoded bytes / a binary file object, a
    `datasets` image dict `{"bytes": ..., "path": ...}`, a PIL image, an `(H, W[, C])` / `(C, H, W)` numpy array
    or a `(C, H, W)` / `(H, W, C)` torch tensor.

    Handles EXIF orientation, transparency (composited on white), palette, CMYK, 16-bit and float images and
    animated images (first frame). Arrays and tensors: uint8 as is, uint16 as 16-bit (65535 = white), other
    integers must lie in 0..255, floats in [0, 1] (scaled by 255) or [0, 255]; anything else (e.g. an already
    normalised tensor) is refused rather than clipped. When both ends of a 3-D shape could be channels
    (e.g. `(3, 4, 3)`), numpy arrays are read channels-last (PIL's layout), tensors channels-first (torch's).
    `rescaled=True` (what an image processor's `do_rescale=False` says) requires float pixels in [0, 1].
    URLs are fetched with `timeout` seconds (default `URL_TIMEOUT_SECONDS`) to connect and for each read.

    Raises `ImageLoadError` (a `ValueError`) "<name>: <reason>" for a missing file, a URL that cannot be fetched,
    something that is not an image, a truncated file, an image over `max_pixels` or more elongated than
    `max_aspect_ratio`:1 (both checked from the header, before decoding), and an array or tensor that is not an
    image.
    """
    name = name or describe(image)
    limits = (max_pixels, max_aspect_ratio)
    if isinstance(image, dict):
        image = _from_datasets_dict(image, name)
    if rescaled and not (isinstance(image, np.ndarray) or _is_torch_tensor(image)):
        raise ImageLoadError(
            name,
            "do_rescale=False means pixel values already rescaled to [0, 1], which only a float array or tensor "
            f"holds; a {type(image).__name__} has 0..255 pixels: leave do_rescale out",
        )
    if isinstance(image, str) and image.startswith(URL_SCHEMES):
        image = _download(image, name, URL_TIMEOUT_SECONDS if timeout is None else timeout)
    if isinstance(image, (str, os.PathLike)):
        with _open_path(Path(image), name) as opened:
            return _decode(opened, name, *limits)
    if isinstance(image, (bytes, bytearray, memoryview)) or hasattr(image, "read"):
        with _open_stream(_as_stream(image), name) as opened:
            return _decode(opened, name, *limits)
    if isinstance(image, Image.Image):
        return _decode(image, name, *limits)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, name, limits, channels_first=False, rescaled=rescaled)
    if _is_torch_tensor(image):
        return _array_to_rgb(_tensor_to_array(image, name), name, limits, channels_first=True, rescaled=rescaled)
    raise ImageLoadError(
        name,
        "expected a file path, an http(s) URL, image bytes, a datasets image dict, a PIL.Image, a numpy array or a "
        f"torch tensor, got {type(image).__name__}",
    )


def verify_image(
    image, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None, *, max_aspect_ratio: float = MAX_ASPECT_RATIO
) -> None:
    """Check that `load_image` would accept an image file, cheaply: same header checks, then one decode (JPEGs at
    reduced scale, which still reads every byte of the scan, so a truncated file fails). Raises `ImageLoadError`."""
    name = name or describe(image)
    if isinstance(image, dict):
        image = _from_datasets_dict(image, name)
    if isinstance(image, (str, os.PathLike)):
        opened = _open_path(Path(image), name)
    else:
        opened = _open_stream(_as_stream(image), name)
    with opened:
        _check_size(opened.size, name, max_pixels, max_aspect_ratio)
        with _reported_as(name, "cannot decode image"):
            opened.draft("RGB", (64, 64))  # JPEG only: decode at up to 1/8 scale
            opened.load()


# ---------------------------------------------------------------------------------------------- opening files
def _from_datasets_dict(image: dict, name: str):
    """A `datasets` `Image()` value left undecoded: its bytes when it has them (images embedded in parquet/arrow),
    else its path."""
    data, path = image.get("bytes"), image.get("path")
    if data is not None:
        return data
    if path is not None:
        return path
    raise ImageLoadError(
        name,
        f"a dict image needs 'bytes' or 'path' (the datasets Image format), got keys {sorted(map(str, image))}",
    )


def _download(url: str, name: str, timeout: float) -> bytes:
    """The bytes at an http(s) URL, or an `ImageLoadError` that says why not (status, refusal, timeout, size)."""
    request = urllib.request.Request(url, headers={"User-Agent": "hf-imgcap"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise ImageLoadError(name, f"cannot download image (HTTP {error.code} {error.reason})") from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            raise ImageLoadError(name, f"cannot download image (no answer within {timeout:g} s)") from None
        raise ImageLoadError(name, f"cannot download image ({_reason(reason) if isinstance(reason, Exception) else reason})") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ImageLoadError(name, f"cannot download image (larger than {MAX_DOWNLOAD_BYTES:,} bytes)")
    return data


def _open_path(path: Path, name: str) -> Image.Image:
    # Checked first so that each case gets its own message (and a FIFO named .jpg is not read forever).
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except OSError as error:  # e.g. a name too long, a folder on the way that we may not enter
        raise ImageLoadError(name, f"cannot access the file ({error.strerror or error})") from None
    if not exists:
        raise ImageLoadError(name, "no such image file")
    if is_dir:
        raise ImageLoadError(name, "no such image file (it is a folder)")
    if not is_file:
        raise ImageLoadError(name, "not a regular file")
    return _open_stream(path, name)


def _open_stream(source, name: str) -> Image.Image:
    """`Image.open` (reads the header only) with every failure turned into an `ImageLoadError`."""
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image Pillow can read (unknown or corrupt format)") from None
    except Image.DecompressionBombError as error:
        # Pillow refuses above twice PIL.Image.MAX_IMAGE_PIXELS itself, before our own (lower) check can run.
        reason = f"over the pixel limit, refused before decoding as a possible decompression bomb ({error})"
        raise ImageLoadError(name, reason) from None
    except PermissionError as error:
        raise ImageLoadError(name, f"cannot read the file ({error.strerror})") from None
    except MemoryError:
        raise
    except Exception as error:  # Pillow's format plugins raise many types for broken or truncated headers
        raise ImageLoadError(name, f"cannot decode image ({_reason(error)})") from None


def _as_stream(data):
    return io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else data


class _reported_as:
    """Context manager: any exception from Pillow inside becomes ImageLoadError(name, "<what> (<reason>)").
    Decoders of broken files raise OSError, SyntaxError, ValueError, struct.error, IndexError, EOFError, ..."""

    def __init__(self, name: str, what: str):
        self.name, self.what = name, what

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, (ImageLoadError, MemoryError)) or not isinstance(error, Exception):
            return False  # ours, out of memory, or KeyboardInterrupt: let it through
        raise ImageLoadError(self.name, f"{self.what} ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- decoding
def _check_size(size: tuple[int, int], name: str, max_pixels: int, max_aspect_ratio: float) -> None:
    """Refuse from the header alone what would be dangerous or pointless to decode."""
    width, height = size
    if width < 1 or height < 1:
        raise ImageLoadError(name, f"empty image ({width}×{height})")
    if width * height > max_pixels:
        raise ImageLoadError(
            name,
            f"{width}×{height} = {width * height:,} pixels is over the pixel limit of {max_pixels:,}, refused before "
            "decoding as a possible decompression bomb; if the image is trusted, save it smaller (or read it with "
            "load_image(..., max_pixels=...))",
        )
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageLoadError(
            name,
            f"{width}×{height} is more elongated than {max_aspect_ratio:g}:1, refused before decoding (resizing its "
            "short side to the model's input would need a huge intermediate image)",
        )


def _decode(image: Image.Image, name: str, max_pixels: int, max_aspect_ratio: float) -> Image.Image:
    _check_size(image.size, name, max_pixels, max_aspect_ratio)
    with _reported_as(name, "cannot decode image"):
        if getattr(image, "is_animated", False):
            image.seek(0)  # first frame
        image.load()  # decode now so that truncated data fails here, not later
        return _to_rgb(_upright(image))


def _upright(image: Image.Image) -> Image.Image:
    """A new image rotated as its EXIF orientation says (as a viewer shows it). A broken EXIF block is ignored,
    as viewers do: the pixels are fine, only the rotation is unknown."""
    try:
        return ImageOps.exif_transpose(image)  # a copy even without an orientation tag: detached from the file
    except Exception:
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "La":  # premultiplied: Pillow converts it to LA only
        image = image.convert("LA").convert("RGBA")
    elif mode in ("LA", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        # Transparent pixels on white, as viewers and browsers show them (their RGB is often black).
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":  # no fixed range: stretch what is there
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    else:  # 16-bit samples (mode "I" is how older Pillows open 16-bit grayscale PNGs): 65535 -> 255
        scaled = values / 257.0
    return _gray_to_rgb(scaled)


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")


# ---------------------------------------------------------------------------------------------- arrays, tensors
def _is_torch_tensor(obj) -> bool:
    # By module name, so that this file never imports torch (it must stay light for remote code).
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "detach")


def _tensor_to_array(tensor, name: str) -> np.ndarray:
    if tensor.ndim == 2:
        # Refused rather than guessed: a processor that iterates over a (C, H, W) tensor hands out 2-D slices.
        raise ImageLoadError(
            name,
            f"a 2-D tensor of shape {tuple(tensor.shape)}: give a grayscale image as (1, H, W); if you passed one "
            "(C, H, W) tensor as `images`, pass it in a list: images=[tensor]",
        )
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()  # bfloat16 has no numpy equivalent
    return tensor.numpy()


def _array_to_rgb(array: np.ndarray, name: str, limits: tuple, channels_first: bool, rescaled: bool = False) -> Image.Image:
    array = _channels_last(array, name, channels_first)
    if array.size == 0:
        raise ImageLoadError(name, f"empty image array of shape {array.shape}")
    _check_size((array.shape[1], array.shape[0]), name, *limits)
    if rescaled:
        _check_rescaled(array, name)
    return _to_rgb(Image.fromarray(_to_uint8(array, name)))  # mode L, RGB or RGBA


def _check_rescaled(array: np.ndarray, name: str) -> None:
    """What `do_rescale=False` promises: float pixels in [0, 1] (then `_to_uint8` scales them by 255)."""
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageLoadError(
            name, f"do_rescale=False means pixel values already rescaled to [0, 1], but this is {array.dtype}: leave do_rescale out"
        )
    if np.isfinite(array).all() and (array.min() < 0 or array.max() > 1):
        raise ImageLoadError(
            name,
            f"do_rescale=False means pixel values in [0, 1], but these lie in {float(array.min()):.4g}..{float(array.max()):.4g}",
        )


def _channels_last(array: np.ndarray, name: str, channels_first: bool) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 -> (H, W) or (H, W, 3|4)."""
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first and (channels_first or not last):
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    # Neither end a channel axis, or another number of dimensions: refused.
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return array
    hint = " (a 4-D array is a batch: pass a list of images)" if array.ndim == 4 else ""
    raise ImageLoadError(
        name, f"array of shape {array.shape} is not an (H, W), (H, W, 3) or (H, W, 4) image, nor (C, H, W){hint}"
    )


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """8-bit pixel values, or a refusal: silently clipping out-of-range values would give a wrong image."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:  # 16-bit data, as in a 16-bit PNG
        return np.rint(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageLoadError(
                name, f"{array.dtype} values {low}..{high} are outside 0..255 (use uint8, or uint16 for 16-bit data)"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError(name, "float image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise ImageLoadError(
                name,
                f"float values {low:.4g}..{high:.4g} are outside [0, 1] and [0, 255]: already normalised? pass raw "
                "pixels (or give pixel_values to the model directly)",
            )
        scale = 255.0 if high <= 1.0 else 1.0  # transformers' convention: floats up to 1 are rescaled pixels
        return np.rint(array.astype(np.float64) * scale).astype(np.uint8)
    raise ImageLoadError(name, f"arrays of dtype {array.dtype} are not images")
