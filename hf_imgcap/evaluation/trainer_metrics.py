# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""COCO caption metrics for transformers' `Seq2SeqTrainer`, whose datasets have one row per (image, caption).

A Trainer evaluation dataset usually repeats each image once per reference caption (the layout training needs).
Scoring each row against its own caption would give every prediction ONE reference, while COCO-caption BLEU,
METEOR, ROUGE-L and CIDEr-D score each image's caption once against ALL of its references. The helpers here group
the rows by image first, so a Trainer reports the numbers papers report::

    compute_metrics = caption_metrics_for_trainer(processor, pairs["validation"]["image_id"],
                                                  pairs["validation"]["caption"])
    Seq2SeqTrainer(..., eval_dataset=pairs["validation"], compute_metrics=compute_metrics)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from hf_imgcap.evaluation.caption_metrics import compute_caption_metrics

logger = logging.getLogger(__name__)

LABEL_PAD = -100  # what Trainer pads predictions and labels with when it concatenates batches


def group_rows_by_image(
    image_ids: Sequence[Hashable], predictions: Sequence[str], captions: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """Rows of (image id, predicted caption, reference caption) -> one prediction and all references per image.

    Images come in the order of their first row. A model captions from the image alone, so every row of an image
    carries the same prediction; the first row's is used, and images whose rows disagree (e.g. sampled
    generation) are counted in a warning.
    """
    if not len(image_ids) == len(predictions) == len(captions):
        raise ValueError(
            f"one image id, prediction and reference caption per row: got {len(image_ids)} image ids, "
            f"{len(predictions)} predictions and {len(captions)} captions"
        )
    first_prediction: dict[Hashable, str] = {}
    references: dict[Hashable, list[str]] = {}
    disagreeing = set()
    for image_id, prediction, caption in zip(image_ids, predictions, captions):
        if image_id not in references:
            first_prediction[image_id], references[image_id] = prediction, []
        elif prediction != first_prediction[image_id]:
            disagreeing.add(image_id)
        references[image_id].append(caption)
    if disagreeing:
        logger.warning(
            "%d of %d images have different predictions on different rows (e.g. image %r); each is scored with "
            "the prediction of its first row", len(disagreeing), len(references), next(iter(disagreeing))
        )
    return list(first_prediction.values()), list(references.values())


def caption_metrics_for_trainer(
    processor,
    image_ids: Sequence[Hashable],
    captions: Sequence[str],
    *,
    meteor: bool | None = False,
    tokenizer: str | None = None,
) -> Callable[..., dict[str, float]]:
    """A `compute_metrics` for `Seq2SeqTrainer(..., args=Seq2SeqTrainingArguments(predict_with_generate=True))`
    that scores each image once against all of its references (COCO-comparable numbers).

    Args:
        processor: the model's processor; its `batch_decode` turns the generated ids into the captions users see.
        image_ids: the image of each row of the evaluation dataset, in its order (e.g. `pairs["validation"]["image_id"]`).
        captions: the reference caption of each row, raw text (not decoded labels: WordPiece round trips change
            text such as "t-shirt" and "3.5", which the scores would then see).
        meteor, tokenizer: as for :func:`compute_caption_metrics` (METEOR is off by default: it starts a JVM that
            loads for tens of seconds).

    The returned function raises ValueError when it was built for another dataset: the number of predictions is not
    the number of rows given here, or most rows' labels are not these captions.
    """
    image_ids, captions = list(image_ids), list(captions)
    if len(image_ids) != len(captions):
        raise ValueError(f"got {len(image_ids)} image ids for {len(captions)} captions: pass one of each per row")

    def compute_metrics(eval_prediction) -> dict[str, float]:
        pad = processor.tokenizer.pad_token_id
        rows = [[pad if token == LABEL_PAD else token for token in row] for row in _generated_rows(eval_prediction.predictions)]
        predictions = processor.batch_decode(rows)
        if len(predictions) != len(image_ids):
            raise ValueError(
                f"compute_metrics got {len(predictions)} predictions for an evaluation dataset of {len(image_ids)} "
                f"rows: build it from the image ids and captions of the dataset being evaluated, in its order"
            )
        labels = getattr(eval_prediction, "label_ids", None)
        if labels is not None:
            _check_labels_are_these_captions(processor, labels, captions, caption_texts)
        grouped_predictions, references = group_rows_by_image(image_ids, predictions, captions)
        return compute_caption_metrics(grouped_predictions, references, meteor=meteor, tokenizer=tokenizer)

    caption_texts = {}  # the captions as the processor writes and reads them back, made on the first call
    return compute_metrics


def _batches(values) -> list[np.ndarray]:
    """Trainer's arrays as a list of per-batch arrays: one array, or (eval_do_concat_batches=False) a list of them."""
    batches = values if isinstance(values, list) and values and not np.isscalar(values[0]) else [values]
    return [np.asarray(batch) for batch in batches]


def _generated_rows(generated) -> list[list[int]]:
    """The generated token ids of every row, from what Trainer hands compute_metrics: one (rows, length) array padded
    with -100, or (eval_do_concat_batches=False) a list of such arrays, one per batch. Logits, or ids that are not
    token ids, are refused by name."""
    if isinstance(generated, tuple):  # models that return more than the sequences put them first
        generated = generated[0]
    rows = []
    for batch in _batches(generated):
        if batch.ndim != 2 or batch.dtype.kind not in "iu":
            raise ValueError(
                f"compute_metrics needs the generated token ids, (rows, length) integers: got a {batch.dtype} array of shape "
                f"{batch.shape} (logits?); evaluate with Seq2SeqTrainer and Seq2SeqTrainingArguments(predict_with_generate=True)")
        bad = batch[(batch < 0) & (batch != LABEL_PAD)]
        if bad.size:
            raise ValueError(f"the generated ids contain {int(bad[0])}, which is neither a token id nor the padding {LABEL_PAD}")
        rows.extend(batch.tolist())
    return rows


def _check_labels_are_these_captions(processor, labels, captions, caption_texts: dict):
    """The rows' labels (the references as the collator tokenised them, perhaps truncated) must read as the
    captions `compute_metrics` was built with: else it was built for another dataset of the same size, and would
    score the predictions against the wrong references. Most rows must agree; a few may differ (unusual text)."""
    batches = _batches(labels)
    if any(batch.ndim != 2 or batch.dtype.kind not in "iu" for batch in batches) or sum(len(b) for b in batches) != len(captions):
        return  # not one row of ids per caption (a custom label layout): nothing to compare
    pad = processor.tokenizer.pad_token_id
    read = processor.batch_decode([[pad if token < 0 else token for token in row] for batch in batches for row in batch.tolist()])
    if "texts" not in caption_texts:
        caption_texts["texts"] = processor.batch_decode(processor(text=list(captions)).input_ids.tolist())
    differ = [row for row, (label, caption) in enumerate(zip(read, caption_texts["texts"]))
              if label and not caption.startswith(label) and not label.startswith(caption)]
    if len(differ) * 2 > len(captions):
        row = differ[0]
        raise ValueError(
            f"the labels of {len(differ)} of {len(captions)} evaluation rows are not the captions compute_metrics was built "
            f"with (row {row}: labels {read[row]!r}, caption {caption_texts['texts'][row]!r}): build it from the image ids "
            f"and captions of the dataset being evaluated, in its order")
