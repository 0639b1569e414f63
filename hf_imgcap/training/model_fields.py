# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Command-line fields whose default and help are the model's own.

The model's sizes are stated once, in `ShowAttendTellConfig` (and the caption length in `ShowAttendTellProcessor`):
their class defaults and the `Args:` sections of their docstrings. The training arguments are built from them, so a
changed default or description reaches `train.py --help` without a second number to keep in step.
"""

import inspect
import re
from dataclasses import field

from hf_imgcap.models.show_attend_tell.configuration_show_attend_tell import ShowAttendTellConfig
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import ShowAttendTellProcessor


def documented_help(owner, name: str) -> str:
    """The text after `name (...):` / `name:` in the `Args:` section of `owner`'s docstring (continuation lines
    joined), first letter capitalised."""
    lines = inspect.getdoc(owner).splitlines()
    entry = re.compile(rf"^(\s*){re.escape(name)}(?: \([^)]*\))?:\s*(.*)$")
    for index, line in enumerate(lines):
        if match := entry.match(line):
            indent, parts = len(match[1]), [match[2]]
            for following in lines[index + 1:]:
                if not following.strip() or len(following) - len(following.lstrip()) <= indent:
                    break
                parts.append(following.strip())
            text = " ".join(parts)
            return text[:1].upper() + text[1:]
    raise KeyError(f"{owner.__name__} documents no argument {name!r}")


def _default(owner, name: str):
    if owner is ShowAttendTellConfig:
        return getattr(ShowAttendTellConfig, name)
    return inspect.signature(owner.__init__).parameters[name].default


def model_field(name: str, owner=ShowAttendTellConfig):
    """A dataclass field for `--name` with `owner`'s default and documented help."""
    return field(default=_default(owner, name), metadata={"help": documented_help(owner, name)})


def processor_field(name: str):
    return model_field(name, owner=ShowAttendTellProcessor)
