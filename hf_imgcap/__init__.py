# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""hf-imgcap: Show, Attend and Tell image captioning, native to transformers / datasets / accelerate."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from hf_imgcap.models.show_attend_tell.configuration_show_attend_tell import ShowAttendTellConfig
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import (
    ShowAttendTellForConditionalGeneration,
    ShowAttendTellPreTrainedModel,
    ShowAttendTellState,
)
from hf_imgcap.models.show_attend_tell.pipeline_show_attend_tell import PIPELINE_TASK, ShowAttendTellCaptioningPipeline
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import ShowAttendTellProcessor

__version__ = "0.1.0"

# With the package installed, the auto classes resolve our classes without trust_remote_code.
AutoConfig.register(ShowAttendTellConfig.model_type, ShowAttendTellConfig, exist_ok=True)
AutoModel.register(ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, exist_ok=True)
AutoProcessor.register(ShowAttendTellConfig, ShowAttendTellProcessor, exist_ok=True)
# `pipeline("image-captioning", model=folder_or_repo)` and `pipeline("image-captioning", model=model,
# processor=processor)` without remote code. Saved folders also carry the pipeline for users without hf-imgcap
# (config.json `custom_pipelines`, with the pipeline file): `pipeline("image-to-text", model=folder,
# trust_remote_code=True)`. Their entries deliberately leave out "image-captioning": a folder's own entry would
# take precedence over this registration and ask for remote code.
if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=ShowAttendTellCaptioningPipeline, pt_model=AutoModel, type="multimodal"
    )

__all__ = [
    "PIPELINE_TASK",
    "ShowAttendTellCaptioningPipeline",
    "ShowAttendTellConfig",
    "ShowAttendTellForConditionalGeneration",
    "ShowAttendTellPreTrainedModel",
    "ShowAttendTellProcessor",
    "ShowAttendTellState",
]
