# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The tokenisation that caption scores are computed on: pycocoevalcap's, so that the scores are COCO-comparable.

pycocoevalcap (the COCO caption evaluation code behind the numbers in captioning papers) runs the Stanford PTB
tokenizer (Java, ``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase``, the jar it ships) over every
caption, then drops the tokens of its ``PUNCTUATIONS`` list. PTB splits clitics ("isn't" -> "is n't", "man's" ->
"man 's"), keeps hyphenated words and numbers whole ("t-shirt", "3.5", "10,000"), turns quotes into `` and ''
and brackets into -lrb- / -rrb- (which survive: the list spells them in capitals, the output is lowercased).

Two tokenizers are available:

- ``"ptb"`` (:func:`ptb_tokenize`): the same jar, class, arguments and UTF-8 bytes as pycocoevalcap, the
  references and the predictions each as one input (one Java process each), as pycocoevalcap runs them. Equal to
  pycocoevalcap token for token. It differs only where pycocoevalcap's wrapper breaks: characters that Java
  reads as line breaks inside a caption (``\\r``, ``\\x0b``, ``\\x0c``, ``\\u2028``, ``\\u2029``; pycocoevalcap
  replaces only ``\\n``) become spaces here instead of shifting every following caption onto the wrong image,
  and the temporary file goes to a temporary folder rather than into pycocoevalcap's installed package (which
  may be read-only).
- ``"python"`` (:func:`approximate_ptb_tokenize`): a pure-Python imitation of the same rules for machines without
  Java. It agrees with the Java tokenizer on most everyday captions but not on all text, so scores computed with
  it are NOT comparable with published ones; every use is logged as a warning.

:func:`tokenize_captions` picks the exact tokenizer when Java is available and falls back to the approximation
(with a warning) when it is not.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pycocoevalcap.tokenizer import ptbtokenizer as _pycocoevalcap_ptb

logger = logging.getLogger(__name__)

PTB_TOKENIZER = "ptb"
PYTHON_TOKENIZER = "python"
TOKENIZERS = (PTB_TOKENIZER, PYTHON_TOKENIZER)
# What a result says about its tokenizer: only "ptb" gives the numbers captioning papers report.
TOKENIZER_LABELS = {
    PTB_TOKENIZER: "ptb",
    PYTHON_TOKENIZER: "python (approximate PTB: not comparable with published scores)",
}

PUNCTUATIONS = frozenset(_pycocoevalcap_ptb.PUNCTUATIONS)  # pycocoevalcap's own list, the tokens it drops
PTB_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
PTB_ARGUMENTS = ("-preserveLines", "-lowerCase")  # pycocoevalcap's; the jar reads and writes UTF-8 by default
PTB_TIMEOUT_SECONDS = 600.0

# Java's PTB lexer ends a line at each of these: inside a caption they would split it over two lines.
_JAVA_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\x0b\x0c\u2028\u2029", " "))


class PTBTokenizerError(RuntimeError):
    """The Java PTB tokenizer could not run (no Java, no jar, a crash or a time-out)."""


def stanford_jar() -> Path:
    """The Stanford CoreNLP jar that pycocoevalcap ships and runs (``STANFORD_CORENLP_3_4_1_JAR`` in its folder)."""
    return Path(_pycocoevalcap_ptb.__file__).resolve().parent / _pycocoevalcap_ptb.STANFORD_CORENLP_3_4_1_JAR


def drop_punctuation(line: str) -> str:
    """pycocoevalcap's filter of one tokenized line, character for character: its tokens minus PUNCTUATIONS."""
    return " ".join([w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS])


# --- the exact tokenizer (Java) -------------------------------------------------------------------------------


