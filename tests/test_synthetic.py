"""The synthetic dataset knows what each image shows: scenes.json matches the pixels and the captions."""

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hf_imgcap.demo.scenes import COLORS, SCENES_FILE, random_scene, write_synthetic_flickr8k
from hf_imgcap.demo.content_accuracy import SceneVocabulary, load_scenes, score_caption

SIZES = dict(num_train=24, num_val=4, num_test=8, image_size=128, seed=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_flickr8k(tmp_path_factory.mktemp("synthetic") / "flickr8k", **SIZES)


def captions_by_image(root):
    captions = {}
    for line in (root / "Flickr8k.token.txt").read_text().splitlines():
        key, caption = line.split("\t")
        captions.setdefault(key.split("#")[0], []).append(caption)
    return captions


def test_every_image_has_a_scene_and_every_caption_is_right_about_it(dataset):
    scenes = load_scenes(dataset / SCENES_FILE)
    captions = captions_by_image(dataset)
    assert set(scenes) == set(captions) and len(scenes) == 36
    assert Counter(scene["split"] for scene in scenes.values()) == {"train": 24, "val": 4, "test": 8}
    for name, scene in scenes.items():
        assert len(captions[name]) == 5 and len(set(captions[name])) == 5
        for caption in captions[name]:
            verdict = score_caption(caption, scene, SceneVocabulary.from_scenes(scenes))
            assert all(verdict.color) and all(verdict.shape), (caption, scene)
            assert verdict.relation in (None, True), (caption, scene)


def test_captions_read_as_english(dataset):
    """'an orange square', never 'a orange square'."""
    captions = [caption for per_image in captions_by_image(dataset).values() for caption in per_image]
    assert not [caption for caption in captions if " a orange" in f" {caption}"]
    assert [caption for caption in captions if " an orange" in f" {caption}"]


def colour_mask(image: np.ndarray, color: str) -> np.ndarray:
    return np.linalg.norm(image.astype(float) - np.array(COLORS[color]), axis=-1) < 50


def test_scenes_json_says_what_the_pixels_show(dataset):
    """Each object's colour is where scenes.json puts it, relative to the other, and its shape fills its box as
    that shape does (circle π/4, square 1, triangle 1/2)."""
    scenes = load_scenes(dataset / SCENES_FILE)
    fill_ratio = {"circle": (0.66, 0.88), "square": (0.88, 1.01), "triangle": (0.38, 0.62)}
    for name, scene in scenes.items():
        image = np.asarray(Image.open(dataset / "Flicker8k_Dataset" / name).convert("RGB"))
        centres = []
        for scene_object in scene["objects"]:
            mask = colour_mask(image, scene_object["color"])
            ys, xs = np.nonzero(mask)
            assert len(xs) > 30, (name, scene_object)
            box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
            low, high = fill_ratio[scene_object["shape"]]
            assert low < mask.sum() / box_area < high, (name, scene_object, mask.sum() / box_area)
            centres.append((xs.mean(), ys.mean()))
        if len(centres) == 1:
            assert abs(centres[0][0] - 64) < 16 and abs(centres[0][1] - 64) < 30  # a triangle's centroid is low
            continue
        (x0, y0), (x1, y1) = centres
        expected = {"left of": x0 < x1 - 20, "right of": x0 > x1 + 20, "above": y0 < y1 - 20, "below": y0 > y1 + 20}
        assert expected[scene["relation"]], (name, scene, centres)


def test_scenes_mix_one_object_and_two_objects_in_all_four_relations():
    rng = random.Random(0)
    scenes = [random_scene(rng).to_json() for _ in range(400)]
    kinds = Counter(len(scene["objects"]) for scene in scenes)
    assert kinds[1] > 150 and kinds[2] > 150
    relations = Counter(scene.get("relation") for scene in scenes if len(scene["objects"]) == 2)
    assert set(relations) == {"left of", "right of", "above", "below"} and min(relations.values()) > 25
    assert all(scene["objects"][0]["color"] != scene["objects"][1]["color"] for scene in scenes if len(scene["objects"]) == 2)


def test_two_object_captions_use_several_wordings_and_both_orders(dataset):
    scenes = load_scenes(dataset / SCENES_FILE)
    captions = captions_by_image(dataset)
    two = [caption for name, scene in scenes.items() if len(scene["objects"]) == 2 for caption in captions[name]]
    wordings = {w for w in ("to the left of", "left of", "right of", "above", "over", "below", "under", "beneath",
                            "on the left", "at the top") if any(f" {w} " in c for c in two)}
    assert len(wordings) >= 6, wordings
    named_first = Counter()
    for name, scene in scenes.items():
        if len(scene["objects"]) == 2:
            first_colour = scene["objects"][0]["color"]
            for caption in captions[name]:
                words = caption.split()
                colours = [w for w in words if w in COLORS]
                named_first[colours[0] == first_colour] += 1
    assert named_first[True] > 5 and named_first[False] > 5  # the pair is named in either order


def test_the_same_seed_gives_the_same_images_and_scenes_in_every_layout(dataset, tmp_path):
    reference = json.loads((dataset / SCENES_FILE).read_text())
    for layout, image_dir in (("kaggle", "Images"), ("karpathy", "images")):
        other = write_synthetic_flickr8k(tmp_path / layout, layout=layout, **SIZES)
        assert json.loads((other / SCENES_FILE).read_text()) == reference
        for name in list(reference)[:5]:
            assert (other / image_dir / name).read_bytes() == (dataset / "Flicker8k_Dataset" / name).read_bytes()
    different = write_synthetic_flickr8k(tmp_path / "seed6", **{**SIZES, "seed": 6, "num_train": 4, "num_val": 1, "num_test": 1})
    assert list(json.loads((different / SCENES_FILE).read_text()).values()) != list(reference.values())[:6]
