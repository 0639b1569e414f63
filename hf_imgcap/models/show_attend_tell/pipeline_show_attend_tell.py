# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The captioning pipeline: images (and optionally a text prompt to continue) in, `[{"generated_text": caption}]` out.

This file travels with the model: the modeling file imports its class (so transformers copies this file with the
model's code, on saving and into its modules cache on a remote-code load) and names it in the `custom_pipelines` entry
of `config.json` (`CUSTOM_PIPELINES` there) under "image-to-text" (the Hub's task for the model card's
`pipeline_tag`), "image-text-to-text" and "image-captioning", so that without hf-imgcap installed

    pipeline("image-text-to-text", model=folder_or_repo, trust_remote_code=True)

finds this class, offline. Keep it that way: no imports of hf_imgcap (same-folder relative imports only), and nothing
beyond transformers, torch and Pillow. (Several tasks means that `pipeline(model=...)` without a task asks to pick one.)

With hf-imgcap installed, `import hf_imgcap` serves the same three names from the installed package, for folders and
repos (no remote code) and for objects in memory (`pipeline(task, model=model, processor=processor)`): see
`hf_imgcap/models/pipeline_registration.py`.
"""

from typing import Any

from transformers import Pipeline

from .processing_show_attend_tell import ShowAttendTellProcessor

# The task name hf-imgcap registers in transformers' pipeline registry when it is imported.
PIPELINE_TASK = "image-captioning"
# The task whose results, like transformers' own pipeline of that name, also give the prompt back as "input_text".
IMAGE_TEXT_TO_TEXT = "image-text-to-text"


class ShowAttendTellCaptioningPipeline(Pipeline):
    """Caption images with a Show, Attend and Tell model, or continue a caption's beginning.

    ```python
    >>> from transformers import pipeline
    >>> captioner = pipeline("image-text-to-text", model="path/to/saved/model", trust_remote_code=True)
    >>> captioner("dog.jpg", num_beams=3, max_new_tokens=20)
    [{'generated_text': 'a dog runs through the grass'}]
    >>> captioner(["dog.jpg", "cat.png"])  # a list in, a list of results out
    [[{'generated_text': ...}], [{'generated_text': ...}]]
    >>> captioner("dog.jpg", text="a brown dog")  # a prompt: the caption continues it
    [{'generated_text': 'a brown dog runs through the grass'}]
    ```

    Inputs: a path, an http(s) URL, encoded image bytes, a `PIL.Image`, an `(H, W[, C])` or `(C, H, W)` numpy array
    or torch tensor, a `datasets` image dict `{"bytes": ..., "path": ...}`, or a list / dataset / generator of them;
    also `{"image": ..., "text": ...}` dicts (transformers' image-text-to-text form).

    `text`: a prompt the caption continues, exactly as `model.generate(**processor(images=..., text=...))` continues
    it: one string for every image, or one per image. `generated_text` is then the whole caption (prompt included, as
    the processor decodes it); `return_full_text=False` gives only what was added. Typed special tokens ("[SEP]") are
    text. Without a prompt (`text` left out, None or "") the caption starts from scratch.

    Every keyword that is not a pipeline option goes to `model.generate()` (`num_beams`, `max_new_tokens`,
    `do_sample`, `num_return_sequences`, `length_penalty`, ...), as does `generate_kwargs={...}`; the same
    keywords given to `pipeline(...)` apply to every call. Pipeline options: `batch_size`, `num_workers`,
    `timeout` (seconds, for URLs), `return_full_text`. A result has one `{"generated_text": ...}` per returned
    sequence; as "image-text-to-text" it also gives the prompt back as `"input_text"` ("" without one), as
    transformers' own pipeline of that name does.

    The processor: the one given (`processor=`), else the one saved with the model, else the one the model's config
    describes (`ShowAttendTellProcessor.from_config`, with `tokenizer=` / `image_processor=` when given).

    An image that cannot be read raises a `ValueError` "<name>: <reason>" (the name is its path when it has one):
    missing, not an image, truncated, over the decompression-bomb pixel limit (refused before decoding), ...
    """

    # The processor does both jobs, image preprocessing and decoding. None: loaded with the model from a folder or
    # repo when there is one, else built here from the model's config (see `__init__`).
    _load_processor = None
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    # Lets the base class set aside generation keywords given to `pipeline(...)` (see `_prepare_generate_kwargs`).
    _pipeline_calls_generate = True

    def __init__(self, model, processor=None, tokenizer=None, image_processor=None, **kwargs):
        if processor is None:
            processor = ShowAttendTellProcessor.from_config(model.config, tokenizer=tokenizer, image_processor=image_processor)
        super().__init__(model=model, processor=processor, **kwargs)

    def __call__(self, images=None, text=None, **kwargs) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Caption one image (returns a list of dicts) or a list of images (returns a list of such lists)."""
        if "inputs" in kwargs:  # the base class's name for the first argument
            if images is not None:
                raise ValueError("pass the images either positionally or as inputs=..., not both")
            images = kwargs.pop("inputs")
        if _is_chat(text) or _is_chat(images):
            raise ValueError("chat messages are not supported: this model captions images and continues a plain text "
                             "prompt; pass images=... and, optionally, text=\"the caption's beginning\"")
        if images is None:
            raise ValueError("no image given: pass images=... (and optionally text=..., a caption's beginning to continue)")
        if isinstance(images, tuple):
            images = list(images)  # the base class batches lists only
        if isinstance(images, list) and len(images) == 0:
            return []
        return super().__call__(self._with_prompts(images, text), **kwargs)

    @staticmethod
    def _with_prompts(images, text):
        """The images as the base class iterates them: each paired with its prompt in an `{"image", "text"}` dict
        when there is a prompt, as they are otherwise (so that datasets and generators stream as usual)."""
        if text is None or (isinstance(text, str) and text == ""):
            return images
        if isinstance(text, str):
            if isinstance(images, list):
                return [_pair(image, text) for image in images]
            if _is_single_image(images):
                return _pair(images, text)
            return (_pair(image, text) for image in images)  # a dataset or generator: one prompt for each image
        texts = list(text)
        if not isinstance(images, list):
            if len(texts) != 1 or not _is_single_image(images):
                raise ValueError(f"{len(texts)} prompts for one image: pass a list of images, one per prompt")
            return [_pair(images, texts[0])]
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} prompts in text: give one prompt per image, or one string for all")
        return [_pair(image, prompt) for image, prompt in zip(images, texts)]

    def _sanitize_parameters(self, max_new_tokens=None, generate_kwargs=None, timeout=None, return_full_text=None,
                             return_tensors=None, **kwargs):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        if return_full_text is not None and return_tensors is not None:
            raise ValueError("return_full_text is mutually exclusive with return_tensors")  # as transformers' pipeline
        postprocess_params = {} if return_full_text is None else {"return_full_text": bool(return_full_text)}
        if return_tensors is not None:
            postprocess_params["return_tensors"] = bool(return_tensors)
        # Everything else is for generate(): loose keywords and generate_kwargs={...} are the same thing.
        loose = dict(kwargs)
        if max_new_tokens is not None:
            loose["max_new_tokens"] = max_new_tokens
        generate_kwargs = dict(generate_kwargs or {})
        twice = sorted(loose.keys() & generate_kwargs.keys())
        if twice:
            raise ValueError(f"{', '.join(twice)} given both directly and in generate_kwargs; use only one")
        generate_kwargs.update(loose)
        forward_params = {"generate_kwargs": generate_kwargs} if generate_kwargs else {}
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, item, timeout: float | None = None) -> dict:
        # The processor opens files and URLs robustly and raises ValueError("<path or URL>: <reason>") for a bad one.
        # Every item gets `input_ids` ([CLS] alone without a prompt), so that a batch may mix prompts and none.
        image, prompt = (item["image"], item.get("text") or "") if _is_pair(item) else (item, "")
        inputs = self.processor(images=[image], text=[prompt], timeout=timeout)
        return {"pixel_values": inputs.pixel_values, "input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask,
                "prompt": prompt}

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None) -> dict:
        prompt = model_inputs.pop("prompt")
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        sequences = self.model.generate(**model_inputs, **generate_kwargs)  # prompts of any padding: see generate()
        images = model_inputs["pixel_values"].shape[0]
        # (images, sequences per image, length): the base class splits batches along the first dimension.
        return {"sequences": sequences.reshape(images, -1, sequences.shape[-1]), "prompt": prompt,
                "prompt_ids": model_inputs["input_ids"]}

    def postprocess(self, model_outputs: dict, return_full_text: bool = True, return_tensors: bool = False) -> list[dict]:
        prompt = model_outputs["prompt"]
        given = {"input_text": prompt} if self.task == IMAGE_TEXT_TO_TEXT else {}  # that pipeline's result format
        if return_tensors:  # the token ids, prompt included, as transformers' pipelines return them
            return [{**given, "generated_token_ids": sequence} for sequence in model_outputs["sequences"][0]]
        captions = self.processor.batch_decode(model_outputs["sequences"][0])  # this image's sequences
        if not return_full_text and prompt:
            start = self.processor.decode(model_outputs["prompt_ids"][0])  # the prompt as the captions spell it
            captions = [caption[len(start) :].lstrip() if caption.startswith(start) else caption for caption in captions]
        return [{**given, "generated_text": caption} for caption in captions]

    def save_pretrained(self, save_directory, **kwargs: Any):
        """Save the model (with this pipeline's code and `custom_pipelines` entry) and the processor."""
        # Not the base class's: that saves the tokenizer and image processor but not the processor.
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


def _pair(image, text) -> dict:
    return {"image": image, "text": text}


def _is_pair(item) -> bool:
    """An `{"image": ..., "text": ...}` input (a `datasets` image dict has "bytes" / "path" instead)."""
    return isinstance(item, dict) and "image" in item


def _is_single_image(images) -> bool:
    return not hasattr(images, "__iter__") or isinstance(images, (str, bytes, dict)) or hasattr(images, "getpixel") \
        or getattr(images, "ndim", 0) in (2, 3)  # a PIL image, or an (H, W[, C]) / (C, H, W) array or tensor


def _is_chat(value) -> bool:
    """Chat messages, as transformers' image-text-to-text pipeline takes them: dicts with "role"."""
    first = value[0] if isinstance(value, (list, tuple)) and value else None
    first = first[0] if isinstance(first, (list, tuple)) and first else first
    return isinstance(first, dict) and "role" in first


__all__ = ["IMAGE_TEXT_TO_TEXT", "PIPELINE_TASK", "ShowAttendTellCaptioningPipeline"]
