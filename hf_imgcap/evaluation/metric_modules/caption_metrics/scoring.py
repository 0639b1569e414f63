# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The COCO caption scores of the `caption_metrics` evaluate module (and of hf-imgcap), computed with pycocoevalcap.

Kept apart from `caption_metrics.py` (the `evaluate.Metric`) so that hf-imgcap scores with this code without
importing `evaluate`; both files travel together when the folder is published or loaded with `evaluate.load`.

Every number comes from pycocoevalcap's own scorers, run on text normalised by :func:`normalize_for_scoring`.
All scores are on pycocoevalcap's 0-1 scale (CIDEr is not bounded by 1; multiply by 100 for paper tables).

- ``bleu_1`` .. ``bleu_4``: pycocoevalcap ``Bleu(4)``. Corpus-level BLEU (Papineni et al. 2002): clipped n-gram
  counts summed over all images, geometric mean of the 1..n precisions, brevity penalty against the sum of each
  hypothesis' *closest* reference length (ties go to the shorter reference). This is "COCO-caption BLEU". It is
  NOT sacrebleu (its own tokeniser, ``closest`` but on detokenised text, 0-100 scale) and NOT the Hub's
  ``evaluate.load("bleu")`` (brevity penalty against the *shortest* reference). nltk's ``corpus_bleu`` on the same
  tokens agrees to ~1e-12 as long as every hypothesis has at least 4 tokens (see ``compute_caption_metrics``).
- ``meteor``: pycocoevalcap ``Meteor`` (METEOR 1.5 jar, ``-l en -norm``; needs Java).
- ``rouge_l``: pycocoevalcap ``Rouge`` (ROUGE-L F-measure with beta = 1.2, best reference, averaged over images).
- ``cider``: pycocoevalcap ``Cider``, which is CIDEr-D (clipped tf-idf, Gaussian length penalty, x10). Its idf is
  computed from the references of the images being scored, so it is corpus dependent: a single image always
  scores 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import threading
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

logger = logging.getLogger(__name__)

BLEU_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
# Every key compute_caption_metrics can return, in COCO's reporting order; "meteor" is present only when run.
METRIC_NAMES = (*BLEU_NAMES, "meteor", "rouge_l", "cider")

METEOR_TIMEOUT_SECONDS = 600.0

# --- normalisation --------------------------------------------------------------------------------------------

# PUNCTUATIONS names brackets by their PTB escapes; these are the characters they stand for.
_PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LCB-": "{", "-RCB-": "}"}
# Characters that the Java PTBTokenizer rewrites into tokens of PUNCTUATIONS before they are dropped
# ('"' -> `` or '', curly quotes -> ` ' `` '', ellipsis -> ..., en/em dash -> --).
_PTB_REWRITTEN = "\"\u2018\u2019\u201c\u201d\u2026\u2013\u2014"
PUNCTUATION_CHARS = frozenset(
    "".join(_PTB_ESCAPES.get(token, token) for token in PUNCTUATIONS) + _PTB_REWRITTEN
)  # ' ` . ? ! , : - ; ( ) { } plus the rewritten characters above

# Apostrophes are deleted rather than turned into spaces, so "don't" stays one word ("dont").
_APOSTROPHES = "'`\u2018\u2019"
_DELETE_APOSTROPHES = str.maketrans("", "", _APOSTROPHES)
# Hyphens and periods are handled by _LOOSE_HYPHEN_OR_PERIOD; everything else separates words.
_SEPARATORS = str.maketrans({c: " " for c in PUNCTUATION_CHARS - set(_APOSTROPHES) - {"-", "."}})
# A hyphen or period that is not between two letters/digits. PTB keeps "t-shirt" and "3.5" as single tokens.
_LOOSE_HYPHEN_OR_PERIOD = re.compile(r"(?<![^\W_])[-.]|[-.](?![^\W_])")