def ptb_tokenize(texts: Sequence[str], timeout: float = PTB_TIMEOUT_SECONDS,
                 input_sizes: Sequence[int] | None = None) -> list[str]:
    """Tokenise `texts` exactly as pycocoevalcap's ``PTBTokenizer`` does.

    Returns one string per text: its lowercased PTB tokens minus pycocoevalcap's PUNCTUATIONS, joined by single
    spaces ("" for a text with no tokens left, e.g. empty, blank or only punctuation).

    `input_sizes` splits `texts` into consecutive runs of these sizes, each tokenised as one input of its own, as
    pycocoevalcap tokenises its references and its predictions: PTB reads a line at the very end of its input
    differently from one followed by another ("letter B." keeps "b." whole only at the end), so where a run ends
    changes tokens. One Java process per run, side by side; default: all of `texts` as one input.

    Raises:
        PTBTokenizerError: Java or the jar is missing, Java failed or did not finish within `timeout` seconds.
        RuntimeError: Java's output does not have one line per text (the captions would be misaligned).
    """
    sizes = [len(texts)] if input_sizes is None else list(input_sizes)
    if sum(sizes) != len(texts) or any(size < 0 for size in sizes):
        raise ValueError(f"input_sizes {sizes} do not add up to the {len(texts)} texts")
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    runs = [[text.translate(_JAVA_LINE_BREAKS) for text in texts[start : start + size]]
            for start, size in zip(starts, sizes) if size]
    with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:  # each run waits on its own Java process
        outputs = list(pool.map(lambda lines: _run_ptb_jar("\n".join(lines).encode("utf-8"), timeout), runs))
    tokenized_lines = []
    for lines, (output, stderr) in zip(runs, outputs):
        tokenized = output.split("\n")
        if len(tokenized) != len(lines):
            raise RuntimeError(
                f"the PTB tokenizer returned {len(tokenized)} lines for {len(lines)} captions: the tokenised captions "
                f"cannot be matched to their images (Java stderr: {stderr[-1000:]!r})"
            )
        _report_untokenizable(stderr)
        tokenized_lines.extend(tokenized)
    return [drop_punctuation(line) for line in tokenized_lines]


def _run_ptb_jar(data: bytes, timeout: float) -> tuple[str, str]:
    """Run the PTB tokenizer on `data` (UTF-8 lines); return its stdout and stderr as text."""
    java = shutil.which("java")
    if java is None:
        raise PTBTokenizerError("Java not found on PATH")
    jar = stanford_jar()
    if not jar.is_file():
        raise PTBTokenizerError(f"the Stanford PTB tokenizer jar is missing: {jar}")
    with tempfile.TemporaryDirectory(prefix="caption-metrics-ptb-") as folder:
        captions_file = Path(folder) / "captions.txt"
        captions_file.write_bytes(data)
        command = [java, "-cp", str(jar), PTB_CLASS, *PTB_ARGUMENTS, str(captions_file)]
        try:
            completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PTBTokenizerError(f"the PTB tokenizer gave no answer within {timeout:g} s") from None
        except OSError as err:  # e.g. java found but not executable
            raise PTBTokenizerError(f"could not start Java ({err})") from err
    stderr = completed.stderr.decode("utf-8", errors="replace")
    if completed.returncode != 0:
        raise PTBTokenizerError(f"Java exited with status {completed.returncode}: {stderr.strip()[-2000:]}")
    try:
        return completed.stdout.decode("utf-8"), stderr
    except UnicodeDecodeError as err:
        raise PTBTokenizerError(f"the PTB tokenizer wrote invalid UTF-8 ({err})") from None


def _report_untokenizable(stderr: str) -> None:
    # PTB deletes characters it has no rule for (emoji among them) and names only the first one.
    first = re.search(r"Untokenizable: .*?\((U\+[0-9A-Fa-f]+)", stderr)
    if first:
        logger.warning(
            "the PTB tokenizer deleted characters it cannot tokenise (first: %s), as pycocoevalcap does", first.group(1)
        )


# --- the approximation (pure Python) --------------------------------------------------------------------------

