# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Processor of the Show, Attend and Tell captioner: ImageNet preprocessing + BERT WordPiece tokenizer."""

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transformers import BertTokenizerFast, ConvNextImageProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.processing_utils import ImagesKwargs, ProcessingKwargs, ProcessorMixin
from transformers.utils import cached_file

from .configuration_show_attend_tell import ShowAttendTellConfig
from .image_loading import MAX_IMAGE_PIXELS, describe, load_image

# bert-base-uncased vocab.txt, shipped with the package so the default tokenizer works offline.
BUNDLED_TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
# What a saved processor (or one of its parts) leaves in a folder: a folder with none of them holds only a model.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")  # a saved tokenizer has one of these
# The `from_pretrained` options that say where files come from.
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "subfolder")
# from_pretrained's options about loading, not about the processor (AutoProcessor adds the private ones).
LOADING_OPTIONS = ("trust_remote_code", "proxies", "use_auth_token", "return_unused_kwargs", "_from_auto", "_from_pipeline",
                   "code_revision", "resume_download")


# WordPiece decoding writes every punctuation mark as a word of its own ("a t - shirt , 3 . 5 feet"). These rules join
# what WordPiece split inside a word, so that a caption reads as written and the COCO tokenizer sees the same words
# as in the references ("t-shirt", "3.5", "10,000", "man's"). Applied in order; each is a (pattern, replacement).
_JOIN_WORDPIECE_PUNCTUATION = [
    (re.compile(r"(?<=\w) - (?=\w)"), "-"),  # t-shirt, 3-year-old: hyphenated words far outnumber spaced dashes
    (re.compile(r"-(?: -)+"), lambda m: m.group(0).replace(" ", "")),  # "--"
    (re.compile(r"(?<=\d) \. (?=\d)"), "."),  # 3.5
    (re.compile(r"(?<=\d) , (?=\d{3}\b)"), ","),  # 10,000
    (re.compile(r"(?<=\w) ' (s|t|re|ve|ll|d|m)\b"), r"'\1"),  # man's, isn't, they're
    (re.compile(r"(?<![\w'])(\w) ' (?=\w)"), r"\1'"),  # o'clock
    (re.compile(r"(?<=s) ' "), "' "),  # the dogs' toys
    (re.compile(r" (?=[.,!?;:%)\]}])"), ""),  # closing marks hold on to the word before
    (re.compile(r"(?<=[(\[{$]) "), ""),  # opening marks to the word after
]


def detokenize_wordpieces(text: str) -> str:
    """Words and punctuation as WordPiece decoding spaces them -> the caption as written (see the rules above).
    Straight double quotes alternate: an opening one holds on to the next word, a closing one to the previous."""
    for pattern, replacement in _JOIN_WORDPIECE_PUNCTUATION:
        text = pattern.sub(replacement, text)
    words, quote_open = [], False
    for word in text.split(" "):
        if word == '"':
            if quote_open and words:
                words[-1] += '"'
            else:
                words.append('"')
            quote_open = not quote_open
        elif quote_open and words and words[-1] == '"':
            words[-1] += word
        else:
            words.append(word)
    return " ".join(word for word in words if word)


def _wordpiece_prefix(tokenizer) -> str | None:
    """The continuation prefix ("##") of a WordPiece tokenizer's pieces; None for other tokenizers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return getattr(decoder, "prefix", None) if type(decoder).__name__ == "WordPiece" else None


def default_image_processor(image_size: int = 224) -> ConvNextImageProcessor:
    """torchvision's ImageNet evaluation transform (as for `microsoft/resnet-152`): resize the short side
    to image_size/0.875 (256 for 224), center-crop image_size, normalise with the ImageNet mean/std."""
    return ConvNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_pct=0.875,
        resample=3,  # bicubic
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def default_tokenizer() -> BertTokenizerFast:
    """The bert-base-uncased WordPiece tokenizer from the vocabulary bundled with hf-imgcap."""
    if not (BUNDLED_TOKENIZER_DIR / "vocab.txt").is_file():
        raise ValueError(
            f"the bundled bert-base-uncased vocabulary is missing at {BUNDLED_TOKENIZER_DIR}; pass tokenizer= "
            "explicitly (e.g. BertTokenizerFast.from_pretrained('bert-base-uncased'))"
        )
    # from_pretrained(folder), not BertTokenizerFast(vocab_file=...): in transformers 5 the latter silently
    # builds a 5-token vocabulary.
    return BertTokenizerFast.from_pretrained(str(BUNDLED_TOKENIZER_DIR))


def check_tokenizer_fits_config(tokenizer, config: ShowAttendTellConfig) -> None:
    """A `ValueError` naming the mismatch when `tokenizer` cannot write the token ids a model of `config` reads."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has vocab_size={config.vocab_size}: "
            "pass the tokenizer the model was trained with (tokenizer=...)"
        )
    for name, token in (("bos_token_id", "cls_token"), ("eos_token_id", "sep_token"), ("pad_token_id", "pad_token")):
        expected, got = getattr(config, name), getattr(tokenizer, f"{token}_id")
        if expected is not None and got != expected:
            raise ValueError(f"the model's {name}={expected} but the tokenizer's {getattr(tokenizer, token)} is {got}: pass the "
                             "tokenizer the model was trained with (tokenizer=...)")


