# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Configuration of the Show, Attend and Tell captioning model."""

import math
import os

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig, ResNetConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import CONFIG_NAME


# ResNet-152: the encoder of the original Show-Attend-Tell reimplementations.
RESNET152_KWARGS = {
    "depths": [3, 8, 36, 3],
    "hidden_sizes": [256, 512, 1024, 2048],
    "layer_type": "bottleneck",
    "embedding_size": 64,
}
# A sane bound for this architecture (the paper's sizes with bert-base's vocabulary: 90 M). A config.json asking for
# more (e.g. a few-KB folder whose config asks for 160 GB) is refused before anything is allocated.
MAX_PARAMETERS = 2_000_000_000


class InvalidConfigError(ValueError):
    """A config value that cannot build the model: "<file>: <problem>" (the file when the config came from one)."""

    def __init__(self, problem: str, file: str | None = None):
        super().__init__(f"{file}: {problem}" if file else problem)
        self.problem, self.file = problem, file


def config_file(name_or_path) -> str | None:
    """The config.json of a folder (or of a Hub repo, by its id), for messages."""
    return os.path.join(str(name_or_path), CONFIG_NAME) if name_or_path else None


@strict  # every field's type is checked (as transformers' own configs are): "16" or 16.5 is not a size
class ShowAttendTellConfig(PreTrainedConfig):
    r"""
    Configuration of [`ShowAttendTellForConditionalGeneration`]: a frozen ResNet encoder and an attention
    LSTM decoder (Xu et al., 2015, "Show, Attend and Tell"). The defaults are the paper's sizes with a
    ResNet-152 encoder and the bert-base-uncased WordPiece vocabulary.

    Args:
        encoder_config (`ResNetConfig` or `dict`, *optional*):
            The image encoder. Defaults to ResNet-152 (depths 3/8/36/3, bottleneck, 2048 channels).
        vocab_size (`int`, defaults to 30522): size of the output vocabulary.
        embedding_size (`int`, defaults to 512): word embedding size.
        attention_size (`int`, defaults to 512): size of the additive attention layer.
        hidden_size (`int`, defaults to 512): LSTM hidden size.
        dropout (`float`, defaults to 0.5): dropout before the output layer.
        attention_regularization (`float`, defaults to 1.0): weight λ of the doubly stochastic
            attention term λ·Σ_regions(1 − Σ_t α)².
        freeze_encoder (`bool`, defaults to `True`): no gradients for the encoder and its BatchNorm
            statistics never move.
        whiten_features (`bool`, defaults to `False`): after standardising each channel, decorrelate the channels
            (ZCA whitening with the training set's channel covariance, the `feature_whitening` buffer). Gradient
            descent then reads weak directions of the features (e.g. an object's colour in a random encoder's
            features) as fast as strong ones. `train.py` turns it on; off by default so that a config.json without the
            field describes a model without the `feature_whitening` buffer.
        image_size (`int`, defaults to 224): side of the (square, center-cropped) images the processor makes;
            the encoder turns them into a ceil(image_size/32)² region map (7×7 = 49 at 224).
        pad_token_id / bos_token_id / eos_token_id: BERT's [PAD]=0, [CLS]=101 (start), [SEP]=102 (end).
    """

    model_type = "show_attend_tell"
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(config_class=ResNetConfig, init_kwargs=RESNET152_KWARGS),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    vocab_size: int = 30522
    embedding_size: int = 512
    attention_size: int = 512
    hidden_size: int = 512
    dropout: float | int = 0.5
    attention_regularization: float | int = 1.0
    freeze_encoder: bool = True
    whiten_features: bool = False
    image_size: int = 224
    pad_token_id: int | None = 0
    bos_token_id: int | None = 101
    eos_token_id: int | None = 102
    decoder_start_token_id: int | None = 101
    initializer_range: float | int = 0.02
    tie_word_embeddings: bool = False

    # Whether a config read from a folder keeps its `custom_pipelines` (the captioning pipeline as remote code, for
    # users without hf-imgcap). The installed package turns this off on its own class: it serves those task names
    # itself, and transformers would ask for trust_remote_code for any task a folder's config names.
    keeps_remote_pipelines = True

    def __post_init__(self, **kwargs):
        if not type(self).keeps_remote_pipelines:
            kwargs.pop("custom_pipelines", None)
        super().__post_init__(**kwargs)
        for name in ("vocab_size", "embedding_size", "attention_size", "hidden_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary (vocab_size={self.vocab_size})")
        if self.estimated_num_parameters() > MAX_PARAMETERS:
            raise ValueError(f"config asks for {self.estimated_num_parameters():,} parameters ({self.describe_sizes()}), over the "
                             f"limit of {MAX_PARAMETERS:,} for this model: refused before allocating")

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PreTrainedConfig.from_dict`; a field that cannot build the model (wrong type, out of range, also in
        `encoder_config`) is an `InvalidConfigError` naming the file it came from (when known) and the field."""
        try:
            return super().from_dict(config_dict, **kwargs)
        except InvalidConfigError:
            raise
        except (StrictDataclassError, ValueError, TypeError) as error:
            raise InvalidConfigError(" ".join(str(error).split()), config_file(kwargs.get("name_or_path"))) from None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except InvalidConfigError as error:  # AutoConfig passes `name_or_path` to `from_dict`, this path does not
            raise InvalidConfigError(error.problem, error.file or config_file(pretrained_model_name_or_path)) from None

    @property
    def num_regions(self) -> int:
        """Regions of the encoder's feature map for `image_size`² images (7×7 = 49 at 224)."""
        return self.feature_map_side(self.image_size) ** 2

    @property
    def encoder_stride(self) -> int:
        """How much the ResNet downsamples: 4 in its stem, then 2 in every stage but the first (32 for 4 stages)."""
        encoder = self.encoder_config
        return 4 * 2 ** (len(encoder.depths) - 1 + int(bool(encoder.downsample_in_first_stage)))

    def feature_map_side(self, pixels: int) -> int:
        """Side of the encoder's feature map for an image side of `pixels`: every stride-2 layer rounds up."""
        return math.ceil(pixels / self.encoder_stride)

    @property
    def encoder_hidden_size(self) -> int:
        """Channels of the encoder's last feature map (2048 for ResNet-152)."""
        return self.encoder_config.hidden_sizes[-1]

    def estimated_num_parameters(self) -> int:
        """The number of parameters the model will have, from the sizes in this config alone (no module is built),
        so that an absurd config is refused before anything is allocated. Equals `model.num_parameters()`."""
        encoder = self.encoder_config
        count = encoder.num_channels * encoder.embedding_size * 49 + 2 * encoder.embedding_size  # 7×7 stem + BatchNorm
        in_channels = encoder.embedding_size
        for stage, (depth, out_channels) in enumerate(zip(encoder.depths, encoder.hidden_sizes)):
            stride = 2 if stage > 0 or encoder.downsample_in_first_stage else 1
            for layer in range(depth):
                if in_channels != out_channels or (layer == 0 and stride != 1):  # shortcut 1×1 conv + BatchNorm
                    count += in_channels * out_channels + 2 * out_channels
                if encoder.layer_type == "bottleneck":  # 1×1, 3×3, 1×1 convolutions, each with BatchNorm
                    reduced = out_channels // 4
                    count += in_channels * reduced + 9 * reduced**2 + reduced * out_channels + 2 * (2 * reduced + out_channels)
                else:  # two 3×3 convolutions with BatchNorm
                    count += 9 * in_channels * out_channels + 9 * out_channels**2 + 4 * out_channels
                in_channels = out_channels
        V, E, A, H, C = self.vocab_size, self.embedding_size, self.attention_size, self.hidden_size, self.encoder_hidden_size
        count += V * E  # word embeddings
        count += 2 * (C * H + H)  # h0, c0 from the mean feature
        count += (C * A + A) + (H * A + A) + A  # additive attention
        count += H * C + C  # context gate
        count += 4 * H * (E + C + H) + 8 * H  # LSTM cell
        count += H * V + V  # output layer
        return count

    def describe_sizes(self) -> str:
        """The config values that set the model's size, as `name=value` pairs (for error messages)."""
        encoder = self.encoder_config
        names = ("vocab_size", "embedding_size", "attention_size", "hidden_size", "image_size")
        return ", ".join([f"{name}={getattr(self, name)}" for name in names]
                         + [f"encoder_config.{name}={getattr(encoder, name)}" for name in ("depths", "hidden_sizes", "embedding_size")])


__all__ = ["InvalidConfigError", "ShowAttendTellConfig"]
