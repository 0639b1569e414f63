"""COCO caption metrics from a Seq2SeqTrainer whose dataset has one row per (image, caption): each image is scored
once against all of its references, equal to pycocoevalcap on that corpus (the README's recipe)."""

import logging
import shutil

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.evaluation.caption_metrics import compute_caption_metrics
from hf_imgcap.evaluation.trainer_metrics import caption_metrics_for_trainer, group_rows_by_image

from conftest import tiny_model, tiny_processor
from test_caption_metrics_ptb import pycocoevalcap_scores

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTBTokenizer needs Java")

IMAGES = {  # image id -> (what the model says, the references)
    "dog.jpg": ("a man's dog isn't red at all.", ["A man's dog is not red at all.", "a red dog", "A dog -- it's brown."]),
    "bike.jpg": ("two men ride bikes", ["Two men ride their bikes.", "two cyclists (men) on a road", "men riding"]),
    "beach.jpg": ("a child in a t-shirt", ["A child in a red t-shirt runs.", "a kid on the beach"]),
}


def rows_of(images):
    """One row per (image, reference), images interleaved as a shuffled Trainer dataset would have them."""
    rows = [(image_id, prediction, caption) for image_id, (prediction, refs) in images.items() for caption in refs]
    rows = rows[::2] + rows[1::2]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def test_group_rows_by_image_gathers_every_reference_of_an_image_once():
    image_ids, predictions, captions = rows_of(IMAGES)
    grouped_predictions, references = group_rows_by_image(image_ids, predictions, captions)
    order = list(dict.fromkeys(image_ids))
    assert grouped_predictions == [IMAGES[i][0] for i in order]
    assert [sorted(refs) for refs in references] == [sorted(IMAGES[i][1]) for i in order]


def test_group_rows_by_image_refuses_ragged_rows_and_counts_disagreeing_predictions(caplog):
    with pytest.raises(ValueError, match="got 2 image ids, 1 predictions and 2 captions"):
        group_rows_by_image(["a", "b"], ["x"], ["r", "s"])
    with caplog.at_level(logging.WARNING):
        predictions, references = group_rows_by_image(["a", "a", "b"], ["x", "y", "z"], ["r", "s", "t"])
    assert predictions == ["x", "z"] and references == [["r", "s"], ["t"]]
    assert "1 of 2 images have different predictions" in caplog.text


def eval_prediction(processor, texts):
    """What Seq2SeqTrainer hands compute_metrics: generated ids, batches concatenated with -100 padding."""
    ids = processor.tokenizer(texts, padding=True).input_ids
    ids = np.array(ids)
    ids[0, -1:] = -100  # Trainer's padding of a shorter batch
    ids[ids == processor.tokenizer.pad_token_id] = -100
    return EvalPrediction(predictions=ids, label_ids=np.full_like(ids, -100))


@needs_java
def test_compute_metrics_scores_each_image_against_all_its_references_as_pycocoevalcap():
    processor = tiny_processor()
    image_ids, predictions, captions = rows_of(IMAGES)
    compute_metrics = caption_metrics_for_trainer(processor, image_ids, captions)
    scores = compute_metrics(eval_prediction(processor, predictions))

    decoded = dict(zip(image_ids, processor.batch_decode(processor.tokenizer(predictions).input_ids)))
    order = list(dict.fromkeys(image_ids))
    oracle = pycocoevalcap_scores([decoded[i] for i in order], [IMAGES[i][1] for i in order], meteor=False)
    assert scores == pytest.approx(oracle, abs=1e-9)
    # One reference per row, what scoring the rows directly does, is another (lower) number.
    per_row = compute_caption_metrics([decoded[i] for i in image_ids], [[c] for c in captions], meteor=False)
    assert per_row["bleu_4"] < scores["bleu_4"] - 0.05


