# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The COCO caption scores of the `caption_metrics` evaluate module (and of hf-imgcap), computed with pycocoevalcap.

Kept apart from `caption_metrics.py` (the `evaluate.Metric`) so that hf-imgcap scores with this code without
importing `evaluate`; both files travel together when the folder is published or loaded with `evaluate.load`.

Every number comes from pycocoevalcap's own scorers, run on the text of pycocoevalcap's own tokenisation (the
Stanford PTB tokenizer on Java, then its PUNCTUATIONS dropped; `tokenization.py`), so the scores equal what the COCO
caption evaluation gives. Without Java a pure-Python approximation of the tokenizer is used, with a warning: those
scores are close but NOT comparable with published ones. All scores are on pycocoevalcap's 0-1 scale (CIDEr is not
bounded by 1; multiply by 100 for paper tables).

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
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from .tokenization import TOKENIZER_LABELS, tokenize_captions

logger = logging.getLogger(__name__)

BLEU_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
# Every key compute_caption_metrics can return, in COCO's reporting order; "meteor" is present only when run.
METRIC_NAMES = (*BLEU_NAMES, "meteor", "rouge_l", "cider")

METEOR_TIMEOUT_SECONDS = 600.0

# --- tokenisation ---------------------------------------------------------------------------------------------


def tokenize_for_scoring(texts: Sequence[str], tokenizer: str | None = None) -> list[str]:
    """The text the scores are computed on, for many captions at once (one Java process for all of them).

    Each caption becomes its lowercased PTB tokens minus pycocoevalcap's PUNCTUATIONS, joined by single spaces:
    "A man's dog isn't red (really)." -> "a man 's dog is n't red -lrb- really -rrb-". `tokenizer` is "ptb"
    (Java, exactly pycocoevalcap's; raises if it cannot run), "python" (approximate) or None (Java when it can
    run, else the approximation with a warning); see `tokenization.py`.
    """
    return tokenize_captions(list(texts), tokenizer).texts


def normalize_for_scoring(text: str, tokenizer: str | None = None) -> str:
    """:func:`tokenize_for_scoring` of one caption. Each call starts Java: tokenise many captions in one call."""
    return tokenize_for_scoring([text], tokenizer)[0]


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
        _check_text(prediction, f"predictions[{i}]")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{i}][{j}] must be a str, got {type(ref).__name__}")
            _check_text(ref, f"references[{i}][{j}]")


