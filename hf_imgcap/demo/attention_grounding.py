# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Does the decoder look at what it names? For the two-object scenes of the synthetic dataset, the attention with
which each colour word of a caption was written, split between the named object's half of the region grid and the
other object's half (`scenes.json` says where each object is: left / right or top / bottom).

A captioner that finds each object where it is puts more weight on the named object's half than on the other's; one
that reads only the image's mean (uniform attention) puts the same on both. That decides whether it can say which
object is where: the relation accuracy of `content_accuracy` needs it, the colour and shape accuracy do not.
"""

import logging

import torch

from hf_imgcap.demo.content_accuracy import scene_of

logger = logging.getLogger(__name__)
PLACEMENTS = ({"left", "right"}, {"top", "bottom"})  # the two objects' positions: side by side or one above the other


def is_placed(scene: dict) -> bool:
    """A two-object scene whose objects are on opposite sides ("left" / "right" or "top" / "bottom")."""
    return len(scene["objects"]) == 2 and {o.get("position") for o in scene["objects"]} in PLACEMENTS


def object_half(position: str, side: int) -> torch.Tensor:
    """The cells of a `side`×`side` region grid (row-major, as the encoder flattens its map) on the `position` side
    ("left", "right", "top", "bottom") of the image, as a boolean mask of length side²; the middle column or row of
    an odd grid belongs to neither half."""
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    coordinate = columns if position in ("left", "right") else rows
    if position in ("left", "top"):
        return (coordinate < side // 2).flatten()
    if position in ("right", "bottom"):
        return (coordinate >= (side + 1) // 2).flatten()
    raise ValueError(f"an object of a two-object scene is left, right, top or bottom, not {position!r}")


def colour_word_attention(word_pieces: list[str], attentions: torch.Tensor, scene: dict, side: int) -> list[tuple[float, float]]:
    """(weight on the named object's half, weight on the other object's half) for each word piece of a caption that
    is the colour of one of the scene's two objects. `word_pieces` starts with the start token; `attentions`
    `(len(word_pieces), side²)` is the model's attention at each position: position t writes piece t + 1."""
    objects = {scene_object["color"]: scene_object for scene_object in scene["objects"]}
    found = []
    for index in range(1, len(word_pieces)):
        named = objects.get(word_pieces[index])
        if named is None:
            continue
        other = next(scene_object for scene_object in scene["objects"] if scene_object is not named)
        weights = attentions[index - 1]
        found.append((float(weights[object_half(named["position"], side)].sum()),
                      float(weights[object_half(other["position"], side)].sum())))
    return found


@torch.no_grad()
def attention_grounding(model, tokenizer, features, image_ids, captions, scenes: dict, batch_size: int = 32) -> dict | None:
    """The mean attention on the named object's half and on the other's, over every colour word naming an object of
    the two-object images' captions ({"on_named_object", "on_other_object", "colour_words", "half_share"}; the half's
    share of the regions is what uniform attention would give). `features[i]` are image i's cached features
    (e.g. a `FeatureCache`); captions that are None (images without features) are left out. None when no caption
    names a colour of a two-object scene. Scenes whose objects are not placed left / right or top / bottom (a
    hand-written scenes.json) are left out and counted in a warning."""
    rows = [(index, caption, scene_of(image_id, scenes)) for index, (image_id, caption) in enumerate(zip(image_ids, captions))
            if caption is not None]
    rows = [(index, caption, scene) for index, caption, scene in rows if scene is not None and len(scene["objects"]) == 2]
    unplaced = sum(not is_placed(scene) for _, _, scene in rows)
    if unplaced:  # a hand-written scenes.json may not say where its objects are
        logger.warning("attention grounding: %d two-object scene(s) without positions left/right or top/bottom are left out", unplaced)
        rows = [row for row in rows if is_placed(row[2])]
    side = int(round(model.config.num_regions ** 0.5))
    was_training = model.training
    model.eval()
    pairs = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        encoded = tokenizer([caption for _, caption, _ in chunk], padding=True, return_tensors="pt")
        image_features = torch.stack([torch.as_tensor(features[index]) for index, _, _ in chunk])
        outputs = model(encoder_hidden_states=image_features.to(model.device), input_ids=encoded["input_ids"].to(model.device),
                        attention_mask=encoded["attention_mask"].to(model.device), output_attentions=True)
        for row, (_, _, scene) in enumerate(chunk):
            length = int(encoded["attention_mask"][row].sum())
            pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"][row, :length].tolist())
            pairs += colour_word_attention(pieces, outputs.attentions[row, :length].float().cpu(), scene, side)
    model.train(was_training)
    if not pairs:
        return None
    return {"on_named_object": sum(p[0] for p in pairs) / len(pairs), "on_other_object": sum(p[1] for p in pairs) / len(pairs),
            "colour_words": len(pairs), "half_share": float(object_half("left", side).sum()) / side**2}


__all__ = ["attention_grounding", "colour_word_attention", "is_placed", "object_half"]
