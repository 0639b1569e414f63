"""Content accuracy: hand-written captions scored against hand-written scenes, and scenes.json read back."""

import json

import pytest

from hf_imgcap.demo.content_accuracy import (
    SceneVocabulary, content_accuracy, load_scenes, read_caption, score_caption, split_content_accuracy,
)

VOCABULARY = SceneVocabulary(colors=("blue", "green", "orange", "purple", "red", "yellow"), shapes=("circle", "square", "triangle"))

RED_CIRCLE = {"background": "white", "objects": [{"shape": "circle", "color": "red", "size": "big", "position": "middle"}]}
# A red circle to the left of a blue square.
PAIR = {
    "background": "black",
    "objects": [{"shape": "circle", "color": "red", "size": "small", "position": "left"},
                {"shape": "square", "color": "blue", "size": "big", "position": "right"}],
    "relation": "left of",
}
# A green triangle above a yellow triangle (same shapes: only the colour tells them apart).
STACK = {
    "background": "gray",
    "objects": [{"shape": "triangle", "color": "green", "size": "big", "position": "top"},
                {"shape": "triangle", "color": "yellow", "size": "small", "position": "bottom"}],
    "relation": "above",
}


def verdict(caption, scene):
    result = score_caption(caption, scene, VOCABULARY)
    return result.color, result.shape, result.relation


@pytest.mark.parametrize("caption, expected", [
    ("a red circle on a white background", ([True], [True], None)),
    ("there is a big red circle in the middle of the picture , really", ([True], [True], None)),  # extra words
    ("A RED CIRCLE.", ([True], [True], None)),  # case and punctuation
    ("a blue circle on a white background", ([False], [True], None)),  # wrong colour
    ("a red square", ([True], [False], None)),  # wrong shape
    ("a green triangle", ([False], [False], None)),
    ("a picture of a circle", ([False], [False], None)),  # a shape without a colour names nothing: wrong, not skipped
    ("a red thing on white", ([False], [False], None)),  # a colour without a shape: same
    ("", ([False], [False], None)),
    ("a blue square and a red circle", ([False], [False], None)),  # the first named object is the one scored
])
def test_one_object_captions(caption, expected):
    assert verdict(caption, RED_CIRCLE) == expected


@pytest.mark.parametrize("caption, expected", [
    ("a red circle to the left of a blue square", ([True, True], [True, True], True)),
    ("a red circle left of a big blue square on a black background", ([True, True], [True, True], True)),
    # The pair named in the other order with the inverse relation: right.
    ("a blue square to the right of a red circle", ([True, True], [True, True], True)),
    ("there is a small blue square on the right of a red circle", ([True, True], [True, True], True)),
    # The relation swapped: wrong, in either order.
    ("a red circle to the right of a blue square", ([True, True], [True, True], False)),
    ("a blue square left of a red circle", ([True, True], [True, True], False)),
    # A vertical relation for a horizontal scene: wrong.
    ("a red circle above a blue square", ([True, True], [True, True], False)),
    # Position wordings.
    ("two shapes : a red circle on the left and a blue square on the right", ([True, True], [True, True], True)),
    ("a blue square on the right and a red circle on the left", ([True, True], [True, True], True)),
    ("a blue square on the left and a red circle on the right", ([True, True], [True, True], False)),
    ("a red circle on the left and a blue square", ([True, True], [True, True], True)),  # one position says it
    # Both objects named, no relation stated: objects right, relation wrong.
    ("a red circle and a blue square", ([True, True], [True, True], False)),
    # An object missing: it is wrong on colour and shape, and the relation cannot be right.
    ("a blue square on a black background", ([False, True], [False, True], False)),
    ("a red circle to the left of a square", ([True, False], [True, False], False)),
    ("two shapes on a black background", ([False, False], [False, False], False)),
    # Wrong shapes, colours right: the colour says which object is meant, so the relation is still judged.
    ("a red square to the left of a blue circle", ([True, True], [False, False], True)),
    # A wrong colour on one object: its shape still identifies it.
    ("a red circle to the left of a green square", ([True, False], [True, True], True)),
    # Nothing in the caption matches the scene: the pair points to no object, the relation cannot be right.
    ("a green triangle to the left of a yellow triangle", ([False, False], [False, False], False)),
])
def test_two_object_captions(caption, expected):
    assert verdict(caption, PAIR) == expected


