"""A stand-in for a pretrained encoder: a small bottleneck ResNet trained, on this CPU, to recognise synthetic scenes.

The offline demo's random ResNet-152 is a poor stand-in for `microsoft/resnet-152`: its features are huge, almost
identical between images, and what tells one image from another lies along weak directions. Defaults chosen on it
(feature whitening, the SCST recipe) may only suit it. This script trains an encoder whose features behave like a
trained network's: a transformers `ResNetModel` (bottleneck, one block per stage, 2048 channels out like ResNet-152,
so the captioner's sizes stay the real ones) learns, from its last 7×7 feature map, to name every object's colour,
shape and size by where it is, the layout (one shape / side by side / one above the other) and the background of
the scenes of `hf_imgcap.demo.scenes`. Each head reads the map averaged over the cells where its object would be
(left / right / top / bottom three columns or rows, the middle 3×3), so the map has to keep what is where.

It trains on scenes of its own seed (`STANDIN_SEED`); evaluate captioners on scenes of any other seed. The folder it
writes is a `ResNetModel.save_pretrained` folder: `python train.py --encoder <folder>` loads it.

    python bench/standin_encoder.py train --output /tmp/standin/encoder        # minutes on 2 idle cores
    python bench/standin_encoder.py stats --encoder /tmp/standin/encoder       # its features vs a random ResNet-152
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ResNetConfig, ResNetModel, set_seed

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration
from hf_imgcap.demo.scenes import BACKGROUNDS, COLORS, SCENES_FILE, SHAPES, write_synthetic_flickr8k
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import normalize_features
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import default_image_processor

STANDIN_SEED = 20261  # the stand-in's training scenes; evaluation datasets must be written with another seed
IMAGE_SIZE = 224  # the captioner's input size: the stand-in trains at the size it is used at
# One block per stage keeps training to minutes; 2048 channels out, as ResNet-152, so the captioner is real-sized.
STANDIN_CONFIG = dict(layer_type="bottleneck", depths=[1, 1, 1, 1], hidden_sizes=[64, 128, 256, 2048], embedding_size=32)

PLACES = ("left", "right", "top", "bottom", "middle")  # where a scene object can be (synthetic.py's positions)
LAYOUTS = ("one", "horizontal", "vertical")
SIZES = ("big", "small")
NONE = "none"  # the class of a place with no object


# ---------------------------------------------------------------------------------------------- labels
def head_classes() -> dict[str, tuple]:
    """Every classification head and its classes: colour / shape / size of the object at each place (or none),
    the layout and the background."""
    heads = {}
    for place in PLACES:
        heads[f"{place}_color"] = (*COLORS, NONE)
        heads[f"{place}_shape"] = (*SHAPES, NONE)
        heads[f"{place}_size"] = (*SIZES, NONE)
    heads["layout"] = LAYOUTS
    heads["background"] = tuple(BACKGROUNDS)
    return heads


def scene_labels(scene: dict) -> dict[str, str]:
    """The class of every head for one scene of scenes.json."""
    by_place = {obj["position"]: obj for obj in scene["objects"]}
    labels = {}
    for place in PLACES:
        obj = by_place.get(place)
        for attribute in ("color", "shape", "size"):
            labels[f"{place}_{attribute}"] = obj[attribute] if obj else NONE
    if len(scene["objects"]) == 1:
        labels["layout"] = "one"
    else:
        labels["layout"] = "horizontal" if {"left", "right"} & set(by_place) else "vertical"
    labels["background"] = scene["background"]
    return labels


def place_pool(feature_map: torch.Tensor, place: str) -> torch.Tensor:
    """Mean of a `(B, C, H, W)` map over the cells where an object at `place` lies: the first / last three of seven
    columns or rows (left, right, top, bottom), the middle 3×3 (middle), every cell ("all")."""
    height, width = feature_map.shape[-2:]
    rows, cols = slice(None), slice(None)
    if place == "left":
        cols = slice(0, width // 2)
    elif place == "right":
        cols = slice(width - width // 2, width)
    elif place == "top":
        rows = slice(0, height // 2)
    elif place == "bottom":
        rows = slice(height - height // 2, height)
    elif place == "middle":
        rows = slice(height // 2 - 1, height - height // 2 + 1)
        cols = slice(width // 2 - 1, width - width // 2 + 1)
    elif place != "all":
        raise ValueError(f"unknown place {place!r}")
    return feature_map[:, :, rows, cols].mean(dim=(2, 3))


class SceneClassifier(torch.nn.Module):
    """The encoder and one linear head per label, each on the map pooled over its place (`place_pool`)."""

    def __init__(self, encoder: ResNetModel):
        super().__init__()
        self.encoder = encoder
        channels = encoder.config.hidden_sizes[-1]
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(channels, len(classes)) for name, classes in head_classes().items()})

    @staticmethod
    def head_place(name: str) -> str:
        return name.split("_")[0] if name.split("_")[0] in PLACES else "all"

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        feature_map = self.encoder(pixel_values).last_hidden_state
        pooled = {place: place_pool(feature_map, place) for place in (*PLACES, "all")}
        return {name: head(pooled[self.head_place(name)]) for name, head in self.heads.items()}


# ---------------------------------------------------------------------------------------------- data
def write_scenes(folder: Path, num_train: int, num_heldout: int, seed: int) -> dict:
    """Synthetic scenes (the demo's generator and image size) in `folder`; returns scenes.json's content."""
    if not (folder / SCENES_FILE).is_file():
        write_synthetic_flickr8k(folder, num_train=num_train, num_val=num_heldout, num_test=0, seed=seed)
    return json.loads((folder / SCENES_FILE).read_text())


def load_pixels(paths: list[Path], image_size: int = IMAGE_SIZE, batch_size: int = 64) -> torch.Tensor:
    """The images as the captioner's processor makes them (resize, center crop, ImageNet normalisation), fp16."""
    processor = default_image_processor(image_size)
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(path).convert("RGB") for path in paths[start : start + batch_size]]
        chunks.append(processor(images=images, return_tensors="pt")["pixel_values"].half())
    return torch.cat(chunks)


