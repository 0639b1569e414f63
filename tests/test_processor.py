"""The processor: bundled tokenizer, BatchFeature, clean decoding, bad input."""

import hashlib
import shutil

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
    """Evaluation scores the caption after the processor's clean-up: "a man's dog isn't red.", not the raw
    "a man ' s dog isn ' t red ." (whose BLEU-4 against a perfect reference is ~ 0)."""
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


def test_evaluation_says_which_tokenizer_scored_it(monkeypatch):
    """The metrics say whether pycocoevalcap's own PTB tokenizer (Java) scored them or the Python approximation
    (not comparable with published scores), as it happened: Java failing on the day gives "python"."""
    from datasets import Dataset, Image as ImageFeature

    from hf_imgcap.evaluation.caption_metrics import PTBTokenizerError, tokenize_captions
    from hf_imgcap.evaluation.generation import evaluate_captioner
    from hf_imgcap.evaluation.metric_modules.caption_metrics import tokenization

    from conftest import tiny_model, tiny_processor

    processor, model = tiny_processor(), tiny_model()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 72, 3), dtype=np.uint8))
    split = Dataset.from_dict({"image": [image], "captions": [["a dog runs"]]}).cast_column("image", ImageFeature())
    metrics, _ = evaluate_captioner(model, processor, split, meteor=False, max_new_tokens=6, show_progress=False)
    assert metrics.tokenizer == tokenize_captions(["a dog runs"]).tokenizer  # what this machine runs

    def java_fails(texts, **kwargs):
        raise PTBTokenizerError("java exited with status 1")

    monkeypatch.setattr(tokenization, "ptb_tokenize", java_fails)
    fallback, _ = evaluate_captioner(model, processor, split, meteor=False, max_new_tokens=6, show_progress=False)
    assert fallback.tokenizer == "python" and fallback["num_images"] == 1 and 0 <= fallback["bleu_1"] <= 1


def test_every_caption_users_get_is_the_processors_batch_decode(monkeypatch):
    """One ids -> text path: processor.batch_decode. A processor whose decoding differs (here: upper case) changes
    what caption(), generate_captions / evaluate_captioner (scored and shown) and the pipeline give, so evaluation
    never scores text users do not see."""
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


# --- options, URLs and datasets images, as transformers' own processors take them -----------------------------
def test_truncation_and_max_length_for_text(processor):
    long_caption = " ".join(["dog"] * 100)
    assert processor(text=[long_caption], max_length=8).input_ids.shape[1] == 8
    assert processor(text=[long_caption], text_kwargs={"max_length": 8}).input_ids.shape[1] == 8
    untruncated = processor(text=[long_caption, "a cat"], truncation=False).input_ids
    assert untruncated.shape[1] == 102 and untruncated[0, -1].item() == 102  # 100 words + [CLS] + [SEP]
    fixed = processor(text=["a cat"], padding="max_length", max_length=12)
    assert fixed.input_ids.shape[1] == 12 and fixed.attention_mask.sum().item() == 4
    with pytest.raises(TypeError, match="num_beams"):  # unknown options are refused, not dropped
        processor(text=["a cat"], num_beams=3)


def test_image_processor_options_pass_through(processor):
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (80, 100, 3), dtype=np.uint8))
    assert processor(images=image).pixel_values.shape == (1, 3, 64, 64)
    assert processor(images=image, size={"shortest_edge": 32}).pixel_values.shape == (1, 3, 32, 32)
    assert processor(images=image, images_kwargs={"size": {"shortest_edge": 32}}).pixel_values.shape == (1, 3, 32, 32)
    assert processor(images=image, do_resize=False).pixel_values.shape == (1, 3, 80, 100)
    raw = processor(images=image, do_normalize=False).pixel_values
    assert 0 <= raw.min() and raw.max() <= 1  # rescaled to [0, 1], not normalised
    # do_rescale=False: the pixels are already in [0, 1] (e.g. torchvision's ToTensor), as transformers means it.
    as_uint8 = processor(images=image).pixel_values
    chw_01 = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(processor(images=[chw_01], do_rescale=False).pixel_values, as_uint8, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"image #0: do_rescale=False means pixel values already rescaled.*uint8"):
        processor(images=[np.asarray(image)], do_rescale=False)
    with pytest.raises(ValueError, match=r"do_rescale=False means pixel values in \[0, 1\], but these lie in 0\.\.2\d\d"):
        processor(images=[chw_01 * 255], do_rescale=False)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """A local http server (no internet in tests) serving a PNG, a text file and a 404."""
    import functools
    import http.server
    import threading

    root = tmp_path_factory.mktemp("served")
    Image.new("RGB", (70, 60), (200, 30, 30)).save(root / "red.png")
    (root / "notes.png").write_text("this is text")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_image_urls_are_fetched(processor, image_server):
    base, root = image_server
    from_url = processor(images=f"{base}/red.png").pixel_values
    torch.testing.assert_close(from_url, processor(images=root / "red.png").pixel_values)
    assert processor(images=[f"{base}/red.png", root / "red.png"], timeout=5).pixel_values.shape[0] == 2
    with pytest.raises(ValueError, match=r"/missing.png: cannot download image \(HTTP 404"):
        processor(images=f"{base}/missing.png")
    with pytest.raises(ValueError, match=r"/notes.png: not an image"):
        processor(images=f"{base}/notes.png")


