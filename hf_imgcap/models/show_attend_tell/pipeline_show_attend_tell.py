# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The captioning pipeline: images in, `[{"generated_text": caption}]` out, as v4's `image-to-text` was.

This file travels with the model: the modeling file imports its class (so transformers copies this file with the
model's code, on saving and into its modules cache on a remote-code load) and names it in the `custom_pipelines` entry
of `config.json` (`CUSTOM_PIPELINES` there) under the tasks
"image-to-text" (the Hub's task for the model card's `pipeline_tag`) and "image-text-to-text", so that

    pipeline("image-to-text", model=folder_or_repo, trust_remote_code=True)

finds this class, offline, without hf-imgcap installed. Keep it that way: no imports of hf_imgcap (same-folder
relative imports only), and nothing beyond transformers, torch and Pillow. (Two tasks means that `pipeline(model=...)`
without a task asks to pick one.)

With hf-imgcap installed, `import hf_imgcap` registers the task "image-captioning" with transformers, and no remote
code is needed: `pipeline("image-captioning", model=folder_or_repo)`, or `pipeline("image-captioning", model=model,
processor=processor)` for objects in memory.

Why both names: transformers 5 redirects "image-to-text" to its built-in "image-text-to-text" before it looks at
its registry, so only a saved folder's `custom_pipelines` entry (looked up before the redirect) can serve
"image-to-text"; the models in memory are served under "image-captioning".
"""

from typing import Any

import torch
from transformers import Pipeline

# The task name hf-imgcap registers in transformers' pipeline registry when it is imported.
PIPELINE_TASK = "image-captioning"
# The task whose results, like transformers' own pipeline of that name, also give the (empty) prompt.
IMAGE_TEXT_TO_TEXT = "image-text-to-text"


class ShowAttendTellCaptioningPipeline(Pipeline):
    """Caption images with a Show, Attend and Tell model.

    ```python
    >>> from transformers import pipeline
    >>> captioner = pipeline("image-to-text", model="path/to/saved/model", trust_remote_code=True)
    >>> captioner("dog.jpg", num_beams=3, max_new_tokens=20)
    [{'generated_text': 'a dog runs through the grass'}]
    >>> captioner(["dog.jpg", "cat.png"])  # a list in, a list of results out
    [[{'generated_text': ...}], [{'generated_text': ...}]]
    ```

    Inputs: a path, an http(s) URL, encoded image bytes, a `PIL.Image`, an `(H, W[, C])` or `(C, H, W)` numpy array
    or torch tensor, a `datasets` image dict `{"bytes": ..., "path": ...}`, or a list / dataset / generator of them.
    Every keyword that is not a pipeline option goes to `model.generate()` (`num_beams`, `max_new_tokens`,
    `do_sample`, `num_return_sequences`, `length_penalty`, ...), as does `generate_kwargs={...}`; the same
    keywords given to `pipeline(...)` apply to every call. Pipeline options: `batch_size`, `num_workers`,
    `timeout` (seconds, for URLs). A result has one `{"generated_text": ...}` per returned sequence.

    As "image-text-to-text" it takes that pipeline's call, `pipe(images=..., text=...)`: a caption has no prompt,
    so the text is optional and must be empty, and each result also gives it back as `"input_text": ""`.

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

    def __call__(self, images=None, text=None, **kwargs) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Caption one image (returns a list of dicts) or a list of images (returns a list of such lists)."""
        if "inputs" in kwargs:  # the base class's name for the first argument
            if images is not None:
                raise ValueError("pass the images either positionally or as inputs=..., not both")
            images = kwargs.pop("inputs")
        if images is None:
            raise ValueError("no image given")
        self._check_no_prompt(text)
        if isinstance(images, tuple):
            images = list(images)  # the base class batches lists only
        if isinstance(images, list) and len(images) == 0:
            return []
        return super().__call__(images, **kwargs)

    @staticmethod
    def _check_no_prompt(text) -> None:
        """image-text-to-text passes a text: empty (or none) is the only prompt a caption from scratch has."""
        texts = [text] if text is None or isinstance(text, str) else list(text)
        prompts = [t for t in texts if t not in (None, "")]
        if prompts:
            raise ValueError(
                f"text={prompts[0]!r}: this pipeline captions an image from scratch (no prompt); leave text out or pass "
                "text=\"\" (to continue a prompt, use model.generate(**processor(images=..., text=...)))"
            )

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
        # The processor opens files and URLs robustly and raises ValueError("<path or URL>: <reason>") for a bad one.
        return {"pixel_values": self.processor(images=[image], timeout=timeout).pixel_values}

    def _forward(self, model_inputs: dict[str, torch.Tensor], generate_kwargs: dict | None = None) -> dict:
        pixel_values = model_inputs["pixel_values"]
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        sequences = self.model.generate(pixel_values=pixel_values, **generate_kwargs)
        # (images, sequences per image, length): the base class splits batches along the first dimension.
        return {"sequences": sequences.reshape(pixel_values.shape[0], -1, sequences.shape[-1])}

    def postprocess(self, model_outputs: dict) -> list[dict[str, str]]:
        sequences = model_outputs["sequences"][0]  # this image's sequences
        prompt = {"input_text": ""} if self.task == IMAGE_TEXT_TO_TEXT else {}  # that pipeline's result format
        return [{**prompt, "generated_text": caption} for caption in self.processor.batch_decode(sequences)]

    def save_pretrained(self, save_directory, **kwargs: Any):
        """Save the model (with this pipeline's code and `custom_pipelines` entry) and the processor."""
        # Not the base class's: that saves the tokenizer and image processor but not the processor.
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


__all__ = ["IMAGE_TEXT_TO_TEXT", "PIPELINE_TASK", "ShowAttendTellCaptioningPipeline"]