def label_tensor(scenes: list[dict]) -> dict[str, torch.Tensor]:
    heads = head_classes()
    labels = [scene_labels(scene) for scene in scenes]
    return {name: torch.tensor([classes.index(entry[name]) for entry in labels]) for name, classes in heads.items()}


def split_examples(folder: Path, scenes: dict, split: str):
    names = sorted(name for name, scene in scenes.items() if scene["split"] == split)
    paths = [folder / "Flicker8k_Dataset" / name for name in names]
    return load_pixels(paths), label_tensor([scenes[name] for name in names]), [scenes[name] for name in names]


# ---------------------------------------------------------------------------------------------- training
def downscale(pixels: torch.Tensor, size: int, batch_size: int = 256) -> torch.Tensor:
    """The same field of view at `size` px (antialiased), fp16."""
    return torch.cat([F.interpolate(pixels[start : start + batch_size].float(), size=(size, size), mode="bilinear",
                                    antialias=True).half() for start in range(0, len(pixels), batch_size)])


def train_classifier(model: SceneClassifier, phases: list, labels, batch_size: int, learning_rate: float, seed: int):
    """AdamW with one one-cycle schedule over every phase; the loss is the sum of every head's cross-entropy.
    `phases`: (pixels, epochs) pairs trained in turn (a cheap low-resolution phase, then the size the encoder is used
    at, which also sets the BatchNorm statistics it keeps)."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(phases[0][0]) / batch_size)
    total_steps = sum(epochs for _, epochs in phases) * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=total_steps, pct_start=0.15)
    model.train()
    started = time.perf_counter()
    for pixels, epochs in phases:
        for epoch in range(epochs):
            order = torch.randperm(len(pixels), generator=generator)
            losses = []
            for step in range(steps_per_epoch):
                index = order[step * batch_size : (step + 1) * batch_size]
                logits = model(pixels[index].float())
                loss = sum(F.cross_entropy(logits[name], labels[name][index]) for name in logits)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                if step % 25 == 0 or step == steps_per_epoch - 1:
                    print(f"{pixels.shape[-1]} px, epoch {epoch + 1}/{epochs}, step {step + 1}/{steps_per_epoch}: "
                          f"loss {np.mean(losses[-25:]):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()


@torch.no_grad()
def predict(model: SceneClassifier, pixels, batch_size: int = 64) -> dict[str, torch.Tensor]:
    model.eval()
    outputs = [model(pixels[start : start + batch_size].float()) for start in range(0, len(pixels), batch_size)]
    return {name: torch.cat([o[name] for o in outputs]).argmax(-1) for name in outputs[0]}


def heldout_accuracy(predictions: dict, labels: dict, scenes: list[dict]) -> dict:
    """Per head, and per scene object: its colour / shape read right at its place; for two-object scenes the
    relation (layout right and both colours right at their places: that fixes which is where)."""
    heads = head_classes()
    result = {"heads": {name: float((predictions[name] == labels[name]).float().mean()) for name in heads}}
    marks = {"object_color": [], "object_shape": [], "relation": []}
    for index, scene in enumerate(scenes):
        for obj in scene["objects"]:
            for attribute in ("color", "shape"):
                name = f"{obj['position']}_{attribute}"
                marks[f"object_{attribute}"].append(heads[name][predictions[name][index]] == obj[attribute])
        if len(scene["objects"]) == 2:
            layout_right = LAYOUTS[predictions["layout"][index]] == scene_labels(scene)["layout"]
            colors_right = all(heads[f"{o['position']}_color"][predictions[f"{o['position']}_color"][index]] == o["color"]
                               for o in scene["objects"])
            marks["relation"].append(layout_right and colors_right)
    result |= {name: float(np.mean(values)) for name, values in marks.items()}
    return result


def train_standin(args) -> dict:
    set_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.work_dir / f"scenes_seed{STANDIN_SEED}"
    started = time.perf_counter()
    scenes = write_scenes(data_dir, args.num_train, args.num_heldout, STANDIN_SEED)
    train_pixels, train_labels, _ = split_examples(data_dir, scenes, "train")
    heldout_pixels, heldout_labels, heldout_scenes = split_examples(data_dir, scenes, "val")
    data_seconds = time.perf_counter() - started
    print(f"{len(train_pixels)} training / {len(heldout_pixels)} held-out scenes (seed {STANDIN_SEED}) ready in {data_seconds:.0f} s", flush=True)

    encoder = ResNetModel(ResNetConfig(**STANDIN_CONFIG))
    model = SceneClassifier(encoder)
    started = time.perf_counter()
    phases = [(downscale(train_pixels, args.low_res), args.low_res_epochs)] if args.low_res_epochs else []
    phases.append((train_pixels, args.epochs))
    train_classifier(model, phases, train_labels, args.batch_size, args.learning_rate, args.seed)
    train_seconds = time.perf_counter() - started
    accuracy = heldout_accuracy(predict(model, heldout_pixels), heldout_labels, heldout_scenes)
    chance = {"object_color": 1 / len(COLORS), "object_shape": 1 / len(SHAPES)}
    print(f"held-out accuracy ({len(heldout_pixels)} scenes): object colour {accuracy['object_color']:.3f} "
          f"(chance {chance['object_color']:.2f}), object shape {accuracy['object_shape']:.3f} (chance {chance['object_shape']:.2f}), "
          f"relation {accuracy['relation']:.3f}, layout {accuracy['heads']['layout']:.3f}, background {accuracy['heads']['background']:.3f}")

    args.output.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(args.output)
    record = {"config": STANDIN_CONFIG, "parameters": sum(p.numel() for p in encoder.parameters()),
              "training_scenes": {"seed": STANDIN_SEED, "train": len(train_pixels), "heldout": len(heldout_pixels)},
              "epochs": {f"{args.low_res} px": args.low_res_epochs, f"{IMAGE_SIZE} px": args.epochs}, "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed,
              "heldout_accuracy": accuracy, "seconds": {"data": round(data_seconds, 1), "training": round(train_seconds, 1)}}
    (args.output / "standin_training.json").write_text(json.dumps(record, indent=1))
    print(f"saved to {args.output} (trained in {train_seconds:.0f} s)")
    return record


# ---------------------------------------------------------------------------------------------- feature statistics
def random_resnet152(seed: int = 42) -> ResNetModel:
    """The demo's encoder: a ResNet-152 as the captioner initialises it (`--encoder random`) after `set_seed(seed)`."""
    set_seed(seed)
    return ShowAttendTellForConditionalGeneration(ShowAttendTellConfig()).encoder


