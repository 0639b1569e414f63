# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Content accuracy: does a caption say what the image shows? Scored against a scenes file (`scenes.json`: image
file name -> its background, objects (colour, shape, size, position) and, for two objects, their relation; the demo's
generator writes one, see `hf_imgcap.demo.scenes`), beside BLEU, which only measures n-gram overlap.

The colour and shape words are those the scenes file uses (`SceneVocabulary`), so any scenes file of this form can be
scored; the English of relations ("to the left of", "at the top", ...) is this reader's own.

How a caption is read (lower-cased words; everything else is ignored):
- A *named object* is a colour word followed by a shape word, optionally with a size word between or before
  ("red circle", "big red circle", "red big circle"). A shape without a colour, or a colour without a shape,
  names nothing.
- A *relation* between the first two named objects A and B is a relation phrase between them ("A to the left of
  B", "A left of B", "A above B", "A under B", ...; `RELATION_PHRASES`), else position phrases after them ("A on the
  left and B on the right", "A at the top and B ..."; `POSITION_PHRASES`), from which A's relation to B follows.

How it is scored (every object and every two-object image counts; nothing is skipped):
- One object: the caption's first named object is compared with it: colour right or wrong, shape right or wrong.
  A caption that names no object gets both wrong.
- Two objects: the caption's first two named objects are matched to the scene's two objects by the assignment
  (same order or swapped) that agrees most, colour counting double (the two objects always differ in colour, so
  the colour says which object is meant). Each scene object is then right or wrong on colour and on shape; an
  object left without a named object (the caption names one or none) is wrong on both.
- Relation (two-object images only): right when the caption names two objects and a relation between them, the
  matching is not a tie (each named object clearly points to a different scene object: it agrees with its scene
  object on colour or shape, and the other assignment agrees less), and the stated relation is the scene's —
  inverted when the caption names the objects in the other order ("a blue square to the right of a red circle"
  is right for "red circle left of blue square"). Anything else is wrong.
"""

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SCENES_FILE = "scenes.json"
# Where objects[0] is relative to objects[1] in a two-object scene, and the same seen from objects[1].
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Where an object is drawn -> how it relates to the other object (which is on the opposite side).
POSITION_RELATION = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}


@dataclass(frozen=True)
class SceneVocabulary:
    """The colour and shape words of a scenes file: what a caption can name."""

    colors: tuple
    shapes: tuple

    @classmethod
    def from_scenes(cls, scenes) -> "SceneVocabulary":
        """From the scenes (a list, or a dict of image name -> scene): every colour and shape their objects have."""
        scenes = list(scenes.values()) if isinstance(scenes, dict) else list(scenes)
        objects = [scene_object for scene in scenes for scene_object in scene["objects"]]
        return cls(colors=tuple(sorted({o["color"] for o in objects})), shapes=tuple(sorted({o["shape"] for o in objects})))

SIZE_WORDS = ("big", "small", "large", "little")
# Phrase -> relation of the object named before it to the object named after it. Longest first: "to the left of"
# must win over "left of".
RELATION_PHRASES = sorted(
    {
        "to the left of": "left of", "on the left of": "left of", "left of": "left of",
        "to the right of": "right of", "on the right of": "right of", "right of": "right of",
        "on top of": "above", "above": "above", "over": "above",
        "underneath": "below", "beneath": "below", "below": "below", "under": "below",
    }.items(),
    key=lambda item: -len(item[0].split()),
)
# Phrase after an object -> where it is.
POSITION_PHRASES = sorted(
    {
        "on the left": "left", "at the left": "left", "on the right": "right", "at the right": "right",
        "at the top": "top", "on the top": "top", "on top": "top",
        "at the bottom": "bottom", "on the bottom": "bottom",
    }.items(),
    key=lambda item: -len(item[0].split()),
)
_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


@dataclass
class NamedObject:
    color: str
    shape: str
    start: int  # word index of the first word (colour or size)
    end: int  # word index after the shape


@dataclass
class CaptionReading:
    """What a caption says: the objects it names (in order) and the relation of the first to the second."""

    objects: list
    relation: str | None


@dataclass
class CaptionVerdict:
    """Per scene object: colour right? shape right? And for two objects: relation right? (None for one object)."""

    color: list = field(default_factory=list)
    shape: list = field(default_factory=list)
    relation: bool | None = None

    def summary(self) -> str:
        """'colour right, shape wrong, relation right' (one word per object when there are two)."""
        def words(marks):
            return " / ".join("right" if mark else "wrong" for mark in marks)

        parts = [f"colour {words(self.color)}", f"shape {words(self.shape)}"]
        if self.relation is not None:
            parts.append(f"relation {words([self.relation])}")
        return ", ".join(parts)


def caption_words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())


def _find_phrase(words: list[str], phrases) -> tuple[str, int] | None:
    """The first (leftmost, then longest) phrase of `phrases` in `words`: (its meaning, its word index)."""
    for index in range(len(words)):
        for phrase, meaning in phrases:
            tokens = phrase.split()
            if words[index : index + len(tokens)] == tokens:
                return meaning, index
    return None


def _position_after(words: list[str], start: int, stop: int) -> str | None:
    """A position phrase starting right after an object (an article or 'is' may come first)."""
    index = start
    while index < stop and words[index] in ("is", "which", "that"):
        index += 1
    found = _find_phrase(words[index:stop], POSITION_PHRASES)
    return found[0] if found is not None and found[1] == 0 else None


def read_caption(caption: str, vocabulary: SceneVocabulary) -> CaptionReading:
    """The objects a caption names and the relation it states between the first two (see the module docstring)."""
    words = caption_words(caption)
    objects = []
    for index, word in enumerate(words):
        if word not in vocabulary.shapes:
            continue
        previous = words[index - 1] if index >= 1 else None
        before_previous = words[index - 2] if index >= 2 else None
        if previous in vocabulary.colors:  # "red circle", "big red circle"
            start = index - 2 if before_previous in SIZE_WORDS else index - 1
            objects.append(NamedObject(previous, word, start, index + 1))
        elif previous in SIZE_WORDS and before_previous in vocabulary.colors:  # "red big circle"
            objects.append(NamedObject(before_previous, word, index - 2, index + 1))
    relation = None
    if len(objects) >= 2:
        first, second = objects[0], objects[1]
        between = words[first.end : second.start]
        found = _find_phrase(between, RELATION_PHRASES)
        if found is not None:
            relation = found[0]
        else:
            after_second_stop = objects[2].start if len(objects) > 2 else len(words)
            first_position = _position_after(words, first.end, second.start)
            second_position = _position_after(words, second.end, after_second_stop)
            if first_position and second_position:
                if _OPPOSITE[first_position] == second_position:
                    relation = POSITION_RELATION[first_position]
            elif first_position:
                relation = POSITION_RELATION[first_position]
            elif second_position:
                relation = INVERSE_RELATION[POSITION_RELATION[second_position]]
    return CaptionReading(objects, relation)


def _agreement(named: NamedObject, scene_object: dict) -> int:
    # Colour counts double: the two objects of a scene always differ in colour, so it identifies the object.
    return 2 * (named.color == scene_object["color"]) + (named.shape == scene_object["shape"])


def score_caption(caption: str, scene: dict, vocabulary: SceneVocabulary) -> CaptionVerdict:
    """Score one caption against one scene (a `scenes.json` entry). See the module docstring for the rules.
    `vocabulary`: the whole scenes file's words (a caption may name a colour that this scene does not have)."""
    reading = read_caption(caption, vocabulary)
    scene_objects = scene["objects"]
    named = reading.objects[: len(scene_objects)]
    if len(scene_objects) == 1:
        assigned = [named[0] if named else None]
        return _verdict(scene_objects, assigned)
    if len(scene_objects) != 2:
        raise ValueError(f"a scene has 1 or 2 objects, this one has {len(scene_objects)}: {scene}")
    a, b = scene_objects
    if len(named) == 0:
        return _verdict(scene_objects, [None, None], relation=False)
    if len(named) == 1:
        only = named[0]
        assigned = [only, None] if _agreement(only, a) >= _agreement(only, b) else [None, only]
        return _verdict(scene_objects, assigned, relation=False)
    first, second = named
    same_order = _agreement(first, a) + _agreement(second, b)
    swapped = _agreement(first, b) + _agreement(second, a)
    assigned = [first, second] if same_order >= swapped else [second, first]
    identified = same_order != swapped and all(_agreement(n, o) > 0 for n, o in zip(assigned, scene_objects))
    relation_right = False
    if identified and reading.relation is not None:
        # The caption says: first REL second. In the scene's order (objects[0] REL objects[1]) that is REL when the
        # caption named them in the scene's order, else the inverse.
        stated = reading.relation if same_order > swapped else INVERSE_RELATION[reading.relation]
        relation_right = stated == scene["relation"]
    return _verdict(scene_objects, assigned, relation=relation_right)


def _verdict(scene_objects, assigned, relation=None) -> CaptionVerdict:
    return CaptionVerdict(
        color=[n is not None and n.color == o["color"] for n, o in zip(assigned, scene_objects)],
        shape=[n is not None and n.shape == o["shape"] for n, o in zip(assigned, scene_objects)],
        relation=relation,
    )


def _fraction(correct: int, total: int) -> dict:
    return {"accuracy": correct / total if total else None, "correct": correct, "total": total}


def content_accuracy(captions: list[str], scenes: list[dict], vocabulary: SceneVocabulary) -> dict:
    """Colour and shape accuracy over every object of every scene, relation accuracy over the two-object scenes,
    each as {"accuracy", "correct", "total"} (accuracy None when total is 0); `one_object` has the colour and shape
    of the one-object scenes alone (what the linear probe of the features predicts)."""
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} captions for {len(scenes)} scenes")
    counts = {name: [0, 0] for name in ("color", "shape", "relation", "one_color", "one_shape")}

    def add(name, marks):
        counts[name][0] += sum(marks)
        counts[name][1] += len(marks)

    for caption, scene in zip(captions, scenes):
        verdict = score_caption(caption, scene, vocabulary)
        add("color", verdict.color)
        add("shape", verdict.shape)
        if verdict.relation is not None:
            add("relation", [verdict.relation])
        if len(scene["objects"]) == 1:
            add("one_color", verdict.color)
            add("one_shape", verdict.shape)
    return {
        "color": _fraction(*counts["color"]),
        "shape": _fraction(*counts["shape"]),
        "relation": _fraction(*counts["relation"]),
        "one_object": {"color": _fraction(*counts["one_color"]), "shape": _fraction(*counts["one_shape"])},
        "num_images": len(captions),
    }


