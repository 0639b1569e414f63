# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Build a captioner around a pretrained ResNet: `microsoft/resnet-152` (Hub id or folder) or torchvision weights."""

import logging
import re
from pathlib import Path

import torch
from transformers import ResNetConfig, ResNetModel

from hf_imgcap.models.show_attend_tell.configuration_show_attend_tell import ShowAttendTellConfig
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import ShowAttendTellForConditionalGeneration

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "microsoft/resnet-152"
_TORCHVISION_DEPTHS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3], "resnet152": [3, 8, 36, 3]}


def convert_torchvision_resnet_state_dict(state_dict: dict) -> dict:
    """Rename a torchvision bottleneck ResNet's `state_dict` to transformers `ResNetModel` keys; `fc` is dropped.

    `conv1/bn1 -> embedder.embedder.{convolution,normalization}`,
    `layer{s}.{i}.conv{j}/bn{j} -> encoder.stages.{s-1}.layers.{i}.layer.{j-1}.{convolution,normalization}`,
    `layer{s}.{i}.downsample.{0,1} -> encoder.stages.{s-1}.layers.{i}.shortcut.{convolution,normalization}`.
    """
    converted = {}
    for key, tensor in state_dict.items():
        if key.startswith("fc."):
            continue
        new_key = _convert_key(key)
        if new_key is None:
            raise ValueError(f"unexpected key {key!r} in the torchvision ResNet state dict")
        converted[new_key] = tensor
    return converted


def _convert_key(key: str) -> str | None:
    part = {"conv": "convolution", "bn": "normalization"}
    match = re.fullmatch(r"(conv|bn)1\.(\w+)", key)
    if match:
        return f"embedder.embedder.{part[match[1]]}.{match[2]}"
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", key)
    if match:
        stage, block, kind, index, name = match.groups()
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(index) - 1}.{part[kind]}.{name}"
    match = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", key)
    if match:
        stage, block, index, name = match.groups()
        kind = "convolution" if index == "0" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{kind}.{name}"
    return None


def resnet_config_for_torchvision(state_dict: dict) -> ResNetConfig:
    """The `ResNetConfig` of a torchvision bottleneck ResNet, read from its `state_dict` (block counts per stage)."""
    depths = []
    for stage in range(1, 5):
        blocks = {int(m[1]) for key in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        if not blocks:
            raise ValueError(f"not a torchvision ResNet state dict: no layer{stage}.* keys")
        depths.append(max(blocks) + 1)
    if "layer1.0.conv3.weight" not in state_dict:
        raise ValueError("only bottleneck ResNets (50/101/152) are supported: layer1.0.conv3 is missing")
    return ResNetConfig(depths=depths, hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck", embedding_size=64)


def load_torchvision_resnet_state_dict(name: str = "resnet152") -> dict:
    """Download torchvision's ImageNet weights (`IMAGENET1K_V2`) for resnet50/101/152 (needs the network)."""
    import torchvision

    if name not in _TORCHVISION_DEPTHS:
        raise ValueError(f"unknown torchvision model {name!r}; choose one of {sorted(_TORCHVISION_DEPTHS)}")
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V2
    return getattr(torchvision.models, name)(weights=weights).state_dict()


def load_encoder(source=DEFAULT_ENCODER) -> ResNetModel:
    """A pretrained `ResNetModel` from a Hub id or folder of a transformers ResNet (e.g. `microsoft/resnet-152`),
    a torchvision name (`"torchvision:resnet152"`), a torchvision `state_dict`, or a `.pth` file holding one."""
    if isinstance(source, dict):
        state_dict = source
    elif isinstance(source, str) and source.startswith("torchvision:"):
        state_dict = load_torchvision_resnet_state_dict(source.split(":", 1)[1])
    elif isinstance(source, (str, Path)) and Path(source).suffix in (".pth", ".pt"):
        state_dict = torch.load(source, map_location="cpu", weights_only=True)  # never unpickles code
    else:
        # microsoft/resnet-152 is a ResNetForImageClassification checkpoint; ResNetModel takes its "resnet." part.
        return ResNetModel.from_pretrained(str(source))
    encoder = ResNetModel(resnet_config_for_torchvision(state_dict))
    encoder.load_state_dict(convert_torchvision_resnet_state_dict(state_dict), strict=True)
    return encoder


def build_captioner(encoder=DEFAULT_ENCODER, **config_kwargs) -> ShowAttendTellForConditionalGeneration:
    """A new captioner whose encoder carries pretrained weights and whose decoder is freshly initialised.

    The weights are copied in after the model is built: `post_init()` re-initialises every Conv/BatchNorm,
    so loading earlier would be silently undone.
    """
    pretrained = encoder if isinstance(encoder, ResNetModel) else load_encoder(encoder)
    encoder_config = pretrained.config.to_dict()
    config = ShowAttendTellConfig(encoder_config=encoder_config, **config_kwargs)
    model = ShowAttendTellForConditionalGeneration(config)
    model.encoder.load_state_dict(pretrained.state_dict(), strict=True)
    logger.info("encoder weights loaded from %s", encoder if not isinstance(encoder, dict) else "a state dict")
    return model
