# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""hf-imgcap: Show, Attend and Tell image captioning, native to transformers / datasets / accelerate."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_show_attend_tell import ShowAttendTellConfig
from .modeling_show_attend_tell import (
    ShowAttendTellForConditionalGeneration,
    ShowAttendTellPreTrainedModel,
    ShowAttendTellState,
)
from .processing_show_attend_tell import ShowAttendTellProcessor

__version__ = "0.1.0"

# With the package installed, the auto classes resolve our classes without trust_remote_code.
AutoConfig.register(ShowAttendTellConfig.model_type, ShowAttendTellConfig, exist_ok=True)
AutoModel.register(ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, exist_ok=True)
AutoProcessor.register(ShowAttendTellConfig, ShowAttendTellProcessor, exist_ok=True)

__all__ = [
    "ShowAttendTellConfig",
    "ShowAttendTellForConditionalGeneration",
    "ShowAttendTellPreTrainedModel",
    "ShowAttendTellProcessor",
    "ShowAttendTellState",
]