def test_unreachable_and_silent_urls_fail_with_the_reason(processor):
    import socket
    import threading

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    with pytest.raises(ValueError, match=rf"http://127.0.0.1:{port}/a.jpg: cannot download image \(.*refused"):
        processor(images=f"http://127.0.0.1:{port}/a.jpg")
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    try:
        with pytest.raises(ValueError, match=r"cannot download image \(no answer within 0.5 s\)"):
            processor(images=f"http://127.0.0.1:{silent.getsockname()[1]}/a.jpg", timeout=0.5)
    finally:
        silent.close()


def test_datasets_image_dicts(processor, tmp_path):
    """What a `datasets` Image column gives with decode=False (or after `cast_column(..., Image(decode=False))`)."""
    import io

    import datasets

    Image.new("RGB", (70, 60), (30, 200, 30)).save(tmp_path / "green.png")
    encoded = io.BytesIO()
    Image.new("RGB", (70, 60), (30, 200, 30)).save(encoded, format="PNG")
    expected = processor(images=tmp_path / "green.png").pixel_values
    column = datasets.Dataset.from_dict({"image": [str(tmp_path / "green.png")]}).cast_column("image", datasets.Image(decode=False))
    row = column[0]["image"]
    assert set(row) == {"bytes", "path"}
    torch.testing.assert_close(processor(images=row).pixel_values, expected)
    torch.testing.assert_close(processor(images={"bytes": encoded.getvalue(), "path": None}).pixel_values, expected)
    torch.testing.assert_close(processor(images=[row, {"bytes": None, "path": str(tmp_path / "green.png")}]).pixel_values,
                               torch.cat([expected, expected]))
    with pytest.raises(ValueError, match=r"broken.png: not an image"):
        processor(images={"bytes": b"not an image", "path": "broken.png"})
    with pytest.raises(ValueError, match=r"image #0: a dict image needs 'bytes' or 'path'.*\['url'\]"):
        processor(images=[{"url": "x"}])


def test_one_image_as_a_file_object_or_a_bytes_like_buffer(processor, tmp_path):
    """An open file, a BytesIO, bytearray or memoryview is one image, not an iterable of lines or bytes."""
    import io

    Image.new("RGB", (70, 60), (30, 200, 30)).save(tmp_path / "green.png")
    expected = processor(images=tmp_path / "green.png").pixel_values
    data = (tmp_path / "green.png").read_bytes()
    with open(tmp_path / "green.png", "rb") as handle:
        torch.testing.assert_close(processor(images=handle).pixel_values, expected)
    for image in (io.BytesIO(data), bytearray(data), memoryview(data), data):
        torch.testing.assert_close(processor(images=image).pixel_values, expected)


def test_text_that_is_not_strings_and_an_empty_path_are_named(processor):
    for text in (5, [None], ["a dog", 3]):
        with pytest.raises(TypeError, match="text must be a string or a list of strings"):
            processor(text=text)
    import datasets

    column = datasets.Dataset.from_dict({"caption": ["a dog", "two cats"]})["caption"]  # a Column, not a list
    assert processor(text=column).input_ids.tolist() == processor(text=["a dog", "two cats"]).input_ids.tolist()
    with pytest.raises(ValueError, match=r"image #0 \(''\)"):
        processor(images="")


# --- the processor a model's config expects --------------------------------------------------------------------
@pytest.mark.parametrize("image_size", [64, 96])
def test_the_processor_built_for_a_config_makes_the_images_the_model_expects(image_size):
    from conftest import tiny_model

    model = tiny_model(image_size=image_size)
    processor = ShowAttendTellProcessor.from_config(model.config)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (150, 120, 3), dtype=np.uint8))
    pixels = processor(images=image).pixel_values
    assert pixels.shape == (1, 3, image_size, image_size)
    assert model.generate(pixel_values=pixels, max_new_tokens=2).shape[0] == 1
    assert processor.tokenizer.cls_token_id == model.config.bos_token_id


