# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Caption metrics computed the way captioning papers compute them (the COCO caption evaluation code).

The one implementation lives beside the `evaluate` module shipped with the package
(`metric_modules/caption_metrics/scoring.py`, used by its `caption_metrics.py`), which is self-contained so that the
folder can be published on the Hub on its own; this module re-exports it for hf-imgcap (without importing
`evaluate`) and loads the module as an `evaluate` metric. See `scoring.py` for the exact conventions of each score
and `tokenization.py` for the tokenisation (pycocoevalcap's Java PTB tokenizer; a labelled approximation without Java).
"""

from pathlib import Path

from hf_imgcap.evaluation.metric_modules.caption_metrics.scoring import (
    BLEU_NAMES,
    METEOR_TIMEOUT_SECONDS,
    METRIC_NAMES,
    CaptionScores,
    compute_caption_metrics,
    normalize_for_scoring,
    score_captions,
    tokenize_for_scoring,
)
from hf_imgcap.evaluation.metric_modules.caption_metrics.tokenization import (
    PUNCTUATIONS,
    PTB_TOKENIZER,
    PYTHON_TOKENIZER,
    TOKENIZER_LABELS,
    TOKENIZERS,
    PTBTokenizerError,
    TokenizedCaptions,
    approximate_ptb_tokenize,
    ptb_tokenize,
    tokenize_captions,
)

METRIC_MODULE_DIR = Path(__file__).resolve().parent / "metric_modules" / "caption_metrics"


def load_caption_metric(**kwargs):
    """``evaluate.load`` the ``CaptionMetrics`` module shipped inside this package; works offline.

    Keyword arguments go to ``evaluate.load`` (e.g. ``experiment_id``, ``keep_in_memory``, ``cache_dir``).
    """
    import evaluate  # deferred: scoring itself does not need it (importing it costs seconds)

    return evaluate.load(str(METRIC_MODULE_DIR), **kwargs)


__all__ = [
    "BLEU_NAMES",
    "METEOR_TIMEOUT_SECONDS",
    "METRIC_MODULE_DIR",
    "METRIC_NAMES",
    "PTB_TOKENIZER",
    "PTBTokenizerError",
    "PUNCTUATIONS",
    "PYTHON_TOKENIZER",
    "TOKENIZER_LABELS",
    "TOKENIZERS",
    "CaptionScores",
    "TokenizedCaptions",
    "approximate_ptb_tokenize",
    "compute_caption_metrics",
    "load_caption_metric",
    "normalize_for_scoring",
    "ptb_tokenize",
    "score_captions",
    "tokenize_captions",
    "tokenize_for_scoring",
]