def test_compute_metrics_built_for_another_dataset_says_so():
    processor = tiny_processor()
    compute_metrics = caption_metrics_for_trainer(processor, ["a", "a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="got 2 predictions for an evaluation dataset of 3 rows"):
        compute_metrics(eval_prediction(processor, ["a dog", "a cat"]))
    with pytest.raises(ValueError, match="got 2 image ids for 1 captions"):
        caption_metrics_for_trainer(processor, ["a", "b"], ["x"])


def test_compute_metrics_built_for_another_dataset_of_the_same_size_says_so_from_the_labels():
    """trainer.predict(test_pairs) with a compute_metrics built from the validation rows: the rows' labels show it."""
    processor = tiny_processor()
    image_ids, predictions, captions = rows_of(IMAGES)
    compute_metrics = caption_metrics_for_trainer(processor, image_ids, captions)

    def with_labels(texts, keep=None):
        labels = np.array(processor(text=texts).input_ids)[:, :keep]
        labels[labels == processor.tokenizer.pad_token_id] = -100
        return EvalPrediction(predictions=eval_prediction(processor, predictions).predictions, label_ids=labels)

    assert compute_metrics(with_labels(captions))["bleu_1"] > 0  # this dataset's rows
    assert compute_metrics(with_labels(captions, keep=4))["bleu_1"] > 0  # truncated by a collator
    labels = with_labels(captions).label_ids
    per_batch = EvalPrediction(predictions=eval_prediction(processor, predictions).predictions, label_ids=[labels[:3], labels[3:, :-1]])
    assert compute_metrics(per_batch)["bleu_1"] > 0  # eval_do_concat_batches=False
    other = [f"{caption} on another day" if n % 2 else "a completely different photo" for n, caption in enumerate(captions)]
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(with_labels(other[::-1]))


@needs_java
def test_the_readme_seq2seq_recipe_reports_pycocoevalcaps_multi_reference_scores(tmp_path):
    root = write_synthetic_flickr8k(tmp_path / "ds", num_train=2, num_val=4, num_test=1, image_size=64, seed=3)
    split = load_caption_dataset(str(root))["validation"]
    pairs = split.map(
        lambda batch: {"image_id": [i for i, caps in zip(batch["image_id"], batch["captions"]) for _ in caps],
                       "image": [im for im, caps in zip(batch["image"], batch["captions"]) for _ in caps],
                       "caption": [c for caps in batch["captions"] for c in caps]},
        batched=True, remove_columns=split.column_names)
    model, processor = tiny_model(), tiny_processor()
    # A tiny random model writes nonsense that scores 0 both ways; this one "captions" each image with an edited
    # reference of it (the last word dropped), so the grouping decides the numbers.
    pixel_values = processor(images=split["image"]).pixel_values
    captions = [" ".join(refs[i % len(refs)].split()[:-1]) for i, refs in enumerate(split["captions"])]

    def generate(pixel_values=None, **kwargs):
        images = [int(torch.cdist(row.flatten()[None], pixel_values_of_split).argmin()) for row in pixel_values]
        return processor.tokenizer([captions[i] for i in images], padding=True, return_tensors="pt").input_ids

    pixel_values_of_split = pixel_values.flatten(1)
    model.generate = generate

    def collate(examples):
        batch = processor(images=[e["image"] for e in examples], text=[e["caption"] for e in examples])
        return {"pixel_values": batch["pixel_values"], "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}

    compute_metrics = caption_metrics_for_trainer(processor, pairs["image_id"], pairs["caption"])
    args = Seq2SeqTrainingArguments(str(tmp_path / "out"), per_device_eval_batch_size=3, remove_unused_columns=False,
                                    predict_with_generate=True, report_to="none", use_cpu=True)
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collate, compute_metrics=compute_metrics)
    metrics = trainer.predict(pairs).metrics

    oracle = pycocoevalcap_scores(processor.batch_decode(generate(pixel_values)), [list(c) for c in split["captions"]],
                                  meteor=False)
    assert oracle["bleu_4"] > 0.3
    assert {k: metrics[f"test_{k}"] for k in oracle} == pytest.approx(oracle, abs=1e-9)


def test_compute_metrics_names_predictions_that_are_not_generated_ids():
    """Plain Trainer hands over logits; eval_do_concat_batches=False a list of batches; a bad id is named."""
    processor = tiny_processor()
    image_ids, predictions, captions = rows_of(IMAGES)
    compute_metrics = caption_metrics_for_trainer(processor, image_ids, captions)
    ids = eval_prediction(processor, predictions).predictions
    with pytest.raises(ValueError, match="predict_with_generate"):
        compute_metrics(EvalPrediction(predictions=np.zeros((len(ids), 5, 30), dtype=np.float32), label_ids=None))
    batches = [ids[:3], ids[3:, :-2]]  # per-batch arrays of their own widths
    assert compute_metrics(EvalPrediction(predictions=batches, label_ids=None)) == compute_metrics(EvalPrediction(predictions=ids, label_ids=None))
    bad = ids.copy()
    bad[2, 1] = -7
    with pytest.raises(ValueError, match="-7"):
        compute_metrics(EvalPrediction(predictions=bad, label_ids=None))