# Brackets become PTB escapes, which stay (PUNCTUATIONS spells them in capitals); a double quote becomes `` or ''.
_SYMBOLS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-", '"': "''"}
# PTB's normalisations: quotes (all dropped afterwards), currencies, fractions, the ampersand entity.
_REPLACEMENTS = {"\u2019": "'", "\u2018": "`", "\u201c": '"', "\u201d": '"', "&amp;": "&", "\u00a3": " # ",
                 "\u20ac": " $ ", "\u00a2": " cents ", "\u00bc": " 1/4 ", "\u00bd": " 1/2 ", "\u00be": " 3/4 "}
# Titles and abbreviations that keep their period ("mr.", "etc."); PTB's lists are longer.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev gen col lt sgt capt gov sen rep mt ft ave blvd etc vs inc ltd co corp bros "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# Words PTB splits although no apostrophe marks it, and clitics, each as (pattern, replacement).
_SPLITS = [
    (re.compile(r"(?i)\b(can)(not)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(gon|wan)(na)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(got)(ta)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(lem|gim)(me)\b"), r"\1 \2"),
    (re.compile(r"(?i)(?<![^\W_])(?<!')('t)(is|was)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(y')(all)\b"), r"\1 \2"),
    (re.compile(r"(?i)(?<=[^\W_])(n't)\b"), r" \1"),
    (re.compile(r"(?i)(?<=[^\W_])('(?:s|re|ll|ve|d|m))\b"), r" \1"),
    (re.compile(r"(?i)(?<=[^\W_])('n')(?=[^\W_])"), r" \1 "),
]
_ALNUM = r"[^\W_]"
_SEGMENT = rf"(?:\d+(?:[.,:/]\d+)+|{_ALNUM}+(?:[_./]{_ALNUM}+)*)"  # 3.5 10,000 3:30 1/2 dog.cat a_b a/b
# An SGML/XML tag: a name and attributes of ASCII names (PTB keeps "<a b c>" whole, not "<a résumé>").
_NAME = r"[A-Za-z][A-Za-z0-9_:.-]*"
_SGML = (rf"<(?:[!?][A-Za-z-][^>\r\n]*|{_NAME}(?:[ ]+(?:{_NAME}[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|{_NAME})|{_NAME}))*"
         rf"[ ]*/?|/{_NAME})[ ]*>")
_SGML_PATTERN = re.compile(f"({_SGML})")
_DELETED = "\x00"
_TOKEN = re.compile(
    rf"""
    (?P<url>(?:https?://|www\.)[^\s<>"]*[^\s<>".,;:!?')\]}}])
  | (?P<sgml>{_SGML})
  | (?P<smiley>[<>]?[:;=][-o*']?[()\[\]](?![^\W_]))
  | (?P<acronym>(?:[A-Za-z]\.){{2,}})
  | (?P<clitic>n't|'(?:s|re|ll|ve|d|m|t|n'|em|cause|til|till|[2-9]0s)(?!{_ALNUM}))
  | (?P<special>y'(?=\s+all\b))
  | (?P<word>(?:\#(?!\d)|@)?{_SEGMENT}(?:-{_SEGMENT})*(?:'[A-Za-z]{{2,}})?)
  | (?P<ellipsis>\.\.\.+|\u2026)
  | (?P<dashes>--+|[\u2013\u2014])
  | (?P<exclamation>[?!]+)
  | (?P<symbol_run>\*+|_+)
  | (?P<symbol>[^\s\x00])
    """,
    re.VERBOSE | re.IGNORECASE,
)