def _check_text(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate: not text any tokenizer can read
        raise ValueError(f"{name} is not valid Unicode text ({err.reason} at position {err.start}: {text!r})") from None


def _check_references_have_words(references: Sequence[Sequence[str]], gts: dict[int, list[str]]) -> None:
    # An empty reference skews BLEU's closest length, makes ROUGE-L tokenise it as [""], and crashes CIDEr when
    # every reference is empty: reject it instead of scoring it silently.
    for i, refs in enumerate(references):
        for j, ref in enumerate(refs):
            if not gts[i][j]:
                raise ValueError(
                    f"references[{i}][{j}] is empty after tokenisation ({ref!r}): a reference needs at least one "
                    f"word (punctuation, quotes and characters the tokenizer deletes, such as emoji, do not count)"
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


# --- public API -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionScores:
    scores: dict[str, float]  # what compute_caption_metrics returns
    tokenizer: str  # "ptb" (exactly pycocoevalcap's, COCO-comparable) or "python" (approximate)

    @property
    def tokenizer_label(self) -> str:
        """The tokenizer as results should state it ("ptb", or "python (approximate PTB: not comparable ...)")."""
        return TOKENIZER_LABELS[self.tokenizer]


def compute_caption_metrics(
    predictions: list[str],
    references: list[list[str]],
    meteor: bool | None = None,
    *,
    tokenizer: str | None = None,
    meteor_timeout: float = METEOR_TIMEOUT_SECONDS,
) -> dict[str, float]:
    """Corpus-level COCO caption metrics for one prediction per image against all of that image's references.

    Equal to pycocoevalcap run the way the COCO caption evaluation runs it (its ``PTBTokenizer`` over the
    references and the predictions, then ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()``) when Java is
    available; see :func:`score_captions` for which tokenizer ran.

    Args:
        predictions: one generated caption per image. An empty string is allowed and scores as an empty caption.
        references: for each image, a non-empty list of reference captions (all of them: BLEU's clipping and
            brevity penalty use every reference of the image).
        meteor: True runs METEOR (raises RuntimeError if Java fails), False skips it, None (default) runs it when
            ``shutil.which("java")`` finds Java and, if it fails, logs a warning and leaves the key out.
        tokenizer: "ptb" forces the Java PTB tokenizer (raises if it cannot run), "python" the pure-Python
            approximation, None (default) uses Java when it can and otherwise the approximation with a warning.
        meteor_timeout: seconds to wait for the METEOR Java process before giving up.

    Returns:
        ``{"bleu_1", "bleu_2", "bleu_3", "bleu_4", ["meteor",] "rouge_l", "cider"}`` as floats on pycocoevalcap's
        scale (see the module docstring for the exact convention of each).

    Conventions worth knowing when comparing numbers:

    - Text is tokenised as pycocoevalcap does (:func:`tokenize_for_scoring`): PTB tokens, lowercased, minus its
      PUNCTUATIONS ("isn't" -> "is n't", brackets kept as -lrb- / -rrb-). Captions containing characters that
      Java reads as line breaks (``\r``, ``\u2028`` ...) score as if those were spaces; pycocoevalcap itself would
      shift every later caption onto the wrong image.
    - pycocoevalcap adds 1e-15 / 1e-9 to n-gram counts instead of returning 0 or failing: a perfect match scores
      1 - O(1e-9), a corpus with no matching n-gram of some order gets a tiny BLEU-n rather than 0, and a corpus
      with no n-grams of order n at all (every caption shorter than n words) gets an artefact such as
      BLEU-4 = (1e-6) ** (1/4) = 0.0316 for one perfect 3-word caption.
    - nltk ``corpus_bleu`` counts ``max(1, #n-grams)`` per hypothesis in the precision denominator, so it is
      lower than pycocoevalcap whenever a hypothesis has fewer than n tokens; pycocoevalcap counts the true
      number of n-grams (0), as Papineni et al. and mteval do.

    Raises:
        ValueError: mismatched lengths, no images, an image without references, a reference with no words after
            tokenisation, non-string entries or invalid Unicode; the message names the index.
        RuntimeError: ``meteor=True`` and METEOR could not be computed, or ``tokenizer="ptb"`` and the PTB
            tokenizer could not run.
    """
    return score_captions(predictions, references, meteor, tokenizer=tokenizer, meteor_timeout=meteor_timeout).scores


def score_captions(
    predictions: list[str],
    references: list[list[str]],
    meteor: bool | None = None,
    *,
    tokenizer: str | None = None,
    meteor_timeout: float = METEOR_TIMEOUT_SECONDS,
) -> CaptionScores:
    """:func:`compute_caption_metrics` (same arguments), also saying which tokenizer ran."""
    _validate(predictions, references)
    # The predictions and the references as two inputs, as pycocoevalcap tokenises them (where an input ends
    # changes its last tokens); their two Java processes run side by side.
    texts = list(predictions) + [ref for refs in references for ref in refs]
    tokenized = tokenize_captions(texts, tokenizer, input_sizes=[len(predictions), len(texts) - len(predictions)])
    tokens = iter(tokenized.texts)
    res = {i: [next(tokens)] for i in range(len(predictions))}
    gts = {i: [next(tokens) for _ in refs] for i, refs in enumerate(references)}
    _check_references_have_words(references, gts)

    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts and ratio
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores = {name: float(value) for name, value in zip(BLEU_NAMES, bleu)}

    run_meteor = shutil.which("java") is not None if meteor is None else meteor
    if run_meteor:
        try:
            scores["meteor"] = _meteor_score(gts, res, meteor_timeout)
        except RuntimeError as err:
            if meteor:
                raise
            logger.warning("%s; leaving 'meteor' out of the results", err)
    elif meteor is None:
        logger.info("Java not found on PATH: skipping METEOR")

    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return CaptionScores(scores, tokenized.tokenizer)
