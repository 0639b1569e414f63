"""The linear probe of the features: it reads what is linearly there, and nothing when nothing is."""

import numpy as np
import pytest
import torch

from hf_imgcap.demo.scenes import COLORS, SHAPES
from hf_imgcap.demo.content_accuracy import SceneVocabulary
from hf_imgcap.demo.feature_probe import (READING_TASKS, probe_tasks, fit_logistic_regression, linear_probe,
                                              probe_cached_features, probe_label, project_on_training_span,
                                              relation_of_readings)


def linear_features(labels: torch.Tensor, dimension: int, num_classes: int, generator) -> torch.Tensor:
    """Features that are a fixed linear function of the one-hot labels, plus noise."""
    mixing = torch.randn(num_classes, dimension, generator=generator)
    return torch.nn.functional.one_hot(labels, num_classes).float() @ mixing + 0.3 * torch.randn(len(labels), dimension, generator=generator)


@pytest.mark.parametrize("dimension", [20, 600])  # fewer and more dimensions than training images
def test_the_probe_reads_labels_that_are_a_linear_function_of_the_features(dimension):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=generator)
    features = linear_features(labels, dimension, 4, generator)
    splits = [(features[a:b], labels[a:b]) for a, b in ((0, 150), (150, 200), (200, 300))]
    result = linear_probe(*splits, num_classes=4)
    assert result["accuracy"] >= 0.97 and result["total"] == 100 and result["correct"] == round(result["accuracy"] * 100)
    assert result["weight_decay"] is not None and result["validation_accuracy"] >= 0.9


@pytest.mark.parametrize("dimension", [20, 400])
def test_the_probe_is_at_chance_on_shuffled_labels(dimension):
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (600,), generator=generator)
    features = linear_features(labels, dimension, 4, generator)
    shuffled = labels[torch.randperm(len(labels), generator=generator)]
    splits = [(features[a:b], shuffled[a:b]) for a, b in ((0, 200), (200, 300), (300, 600))]
    assert linear_probe(*splits, num_classes=4)["accuracy"] < 0.36  # chance is 0.25; 300 test images


@torch.no_grad()
def test_fitting_in_the_span_of_the_training_rows_predicts_exactly_as_fitting_on_all_dimensions():
    """Why the probe may fit on N coordinates instead of 100k dimensions: the same logits on unseen images."""
    generator = torch.Generator().manual_seed(2)
    train_x, test_x = torch.randn(40, 300, generator=generator), torch.randn(50, 300, generator=generator)
    labels = torch.randint(0, 3, (40,), generator=generator)
    full = fit_logistic_regression(train_x, labels, 3, weight_decay=0.5)
    reduced_train, reduced_test = project_on_training_span(train_x, test_x)
    assert reduced_train.shape == (40, 40) and reduced_test.shape == (50, 40)
    reduced = fit_logistic_regression(reduced_train, labels, 3, weight_decay=0.5)
    torch.testing.assert_close(reduced(reduced_test.double()), full(test_x.double()), atol=1e-4, rtol=0)


def test_a_task_without_training_or_test_images_has_no_accuracy():
    empty = (torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    some = (torch.randn(10, 8), torch.randint(0, 3, (10,)))
    assert linear_probe(empty, some, some, num_classes=3)["accuracy"] is None
    assert linear_probe(some, some, empty, num_classes=3) == {"accuracy": None, "correct": 0, "total": 0,
                                                              "weight_decay": None, "validation_accuracy": None}


def test_probe_labels_name_the_relation_in_a_fixed_colour_order():
    green_above_yellow = {"objects": [{"color": "green", "shape": "circle"}, {"color": "yellow", "shape": "square"}],
                          "relation": "above"}
    yellow_below_green = {"objects": [{"color": "yellow", "shape": "square"}, {"color": "green", "shape": "circle"}],
                          "relation": "below"}
    # The same image described in either order: the same label (green comes before yellow alphabetically).
    assert probe_label(green_above_yellow, "relation_alone") == probe_label(yellow_below_green, "relation_alone") == "above"
    assert probe_label(green_above_yellow, "color") is None  # colour and shape: one-object images only
    alone = {"objects": [{"color": "red", "shape": "triangle"}]}
    assert probe_label(alone, "color") == "red" and probe_label(alone, "shape") == "triangle"
    assert probe_label(alone, "relation_alone") is None and probe_label(alone, "first_color") is None
    with pytest.raises(ValueError, match="unknown probe task 'size'"):
        probe_label(alone, "size")


def test_two_object_labels_name_each_object_by_its_place_whichever_order_the_scene_lists_them():
    green_above_yellow = {"objects": [{"color": "green", "shape": "circle"}, {"color": "yellow", "shape": "square"}],
                          "relation": "above"}
    yellow_below_green = {"objects": [{"color": "yellow", "shape": "square"}, {"color": "green", "shape": "circle"}],
                          "relation": "below"}
    for scene in (green_above_yellow, yellow_below_green):  # "first": the object at the top (or on the left)
        assert [probe_label(scene, task) for task in READING_TASKS] == ["green", "circle", "yellow", "square", "vertical"]
    red_right_of_blue = {"objects": [{"color": "red", "shape": "triangle"}, {"color": "blue", "shape": "triangle"}],
                         "relation": "right of"}
    assert [probe_label(red_right_of_blue, task) for task in READING_TASKS] == ["blue", "triangle", "red", "triangle", "horizontal"]


TWO_OBJECT_TASKS = probe_tasks(SceneVocabulary(colors=tuple(COLORS), shapes=SHAPES))[1]


def _indices(**reading) -> dict:
    return {task: [TWO_OBJECT_TASKS[task].index(reading[task])] for task in READING_TASKS}


def test_the_probes_relation_is_its_readings_scored_by_the_captions_rule():
    red_circle_left_of_blue_square = {"objects": [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}],
                                      "relation": "left of"}
    right = dict(first_color="red", first_shape="circle", second_color="blue", second_shape="square", axis="horizontal")
    assert relation_of_readings(_indices(**right), [red_circle_left_of_blue_square], TWO_OBJECT_TASKS) == {"accuracy": 1.0, "correct": 1, "total": 1}
    # Each colour bound to the wrong place: the caption says blue is on the left. The shapes alone still name the objects.
    swapped_colours = {**right, "first_color": "blue", "second_color": "red"}
    assert relation_of_readings(_indices(**swapped_colours), [red_circle_left_of_blue_square], TWO_OBJECT_TASKS)["correct"] == 0
    assert relation_of_readings(_indices(**{**right, "axis": "vertical"}), [red_circle_left_of_blue_square], TWO_OBJECT_TASKS)["correct"] == 0
    # One object named by its shape alone is still named (the captions' rule); neither named is not.
    shape_only = {**right, "first_color": "green"}
    assert relation_of_readings(_indices(**shape_only), [red_circle_left_of_blue_square], TWO_OBJECT_TASKS)["correct"] == 1
    unnamed = {**right, "first_color": "green", "first_shape": "triangle"}
    assert relation_of_readings(_indices(**unnamed), [red_circle_left_of_blue_square], TWO_OBJECT_TASKS)["correct"] == 0