@pytest.mark.parametrize("caption, relation_right", [
    ("a green triangle above a yellow triangle", True),
    ("a yellow triangle below a green triangle", True),
    ("a yellow triangle under a green triangle", True),
    ("a green triangle on top of a yellow triangle", True),
    ("a green triangle at the top and a yellow triangle at the bottom", True),
    ("a green triangle below a yellow triangle", False),
    ("a yellow triangle above a green triangle", False),
    ("a green triangle left of a yellow triangle", False),
    # Same shape, neither colour in the scene: which object each one means is a tie, so the relation is wrong.
    ("a red triangle above a blue triangle", False),
])
def test_vertical_relations(caption, relation_right):
    assert score_caption(caption, STACK, VOCABULARY).relation is relation_right


def test_reading_a_caption_finds_the_named_objects_and_the_stated_relation():
    reading = read_caption("on a gray background a big green triangle is over a small yellow triangle", VOCABULARY)
    assert [(o.color, o.shape) for o in reading.objects] == [("green", "triangle"), ("yellow", "triangle")]
    assert reading.relation == "above"


def test_accuracies_count_every_object_and_every_two_object_image():
    captions = [
        "a red circle on a white background",  # 1/1 colour, 1/1 shape
        "a blue circle",  # colour wrong, shape right
        "a blue square to the right of a red circle",  # 2/2, 2/2, relation right
        "a yellow triangle above a green square",  # colours right, one shape wrong, relation inverted wrongly
        "nothing here",  # 0/2, 0/2, relation wrong
    ]
    scenes = [RED_CIRCLE, RED_CIRCLE, PAIR, STACK, PAIR]
    result = content_accuracy(captions, scenes, VOCABULARY)
    assert result["color"] == {"accuracy": 5 / 8, "correct": 5, "total": 8}
    assert result["shape"] == {"accuracy": 5 / 8, "correct": 5, "total": 8}
    assert result["relation"] == {"accuracy": 1 / 3, "correct": 1, "total": 3}
    assert result["one_object"]["color"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert result["one_object"]["shape"] == {"accuracy": 1.0, "correct": 2, "total": 2}
    assert result["num_images"] == 5
    empty = content_accuracy([], [], VOCABULARY)
    assert empty["relation"] == {"accuracy": None, "correct": 0, "total": 0}


def test_split_scoring_leaves_out_images_without_caption_or_scene_and_counts_them():
    scenes = {"a.jpg": RED_CIRCLE, "b.jpg": PAIR}
    result = split_content_accuracy(["a.jpg", "b.jpg", "c.jpg", "a.jpg"],
                                    ["a red circle", "a red circle left of a blue square", "a red circle", None], scenes)
    assert result["num_images"] == 2 and result["images_without_scene"] == 1
    assert result["color"]["correct"] == result["color"]["total"] == 3 and result["relation"]["accuracy"] == 1.0


def test_a_bad_scenes_file_is_refused_naming_the_file_and_the_image(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps({"x.jpg": RED_CIRCLE, "y.jpg": {"objects": [{"shape": "hexagon"}]}}))
    with pytest.raises(ValueError, match=r"scenes.json: scene of 'y.jpg' has an object without a colour and a shape"):
        load_scenes(path)
    path.write_text(json.dumps({"z.jpg": {**PAIR, "relation": "near"}}))
    with pytest.raises(ValueError, match=r"scene of 'z.jpg' has two objects but no relation"):
        load_scenes(path)
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"scenes.json: not a scenes file"):
        load_scenes(path)


def test_the_words_come_from_the_scenes_file_not_from_the_demos_generator(tmp_path):
    """Any scenes file of this form is scored: its own colour and shape words are what captions can name."""
    path = tmp_path / "scenes.json"
    scenes = {
        "a.png": {"objects": [{"shape": "hexagon", "color": "teal"}]},
        "b.png": {"objects": [{"shape": "star", "color": "magenta", "position": "top"},
                              {"shape": "hexagon", "color": "teal", "position": "bottom"}], "relation": "above"},
    }
    path.write_text(json.dumps(scenes))
    loaded = load_scenes(path)
    assert SceneVocabulary.from_scenes(loaded) == SceneVocabulary(colors=("magenta", "teal"), shapes=("hexagon", "star"))
    result = split_content_accuracy(["a.png", "b.png"], ["a magenta hexagon", "a teal hexagon under a magenta star"], loaded)
    assert result["one_object"]["color"]["correct"] == 0 and result["one_object"]["shape"]["correct"] == 1
    assert result["relation"] == {"accuracy": 1.0, "correct": 1, "total": 1}