def _is_untokenizable(char: str) -> bool:
    # PTB deletes what it has no rule for: characters beyond the 16-bit range (it sees their surrogate halves,
    # emoji among them) and control characters.
    return ord(char) > 0xFFFF or (unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn") and not char.isspace())


def _prepare(text: str) -> str:
    # A deleted character still ends a word; "\x00" does that and, unlike a space, cannot be part of an SGML tag.
    text = "".join(_DELETED if _is_untokenizable(c) else c for c in text.translate(_JAVA_LINE_BREAKS))
    for old, new in _REPLACEMENTS.items():
        text = text.replace(old, new)
    pieces = _SGML_PATTERN.split(text)  # odd pieces are tags, which PTB keeps whole
    for index in range(0, len(pieces), 2):
        for pattern, replacement in _SPLITS:
            pieces[index] = pattern.sub(replacement, pieces[index])
    return "".join(pieces)


def _abbreviation(token: str, text: str, end: int) -> bool:
    """Does the period after `token` (at text[end]) belong to it? Titles and the like do; a single letter does
    unless a sentence starts after it ("plan a." keeps "a.", "plan A. The" does not)."""
    if text[end:end + 1] != ".":
        return False
    lowered = token.lower()
    if lowered in _ABBREVIATIONS or (lowered == "no" and re.match(r"\.\s*\d", text[end:])):
        return True
    return len(token) == 1 and token.isalpha() and not re.match(r"\.\s+[A-Z]", text[end:])


def _ptb_like_tokens(text: str):
    """PTB-style tokens of a prepared text, in their original case."""
    skip_period_at = -1
    for match in _TOKEN.finditer(text):
        kind, token = match.lastgroup, match.group()
        if match.start() == skip_period_at and token == ".":
            continue
        if kind == "word" and _abbreviation(token, text, match.end()):
            skip_period_at = match.end()
            token += "."
        elif kind == "sgml":
            token = re.sub(r"\s+", "\u00a0", token)  # PTB keeps an SGML tag whole, its spaces made non-breaking
        elif kind == "smiley":
            token = token.replace("(", "-lrb-").replace(")", "-rrb-")
        elif kind == "ellipsis":
            token = "..."
        elif kind == "dashes":
            token = "--"
        yield _SYMBOLS.get(token, token)


def approximate_ptb_tokenize(text: str) -> str:
    """A pure-Python approximation of :func:`ptb_tokenize` for one text (no Java needed).

    Follows PTB on the common cases (clitics, hyphenated words, numbers, quotes, brackets, ellipses, dashes,
    punctuation runs, abbreviations; emoji deleted) but is NOT token-for-token equal to it on all text: scores
    computed on it are approximate. Returns the lowercased tokens minus pycocoevalcap's PUNCTUATIONS, joined by
    single spaces.
    """
    return " ".join(t for t in (token.lower() for token in _ptb_like_tokens(_prepare(text))) if t not in PUNCTUATIONS)


# --- choosing one ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedCaptions:
    texts: list[str]  # one per input text: its tokens minus PUNCTUATIONS, joined by single spaces
    tokenizer: str  # the tokenizer that produced them: "ptb" (exact) or "python" (approximate)


def tokenize_captions(texts: Sequence[str], tokenizer: str | None = None,
                      timeout: float = PTB_TIMEOUT_SECONDS, input_sizes: Sequence[int] | None = None) -> TokenizedCaptions:
    """Tokenise `texts` for scoring, all in one call (`input_sizes`: see :func:`ptb_tokenize`).

    `tokenizer`: "ptb" runs the Java PTB tokenizer (exactly pycocoevalcap's) and raises PTBTokenizerError if it
    cannot; "python" runs the approximation; None runs Java when it can and otherwise falls back to the
    approximation, logging a warning that the scores will not be comparable with published ones.
    """
    if tokenizer not in (None, *TOKENIZERS):
        raise ValueError(f"unknown tokenizer {tokenizer!r} (expected one of {', '.join(TOKENIZERS)}, or None)")
    texts = list(texts)
    if tokenizer != PYTHON_TOKENIZER:
        try:
            return TokenizedCaptions(ptb_tokenize(texts, timeout=timeout, input_sizes=input_sizes), PTB_TOKENIZER)
        except PTBTokenizerError as err:
            if tokenizer == PTB_TOKENIZER:
                raise
            reason = str(err)
    else:
        reason = "tokenizer='python' was asked for"
    logger.warning(
        "caption scores use the pure-Python approximation of the PTB tokenizer (%s): they are NOT comparable with "
        "pycocoevalcap or published scores; install Java for exact COCO-caption tokenisation", reason
    )
    return TokenizedCaptions([approximate_ptb_tokenize(text) for text in texts], PYTHON_TOKENIZER)
