# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What `import hf_imgcap` tells transformers' `pipeline()`, so that the installed package serves a Show-Attend-Tell
model under "image-captioning", "image-to-text" and "image-text-to-text", from a folder or repo (no remote code) and
for objects in memory (`pipeline(task, model=model, processor=processor)`).

How transformers 5 resolves those names, and what this module does about each step:
- A task named in the `custom_pipelines` of a folder's config.json needs `trust_remote_code=True`. Saved folders name
  all three tasks there, for users without hf-imgcap; the installed package's config class does not keep them
  (`ShowAttendTellConfig.keeps_remote_pipelines`), so the steps below apply.
- "image-to-text" is redirected to "image-text-to-text" before the registry is read, and a model object has no config
  file to read: the registry's "image-text-to-text" entry decides. This module puts `ImageTextToTextPipelines` there:
  a Show-Attend-Tell model gets `ShowAttendTellCaptioningPipeline`, every other model the pipeline class transformers
  registered, built with the same arguments (its loading flags are that class's, so nothing changes for them).
- "image-captioning" is registered as a task of its own.
"""

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from hf_imgcap.models.show_attend_tell.configuration_show_attend_tell import ShowAttendTellConfig
from hf_imgcap.models.show_attend_tell.pipeline_show_attend_tell import (
    IMAGE_TEXT_TO_TEXT,
    PIPELINE_TASK,
    ShowAttendTellCaptioningPipeline,
)

_LOADING_FLAGS = ("_load_processor", "_load_image_processor", "_load_feature_extractor", "_load_tokenizer", "_load_video_processor")


def _pipeline_class(impl):
    """A registry entry's class: transformers stores its own as dotted-path strings, resolved when used."""
    if isinstance(impl, str):
        import importlib

        module, name = impl.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)
    return impl


class ImageTextToTextPipelines:
    """transformers' registry entry for "image-text-to-text" (and so "image-to-text") while hf-imgcap is imported.

    `pipeline()` reads the loading flags of this class (set to those of `builtin`, the class transformers registered)
    and then calls it with the loaded model: a Show-Attend-Tell model (by `config.model_type`, so a remote-code object
    too) gets a `ShowAttendTellCaptioningPipeline`, any other model a `builtin` instance, exactly as without hf-imgcap.
    """

    builtin: type | None = None

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if getattr(getattr(model, "config", None), "model_type", None) == ShowAttendTellConfig.model_type:
            return ShowAttendTellCaptioningPipeline(*args, **kwargs)
        return cls.builtin(*args, **kwargs)


def register_pipelines() -> None:
    """Idempotent: registers "image-captioning", takes over the "image-text-to-text" entry (keeping its default model
    and model classes) and stops the installed config class from keeping folders' remote pipeline entries."""
    ShowAttendTellConfig.keeps_remote_pipelines = False
    if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_TASK, pipeline_class=ShowAttendTellCaptioningPipeline, pt_model=AutoModel, type="multimodal"
        )
    entry = PIPELINE_REGISTRY.supported_tasks[IMAGE_TEXT_TO_TEXT]
    if entry["impl"] is not ImageTextToTextPipelines:
        builtin = _pipeline_class(entry["impl"])
        ImageTextToTextPipelines.builtin = builtin
        for flag in _LOADING_FLAGS:
            setattr(ImageTextToTextPipelines, flag, getattr(builtin, flag, False))
        # Assigned, not `register_pipeline`d: that would log an "overwriting" warning at every import.
        PIPELINE_REGISTRY.supported_tasks[IMAGE_TEXT_TO_TEXT] = {**entry, "impl": ImageTextToTextPipelines}


__all__ = ["ImageTextToTextPipelines", "register_pipelines"]
