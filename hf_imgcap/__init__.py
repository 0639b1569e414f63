# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""hf-imgcap: Show, Attend and Tell image captioning, native to transformers / datasets / accelerate."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from hf_imgcap.models.pipeline_registration import register_pipelines
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
# "image-captioning", "image-to-text" and "image-text-to-text" pipelines from folders, repos and objects in memory, without
# remote code (see pipeline_registration.py).
register_pipelines()

__all__ = [
    "PIPELINE_TASK",
    "ShowAttendTellCaptioningPipeline",
    "ShowAttendTellConfig",
    "ShowAttendTellForConditionalGeneration",
    "ShowAttendTellPreTrainedModel",
    "ShowAttendTellProcessor",
    "ShowAttendTellState",
]
