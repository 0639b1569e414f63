# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The `image-captioning` pipeline: images in, `[{"generated_text": caption}]` out, as v4's `image-to-text` was.

This file travels with the model: `ShowAttendTellForConditionalGeneration.save_pretrained` copies it next to the
weights and writes the `custom_pipelines` entry of `config.json` (`CUSTOM_PIPELINES` there), so that

    pipeline(model=folder_or_repo, trust_remote_code=True)

finds this class without a task name, offline, without hf-imgcap installed. Keep it that way: no imports of
hf_imgcap (same-folder relative imports only), and nothing beyond transformers, torch and Pillow.

With hf-imgcap installed, no remote code is needed: `pipeline(model=folder, pipeline_class=ShowAttendTellCaptioningPipeline)`,
or `pipeline("image-captioning", model=model, processor=processor)` for objects in memory (`import hf_imgcap`
registers the task). `pipeline("image-captioning", model=folder)` alone asks for `trust_remote_code=True`, because
transformers gives a folder's own `custom_pipelines` entry precedence over its registry.

Why not the task name "image-to-text": transformers 5 redirects that name to "image-text-to-text" before it
looks at its registry, so a pipeline registered under it in-process is unreachable when the model is passed as
an object. (Only the `custom_pipelines` lookup of a saved folder happens before the redirect.)
"""

from typing import Any

import torch
from transformers import Pipeline
from transformers.image_utils import load_image as load_image_from_url

from .modeling_show_attend_tell import CUSTOM_PIPELINES

(PIPELINE_TASK,) = CUSTOM_PIPELINES  # its one task: "image-captioning"


class ShowAttendTellCaptioningPipeline(Pipeline):
    """Caption images with a Show, Attend and Tell model.

    ```python
    >>> from transformers import pipeline
    >>> captioner = pipeline(model="path/to/saved/model", trust_remote_code=True)
    >>> captioner("dog.jpg", num_beams=3, max_new_tokens=20)
    [{'generated_text': 'a dog runs through the grass'}]
    >>> captioner(["dog.jpg", "cat.png"])  # a list in, a list of results out
    [[{'generated_text': ...}], [{'generated_text': ...}]]
    ```

    Inputs: a path, an http(s) URL, encoded image bytes, a `PIL.Image`, an `(H, W[, C])` or `(C, H, W)` numpy array
    or torch tensor, or a list / dataset / generator of them. Every keyword that is not a pipeline option goes to
    `model.generate()` (`num_beams`, `max_new_tokens`,
    `do_sample`, `num_return_sequences`, `length_penalty`, ...), as does `generate_kwargs={...}`; the same
    keywords given to `pipeline(...)` apply to every call. Pipeline options: `batch_size`, `num_workers`,
    `timeout` (seconds, for URLs). A result has one `{"generated_text": ...}` per returned sequence.

    An image that cannot be read raises a `ValueError` "<name>: <reason>" (the name is its path when it has one):
    missing, not an image, truncated, over the decompression-bomb pixel limit (refused before decoding), ...
    """

    # Our processor does both jobs: image preprocessing and decoding.
    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    # Lets the base class set aside generation keywords given to `pipeline(...)` (see `_prepare_generate_kwargs`).
    _pipeline_calls_generate = True

    def __call__(self, inputs=None, **kwargs) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Caption one image (returns a list of dicts) or a list of images (returns a list of such lists)."""
        if "images" in kwargs:  # the keyword of the v4 image-to-text pipeline
            if inputs is not None:
                raise ValueError("pass the images either positionally or as images=..., not both")
            inputs = kwargs.pop("images")
        if inputs is None:
            raise ValueError("no image given")
        if isinstance(inputs, tuple):
            inputs = list(inputs)  # the base class batches lists only
        if isinstance(inputs, list) and len(inputs) == 0:
            return []
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, max_new_tokens=None, generate_kwargs=None, timeout=None, **kwargs):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
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
        return preprocess_params, forward_params, {}

    def preprocess(self, image, timeout: float | None = None) -> dict[str, torch.Tensor]:
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            try:
                image = load_image_from_url(image, timeout=timeout)
            except Exception as error:  # network errors come in many types; the user needs the URL and the reason
                raise ValueError(f"{image}: cannot download image ({error})") from error
        # The processor opens files robustly and raises ValueError("<path>: <reason>") for a bad one.
        return {"pixel_values": self.processor(images=[image]).pixel_values}

    def _forward(self, model_inputs: dict[str, torch.Tensor], generate_kwargs: dict | None = None) -> dict:
        pixel_values = model_inputs["pixel_values"]
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        sequences = self.model.generate(pixel_values=pixel_values, **generate_kwargs)
        # (images, sequences per image, length): the base class splits batches along the first dimension.
        return {"sequences": sequences.reshape(pixel_values.shape[0], -1, sequences.shape[-1])}

    def postprocess(self, model_outputs: dict) -> list[dict[str, str]]:
        sequences = model_outputs["sequences"][0]  # this image's sequences
        return [{"generated_text": caption} for caption in self.processor.batch_decode(sequences)]

    def save_pretrained(self, save_directory, **kwargs: Any):
        """Save the model (with this pipeline's code and `custom_pipelines` entry) and the processor."""
        # Not the base class's: that saves the tokenizer and image processor but not the processor.
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


__all__ = ["PIPELINE_TASK", "ShowAttendTellCaptioningPipeline"]
