# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""A synthetic Flickr8k: simple scenes whose captions depend on what is in the image, written to disk in a
real published layout so that the demo and the tests go through the same loader as real data.

Each image shows one shape (circle, square, triangle) in the middle, or two shapes of different colours side by
side or one above the other, on a coloured background; each gets five differently worded captions naming what is
there (for two shapes: both, and where one is relative to the other, in several wordings). The generator knows
each image's content and writes it next to the dataset as `scenes.json` (see `SCENES_FILE`), so that captions can
be scored for what they say (`hf_imgcap.demo.content_accuracy`), not only for n-gram overlap.
"""

import csv
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
LAYOUTS = ("flickr8k", "kaggle", "karpathy")
# `scenes.json`: image file name -> {"split", "background", "objects": [{"shape", "color", "size", "position"}],
# and for two objects "relation": where objects[0] is relative to objects[1]}. "split" is the generator's split
# ("train" / "val" / "test"); the Kaggle layout has no split files, so its loader draws its own.
SCENES_FILE = "scenes.json"
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Where an object is drawn -> how it relates to the other object (which is on the opposite side).
POSITION_RELATION = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}
# The wordings captions use; hf_imgcap.demo.content_accuracy reads these (and a few more).
RELATION_WORDINGS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
POSITION_WORDINGS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
_CENTERS = {"middle": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}


def with_article(words: str) -> str:
    """'an orange square', 'a red circle': the indefinite article English puts before the words."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str  # "big" or "small"
    position: str  # "middle" (alone), else "left"/"right" or "top"/"bottom"

    def words(self, rng: random.Random) -> str:
        """'red circle', sometimes with its size: 'big red circle'."""
        return f"{self.size} {self.color} {self.shape}" if rng.random() < 0.25 else f"{self.color} {self.shape}"


@dataclass
class Scene:
    background: str
    objects: list

    @property
    def relation(self) -> str | None:
        """Where objects[0] is relative to objects[1] ("left of", "right of", "above", "below"); None for one object."""
        return POSITION_RELATION[self.objects[0].position] if len(self.objects) == 2 else None

    def to_json(self) -> dict:
        content = {"background": self.background, "objects": [asdict(o) for o in self.objects]}
        if self.relation is not None:
            content["relation"] = self.relation
        return content

    def captions(self, rng: random.Random) -> list[str]:
        """Five differently worded captions, all true of the scene."""
        background = self.background
        if len(self.objects) == 1:
            first = self.objects[0]
            thing, size = f"{first.color} {first.shape}", first.size
            templates = [
                f"{with_article(thing)} on a {background} background",
                f"a {size} {thing}",
                f"there is {with_article(thing)} in the middle of a {background} image",
                f"one {size} {thing} on {background}",
                f"a picture of {with_article(thing)}",
                f"{with_article(thing)} alone on a {background} background",
            ]
            return rng.sample(templates, 5)
        # Two objects: each caption names both and states the relation, in either order and several wordings.
        captions = []
        for template in rng.sample(range(7), 5):
            a, b = self.objects if rng.random() < 0.5 else self.objects[::-1]
            relation = rng.choice(RELATION_WORDINGS[POSITION_RELATION[a.position]])
            a_words, b_words = with_article(a.words(rng)), with_article(b.words(rng))
            captions.append([
                f"{a_words} {relation} {b_words}",
                f"{a_words} {relation} {b_words} on a {background} background",
                f"{a_words} {POSITION_WORDINGS[a.position]} and {b_words} {POSITION_WORDINGS[b.position]}",
                f"two shapes : {a_words} {POSITION_WORDINGS[a.position]} and {b_words} {POSITION_WORDINGS[b.position]}",
                f"there is {a_words} {relation} {b_words}",
                f"{a_words} is {relation} {b_words}",
                f"on a {background} background {a_words} {relation} {b_words}",
            ][template])
        return captions


