# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""A synthetic Flickr8k: simple scenes whose captions depend on what is in the image, written to disk in a
real published layout so that the demo and the tests go through the same loader as real data.

Each image shows one or two shapes (circle, square, triangle) of different colours and sizes on a coloured
background; each gets five differently worded captions naming what is there.
"""

import csv
import json
import random
from dataclasses import dataclass
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


@dataclass
class Shape:
    kind: str
    color: str
    big: bool
    side: str  # "left" or "right" when there are two shapes, else "middle"


@dataclass
class Scene:
    background: str
    shapes: list

    def captions(self, rng: random.Random) -> list[str]:
        """Five differently worded captions, all true of the scene."""
        first = self.shapes[0]
        if len(self.shapes) == 1:
            size = "big" if first.big else "small"
            templates = [
                f"a {first.color} {first.kind} on a {self.background} background",
                f"a {size} {first.color} {first.kind}",
                f"there is a {first.color} {first.kind} in the middle of a {self.background} image",
                f"one {size} {first.color} {first.kind} on {self.background}",
                f"a picture of a {first.color} {first.kind}",
                f"a {first.color} {first.kind} alone on a {self.background} background",
            ]
        else:
            left, right = self.shapes
            templates = [
                f"a {left.color} {left.kind} and a {right.color} {right.kind}",
                f"a {left.color} {left.kind} next to a {right.color} {right.kind} on a {self.background} background",
                f"two shapes : a {left.color} {left.kind} on the left and a {right.color} {right.kind} on the right",
                f"a {right.color} {right.kind} to the right of a {left.color} {left.kind}",
                f"two shapes on a {self.background} background",
                f"a {left.kind} and a {right.kind} side by side",
            ]
        return rng.sample(templates, 5)


def random_scene(rng: random.Random) -> Scene:
    background = rng.choice(list(BACKGROUNDS))
    count = rng.choice((1, 1, 2))
    colors = rng.sample(list(COLORS), count)
    sides = ["middle"] if count == 1 else ["left", "right"]
    shapes = [Shape(rng.choice(SHAPES), color, rng.random() < 0.5, side) for color, side in zip(colors, sides)]
    return Scene(background, shapes)


def draw_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        radius = size * (0.3 if shape.big else 0.18) * (0.6 if shape.side != "middle" else 1.0)
        center_x = {"left": 0.27, "right": 0.73, "middle": 0.5}[shape.side] * size + rng.uniform(-0.05, 0.05) * size
        center_y = size * (0.5 + rng.uniform(-0.1, 0.1))
        box = [center_x - radius, center_y - radius, center_x + radius, center_y + radius]
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
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
    The same seed gives the same images and captions in every layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    root = Path(root)
    rng = random.Random(seed)
    splits = ["train"] * num_train + ["val"] * num_val + ["test"] * num_test
    image_dir = root / {"flickr8k": "Flicker8k_Dataset", "kaggle": "Images", "karpathy": "images"}[layout]
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, split in enumerate(splits):
        scene = random_scene(rng)
        name = f"{1000000 + index * 7919}_{rng.getrandbits(40):010x}.jpg"  # Flickr-like file names
        draw_scene(scene, image_size, rng).save(image_dir / name, quality=92)
        records.append((name, split, scene.captions(rng)))

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