def normalize_for_scoring(text: str) -> str:
    """COCO-caption style tokenisation in pure Python: what pycocoevalcap's PTBTokenizer does, without Java.

    Steps, in order:

    1. lowercase (``str.lower``);
    2. delete apostrophes ``' ` ‘ ’`` ("don't" -> "dont", "dog's" -> "dogs");
    3. replace by a space every other character of pycocoevalcap's ``PUNCTUATIONS`` list (``. ? ! , : ; -`` and
       the brackets ``( ) { }`` that its ``-LRB-``/``-RRB-``/``-LCB-``/``-RCB-`` entries stand for) and the
       characters PTB rewrites into listed tokens (``"`` and ``“ ” … – —``), EXCEPT a hyphen or period with a
       letter or digit on both sides, which is kept ("t-shirt", "3.5");
    4. split on whitespace and join the tokens with single spaces.

    Differences from the Java ``PTBTokenizer -lowerCase`` + ``PUNCTUATIONS`` filter that pycocoevalcap runs:

    - clitics are not split: PTB gives "do n't" and "dog 's", this gives "dont" and "dogs";
    - other symbols stay attached: PTB splits "50%" -> "50 %" and "a+b" -> "a + b", this leaves them;
    - PTB keeps the final period of abbreviations ("mr.", "u.s."); this drops it ("mr", "u.s");
    - PTB keeps runs such as "!!!" and "yes?no" as tokens; this splits/removes them;
    - brackets: pycocoevalcap lowercases before filtering, so "-LRB-" never matches and its output keeps
      "-lrb-" tokens; this removes ``( ) { }`` as the list intends. Square brackets are not in the list and
      are left untouched.

    On ordinary captions (words, commas, final periods, hyphenated compounds) the two agree exactly.
    """
    text = text.lower().translate(_DELETE_APOSTROPHES).translate(_SEPARATORS)
    return " ".join(_LOOSE_HYPHEN_OR_PERIOD.sub(" ", text).split())


# --- validation -----------------------------------------------------------------------------------------------


