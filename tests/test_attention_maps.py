"""The attention figure: one PNG per image, a grid of the image plus one heat-map panel per word piece."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_imgcap.evaluation.attention_maps import COLUMNS, MARGIN, PANEL_SIZE, grid_size, render_attention_map

from test_pipeline import save_captioner, write_test_images


def panel(figure: np.ndarray, index: int, panel_size: int, columns: int, margin: int = MARGIN) -> np.ndarray:
    """Pixels of panel `index` (0 = the image), from the documented layout."""
    row, column = divmod(index, columns)
    top, left = margin + row * (panel_size + margin), margin + column * (panel_size + margin)
    return figure[top : top + panel_size, left : left + panel_size].astype(int)


def test_grid_size_follows_the_documented_layout():
    assert grid_size(0) == (PANEL_SIZE + 2 * MARGIN, PANEL_SIZE + 2 * MARGIN)  # the image alone
    # 4 words + the image = 5 panels = one full row of COLUMNS (5); the 6th panel starts a second row.
    assert COLUMNS == 5
    assert grid_size(4) == (5 * PANEL_SIZE + 6 * MARGIN, PANEL_SIZE + 2 * MARGIN)
    assert grid_size(5) == (5 * PANEL_SIZE + 6 * MARGIN, 2 * PANEL_SIZE + 3 * MARGIN)
    assert grid_size(2, panel_size=50, columns=2, margin=1) == (2 * 50 + 3, 2 * 50 + 3)


@pytest.mark.parametrize("num_tokens", [0, 1, 4, 5, 11])
def test_one_panel_per_word_plus_the_image(tmp_path, num_tokens):
    tokens = [f"w{i}" for i in range(num_tokens)]
    attentions = torch.softmax(torch.randn(num_tokens, 7, 7), dim=-1)
    image = Image.new("RGB", (90, 70), (30, 160, 60))
    path, count = render_attention_map(image, tokens, attentions, tmp_path / "out" / "map.png", panel_size=40)
    assert count == num_tokens and path == tmp_path / "out" / "map.png"
    with Image.open(path) as figure:
        assert figure.format == "PNG"
        assert figure.size == grid_size(num_tokens, panel_size=40)


def test_panels_show_the_image_then_each_words_attention(tmp_path):
    size, columns = 64, 3
    image = Image.new("RGB", (80, 64), (120, 120, 120))
    attentions = np.zeros((2, 2, 2))
    attentions[0, 0, 1] = 1.0  # word 1: top-right region
    attentions[1, 1, 0] = 1.0  # word 2: bottom-left region
    path, _ = render_attention_map(image, ["dog", "##s"], attentions, tmp_path / "map.png", panel_size=size, columns=columns)
    figure = np.asarray(Image.open(path).convert("RGB"))
    assert (panel(figure, 0, size, columns) == 120).all()  # panel 0: the (cropped, resized) image itself
    assert (figure[:MARGIN] == 255).all()  # white margin

    def redness(pixels):
        return (pixels[..., 0] - pixels[..., 2]).mean()

    half = size // 2
    first, second = panel(figure, 1, size, columns), panel(figure, 2, size, columns)
    # Below the word's label band: the attended quadrant is hot (red), the opposite one cold (blue).
    assert redness(first[half // 2 : half, half:]) > redness(first[half:, :half]) + 50
    assert redness(second[half:, :half]) > redness(second[half // 2 : half, half:]) + 50
    # The word is written on a dark band at the top: white text pixels on black.
    band = first[: size // 8]
    assert (band.sum(-1) == 0).mean() > 0.5 and (band.min(-1) > 200).any()


def test_with_the_models_own_attentions(tmp_path):
    model, processor = save_captioner(tmp_path / "model")
    image_paths = write_test_images(tmp_path / "images")
    results = model.caption(image_paths, processor, return_attentions=True, num_beams=3, max_new_tokens=6)
    for image_path, result in zip(image_paths, results):
        assert result["attentions"].shape == (len(result["tokens"]), 2, 2)  # the tiny model's 2×2 regions
        path, count = render_attention_map(image_path, result["tokens"], result["attentions"], tmp_path / f"{image_path.stem}.png")
        assert count == len(result["tokens"])
        with Image.open(path) as figure:
            assert figure.size == grid_size(count)
    assert sum(len(result["tokens"]) for result in results) > 0


def test_mismatched_inputs_are_refused(tmp_path):
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="len\\(tokens\\)=2"):
        render_attention_map(image, ["a", "b"], np.ones((3, 2, 2)) / 4, tmp_path / "x.png")
    with pytest.raises(ValueError, match="NaN"):
        render_attention_map(image, ["a"], np.full((1, 2, 2), np.nan), tmp_path / "x.png")
    with pytest.raises(ValueError, match="missing.jpg"):
        render_attention_map(tmp_path / "missing.jpg", ["a"], np.ones((1, 2, 2)) / 4, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_a_symlink_at_the_figures_path_is_replaced_never_written_through(tmp_path):
    """A link named like the figure (planted, or left by another tool) must not get its target overwritten."""
    victim = tmp_path / "elsewhere" / "precious.png"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's own file")
    (tmp_path / "maps").mkdir()
    link = tmp_path / "maps" / "photo_attention.png"
    link.symlink_to(victim)
    path, _ = render_attention_map(Image.new("RGB", (64, 64), (10, 200, 30)), ["a"], np.ones((1, 2, 2)) / 4, link)
    assert victim.read_bytes() == b"the user's own file"
    assert not path.is_symlink() and path.is_file()
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.size == grid_size(1)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["photo_attention.png"]  # no temporary left behind


def test_one_colour_scale_per_caption_a_flat_word_is_not_painted_hot(tmp_path):
    """A word whose attention is spread evenly must look cold next to a word that looks at one region: scaling
    each panel to its own maximum would paint the evenly spread one hot all over."""
    size, columns = 64, 3
    image = Image.new("RGB", (64, 64), (120, 120, 120))
    attentions = np.array([
        [[0.25, 0.25], [0.25, 0.25]],  # "flat": no preference at all (the uniform distribution over 4 regions)
        [[0.01, 0.97], [0.01, 0.01]],  # "peak": the top-right region
    ])
    path, _ = render_attention_map(image, ["flat", "peak"], attentions, tmp_path / "map.png", panel_size=size, columns=columns)
    figure = np.asarray(Image.open(path).convert("RGB"))
    below_label = slice(size // 4, size)
    flat, peak = panel(figure, 1, size, columns)[below_label], panel(figure, 2, size, columns)[below_label]
    hottest = np.array([128, 0, 0]) * 0.55 + 120 * 0.45  # the colour map's top blended over the grey image

    def redness(pixels):
        return (pixels[..., 0] - pixels[..., 2]).mean()

    assert np.abs(flat - hottest).sum(-1).min() > 60  # no pixel of the flat panel at full intensity
    assert redness(flat) < 0  # on the cold side of the scale
    assert redness(peak[:, size // 2 + 8 :]) > redness(flat) + 100  # while the peaked word's region is hot


def test_caption_checks_every_image_before_captioning_any(tmp_path, monkeypatch):
    """A bad file last in a long list must not cost the captions of the ones before it: it is refused, by name,
    before the first batch is decoded."""
    model, processor = save_captioner(tmp_path / "model")
    image_paths = write_test_images(tmp_path / "images")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    decoded = []
    monkeypatch.setattr(model, "generate", lambda **kwargs: decoded.append(1))
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        model.caption(list(image_paths) + [tmp_path / "images" / "broken.jpg"], processor, batch_size=1)
    assert decoded == []


def test_caption_returns_every_sequence_asked_for_and_refuses_bad_arguments(tmp_path):
    model, processor = save_captioner(tmp_path / "model")
    image_paths = write_test_images(tmp_path / "images")[:2]
    options = dict(num_beams=3, num_return_sequences=2, max_new_tokens=4)
    captions = model.caption(image_paths, processor, **options)
    with_attentions = model.caption(image_paths, processor, return_attentions=True, **options)
    assert len(captions) == 4 and [result["caption"] for result in with_attentions] == captions
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.caption(image_paths, processor, batch_size=0)
    with pytest.raises(TypeError, match="processor"):
        model.caption(image_paths, None)