def test_the_processor_for_a_config_refuses_a_tokenizer_that_does_not_fit():
    from conftest import tiny_config

    small = tiny_config(vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    with pytest.raises(ValueError, match=r"30522 tokens.*vocab_size=60.*tokenizer="):
        ShowAttendTellProcessor.from_config(small)
    with pytest.raises(ValueError, match=r"bos_token_id=7.*\[CLS\].*101"):
        ShowAttendTellProcessor.from_config(tiny_config(bos_token_id=7, decoder_start_token_id=7))


def test_autoprocessor_of_a_folder_with_only_the_model_matches_its_config(tmp_path):
    """A folder saved with `model.save_pretrained` alone: AutoProcessor builds the processor its config describes
    (not the 224-pixel default), so the two agree."""
    from transformers import AutoProcessor

    from conftest import tiny_model

    model = tiny_model(image_size=96)
    model.save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, ShowAttendTellProcessor)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (150, 120, 3), dtype=np.uint8))
    assert processor(images=image).pixel_values.shape == (1, 3, 96, 96)
    assert ShowAttendTellProcessor.from_pretrained(tmp_path)(images=image).pixel_values.shape == (1, 3, 96, 96)


# --- text is text: special tokens typed by a user ----------------------------------------------------------------
@pytest.mark.parametrize("typed", ["[SEP]", "[CLS]", "[PAD]", "[MASK]", "[UNK]", "a[SEP]b"])
def test_special_tokens_typed_in_text_are_text_not_control_tokens(processor, typed):
    """A literal "[SEP]" in a caption or prompt must not end it (nor "[CLS]" start one, nor "[PAD]" vanish as
    padding): the processor adds the special tokens, user text only ever gives ordinary word pieces."""
    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_ids)
    ids = processor(text=[f"a dog {typed} on grass"]).input_ids[0].tolist()
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert not special & set(ids[1:-1]), tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == tokenizer.tokenize(f"a dog {typed} on grass", split_special_tokens=True)
    # The same through the tokenizer the processor holds (what training code tokenizes captions with).
    assert tokenizer(f"a dog {typed} on grass").input_ids == ids


def test_a_typed_end_token_in_a_prompt_does_not_end_the_caption(processor):
    from conftest import tiny_model

    model = tiny_model()
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (80, 72, 3), dtype=np.uint8))
    inputs = processor(images=image, text="a dog [SEP]")
    out = model.generate(**inputs, max_new_tokens=3)
    prompt = processor.tokenizer.tokenize("a dog [SEP]", split_special_tokens=True)
    assert processor.tokenizer.convert_ids_to_tokens(out[0, 1 : 1 + len(prompt)].tolist()) == prompt
    assert out.shape[1] == 1 + len(prompt) + 3  # continued after the typed "[SEP]"
    assert processor.decode(out[0]).startswith("a dog [sep]")  # the typed text, not an end token


def test_decode_takes_one_id_as_the_tokenizer_does(processor):
    word = processor.tokenizer.convert_tokens_to_ids("dog")
    assert processor.decode(word) == processor.decode(torch.tensor(word)) == processor.tokenizer.decode(word) == "dog"


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer (what deletes the characters) needs Java")
def test_evaluation_leaves_out_references_the_tokenizer_deletes_before_captioning(caplog, monkeypatch):
    """A reference of characters PTB deletes ("😀 !", "𝓪 𝓭𝓸𝓰") passes a dataset's loader but cannot be scored: it is
    left out, with a warning, before any image is captioned; an image left without references is not scored."""
    from datasets import Dataset, Image as ImageFeature

    from hf_imgcap.evaluation import generation
    from hf_imgcap.evaluation.caption_metrics import compute_caption_metrics

    from conftest import tiny_model, tiny_processor

    processor, model = tiny_processor(), tiny_model()
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)) for i in range(3)]
    references = [["a dog runs", "😀 !"], ["𝓪 𝓭𝓸𝓰"], ["two cats sit on a wall"]]
    split = Dataset.from_dict({"image": images, "image_id": ["a", "b", "c"], "captions": references}).cast_column("image", ImageFeature())
    with caplog.at_level("WARNING"):
        metrics, captions = generation.evaluate_captioner(model, processor, split, meteor=False, max_new_tokens=5, show_progress=False)
    assert metrics["num_images"] == 2 and captions[1] is None
    assert "2 reference captions" in caplog.text and "'b'" in caplog.text
    expected = compute_caption_metrics([captions[0], captions[2]], [["a dog runs"], ["two cats sit on a wall"]], meteor=False)
    assert all(metrics[name] == pytest.approx(expected[name]) for name in expected)