def _validate(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise ValueError naming the offending index, so users never see an assert from inside pycocoevalcap."""
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a list, got {type(value).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length (one entry per image): "
            f"got {len(predictions)} predictions and {len(references)} reference lists"
        )
    if not predictions:
        raise ValueError("predictions is empty: need at least one image to score")
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise ValueError(f"predictions[{i}] must be a str, got {type(prediction).__name__}")
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(
                f"references[{i}] must be a list of reference strings, got {type(refs).__name__} "
                f"(wrap a single reference as [reference])"
            )
        if not refs:
            raise ValueError(f"references[{i}] is empty: image {i} has no reference captions")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{i}][{j}] must be a str, got {type(ref).__name__}")
            # An empty reference skews BLEU's closest length, makes ROUGE-L tokenise it as [""], and crashes
            # CIDEr when every reference is empty: reject it instead of scoring it silently.
            if not normalize_for_scoring(ref):
                raise ValueError(
                    f"references[{i}][{j}] is empty after normalisation ({ref!r}): a reference needs at least one word"
                )


# --- METEOR (Java subprocess) ---------------------------------------------------------------------------------


def _stop_meteor(scorer: Meteor, worker: threading.Thread) -> str:
    """Kill the Java process and return the tail of what it wrote to stderr."""
    process = scorer.meteor_p
    with contextlib.suppress(OSError):
        process.stdin.close()
    process.kill()
    process.wait()
    worker.join(timeout=10)  # the worker's readline now sees EOF and ends
    # Meteor.__del__ takes its lock; a worker that died mid-call never released it, so give it a fresh one.
    scorer.lock = threading.Lock()
    with contextlib.suppress(OSError, ValueError):
        return process.stderr.read().decode(errors="replace").strip()[-2000:]
    return ""


def _meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]], timeout: float) -> float:
    """Run pycocoevalcap's Meteor with a timeout; raise RuntimeError("METEOR failed: ...") on any failure."""
    # Checked first because Meteor.__init__ failing on a missing java leaves an object whose __del__ raises.
    if shutil.which("java") is None:
        raise RuntimeError("METEOR failed: Java not found on PATH")
    try:
        scorer = Meteor()
    except OSError as err:  # e.g. java found but not executable
        raise RuntimeError(f"METEOR failed: could not start Java ({err})") from err

    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["score"] = scorer.compute_score(gts, res)[0]
        except BaseException as err:  # reported below, with Java's stderr
            outcome["error"] = err

    # Meteor reads Java's answers with a blocking readline: run it in a thread so a hung JVM cannot hang us.
    worker = threading.Thread(target=work, name="meteor", daemon=True)
    worker.start()
    worker.join(timeout)
    timed_out = worker.is_alive()
    stderr = _stop_meteor(scorer, worker)
    if not timed_out and "score" in outcome:
        return float(outcome["score"])
    reason = f"no answer from Java within {timeout:g} s" if timed_out else repr(outcome.get("error"))
    detail = f"; Java stderr: {stderr}" if stderr else ""
    raise RuntimeError(f"METEOR failed: {reason}{detail}")


def _meteor_text(text: str) -> str:
    # "|||" separates fields in Meteor's stdin protocol; Meteor strips it from hypotheses only.
    return " ".join(text.replace("|||", " ").split())


# --- public API -----------------------------------------------------------------------------------------------


def compute_caption_metrics(
    predictions: list[str],
    references: list[list[str]],
    meteor: bool | None = None,
    *,
    meteor_timeout: float = METEOR_TIMEOUT_SECONDS,
) -> dict[str, float]:
    """Corpus-level COCO caption metrics for one prediction per image against that image's references.

    Args:
        predictions: one generated caption per image. An empty string is allowed and scores as an empty caption.
        references: for each image, a non-empty list of reference captions.
        meteor: True runs METEOR (raises RuntimeError if Java fails), False skips it, None (default) runs it when
            ``shutil.which("java")`` finds Java and, if it fails, logs a warning and leaves the key out.
        meteor_timeout: seconds to wait for the METEOR Java process before giving up.

    Returns:
        ``{"bleu_1", "bleu_2", "bleu_3", "bleu_4", ["meteor",] "rouge_l", "cider"}`` as floats on pycocoevalcap's
        scale (see the module docstring for the exact convention of each).

    Conventions worth knowing when comparing numbers:

    - Text is normalised with :func:`normalize_for_scoring` (pure Python, so scores never depend on Java).
    - pycocoevalcap adds 1e-15 / 1e-9 to n-gram counts instead of returning 0 or failing: a perfect match scores
      1 - O(1e-9), a corpus with no matching n-gram of some order gets a tiny BLEU-n rather than 0, and a corpus
      with no n-grams of order n at all (every caption shorter than n words) gets an artefact such as
      BLEU-4 = (1e-6) ** (1/4) = 0.0316 for one perfect 3-word caption.
    - nltk ``corpus_bleu`` counts ``max(1, #n-grams)`` per hypothesis in the precision denominator, so it is
      lower than pycocoevalcap whenever a hypothesis has fewer than n tokens; pycocoevalcap counts the true
      number of n-grams (0), as Papineni et al. and mteval do.

    Raises:
        ValueError: mismatched lengths, no images, an image without references, an empty reference, or
            non-string entries; the message names the index.
        RuntimeError: ``meteor=True`` and METEOR could not be computed.
    """
    _validate(predictions, references)
    res = {i: [normalize_for_scoring(p)] for i, p in enumerate(predictions)}
    gts = {i: [normalize_for_scoring(r) for r in refs] for i, refs in enumerate(references)}

    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts and ratio
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores = {name: float(value) for name, value in zip(BLEU_NAMES, bleu)}

    run_meteor = shutil.which("java") is not None if meteor is None else meteor
    if run_meteor:
        meteor_gts = {i: [_meteor_text(r) for r in refs] for i, refs in gts.items()}
        meteor_res = {i: [_meteor_text(h) for h in hyps] for i, hyps in res.items()}
        try:
            scores["meteor"] = _meteor_score(meteor_gts, meteor_res, meteor_timeout)
        except RuntimeError as err:
            if meteor:
                raise
            logger.warning("%s; leaving 'meteor' out of the results", err)
    elif meteor is None:
        logger.info("Java not found on PATH: skipping METEOR")

    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return scores
