# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""A list of captions that reached us as text: a CSV cell (or any string cell) holding `["a dog", "a cat"]`.

CSV has no list type, so tools write a list column as text: `json.dumps` gives `["a dog", "a cat"]`, pandas'
`df.to_csv` gives Python's repr `['a dog', "a man's cat"]`, and a list column that pandas read from parquet is a
numpy array per cell, written `['a dog' 'a cat']` (no commas, long rows wrapped over lines). All three are read
here, without ever running code: JSON by `json`, the others token by token with Python's own tokenizer, each token
a plain string literal read by `ast.literal_eval`.

A cell "looks like a list of captions" when it starts with `[` followed by a quote (or is `[]`): a real caption
can start with a bracket ("[a dog] on the beach"), but not with a bracket and a quote. Such a cell that cannot be read
as a list of strings is an error, never a caption: training on `['a dog', 'a ca` is never what a user wants.
"""

import ast
import io
import json
import re
import tokenize

# `[` then (after spaces) a quote, possibly with Python's string prefixes (u'', r'', b'', f''); or an empty list.
_LOOKS_LIKE_A_LIST = re.compile(r"""\s*\[\s*(?:[a-zA-Z]{0,2}["']|\]\s*$)""")
_IGNORED_TOKENS = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


class CaptionListError(ValueError):
    """A cell that looks like a list of captions written as text but cannot be read as one."""


def looks_like_a_caption_list(text: str) -> bool:
    return _LOOKS_LIKE_A_LIST.match(text) is not None


def parse_caption_list(text: str) -> list[str] | None:
    """The captions of a cell holding a list of strings written as text (JSON, Python's repr or numpy's), None
    when the cell does not look like a list (a plain caption). Raises `CaptionListError` saying what is wrong
    when it looks like a list but is not a readable list of strings."""
    if not looks_like_a_caption_list(text):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = _python_string_list(text)
    if not isinstance(value, list):
        raise CaptionListError(f"JSON {type(value).__name__}, not a list")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise CaptionListError(f"item {index} is {item!r}, not a string")
    return value


def _python_string_list(text: str) -> list[str]:
    """`[` string literals separated by commas (Python's repr) or by whitespace alone (numpy's) `]`."""
    try:
        tokens = [token for token in tokenize.generate_tokens(io.StringIO(text.strip()).readline)
                  if token.type not in _IGNORED_TOKENS]
    except (tokenize.TokenError, SyntaxError) as error:  # e.g. an unterminated string or bracket
        raise CaptionListError(f"not closed or not valid list syntax ({error.args[0]})") from None
    if not tokens or tokens[0].string != "[":
        raise CaptionListError("not a list")
    closing = next((k for k, token in enumerate(tokens) if token.string == "]"), None)
    if closing is None:
        raise CaptionListError("the list is not closed with ']'")
    if closing != len(tokens) - 1:
        raise CaptionListError(f"text after the list: {text[tokens[closing].end[1]:].strip()[:40]!r}")
    inner = tokens[1:closing]
    strings, separators = inner[0::2], inner[1::2]
    has_commas = any(token.string == "," for token in inner)
    if has_commas:
        # Python's repr: string, string, ... with an optional trailing comma. Two strings side by side would be
        # glued into one by Python: refused rather than guessed.
        if inner and inner[-1].string == ",":
            strings, separators = inner[:-1][0::2], inner[:-1][1::2]
        if any(token.string != "," for token in separators):
            raise CaptionListError("items separated by commas in some places and not in others")
    else:
        strings = inner  # numpy's repr: whitespace-separated strings
    return [_string_literal(token) for token in strings]


def _string_literal(token) -> str:
    if token.type != tokenize.STRING:
        raise CaptionListError(f"{token.string!r} is not a string literal")
    try:
        value = ast.literal_eval(token.string)  # one literal token: no code can run
    except (ValueError, SyntaxError):  # an f-string (code) or a broken escape
        raise CaptionListError(f"{token.string[:40]!r} is not a plain string literal") from None
    if not isinstance(value, str):
        raise CaptionListError(f"{token.string[:40]!r} is {type(value).__name__}, not a string")
    return value
