# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What every caption source's loader shares: the split names, the `LoadReport` of skipped data, caption cleaning,
and the two checks an image path passes (it decodes; it lies inside the dataset folder)."""

import html
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hf_imgcap.models.show_attend_tell.image_loading import ImageLoadError, verify_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
MAX_LOGGED_PER_KIND = 20  # then one summary line per kind, so a broken file does not flood the log


@dataclass
class LoadReport:
    """What was skipped while loading, with the reason for each skip.

    Accounting: in a caption file every non-blank line (token file, CSV) or every caption of an image entry
    (Karpathy JSON; an entry without any captions counts once) is either kept as a caption or counted exactly once
    here, under one kind. So the same broken data gives the same counts in every layout: an image missing from the
    folder counts as 5 `missing_image` whether its 5 captions are 5 lines or one JSON entry. Later steps count
    images: `split_missing_image`, `split_image_without_captions` (split files) and `undecodable_image`.
    """

    source: str
    layout: str
    split_source: str = ""  # where the train / validation / test membership came from
    image_ids_from_source: bool = False  # the source named its images (an image_id column), not the loader
    seeded_splits: tuple = ()  # the splits drawn by a seeded random split (the source has no such split): they depend on the seed
    counts: Counter = field(default_factory=Counter)
    messages: list = field(default_factory=list)  # the logged ones: the first MAX_LOGGED_PER_KIND of each kind
    _logged: Counter = field(default_factory=Counter, init=False, repr=False, compare=False)

    def skip(self, kind: str, message: str, count: int = 1):
        """Count `count` skipped captions (or images) of `kind`, logging the first few messages of each kind."""
        self.counts[kind] += count
        self._logged[kind] += 1
        if self._logged[kind] <= MAX_LOGGED_PER_KIND:
            self.messages.append(message)  # bounded, like the log: a broken million-line file costs no memory
            logger.warning("%s", message)
        elif self._logged[kind] == MAX_LOGGED_PER_KIND + 1:
            logger.warning("more '%s' problems: only the total is reported from here on", kind)

    def count_unused_images(self, kind: str, names: list, where) -> None:
        """Count image files `where` holds that are not used (no caption names them), and say so in one log line."""
        if names:
            self.counts[kind] += len(names)
            logger.info("%s: %d image files are not used, no caption names them (%s%s)", where, len(names),
                        ", ".join(map(str, names[:3])), ", ..." if len(names) > 3 else "")

    def summary(self) -> str:
        if not self.counts:
            return f"{self.source} ({self.layout}): no problems found"
        kinds = ", ".join(f"{count} × {kind}" for kind, count in sorted(self.counts.items()))
        return f"{self.source} ({self.layout}): skipped {kinds}"


# Characters that are never part of a caption: C0/C1 controls (tabs and newlines are whitespace anyway) and the
# byte-order mark / zero-width no-break space that concatenated files leave behind.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\ufeff]")
_MAX_UNESCAPE_ROUNDS = 10  # "&amp;amp;" is two rounds; real data never needs more


def normalize_caption(text: str) -> str:
    """Clean a caption as written by annotators: HTML entities decoded (`&amp;` -> `&`, also when escaped twice),
    Unicode NFC, control characters read as spaces, runs of whitespace (tabs, newlines, non-breaking spaces)
    collapsed to one space, ends stripped. Idempotent. A caption without a single letter or digit (empty, whitespace,
    punctuation such as "...", combining marks or zero-width characters alone, emoji alone) comes back as "" (callers
    reject it): it has no word to learn and no word to score against (the COCO tokenizer drops punctuation)."""
    for _ in range(_MAX_UNESCAPE_ROUNDS):
        # Until nothing changes, so that normalize(normalize(x)) == normalize(x): decoding "&amp;lt;" gives an
        # entity again, and NFC can complete one ("&lt" + U+037E GREEK QUESTION MARK -> "&lt;").
        cleaned = unicodedata.normalize("NFC", html.unescape(text))
        if cleaned == text:
            break
        text = cleaned
    text = " ".join(_CONTROL_CHARACTERS.sub(" ", text).split())
    # Format characters, marks and punctuation stay next to words (emoji ZWJ sequences, accents, "t-shirt").
    if not any(char.isalnum() for char in text):
        return ""
    return text


# ---------------------------------------------------------------------------------------------- images
def image_problem(image) -> str | None:
    """None if the image (a path or encoded bytes) passes the checks `load_image` makes and decodes, else the reason."""
    try:
        verify_image(image)
        return None
    except ImageLoadError as error:
        return error.reason


def path_outside(path: Path, roots: list[Path]) -> str | None:
    """Why `path` is refused as lying outside every folder of `roots` (after `..` and symlinks are resolved, as
    opening it would), or None when it is inside one. Relative paths are taken as `open()` takes them."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as error:  # e.g. a symlink loop
        return f"path {path} cannot be resolved ({error}); refused"
    if any(real.is_relative_to(root.resolve()) for root in roots):
        return None
    link = f" (a link to {real})" if real != path.absolute() else ""
    where = " or ".join(str(root) for root in roots)
    return f"path {path}{link} is outside the dataset folder {where}; refused"