class ArrayCache:
    """The part of a FeatureCache the probe uses: rows of (regions, channels) features."""

    def __init__(self, features):
        self.features, self.valid = features, np.ones(len(features), dtype=bool)

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index]

    def batch(self, rows):
        return self.features[rows]


def scene_features(count: int, generator, mixing) -> tuple[list, torch.Tensor]:
    """Random one- and two-object scenes and (2, D) features: one region per object slot, holding a fixed linear
    function of that object's colour and shape (and of the axis), plus noise; one-object scenes use slot 0."""
    colors, scenes, rows = list(COLORS), [], []
    for _ in range(count):
        pick = lambda: {"color": colors[int(torch.randint(len(colors), (1,), generator=generator))],
                        "shape": SHAPES[int(torch.randint(len(SHAPES), (1,), generator=generator))]}
        codes = torch.zeros(2, len(colors) + len(SHAPES) + 2)
        if torch.rand(1, generator=generator) < 0.3:
            thing = pick()
            scenes.append({"objects": [thing]})
            codes[0, colors.index(thing["color"])] = codes[0, len(colors) + SHAPES.index(thing["shape"])] = 1
        else:
            first, second = pick(), pick()
            while second["color"] == first["color"]:
                second = pick()
            relation = ("left of", "above")[int(torch.randint(2, (1,), generator=generator))]
            scenes.append({"objects": [first, second], "relation": relation})
            for slot, thing in enumerate((first, second)):
                codes[slot, colors.index(thing["color"])] = codes[slot, len(colors) + SHAPES.index(thing["shape"])] = 1
                codes[slot, -2 if relation == "left of" else -1] = 1
        rows.append(codes @ mixing + 0.2 * torch.randn(2, mixing.shape[1], generator=generator))
    return scenes, torch.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True])
def test_the_probe_reads_the_relation_when_the_features_hold_each_object_in_its_place(shuffle):
    generator = torch.Generator().manual_seed(3)
    mixing = torch.randn(len(COLORS) + len(SHAPES) + 2, 24, generator=generator)
    caches, splits, scenes = {}, {}, {}
    for name, count in (("train", 400), ("validation", 100), ("test", 150)):
        split_scenes, features = scene_features(count, generator, mixing)
        if shuffle and name == "train":  # the features say nothing about the training scenes
            features = features[torch.randperm(count, generator=generator)]
        ids = [f"{name}_{index}.jpg" for index in range(count)]
        scenes.update(zip(ids, split_scenes))
        caches[name], splits[name] = ArrayCache(features), {"image_id": ids}
    results = probe_cached_features(caches, splits, scenes, standardize=lambda features: features)
    test_two_object = sum(len(scenes[i]["objects"]) == 2 for i in splits["test"]["image_id"])
    assert results["relation"]["total"] == test_two_object and results["color"]["total"] == 150 - test_two_object
    if shuffle:
        assert results["relation"]["accuracy"] < 0.2 and results["color"]["accuracy"] < 0.4
    else:
        assert results["relation"]["accuracy"] >= 0.95 and results["color"]["accuracy"] >= 0.95
