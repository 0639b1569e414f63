"""Where the decoder looked when it named an object's colour: the halves of the region grid, one colour word's
split of its attention, and the mean over a split's captions (batched captions of different lengths)."""

import pytest
import torch

from conftest import tiny_model, tiny_processor
from hf_imgcap.demo.attention_grounding import attention_grounding, colour_word_attention, object_half

RED_LEFT_OF_BLUE = {"objects": [{"shape": "circle", "color": "red", "size": "big", "position": "left"},
                                {"shape": "square", "color": "blue", "size": "small", "position": "right"}],
                    "relation": "left of"}


def cells(mask):
    return torch.nonzero(mask).flatten().tolist()


def test_object_halves_of_even_and_odd_grids():
    # Row-major cells: on a 4×4 grid the left half is columns 0-1, the top half rows 0-1.
    assert cells(object_half("left", 4)) == [0, 1, 4, 5, 8, 9, 12, 13]
    assert cells(object_half("right", 4)) == [2, 3, 6, 7, 10, 11, 14, 15]
    assert cells(object_half("top", 4)) == list(range(8))
    assert cells(object_half("bottom", 4)) == list(range(8, 16))
    # On a 3×3 grid the middle column / row belongs to neither side.
    assert cells(object_half("left", 3)) == [0, 3, 6] and cells(object_half("right", 3)) == [2, 5, 8]
    assert cells(object_half("bottom", 3)) == [6, 7, 8]
    with pytest.raises(ValueError, match="'middle'"):
        object_half("middle", 3)


def test_each_colour_word_splits_the_attention_it_was_written_with_between_the_two_objects():
    pieces = ["[CLS]", "a", "red", "circle", "left", "of", "a", "blue", "square", "green", "[SEP]"]
    attentions = torch.full((len(pieces), 4), 0.25)  # 2×2 grid: cells 0 and 2 are the left half
    attentions[1] = torch.tensor([0.4, 0.1, 0.4, 0.1])  # position 1 writes piece 2, "red"
    attentions[6] = torch.tensor([0.0, 0.3, 0.1, 0.6])  # position 6 writes "blue"
    attentions[2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # writes "circle": not a colour word, not counted
    # "green" names no object of this scene: not counted either.
    found = colour_word_attention(pieces, attentions, RED_LEFT_OF_BLUE, side=2)
    assert len(found) == 2 and [share for pair in found for share in pair] == pytest.approx([0.8, 0.2, 0.9, 0.1])


def test_the_split_mean_equals_each_caption_scored_alone(caplog):
    model, tokenizer = tiny_model(), tiny_processor().tokenizer
    side = int(model.config.num_regions ** 0.5)
    features = torch.randn(4, model.config.num_regions, model.config.encoder_hidden_size)
    above = {"objects": [{**RED_LEFT_OF_BLUE["objects"][0], "position": "top"},
                         {**RED_LEFT_OF_BLUE["objects"][1], "position": "bottom"}], "relation": "above"}
    scenes = {"a.jpg": RED_LEFT_OF_BLUE, "b.jpg": above, "c.jpg": {"objects": [RED_LEFT_OF_BLUE["objects"][0]]},
              "d.jpg": RED_LEFT_OF_BLUE}
    captions = ["a red circle to the left of a small blue square on a white background", "a blue square below a red circle",
                "a red circle", None]  # one object: not counted; no caption (no features): left out
    result = attention_grounding(model, tokenizer, features, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], captions, scenes,
                                 batch_size=2)  # the two two-object captions share a padded batch

    expected = []
    for index in (0, 1):
        ids = tokenizer(captions[index], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            attentions = model(encoder_hidden_states=features[index : index + 1], input_ids=ids, output_attentions=True).attentions[0]
        expected += colour_word_attention(tokenizer.convert_ids_to_tokens(ids[0].tolist()), attentions, scenes["ab"[index] + ".jpg"], side)
    assert len(expected) == 4 and result["colour_words"] == 4
    assert result["on_named_object"] == pytest.approx(sum(e[0] for e in expected) / 4, abs=1e-6)
    assert result["on_other_object"] == pytest.approx(sum(e[1] for e in expected) / 4, abs=1e-6)
    assert result["half_share"] == 0.5
    # A hand-written scene that does not say where its objects are is left out (counted in a warning), not a crash.
    unplaced = {"objects": [{k: v for k, v in o.items() if k != "position"} for o in RED_LEFT_OF_BLUE["objects"]], "relation": "left of"}
    with caplog.at_level("WARNING"):
        alone = attention_grounding(model, tokenizer, features, ["a.jpg", "e.jpg"], [captions[0], captions[0]],
                                    {**scenes, "e.jpg": unplaced})
    assert alone["colour_words"] == 2 and "1 two-object scene(s) without positions" in caplog.text
    # No caption naming a colour of a two-object scene: nothing to report.
    assert attention_grounding(model, tokenizer, features, ["a.jpg", "c.jpg"], ["a circle", "a red circle"], scenes) is None
