# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The classic Show, Attend and Tell figure: where the model looked for each word it wrote. Pillow + NumPy only.

Layout of the PNG written by `render_attention_map` (all sizes in pixels; see `grid_size`):

* a grid of square panels of `panel_size`, `columns` per row (fewer when there are fewer panels), rows as
  many as needed, `margin` between panels and around the grid, on a white background;
* panel 0 is the image; panel i (1..n) is the image under the attention of word piece i as a heat map
  (blue = little attention, red = most), with the word piece written on a dark band at the top of the panel.
  One colour scale serves the whole caption (`caption_heat_scale`: 0 to the caption's highest weight), so
  panels compare: a word whose attention is spread evenly stays cold instead of being stretched to red.

The PNG replaces whatever is at its path (a symlink there is replaced, not written through).

The image shown is the square center crop the model saw (`crop_fraction` of the shorter side, 0.875 for the
default ImageNet preprocessing), so each attention cell lies over the part of the image it describes.
"""

import math
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hf_imgcap.models.show_attend_tell.image_loading import load_image

PANEL_SIZE = 224
COLUMNS = 5
MARGIN = 4
OVERLAY_OPACITY = 0.55  # how much of a panel is heat map; the rest is the image
LABEL_HEIGHT_FRACTION = 0.13  # height of the word's band, relative to the panel

# "jet"-like colour map: (position, RGB) anchors, interpolated linearly.
_COLORMAP_ANCHORS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_COLORMAP_COLORS = np.array(
    [[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], dtype=np.float64
)


def grid_size(num_word_panels: int, panel_size: int = PANEL_SIZE, columns: int = COLUMNS, margin: int = MARGIN) -> tuple[int, int]:
    """`(width, height)` of the PNG for `num_word_panels` words (the image panel comes on top of these)."""
    panels = num_word_panels + 1
    used_columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    return used_columns * panel_size + (used_columns + 1) * margin, rows * panel_size + (rows + 1) * margin


def model_view_crop_fraction(image_processor) -> float:
    """The share of the shorter side that the processor's center crop keeps (ConvNext-style `crop_pct`)."""
    crop_pct = getattr(image_processor, "crop_pct", None)
    shortest_edge = (getattr(image_processor, "size", None) or {}).get("shortest_edge")
    if crop_pct and shortest_edge and shortest_edge < 384:  # ConvNext crops only below 384 pixels
        return float(crop_pct)
    return 1.0


def render_attention_map(
    image,
    tokens: list[str],
    attentions,
    path: str | os.PathLike,
    *,
    panel_size: int = PANEL_SIZE,
    columns: int = COLUMNS,
    margin: int = MARGIN,
    crop_fraction: float = 0.875,
) -> tuple[Path, int]:
    """Write the attention figure of one caption to `path` (a PNG) and return `(path, number of word panels)`.

    Args:
        image: the captioned image (path, PIL image or array).
        tokens: the generated word pieces, in order (e.g. `model.caption(..., return_attentions=True)["tokens"]`).
        attentions: `(len(tokens), h, w)` attention weights (tensor or array), one map per token.
        crop_fraction: the share of the shorter side that the model's center crop keeps (1.0: the whole side).
    """
    canvas = attention_figure(image, tokens, attentions, panel_size=panel_size, columns=columns, margin=margin,
                              crop_fraction=crop_fraction)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_replacing(canvas, path)
    return path, len(tokens)


def attention_figure(image, tokens: list[str], attentions, *, panel_size: int = PANEL_SIZE, columns: int = COLUMNS,
                     margin: int = MARGIN, crop_fraction: float = 0.875) -> Image.Image:
    """The figure `render_attention_map` writes, as a PIL image (the layout is described at the top of this module)."""
    if columns < 1 or margin < 0:
        raise ValueError(f"columns must be >= 1 and margin >= 0 (got {columns}, {margin})")
    panels = attention_panels(image, tokens, attentions, panel_size=panel_size, crop_fraction=crop_fraction)
    canvas = Image.new("RGB", grid_size(len(tokens), panel_size, columns, margin), "white")
    for index, panel in enumerate(panels):
        canvas.paste(panel, _panel_origin(index, panel_size, columns, margin))
    return canvas


def attention_panels(image, tokens: list[str], attentions, *, panel_size: int = PANEL_SIZE, crop_fraction: float = 0.875,
                     labels: bool = True) -> list[Image.Image]:
    """The panels of the figure as `panel_size` squares: the image the model saw, then one heat map per word piece,
    all on the caption's one colour scale; `labels` writes each word piece on its panel."""
    maps = _as_maps(attentions, len(tokens))
    if panel_size < 16:
        raise ValueError(f"panel_size must be >= 16 (got {panel_size})")
    base = _center_crop(load_image(image), crop_fraction).resize((panel_size, panel_size), Image.Resampling.BICUBIC)
    base_pixels = np.asarray(base, dtype=np.float64)
    scale = caption_heat_scale(maps)
    font = _font(max(8, int(panel_size * LABEL_HEIGHT_FRACTION * 0.75)))
    panels = [base]
    for token, attention in zip(tokens, maps):
        panel = _overlay(base_pixels, _upsample(attention / scale, panel_size))
        if labels:
            _write_label(panel, token, font)
        panels.append(panel)
    return panels


def caption_heat_scale(maps: np.ndarray) -> float:
    """The attention weight shown at full intensity: the highest of the whole caption (1.0 when it has none), so that
    every panel of a caption shares one colour scale and a nearly uniform attention looks nearly uniform and cold."""
    peak = float(maps.max()) if maps.size else 0.0
    return peak if peak > 0 else 1.0


def _save_replacing(canvas: Image.Image, path: Path) -> None:
    """Write the PNG beside `path` under a temporary name, then `os.replace` it: a symlink at `path` is replaced,
    never written through (its target is left alone), and no reader sees half a figure."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        canvas.save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _as_maps(attentions, num_tokens: int) -> np.ndarray:
    # Accepts torch tensors without importing torch here.
    if hasattr(attentions, "detach"):
        attentions = attentions.detach().float().cpu().numpy()
    maps = np.asarray(attentions, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] != num_tokens:
        raise ValueError(f"attentions must be (len(tokens)={num_tokens}, h, w), got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("attentions contain NaN or infinite values")
    return maps


def _center_crop(image: Image.Image, fraction: float) -> Image.Image:
    if not 0 < fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {fraction}")
    width, height = image.size
    side = max(1, round(min(width, height) * fraction))
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _upsample(heat: np.ndarray, size: int) -> np.ndarray:
    """`(h, w)` heat in [0, 1] -> `(size, size)` in [0, 1], smooth (bicubic)."""
    smooth = Image.fromarray(heat.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(smooth, dtype=np.float64), 0.0, 1.0)


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB floats in [0, 255]."""
    return np.stack(
        [np.interp(values, _COLORMAP_ANCHORS, _COLORMAP_COLORS[:, channel]) for channel in range(3)], axis=-1
    )


def _overlay(base_pixels: np.ndarray, heat: np.ndarray) -> Image.Image:
    blended = (1 - OVERLAY_OPACITY) * base_pixels + OVERLAY_OPACITY * _colormap(heat)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # Pillow's small bitmap font


def _write_label(panel: Image.Image, text: str, font) -> None:
    band_height = max(10, int(panel.height * LABEL_HEIGHT_FRACTION))
    draw = ImageDraw.Draw(panel)
    draw.rectangle((0, 0, panel.width, band_height), fill=(0, 0, 0))
    draw.text((4, band_height / 2), text, fill=(255, 255, 255), font=font, anchor="lm")


def _panel_origin(index: int, panel_size: int, columns: int, margin: int) -> tuple[int, int]:
    row, column = divmod(index, columns)
    return margin + column * (panel_size + margin), margin + row * (panel_size + margin)


__all__ = ["COLUMNS", "MARGIN", "PANEL_SIZE", "attention_figure", "attention_panels", "caption_heat_scale", "grid_size", "render_attention_map"]