@torch.no_grad()
def encode(encoder: ResNetModel, pixels: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """`(images, regions, channels)` float32, as the captioner caches them."""
    encoder.eval()
    maps = [encoder(pixels[start : start + batch_size].float()).last_hidden_state for start in range(0, len(pixels), batch_size)]
    return torch.cat(maps).flatten(2).transpose(1, 2).float()


def between_image_share(features: torch.Tensor) -> float:
    """Σ over (region, channel) of the variance across images / Σ of the mean square: the part of the features'
    energy that differs between images (the rest is the same for every image)."""
    features = features.double()
    return float(features.var(dim=0, unbiased=False).sum() / features.pow(2).mean(dim=0).sum())


def direction_spectrum(features: torch.Tensor) -> dict:
    """How the between-image differences spread over channel directions: the channel covariance around the
    per-(region, channel) mean, after per-channel standardisation (what the decoder gets without whitening).
    `top10_share`: variance along its 10 strongest directions / total; `participation_ratio`: (Σλ)² / Σλ², the
    number of directions that effectively carry it."""
    features = features.double()
    centred = features - features.mean(dim=0, keepdim=True)
    flat = centred.reshape(-1, centred.shape[-1])
    flat = flat / flat.std(dim=0).clamp(min=1e-12 + 0.1 * float(flat.std()))  # the model's floored per-channel std
    eigenvalues = torch.linalg.eigvalsh(flat.T @ flat / len(flat)).flip(0).clamp(min=0)
    return {"top10_share": float(eigenvalues[:10].sum() / eigenvalues.sum()),
            "participation_ratio": float(eigenvalues.sum() ** 2 / eigenvalues.pow(2).sum())}


def feature_statistics(features: torch.Tensor) -> dict:
    normalized = normalize_features(features)  # the model's first step: each image's map divided by its RMS
    return {"mean_abs": float(features.abs().mean()), "rms": float(features.pow(2).mean().sqrt()),
            "fraction_zero": float((features == 0).float().mean()),
            "between_image_share": between_image_share(features),
            "between_image_share_after_rms": between_image_share(normalized), **direction_spectrum(normalized)}


def compare_statistics(args) -> dict:
    """The stand-in's and the random ResNet-152's feature statistics on the same held-out scenes at 224 px."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.work_dir / f"scenes_seed{args.stats_seed}"
    scenes = write_scenes(data_dir, args.num_images, 0, args.stats_seed)
    pixels, _, _ = split_examples(data_dir, scenes, "train")
    rows = {}
    for name, encoder in (("stand-in", ResNetModel.from_pretrained(args.encoder)), ("random ResNet-152", random_resnet152())):
        started = time.perf_counter()
        features = encode(encoder, pixels)
        rows[name] = {**feature_statistics(features), "encode_images_per_second": round(len(pixels) / (time.perf_counter() - started), 1)}
        print(json.dumps({"encoder": name, "images": len(pixels), "image_size": IMAGE_SIZE, **rows[name]}), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the stand-in and save it as a transformers ResNet folder")
    train.add_argument("--output", type=Path, default=Path("/tmp/standin/encoder"))
    train.add_argument("--work_dir", type=Path, default=Path("/tmp/standin"), help="where the training scenes are written")
    train.add_argument("--num_train", type=int, default=2400)
    train.add_argument("--num_heldout", type=int, default=300)
    train.add_argument("--low_res_epochs", type=int, default=2, help="epochs at --low_res px first (a third of the cost)")
    train.add_argument("--low_res", type=int, default=128)
    train.add_argument("--epochs", type=int, default=1, help="epochs at 224 px, the size the captioner uses")
    train.add_argument("--batch_size", type=int, default=32)
    train.add_argument("--learning_rate", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    train.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    stats = commands.add_parser("stats", help="feature statistics of the stand-in vs the random ResNet-152 at 224 px")
    stats.add_argument("--encoder", type=Path, default=Path("/tmp/standin/encoder"))
    stats.add_argument("--work_dir", type=Path, default=Path("/tmp/standin"))
    stats.add_argument("--num_images", type=int, default=100)
    stats.add_argument("--stats_seed", type=int, default=5, help="seed of the scenes the statistics are measured on")
    stats.add_argument("--results", type=Path, help="append the rows to this JSON-lines file")
    stats.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.command == "train":
        train_standin(args)
    else:
        rows = compare_statistics(args)
        if args.results:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "a") as handle:
                handle.writelines(json.dumps({"kind": "feature_statistics", "encoder": k, **v}) + "\n" for k, v in rows.items())


if __name__ == "__main__":
    main()