def _file_in(name_or_path, filename: str, where: dict) -> bool:
    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **where) is not None


def _model_config_in(name_or_path, where: dict) -> ShowAttendTellConfig | None:
    """The Show-Attend-Tell config saved in a folder or repo, or None when it holds no such model."""
    path = cached_file(name_or_path, "config.json", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **where)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            model_type = json.load(file).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{path}: not a model config (a JSON object): {error}") from None
    return ShowAttendTellConfig.from_pretrained(name_or_path, **where) if model_type == ShowAttendTellConfig.model_type else None


class ShowAttendTellImagesKwargs(ImagesKwargs, total=False):
    timeout: int | float | None  # seconds to wait for an image URL


class ShowAttendTellProcessorKwargs(ProcessingKwargs, total=False):
    """The options `processor(...)` takes, as every transformers processor does: the tokenizer's (`truncation`,
    `max_length`, `padding`, ...) and the image processor's (`do_rescale`, `do_resize`, `size`, ...), flat or as
    `text_kwargs={...}` / `images_kwargs={...}`."""

    images_kwargs: ShowAttendTellImagesKwargs
    _defaults = {"text_kwargs": {"padding": "longest", "truncation": True, "return_token_type_ids": False}}


class ShowAttendTellProcessor(ProcessorMixin):
    r"""
    Pairs an image processor (resize, center-crop 224, ImageNet mean/std) with a `BertTokenizerFast`.

    `processor(images=..., text=...)` returns a `BatchFeature` with `pixel_values` and/or `input_ids` and
    `attention_mask` (right-padded to the longest caption in the batch). Images may be paths, http(s) URLs
    (`timeout=` seconds), encoded bytes, `datasets` image dicts `{"bytes": ..., "path": ...}`, PIL images or
    arrays / tensors; they are opened as a viewer shows them (EXIF rotation, transparency on white, 16-bit,
    CMYK, ...), and an unreadable one raises a `ValueError` naming it. Tokenizer options (`truncation`,
    `max_length`, `padding`, ...) and image-processor options (`do_rescale`, `do_resize`, `size`, ...) are taken
    as transformers processors take them; an unknown option is a `TypeError`. `batch_decode` gives clean captions.

    Args:
        image_processor: defaults to [`default_image_processor`].
        tokenizer: defaults to the bundled bert-base-uncased WordPiece tokenizer.
        max_caption_length: captions are truncated to this many tokens, [CLS] and [SEP] included.
        max_image_pixels: larger images are refused before decoding (decompression-bomb guard).
    """

    valid_processor_kwargs = ShowAttendTellProcessorKwargs

    def __init__(self, image_processor=None, tokenizer=None, max_caption_length: int = 40, max_image_pixels: int = MAX_IMAGE_PIXELS, **kwargs):
        self.max_caption_length = int(max_caption_length)
        self.max_image_pixels = int(max_image_pixels)
        super().__init__(
            image_processor if image_processor is not None else default_image_processor(),
            tokenizer if tokenizer is not None else default_tokenizer(),
            **kwargs,
        )
        # Text is text: a caption or prompt holding a literal "[SEP]" must not end the caption there (nor "[CLS]" start
        # one, nor "[PAD]" turn into padding). The special tokens come from the tokenizer's own [CLS] ... [SEP]. Set on
        # the tokenizer, so that code tokenizing captions with `processor.tokenizer` directly reads them the same way.
        self.tokenizer.split_special_tokens = True

    @classmethod
    def from_config(cls, config: ShowAttendTellConfig, tokenizer=None, image_processor=None, **kwargs) -> "ShowAttendTellProcessor":
        """The processor a model of `config` expects: images of `config.image_size` (`default_image_processor`) and
        the bundled bert-base-uncased tokenizer, or the `tokenizer` / `image_processor` given. A tokenizer whose
        vocabulary or start / end / padding ids disagree with the config is refused. `kwargs` go to the constructor."""
        tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        check_tokenizer_fits_config(tokenizer, config)
        image_processor = image_processor if image_processor is not None else default_image_processor(config.image_size)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`ProcessorMixin.from_pretrained`; a folder or repo that holds only a model (`model.save_pretrained`, no
        processor files) gets the processor its config describes (`from_config`), so that the two agree."""
        where = {name: kwargs[name] for name in HUB_OPTIONS if name in kwargs}
        config = _model_config_in(pretrained_model_name_or_path, where)
        if config is not None and not any(_file_in(pretrained_model_name_or_path, name, where) for name in PROCESSOR_FILES):
            options = {name: value for name, value in kwargs.items() if name not in HUB_OPTIONS + LOADING_OPTIONS}
            return cls.from_config(config, **options)
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if config is not None and "tokenizer" not in kwargs:
            # Saved with a model: it must write and read that model's ids. A folder whose tokenizer.json is lost
            # loads as a 5-token tokenizer from tokenizer_config.json alone, without a word of warning.
            try:
                check_tokenizer_fits_config(processor.tokenizer, config)
            except ValueError as error:
                raise ValueError(f"{pretrained_model_name_or_path}: {error}; are its tokenizer files complete "
                                 "(tokenizer.json, tokenizer_config.json)?") from None
        return processor

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask"]

    def load_images(self, images, names=None, *, timeout: float | None = None, rescaled: bool = False) -> list:
        """Open every image as 8-bit RGB; a `ValueError` names the first one that cannot be used (by its entry of
        `names` when given, e.g. the file an in-memory image came from)."""
        if images is None:
            return []
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)  # a batch: (N, C, H, W) or (N, H, W, C)
        elif (isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, dict, Image.Image, np.ndarray, torch.Tensor))
              or hasattr(images, "read") or not hasattr(images, "__iter__")):
            images = [images]  # one image (an open file or a buffer iterates over its lines or bytes)
        images = list(images)  # also a datasets Column or any other iterable of images
        if len(images) == 0:
            raise ValueError("images is an empty list")
        names = names or [describe(image, index) for index, image in enumerate(images)]
        return [load_image(image, self.max_image_pixels, name, timeout=timeout, rescaled=rescaled) for image, name in zip(images, names)]

    def image_pixel_values(self, images, names=None, return_tensors="pt", **images_kwargs):
        """The one image -> `pixel_values` step of the package (size guards, viewer-like decoding, ImageNet
        preprocessing): `caption()`, the pipeline, the CLI, evaluation, training on images and the feature cache
        all call it, so they all feed the model the same input and refuse the same images.

        `images_kwargs` are the image processor's options (`do_resize`, `size`, `do_normalize`, ...) and `timeout`
        for URLs. `do_rescale=False` (pixels already in [0, 1]) is honoured by reading the images as such: they
        become 8-bit images like every other input, which the image processor then rescales as usual.
        """
        images_kwargs.pop("return_tensors", None)
        timeout = images_kwargs.pop("timeout", None)
        rescaled = images_kwargs.get("do_rescale") is False
        if rescaled:
            images_kwargs["do_rescale"] = True
        loaded = self.load_images(images, names, timeout=timeout, rescaled=rescaled)
        return self.image_processor(loaded, return_tensors=return_tensors, **images_kwargs).pixel_values

    def _known_options(self) -> set[str]:
        kinds = ShowAttendTellProcessorKwargs.__annotations__
        known = set(kinds) | set(kinds["text_kwargs"].__annotations__) | set(kinds["images_kwargs"].__annotations__)
        return known | set(getattr(getattr(self.image_processor, "valid_kwargs", None), "__annotations__", {}))

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """`pixel_values` for `images`, `input_ids` + `attention_mask` for `text`; options as described in
        `ShowAttendTellProcessorKwargs` (captions are truncated to `max_caption_length` tokens unless
        `max_length` or `truncation=False` says otherwise)."""
        # Unknown options are an error, not silently dropped: e.g. the image-text-to-text pipeline hands its call
        # options to the processor, so `num_beams=3` there must not quietly mean greedy decoding.
        unknown = sorted(set(kwargs) - self._known_options())
        if unknown:
            raise TypeError(f"ShowAttendTellProcessor got unexpected options {unknown} (generation options go to generate())")
        if images is None and text is None:
            raise ValueError("pass images=..., text=... or both")
        if kwargs.get("max_length", 0) is None:
            del kwargs["max_length"]  # None means the default, as it always did here
        options = self._merge_kwargs(ShowAttendTellProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        data = {}
        if images is not None:
            data["pixel_values"] = self.image_pixel_values(images, return_tensors=return_tensors, **options["images_kwargs"])
        if text is not None:
            if isinstance(text, str):
                text = [text]
            elif hasattr(text, "__iter__") and not isinstance(text, (bytes, dict)):
                text = list(text)  # also a datasets Column or a tuple
            if not isinstance(text, list) or not all(isinstance(caption, str) for caption in text):
                wrong = text if not isinstance(text, list) else next(c for c in text if not isinstance(c, str))
                raise TypeError(f"text must be a string or a list of strings, got {type(wrong).__name__} ({str(wrong)[:40]!r})")
            if len(text) == 0:
                raise ValueError("text is an empty list")
            if images is not None and all(caption == "" for caption in text):
                # No prompt (the image-text-to-text pipeline passes text=""): the caption starts from the start
                # token alone; "[CLS] [SEP]" would be a caption that has already ended.
                rows = len(data["pixel_values"]) if len(text) == 1 else len(text)  # one "" serves every image
                data["input_ids"] = [[self.tokenizer.cls_token_id]] * rows
                data["attention_mask"] = [[1]] * rows
                return BatchFeature(data=data, tensor_type=return_tensors)
            text_kwargs = options["text_kwargs"]
            text_kwargs.pop("return_tensors", None)
            if text_kwargs.get("truncation") not in (False, "do_not_truncate") or text_kwargs.get("padding") == "max_length":
                text_kwargs.setdefault("max_length", self.max_caption_length)
            data.update(self.tokenizer(list(text), return_tensors=return_tensors, **text_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        """Token ids to the captions users see: the one ids -> text step of the package.

        `caption()`, the pipeline and the CLI print it and evaluation scores it, so a score is always the score of
        the printed text. WordPiece decoding puts spaces around punctuation ("a man ' s t - shirt ."); they are joined
        back as written ("a man's t-shirt.", `detokenize_wordpieces`). `clean_up_tokenization_spaces=False` keeps
        the tokenizer's spacing.
        """
        kwargs.setdefault("skip_special_tokens", True)
        join = kwargs.pop("clean_up_tokenization_spaces", True)
        prefix = _wordpiece_prefix(self.tokenizer)
        if not join or prefix is None:  # not WordPiece (e.g. a BPE tokenizer of the user's): its own decoding
            captions = self.tokenizer.batch_decode(sequences, clean_up_tokenization_spaces=join, **kwargs)
            return [caption.strip() for caption in captions]
        captions = []
        for ids in sequences:
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
            tokens = self.tokenizer.convert_ids_to_tokens(ids, skip_special_tokens=kwargs["skip_special_tokens"])
            words = []  # the word pieces joined, every punctuation mark still a word of its own
            for token in tokens:
                token = self.tokenizer.unk_token if token is None else token  # an id past the tokenizer's vocabulary
                if token.startswith(prefix) and words:
                    words[-1] += token[len(prefix):]
                else:
                    words.append(token)
            captions.append(detokenize_wordpieces(" ".join(words)))
        return captions

    def decode(self, sequence, **kwargs) -> str:
        """`batch_decode` of one sequence (ids, or one id as the tokenizer's `decode` takes it)."""
        if isinstance(sequence, int) or (torch.is_tensor(sequence) and sequence.ndim == 0):
            sequence = [int(sequence)]
        return self.batch_decode([sequence], **kwargs)[0]

    # transformers' own `ImageTextToTextPipeline` calls these (e.g. given as `pipeline_class=`): the pipeline's text is
    # the caption's beginning ("" for none) and the output is the whole caption.
    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens)

    def post_process_multimodal_output(self, generated_outputs, skip_special_tokens=True, generation_mode=None, **kwargs):
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens)


ShowAttendTellProcessor.register_for_auto_class()  # save_pretrained writes auto_map and copies this file

__all__ = ["ShowAttendTellProcessor"]
