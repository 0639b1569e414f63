"""The processor: bundled tokenizer, BatchFeature, clean decoding, bad input."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BatchFeature

from hf_imgcap import ShowAttendTellProcessor
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import BUNDLED_TOKENIZER_DIR


def test_bundled_vocabulary_is_bert_base_uncased():
    vocab = (BUNDLED_TOKENIZER_DIR / "vocab.txt").read_bytes()
    assert hashlib.md5(vocab).hexdigest() == "64800d5d8528ce344256daf115d4965e"
    tokenizer = ShowAttendTellProcessor().tokenizer
    assert len(tokenizer) == 30522
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (0, 101, 102)


def test_default_processor_makes_224_imagenet_tensors_and_padded_captions():
    processor = ShowAttendTellProcessor()
    images = [Image.new("RGB", (500, 375), (255, 0, 0)), Image.new("RGB", (300, 400), (0, 0, 0))]
    batch = processor(images=images, text=["A dog runs on the grass.", "Two men"])
    assert isinstance(batch, BatchFeature)
    assert batch.pixel_values.shape == (2, 3, 224, 224)
    # ImageNet normalisation: pure red -> ((1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225)
    torch.testing.assert_close(batch.pixel_values[0, :, 100, 100], torch.tensor([2.2489, -2.0357, -1.8044]), atol=1e-3, rtol=0)
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert batch.input_ids.shape[1] == 9  # padded to the longest caption, not to a fixed length
    assert batch.input_ids[1].tolist()[:4] == [101, 2048, 2273, 102] and batch.attention_mask[1].sum() == 4
    assert processor.batch_decode(batch.input_ids) == ["a dog runs on the grass.", "two men"]


def test_captions_are_truncated_at_the_configured_maximum(processor):
    batch = processor(text=[" ".join(["dog"] * 100)])
    assert batch.input_ids.shape[1] == processor.max_caption_length
    assert batch.input_ids[0, -1].item() == 102  # still ends with [SEP]


@pytest.mark.parametrize(
    "images, message",
    [
        ("/nonexistent/photo.jpg", "photo.jpg: no such image file"),
        ([], "empty list"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "empty image"),
        (np.zeros((5, 5, 2), dtype=np.uint8), "is not an"),
        (42, "expected a file path"),
    ],
)
def test_bad_images_raise_value_errors(processor, images, message):
    with pytest.raises(ValueError, match=message):
        processor(images=images)


def test_nothing_to_process_raises(processor):
    with pytest.raises(ValueError, match="pass images"):
        processor()
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(text=[])


def test_evaluation_scores_exactly_the_caption_users_see():
    """Issue 10: evaluation decoded without the processor's clean-up, so "a man's dog isn't red." was scored as
    "a man ' s dog isn ' t red ." (BLEU-4 of a perfect caption ~ 0)."""
    from datasets import Dataset, Image as ImageFeature

    from hf_imgcap.evaluation.generation import evaluate_captioner

    from conftest import tiny_model, tiny_processor

    processor, model = tiny_processor(), tiny_model()
    reference = "a man's dog isn't red."
    forced = processor(text=reference).input_ids[0].tolist()  # [CLS] ... [SEP]

    def force_reference(batch_id, prefix):  # generation writes exactly the reference caption
        return [forced[min(len(prefix), len(forced) - 1)]]

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 72, 3), dtype=np.uint8))
    split = Dataset.from_dict({"image": [image], "captions": [[reference]]}).cast_column("image", ImageFeature())
    options = dict(prefix_allowed_tokens_fn=force_reference, max_new_tokens=len(forced))
    shown = model.caption(image, processor, **options)
    assert shown == reference

    metrics, scored = evaluate_captioner(model, processor, split, meteor=False, show_progress=False, **options)
    assert scored == [shown]
    assert metrics["bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_every_caption_users_get_is_the_processors_batch_decode(monkeypatch):
    """Issue 11: one ids -> text path. Evaluation once decoded through a helper fed a bare tokenizer, a second door
    beside processor.batch_decode, and scored text users never saw. A processor whose decoding differs (here: upper
    case) must change what caption(), generate_captions / evaluate_captioner (scored and shown) and the pipeline give."""
    from datasets import Dataset, Image as ImageFeature
    from transformers import pipeline

    from hf_imgcap.evaluation.generation import evaluate_captioner, generate_captions
    from hf_imgcap.models.show_attend_tell.pipeline_show_attend_tell import PIPELINE_TASK

    from conftest import tiny_model, tiny_processor

    processor, model = tiny_processor(), tiny_model()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 72, 3), dtype=np.uint8))
    plain = model.caption(image, processor, max_new_tokens=6)
    assert plain and plain == plain.lower()
    decode = processor.batch_decode
    monkeypatch.setattr(processor, "batch_decode", lambda *a, **k: [text.upper() for text in decode(*a, **k)])

    split = Dataset.from_dict({"image": [image], "captions": [["a reference"]]}).cast_column("image", ImageFeature())
    assert model.caption(image, processor, max_new_tokens=6) == plain.upper()
    assert generate_captions(model, processor, split, max_new_tokens=6, show_progress=False) == [plain.upper()]
    _, scored = evaluate_captioner(model, processor, split, meteor=False, max_new_tokens=6, show_progress=False)
    assert scored == [plain.upper()]
    captioner = pipeline(PIPELINE_TASK, model=model, processor=processor)
    assert captioner(image, max_new_tokens=6)[0]["generated_text"] == plain.upper()