# ---------------------------------------------------------------------------------------------- scenes.json
def find_scenes_file(dataset) -> Path | None:
    """The `scenes.json` of a local dataset folder (in it or one folder down, like the caption files), else None."""
    root = Path(str(dataset)).expanduser()
    if not root.is_dir():
        return None
    for candidate in [root / SCENES_FILE, *sorted(root.glob(f"*/{SCENES_FILE}"))]:
        if candidate.is_file():
            return candidate
    return None


def load_scenes(path) -> dict[str, dict]:
    """Read `scenes.json` (image file name -> scene); a `ValueError` names the file and the first bad entry."""
    path = Path(path)
    try:
        scenes = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a scenes file ({type(error).__name__}: {error})") from None
    if not isinstance(scenes, dict):
        raise ValueError(f"{path}: expected an object of image name -> scene, got a {type(scenes).__name__}")
    for name, scene in scenes.items():
        problem = _scene_problem(scene)
        if problem:
            raise ValueError(f"{path}: scene of {name!r} {problem}")
    return scenes


def _scene_problem(scene) -> str | None:
    if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list) or len(scene["objects"]) not in (1, 2):
        return "needs 'objects', a list of one or two objects"
    for scene_object in scene["objects"]:
        if not isinstance(scene_object, dict) or not all(_is_word(scene_object.get(key)) for key in ("color", "shape")):
            return f"has an object without a colour and a shape (one lower-case word each): {scene_object}"
    if len(scene["objects"]) == 2 and scene.get("relation") not in INVERSE_RELATION:
        return f"has two objects but no relation among {tuple(INVERSE_RELATION)}: {scene.get('relation')!r}"
    return None


def _is_word(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[a-z]+", value) is not None


def scene_of(image_id, scenes: dict[str, dict]) -> dict | None:
    """The scene of an image (its `image_id` is its file name, or a path ending in it), None if it has none."""
    return scenes.get(Path(str(image_id)).name)


def split_content_accuracy(image_ids, captions, scenes: dict[str, dict]) -> dict:
    """`content_accuracy` of a split's generated captions. Images without a caption (None: no features, left out of
    every metric) are left out here too; images `scenes` does not describe (e.g. added to a synthetic dataset by
    hand) are left out, counted in `images_without_scene` and logged."""
    kept, without_scene = [], []
    for image_id, caption in zip(image_ids, captions):
        if caption is None:
            continue
        scene = scene_of(image_id, scenes)
        if scene is None:
            without_scene.append(image_id)
        else:
            kept.append((caption, scene))
    if without_scene:
        logger.warning("content accuracy: %d image(s) have no scene and are left out, e.g. %s", len(without_scene), without_scene[0])
    result = content_accuracy([c for c, _ in kept], [s for _, s in kept], SceneVocabulary.from_scenes(scenes))
    result["images_without_scene"] = len(without_scene)
    return result
