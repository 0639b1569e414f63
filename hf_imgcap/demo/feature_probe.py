# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""A linear probe of the cached encoder features: what the features hold, to compare the captions with.

Multinomial logistic regressions on the flattened `(regions, channels)` features, standardised exactly as the model
standardises them (its `_standardize`), are trained on the train split (full batch, L-BFGS, weight decay chosen on
the validation split) to predict, from a synthetic scene (`scenes.json`):
- `color` and `shape` of one-object images (the captions' colour and shape accuracy are over the same images);
- for two-object images, each object's colour and shape by where it is (`first_*`: the object on the left or at
  the top; `second_*`: the other) and the `axis` they lie on. Written as a caption ("a red circle to the left of a
  blue square") and scored by `content_accuracy.score_caption`, these readings give the probe's `relation` accuracy
  by the captions' own rule: the objects must be named (colour or shape) and placed right, which needs each
  colour bound to its place;
- `relation_alone`: a 4-way classifier of where the object whose colour comes first alphabetically is relative to
  the other, the objects not named (a caption cannot state a relation without naming the objects, so this is not
  the captions' bar). A fixed order is needed because features have none.
The classes are the colour and shape words of the scenes file (`SceneVocabulary`).
Their accuracy on the test split is the bar for the captions' content accuracy on the same images.
"""

import contextlib
import logging

import numpy as np
import torch
import torch.nn.functional as F

from hf_imgcap.demo.content_accuracy import INVERSE_RELATION, SceneVocabulary, scene_of, score_caption

logger = logging.getLogger(__name__)

AXES = ("horizontal", "vertical")
RELATIONS = tuple(INVERSE_RELATION)
ONE_OBJECT_TASK_NAMES = ("color", "shape")
TWO_OBJECT_TASK_NAMES = ("first_color", "first_shape", "second_color", "second_shape", "axis", "relation_alone")
READING_TASKS = ("first_color", "first_shape", "second_color", "second_shape", "axis")  # reading_caption's arguments
WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # wide: features have ~100k dimensions


def probe_tasks(vocabulary: SceneVocabulary) -> tuple[dict, dict]:
    """The one-object and the two-object tasks, each {task: its classes}."""
    colors, shapes = vocabulary.colors, vocabulary.shapes
    one_object = {"color": colors, "shape": shapes}
    two_object = {"first_color": colors, "first_shape": shapes, "second_color": colors, "second_shape": shapes,
                  "axis": AXES, "relation_alone": RELATIONS}
    return one_object, two_object


def probe_label(scene: dict, task: str) -> str | None:
    """The class a probe for `task` should predict for `scene`, or None when the task does not apply to it."""
    if task not in ONE_OBJECT_TASK_NAMES + TWO_OBJECT_TASK_NAMES:
        raise ValueError(f"unknown probe task {task!r}; choose one of {ONE_OBJECT_TASK_NAMES + TWO_OBJECT_TASK_NAMES}")
    objects = scene["objects"]
    if task in ONE_OBJECT_TASK_NAMES:
        return objects[0][task] if len(objects) == 1 else None
    if len(objects) != 2:
        return None
    relation = scene["relation"]  # objects[0] RELATION objects[1]
    if task == "axis":
        return "horizontal" if relation in ("left of", "right of") else "vertical"
    if task == "relation_alone":
        first_is_canonical = objects[0]["color"] < objects[1]["color"]
        return relation if first_is_canonical else INVERSE_RELATION[relation]
    first, second = (objects[0], objects[1]) if relation in ("left of", "above") else (objects[1], objects[0])
    place, attribute = task.split("_")
    return (first if place == "first" else second)[attribute]


def reading_caption(first_color: str, first_shape: str, second_color: str, second_shape: str, axis: str) -> str:
    """The probe's reading of a two-object image written as a caption, for `score_caption` to score."""
    relation = "to the left of" if axis == "horizontal" else "above"
    return f"a {first_color} {first_shape} {relation} a {second_color} {second_shape}"


@contextlib.contextmanager
def _one_thread():
    """Tiny problems (a few hundred coordinates) run ~15× faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                            max_iter: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch L-BFGS in float64: mean cross-entropy + weight_decay/2 · ‖W‖²
    (the bias is not decayed). Starts from zeros: deterministic. The returned layer is float64."""
    features = features.double()
    probe = torch.nn.Linear(features.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread():
        optimizer.step(closure)
    return probe


@torch.no_grad()
def _predict(probe, features) -> torch.Tensor:
    return probe(features.double()).argmax(-1)


def project_on_training_span(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Coordinates in an orthonormal basis of the span of the training rows (N of them, D ≫ N here: 49×2048
    features, a few hundred images). An L2-regularised linear model's weights lie in that span, so fitting on the
    N-dimensional coordinates gives exactly the same predictions as on the D-dimensional features, much faster."""
    gram = (train_x @ train_x.T).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    keep = eigenvalues > eigenvalues.max().clamp(min=1e-30) * 1e-6  # directions float32 features cannot resolve
    eigenvalues, eigenvectors = eigenvalues[keep], eigenvectors[:, keep]
    # train_x = U S Vᵀ with U, S² from the Gram matrix; coordinates x·V = x·train_xᵀ·U / S.
    basis = train_x.T @ (eigenvectors / eigenvalues.sqrt()).float()
    return [x @ basis for x in (train_x, *others)]


def linear_probe(train, validation, test, num_classes: int, weight_decays=WEIGHT_DECAYS) -> dict:
    """Fit on `train` = (features (N, D) float32, labels (N,) long) for each weight decay, keep the one with the
    best validation accuracy (the stronger decay on a tie), report its test accuracy as
    {"accuracy", "correct", "total", "weight_decay", "validation_accuracy"}."""
    return fit_and_predict(train, validation, test, num_classes, weight_decays)[0]


def fit_and_predict(train, validation, test, num_classes: int, weight_decays=WEIGHT_DECAYS) -> tuple[dict, list]:
    """`linear_probe`'s result and the chosen probe's predicted class for each test row."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, validation, test
    if len(train_y) == 0 or len(test_y) == 0:
        return {"accuracy": None, "correct": 0, "total": len(test_y), "weight_decay": None, "validation_accuracy": None}, []
    if train_x.shape[1] > train_x.shape[0]:
        train_x, val_x, test_x = project_on_training_span(train_x, val_x, test_x)
    best = None
    for weight_decay in sorted(weight_decays, reverse=True):
        probe = fit_logistic_regression(train_x, train_y, num_classes, weight_decay)
        validation_accuracy = float((_predict(probe, val_x) == val_y).float().mean()) if len(val_y) else 0.0
        if best is None or validation_accuracy > best[0]:
            best = (validation_accuracy, weight_decay, probe)
    validation_accuracy, weight_decay, probe = best
    predictions = _predict(probe, test_x)
    correct = int((predictions == test_y).sum())
    result = {"accuracy": correct / len(test_y), "correct": correct, "total": len(test_y), "weight_decay": weight_decay,
              "validation_accuracy": validation_accuracy if len(val_y) else None}
    return result, predictions.tolist()


@torch.no_grad()
def probe_examples(features, image_ids, scenes: dict, tasks: dict, standardize, batch_size: int = 64):
    """(standardised flattened features, {task: label indices}, scenes) of the images of a split to which the
    `tasks` (all of one kind: the one-object or the two-object tasks of `probe_tasks`) apply. `features` is the split's
    `FeatureCache` (rows in `image_ids` order; images it could not encode or without a scene are left out)."""
    valid = getattr(features, "valid", np.ones(len(image_ids), dtype=bool))
    rows, labels, kept_scenes = [], {task: [] for task in tasks}, []
    for index, image_id in enumerate(image_ids):
        scene = scene_of(image_id, scenes)
        names = {task: probe_label(scene, task) for task in tasks} if scene is not None else {}
        if names and all(name is not None for name in names.values()) and valid[index]:
            rows.append(index)
            kept_scenes.append(scene)
            for task, name in names.items():
                labels[task].append(tasks[task].index(name))
    chunks = [standardize(features.batch(rows[start : start + batch_size])).float().flatten(1)
              for start in range(0, len(rows), batch_size)]
    dimension = int(np.prod(features[0].shape)) if len(features) else 0
    stacked = torch.cat(chunks) if chunks else torch.zeros(0, dimension)
    return stacked, {task: torch.tensor(values, dtype=torch.long) for task, values in labels.items()}, kept_scenes


def probe_cached_features(caches: dict, splits: dict, scenes: dict, standardize, weight_decays=WEIGHT_DECAYS) -> dict:
    """The linear probe for every task: trained on caches["train"], weight decay chosen on caches["validation"],
    scored on caches["test"]; plus `relation`, the two-object readings scored as a caption (module docstring).
    `splits` has the matching datasets (their `image_id` column names the scene); `standardize` is the model's
    feature standardisation (features as the decoder sees them)."""
    results = {}
    one_object_tasks, two_object_tasks = probe_tasks(SceneVocabulary.from_scenes(scenes))
    for tasks in (one_object_tasks, two_object_tasks):
        data = {name: probe_examples(caches[name], splits[name]["image_id"], scenes, tasks, standardize)
                for name in ("train", "validation", "test")}
        predictions = {}
        for task, classes in tasks.items():
            train, validation, test = ((data[name][0], data[name][1][task]) for name in ("train", "validation", "test"))
            results[task], predictions[task] = fit_and_predict(train, validation, test, len(classes), weight_decays)
        if tasks is two_object_tasks:
            results["relation"] = relation_of_readings(predictions, data["test"][2], two_object_tasks)
    for task in ("color", "shape", "relation"):
        logger.info("linear probe %s: test accuracy %s (%d images)", task,
                    "n/a" if results[task]["accuracy"] is None else f"{results[task]['accuracy']:.3f}", results[task]["total"])
    return results


def relation_of_readings(predictions: dict, test_scenes: list, two_object_tasks: dict) -> dict:
    """The two-object probes' predictions (class indices per task of `two_object_tasks`, one per test scene) written
    as captions and scored like the captions' relation: {"accuracy", "correct", "total"}."""
    total = len(test_scenes)
    if total == 0 or any(len(predictions[task]) != total for task in READING_TASKS):
        return {"accuracy": None, "correct": 0, "total": total}
    correct = 0
    vocabulary = SceneVocabulary(colors=two_object_tasks["first_color"], shapes=two_object_tasks["first_shape"])
    for index, scene in enumerate(test_scenes):
        reading = {task: two_object_tasks[task][predictions[task][index]] for task in READING_TASKS}
        correct += score_caption(reading_caption(**reading), scene, vocabulary).relation is True
    return {"accuracy": correct / total, "correct": correct, "total": total}