def random_scene(rng: random.Random) -> Scene:
    """Half the scenes show one shape, half two: side by side or one above the other, either one first."""
    background = rng.choice(list(BACKGROUNDS))
    count = rng.choice((1, 2))
    colors = rng.sample(list(COLORS), count)  # two objects never share a colour: the colour names each one
    if count == 1:
        positions = ["middle"]
    else:
        positions = list(rng.choice((("left", "right"), ("top", "bottom"))))
        rng.shuffle(positions)
    objects = [SceneObject(rng.choice(SHAPES), color, rng.choice(("big", "small")), position)
               for color, position in zip(colors, positions)]
    return Scene(background, objects)


def draw_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for thing in scene.objects:
        radius = size * (0.3 if thing.size == "big" else 0.18) * (0.6 if thing.position != "middle" else 1.0)
        x, y = _CENTERS[thing.position]
        # Jitter along the free axis more than along the axis that carries the relation.
        jitter_x, jitter_y = (0.05, 0.1) if thing.position in ("left", "right", "middle") else (0.1, 0.05)
        center_x = size * (x + rng.uniform(-jitter_x, jitter_x))
        center_y = size * (y + rng.uniform(-jitter_y, jitter_y))
        box = [center_x - radius, center_y - radius, center_x + radius, center_y + radius]
        fill = COLORS[thing.color]
        if thing.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif thing.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(center_x, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return image


def write_synthetic_flickr8k(
    root,
    num_train: int = 60,
    num_val: int = 10,
    num_test: int = 10,
    layout: str = "flickr8k",
    image_size: int = 160,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset to `root` in a published Flickr8k layout and return `root`.

    layout "flickr8k": the original text release (`Flicker8k_Dataset/*.jpg`, `Flickr8k.token.txt` with
    `name.jpg#k<TAB>caption` lines, `Flickr_8k.{train,dev,test}Images.txt`); "kaggle": `Images/` and a
    `captions.txt` CSV (`image,caption`, no split files); "karpathy": `images/` and `dataset_flickr8k.json`.
    The same seed gives the same images and captions in every layout. Every layout also gets `scenes.json`
    (`SCENES_FILE`): what each image shows, keyed by image file name.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    root = Path(root)
    rng = random.Random(seed)
    splits = ["train"] * num_train + ["val"] * num_val + ["test"] * num_test
    image_dir = root / {"flickr8k": "Flicker8k_Dataset", "kaggle": "Images", "karpathy": "images"}[layout]
    image_dir.mkdir(parents=True, exist_ok=True)
    records, scenes = [], {}
    for index, split in enumerate(splits):
        scene = random_scene(rng)
        name = f"{1000000 + index * 7919}_{rng.getrandbits(40):010x}.jpg"  # Flickr-like file names
        draw_scene(scene, image_size, rng).save(image_dir / name, quality=92)
        records.append((name, split, scene.captions(rng)))
        scenes[name] = {"split": split, **scene.to_json()}
    (root / SCENES_FILE).write_text(json.dumps(scenes, indent=1), encoding="utf-8")

    if layout == "flickr8k":
        with open(root / "Flickr8k.token.txt", "w", encoding="utf-8") as token_file:
            for name, _, captions in records:
                for k, caption in enumerate(captions):
                    token_file.write(f"{name}#{k}\t{caption}\n")
        for split, file_split in (("train", "train"), ("val", "dev"), ("test", "test")):
            names = [name for name, record_split, _ in records if record_split == split]
            (root / f"Flickr_8k.{file_split}Images.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    elif layout == "kaggle":
        with open(root / "captions.txt", "w", encoding="utf-8", newline="") as csv_file:
            writer = csv.writer(csv_file)
            writer.writerow(["image", "caption"])
            for name, _, captions in records:
                writer.writerows([name, caption] for caption in captions)
    else:
        images = []
        for index, (name, split, captions) in enumerate(records):
            sentences = [
                {"tokens": caption.split(), "raw": caption, "imgid": index, "sentid": index * 5 + k}
                for k, caption in enumerate(captions)
            ]
            images.append(
                {"filename": name, "imgid": index, "split": split, "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
            )
        (root / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}), encoding="utf-8")
    return root
