"""The linear probe of the features: it reads what is linearly there, and nothing when nothing is."""

import pytest
import torch

from hf_imgcap.evaluation.feature_probe import fit_logistic_regression, linear_probe, probe_label, project_on_training_span


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
    # The same image described in either order: the same label (green comes before yellow in COLORS).
    assert probe_label(green_above_yellow, "relation") == probe_label(yellow_below_green, "relation") == "above"
    assert probe_label(green_above_yellow, "color") is None  # colour and shape: one-object images only
    alone = {"objects": [{"color": "red", "shape": "triangle"}]}
    assert probe_label(alone, "color") == "red" and probe_label(alone, "shape") == "triangle"
    assert probe_label(alone, "relation") is None
    with pytest.raises(ValueError, match="unknown probe task 'size'"):
        probe_label(alone, "size")
