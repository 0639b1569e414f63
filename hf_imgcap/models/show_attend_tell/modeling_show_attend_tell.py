# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Show, Attend and Tell (Xu et al., 2015): a ResNet encoder and an attention LSTM decoder, as one transformers model.

This file reads in the order of the paper (and of the PyTorch tutorial to image captioning that many users know):

1. encoder        a ResNet's last feature map: one feature vector per image region;
2. features       each image's map divided by its root-mean-square, then standardised with the training set's
                  statistics and, optionally, whitened;
3. initial state  h0 and c0 from the mean feature (the recurrent state also serves as generate()'s cache);
4. attention      additive attention over the regions;
5. LSTM step      a gate β on the attended context, an LSTMCell on [word embedding; context]: `step` is THE
                  specification of the decoder;
6. output, loss   a linear layer to the vocabulary; cross-entropy plus the doubly stochastic attention regulariser;
7. forward        whole captions at once (training: the fast kernel of `fused_teacher_forcing.py`) or step by step;
8. generation     `generate` (greedy, beam search, sampling), `caption`, the attention behind generated tokens;
9. save / load    the code files next to the weights; loading refuses weights that do not fit the config.
The input checks are private functions at the bottom.

The functions and small modules come first (features, the recurrent state, attention), then the model, whose methods
follow the same order. Shapes are given in comments, e.g. `(images, regions, channels)`; "rows" are the captions being
decoded, several per image when an image has several captions or beams (consecutive rows share an image).

Part of the remote-code bundle: this file and the same-folder files it imports are copied next to the weights, so
`AutoModel.from_pretrained(folder, trust_remote_code=True)` works without hf_imgcap. Imports torch, transformers and
the bundle's own files only.
"""

import copy
import inspect
import math
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, ResNetModel, StoppingCriteriaList
from transformers import initialization as init
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, can_return_tuple, cached_file

from .beam_search import beam_search, beam_search_handles
from .configuration_show_attend_tell import ShowAttendTellConfig
from .fused_teacher_forcing import LinearCrossEntropy, fast_linear, fast_tanh, teacher_forced_decode
from .image_loading import MAX_IMAGE_PIXELS, URL_SCHEMES, describe, verify_image
from .pipeline_show_attend_tell import IMAGE_TEXT_TO_TEXT, PIPELINE_TASK, ShowAttendTellCaptioningPipeline


@dataclass
class ShowAttendTellOutput(ModelOutput):
    """
    Args:
        loss: caption cross-entropy (mean over real tokens) + the attention regulariser.
        logits: `(batch, seq_len, vocab)` scores for the token after each input position; positions
            after a caption's end are zero (they are never computed). `None` with `return_logits=False`.
        cache: the recurrent decoding state ([`ShowAttendTellState`]) when `use_cache=True` (also readable as
            `past_key_values`, the name transformers below 5.24 reads it by).
        attentions: `(batch, seq_len, regions)` attention weights of each position (`output_attentions=True`).
        hidden_states: `((batch, seq_len, hidden),)`: the decoder LSTM's output at each position (`output_hidden_states=True`).
        caption_loss / attention_loss: the two parts of `loss`, for logging.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: "ShowAttendTellState | None" = None
    attentions: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    caption_loss: torch.FloatTensor | None = None
    attention_loss: torch.FloatTensor | None = None

    @property
    def past_key_values(self) -> "ShowAttendTellState | None":
        return self.cache


# ---------------------------------------------------------------------------------------------- 2. features
# The decoder's input is each image's map divided by its root-mean-square (`normalize_features`: parameter-free, so
# `get_image_features` and the feature cache hold it), then standardised with the training set's statistics:
#     (features - feature_mean) / (feature_scale * feature_std)      and, with `config.whiten_features`,   @ feature_whitening
# Why: a frozen encoder's features share a large image-independent part (for a randomly initialised ResNet-152, nearly
# all of every value); removing the per-(region, channel) mean makes what differs between images visible to the decoder.
# Dividing by a per-channel spread gives every channel the same weight at the start of training (with one global
# scale, a few high-variance channels dominate). Per-channel scaling leaves the channels correlated: features vary
# mostly along a few directions, and what tells images apart may lie along weak ones, which gradient descent hardly
# moves along. ZCA whitening gives every direction unit variance. On the directions the training set spans it is
# invertible, so the decoder can represent the same functions: it changes how fast training finds them, not what can
# be learned.
# The buffers, by their checkpoint names (identity until `set_feature_statistics`):
#   feature_mean       (regions, channels)  the training set's mean of `get_image_features`;
#   feature_std        (regions, channels)  the spread each value is divided by (per channel: equal in every region);
#   feature_scale      ()                   a global divisor, 1 after `set_feature_statistics`. It stays in the formula
#                                           because checkpoints without `feature_std` (then left at ones) carry their
#                                           whole spread in it;
#   feature_whitening  (channels, channels) only with `config.whiten_features`: the symmetric ZCA matrix
#                                           V·diag((λ + ε·mean λ)^-½)·Vᵀ of the standardised features' channel
#                                           covariance VΛVᵀ (0 for directions the training set does not span).

# A channel whose values hardly vary (e.g. a ReLU that is almost never active) must not be blown up into noise:
# each standard deviation is at least this fraction of the root-mean-square spread over all values.
STD_FLOOR = 0.1
# What a standard deviation is taken over: "channel" (pooled over the regions), "region_channel" or "global".
STANDARDIZE_PER = "channel"
# ZCA whitening's regulariser ε: each eigenvalue gets ε times the mean eigenvalue added before the inverse square root,
# so directions the training set hardly varies along are not blown up into noise (those it does not span are dropped).
WHITENING_EPSILON = 0.01


def normalize_features(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each image's `(regions, channels)` map by its root-mean-square (computed in fp32)."""
    rms = features.float().pow(2).mean(dim=(1, 2), keepdim=True).add(eps).sqrt()  # (images, 1, 1)
    return (features.float() / rms).to(features.dtype)


def standard_deviation(variance: torch.Tensor, per: str = STANDARDIZE_PER, floor: float = STD_FLOOR) -> torch.Tensor:
    """The `(regions, channels)` divisor from the per-(region, channel) variance around the per-(region, channel)
    mean: pooled over the regions (`per="channel"`), as is (`"region_channel"`) or over everything (`"global"`, one
    scale for all values), floored at `floor` times the global spread."""
    variance = torch.as_tensor(variance, dtype=torch.float64).clamp(min=0)
    pooled = {"channel": lambda: variance.mean(0, keepdim=True), "region_channel": lambda: variance,
              "global": lambda: variance.mean()}
    if per not in pooled:
        raise ValueError(f"standardise per one of {', '.join(pooled)}, not {per!r}")
    overall = variance.mean().sqrt()
    if overall == 0:  # all-equal features (e.g. a blind baseline): nothing to scale
        return torch.ones_like(variance, dtype=torch.float32)
    std = pooled[per]().sqrt().clamp(min=floor * overall)
    return std.expand_as(variance).float().contiguous()


def whitening_matrix(covariance: torch.Tensor, std: torch.Tensor, epsilon: float = WHITENING_EPSILON) -> torch.Tensor:
    """The `(channels, channels)` ZCA matrix for features standardised by `std` (a per-channel spread: `(channels,)`,
    or `(regions, channels)` equal in every region), from `covariance`, the raw features' `(channels, channels)`
    covariance around their per-(region, channel) mean. Identity when the features do not vary (a blind baseline)."""
    covariance = torch.as_tensor(covariance, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64)
    if std.dim() == 2:
        if not torch.equal(std, std[:1].expand_as(std)):
            raise ValueError("feature whitening needs one standard deviation per channel (the same in every region)")
        std = std[0]
    channels = covariance.shape[0]
    if covariance.shape != (channels, channels) or std.shape != (channels,):
        raise ValueError(f"covariance {tuple(covariance.shape)} and std {tuple(std.shape)} do not describe the same channels")
    standardized = covariance / torch.outer(std, std)
    eigenvalues, eigenvectors = torch.linalg.eigh((standardized + standardized.T) / 2)
    eigenvalues = eigenvalues.clamp(min=0)  # rounding makes the null space's eigenvalues slightly negative
    if eigenvalues.mean() <= 0:
        return torch.eye(channels)
    # Directions the training features do not span (fewer samples than channels, dead channels) are dropped, not
    # amplified: their components are rounding noise, and Adam would random-walk the weights that read them.
    spanned = eigenvalues > eigenvalues.max() * 1e-6
    scale = torch.where(spanned, (eigenvalues + epsilon * eigenvalues.mean()).rsqrt(), torch.zeros_like(eigenvalues))
    return ((eigenvectors * scale) @ eigenvectors.T).float()


# ---------------------------------------------------------------------------------------------- 3. the recurrent state
# transformers from 5.24 carries the decoding state between generate() steps under the name `cache` (model kwargs,
# forward argument); earlier 5.x versions, which remote code may run with, call it `past_key_values`.
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"


class ShowAttendTellState:
    """The decoder's recurrent state, which `generate()` carries between steps as its cache.

    The LSTM state `hidden`, `cell` of every row next to what the rows attend over: the standardised image features
    and their attention projection, computed and kept once per image. `rows_per_image` consecutive rows (beams,
    returned sequences) share an image, so later steps need neither the images, nor a re-encoding, nor a copy of the
    features per beam.
    """

    def __init__(self, features, projected_features, hidden, cell, rows_per_image=1, seen_tokens=0):
        self.features = features  # (images, regions, channels)
        self.projected_features = projected_features  # (images, regions, attention)
        self.hidden = hidden  # (rows, hidden), rows = images * rows_per_image
        self.cell = cell  # (rows, hidden)
        self.rows_per_image = rows_per_image
        self.seen_tokens = seen_tokens
        self._selected = None  # (images, their features, their projected features), see `of_images`
        # During generate(): the images whose rows can still change the result, `(images,)` bool (None: all), and
        # for greedy search and sampling the rows that have finished. The cached forward decodes only those images'
        # rows (see "Skipping finished images" in section 8).
        self.decoded_images = None
        self.finished_rows = None

    def of_images(self, images: torch.Tensor) -> "ShowAttendTellState":
        """The state of some images' rows only: `images` `(images,)` bool. Their features are selected once and kept
        until other images are asked for (beam search asks for fewer and fewer); hidden and cell are copies."""
        if self._selected is None or not torch.equal(self._selected[0], images):
            self._selected = (images, self.features[images], self.projected_features[images])
        rows = images.repeat_interleave(self.rows_per_image)
        _, features, projected_features = self._selected
        return ShowAttendTellState(features, projected_features, self.hidden[rows], self.cell[rows], self.rows_per_image,
                                   self.seen_tokens)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Beam search: keep the rows of the surviving beams (in place). Beams never move between images."""
        beam_idx = beam_idx.to(self.hidden.device)
        rows = torch.arange(len(beam_idx), device=beam_idx.device)
        if not torch.equal(beam_idx // self.rows_per_image, rows // self.rows_per_image):
            raise ValueError("reorder_cache: a beam index moves a caption to another image's features")
        self.hidden = self.hidden.index_select(0, beam_idx)
        self.cell = self.cell.index_select(0, beam_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def __len__(self):
        return self.hidden.shape[0]


class _GenerationInThisThread(threading.local):
    """What the model's generation hooks share during the generate() call running in this thread: whether finished
    images may be skipped (not when per-step scores, logits or states are returned: they would show the skipped
    rows) and the current decoding state (a weak reference: it must not outlive the call)."""

    skip_finished_images = False
    attentions_wanted = False
    state_ref = None

    def state(self) -> "ShowAttendTellState | None":
        return self.state_ref() if self.state_ref is not None else None


_GENERATION = _GenerationInThisThread()


class _FinishedRowsRecorder(StoppingCriteriaList):
    """transformers' stopping criteria for greedy search and sampling, which also note in the decoding state the rows
    they have stopped: transformers replaces a stopped row's later tokens by padding (when one criterion is the end
    token), so its logits are never used again."""

    def __call__(self, input_ids, scores, **kwargs):
        is_done = super().__call__(input_ids, scores, **kwargs)  # (rows,)
        state = _GENERATION.state()
        # One new token per row since the state's last step: greedy search or sampling, not a drafting scheme.
        if _GENERATION.skip_finished_images and state is not None and is_done.shape == (len(state),) and input_ids.shape[1] == state.seen_tokens + 1:
            state.finished_rows = is_done if state.finished_rows is None else state.finished_rows | is_done
            state.decoded_images = ~state.finished_rows.view(-1, state.rows_per_image).all(dim=1)
        return is_done


# ---------------------------------------------------------------------------------------------- layers
def _runs_as_written(module: nn.Module, cls: type) -> bool:
    """Whether `module` is exactly `cls`, without hooks. The fast paths read such a layer's weights directly; a layer
    that a user has wrapped or replaced (a PEFT adapter, a quantised layer), hooked (its own forward or backward
    hooks, or torch's global module hooks) or whose `forward` was replaced on the instance (as accelerate's hooks
    do) must run as itself."""
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks,
             *(getattr(torch.nn.modules.module, name, None) for name in _GLOBAL_MODULE_HOOKS))
    return type(module) is cls and "forward" not in vars(module) and not any(hooks)


# torch's registries of hooks that run on every module (`torch.nn.modules.module.register_module_forward_hook`, ...).
_GLOBAL_MODULE_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                        "_global_backward_pre_hooks")


class ShowAttendTellLinear(nn.Linear):
    """`nn.Linear` (same parameters, same initialisation) whose product runs through oneDNN on CPU when no gradient
    is needed (`fast_linear`): generation's per-step products."""

    def forward(self, x):
        return fast_linear(x, self.weight, self.bias)


class ShowAttendTellLSTMCell(nn.LSTMCell):
    """`nn.LSTMCell` (same parameters, same gate order: input, forget, cell, output) with its two products through
    `fast_linear`. Always called with a batch and its state `(h, c)`."""

    def forward(self, input, hx):
        hidden, cell = hx
        gates = fast_linear(input, self.weight_ih, self.bias_ih) + fast_linear(hidden, self.weight_hh, self.bias_hh)
        in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
        return torch.sigmoid(out_gate) * torch.tanh(cell), cell


# ---------------------------------------------------------------------------------------------- 4. attention
class ShowAttendTellAttention(nn.Module):
    """Additive (Bahdanau) attention over image regions: α = softmax_regions(w·tanh(W_a a_i + W_h h)), z = Σ_i α_i a_i."""

    def __init__(self, encoder_size: int, hidden_size: int, attention_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_size, attention_size)  # W_a
        self.decoder_proj = ShowAttendTellLinear(hidden_size, attention_size)  # W_h
        self.score = nn.Linear(attention_size, 1, bias=False)  # w; a bias would be a no-op under the softmax

    def project_regions(self, features: torch.Tensor) -> torch.Tensor:
        """Once per image: `(images, regions, channels)` -> `(images, regions, attention)`."""
        return self.encoder_proj(features)

    def weights(self, projected_features: torch.Tensor, projected_hidden: torch.Tensor) -> torch.Tensor:
        """Softmax over regions of score(tanh(regions + query)); `projected_hidden` broadcasts over the regions,
        i.e. has a size-1 dimension where `projected_features` has the regions."""
        energy = fast_tanh(projected_features + projected_hidden, overwrite=True)  # tanh of a temporary sum
        return torch.softmax(self.score(energy).squeeze(-1), dim=-1)

    def forward(self, features, projected_features, hidden):
        """One query per row: the context vectors `(rows, channels)` and weights `(rows, regions)`.
        `features` / `projected_features` hold one entry per image; each image has `rows / images` consecutive rows."""
        images = features.shape[0]
        query = self.decoder_proj(hidden)  # (rows, attention)
        query = query.view(images, -1, 1, query.shape[-1])  # (images, rows per image, 1, attention)
        alpha = self.weights(projected_features.unsqueeze(1), query)  # (images, rows per image, regions)
        context = torch.bmm(alpha, features)  # (images, rows per image, channels)
        return context.flatten(0, 1), alpha.flatten(0, 1)


# ---------------------------------------------------------------------------------------------- the model
class ShowAttendTellPreTrainedModel(PreTrainedModel):
    config: ShowAttendTellConfig
    config_class = ShowAttendTellConfig
    base_model_prefix = "show_attend_tell"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True  # the encoder's stages, when it trains (see `_run_encoder`)
    _no_split_modules = ["ShowAttendTellAttention"]

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):  # encoder, as transformers' ResNet does
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -0.1, 0.1)
        elif isinstance(module, nn.LSTMCell):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                init.uniform_(param, -bound, bound)
        elif isinstance(module, ShowAttendTellForConditionalGeneration):
            init.zeros_(module.feature_mean)  # identity standardisation until set from data
            init.ones_(module.feature_std)
            init.ones_(module.feature_scale)
            if module.config.whiten_features:
                init.eye_(module.feature_whitening)
        elif isinstance(module, nn.Linear):  # torch's default Linear init
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)


class ShowAttendTellForConditionalGeneration(ShowAttendTellPreTrainedModel, GenerationMixin):
    """ResNet encoder (frozen by default) + attention LSTM decoder, with `generate()` for captioning."""

    _auto_class = "AutoModel"  # save_pretrained copies the code files next to the weights
    # A checkpoint without `feature_std` loads with it at ones: its spread is all in `feature_scale` (see 2. features).
    _keys_to_ignore_on_load_missing = [r"^feature_std$"]
    # Set by `gradient_checkpointing_enable()` / TrainingArguments(gradient_checkpointing=True); see `_run_encoder`.
    gradient_checkpointing = False

    def __init__(self, config: ShowAttendTellConfig):
        super().__init__(config)
        regions, channels = config.num_regions, config.encoder_hidden_size
        hidden, embedding = config.hidden_size, config.embedding_size
        # 1. encoder
        self.encoder = ResNetModel(config.encoder_config)
        # The decoder. Modules are created in this order because post_init draws their initial values in it: the
        # same seed gives the same model.
        self.embed_tokens = nn.Embedding(config.vocab_size, embedding, padding_idx=config.pad_token_id)  # 5. E y
        self.init_hidden = nn.Linear(channels, hidden)  # 3. h0 from the mean feature
        self.init_cell = nn.Linear(channels, hidden)  # 3. c0 from the mean feature
        self.attention = ShowAttendTellAttention(channels, hidden, config.attention_size)  # 4.
        self.context_gate = ShowAttendTellLinear(hidden, channels)  # 5. β, the gate on the context
        self.lstm = ShowAttendTellLSTMCell(embedding + channels, hidden)  # 5.
        self.dropout = nn.Dropout(config.dropout)  # 6. before the output layer
        self.lm_head = nn.Linear(hidden, config.vocab_size)  # 6.
        # 2. features: the standardisation's buffers, identity until `set_feature_statistics` (`_init_weights` too).
        self.register_buffer("feature_mean", torch.zeros(regions, channels))
        self.register_buffer("feature_std", torch.ones(regions, channels))
        self.register_buffer("feature_scale", torch.ones(()))
        if config.whiten_features:
            self.register_buffer("feature_whitening", torch.eye(channels))
        self.post_init()
        self._apply_encoder_freeze()
        # Captions are short: without this, generate() warns and stops at 20 tokens, and image-text-to-text at 256.
        # A saved generation_config.json (e.g. the settings a model was evaluated with) overrides it on loading.
        if self.generation_config.max_new_tokens is None:
            self.generation_config.max_new_tokens = 40

    # get/set_input_embeddings and get/set_output_embeddings: transformers' defaults (`embed_tokens`, `lm_head`).

    # ------------------------------------------------------------------------------------------ 1. encoder
    def _apply_encoder_freeze(self):
        if self.config.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # BatchNorm statistics of a frozen encoder must never move
        return self

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images to the `(images, regions, channels)` map the decoder attends over (7×7×2048 at 224²).

        Each image's map is divided by its root-mean-square: the decoder then sees O(1) inputs whatever
        the encoder's scale (pretrained ResNet-152 features are O(1); randomly initialised ones ~1e7,
        which would also overflow an fp16 feature cache). This is a fixed, parameter-free step, so the
        result is still a pure function of the image and can be cached.
        """
        return normalize_features(self._features(pixel_values, None))

    def _image_features_with(self, encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """`get_image_features` with `encoder`, a module that computes what `self.encoder` does (the feature cache's
        copy rewritten for inference), in its place; `self` is not changed, so other threads may use it meanwhile."""
        return normalize_features(self._encode(_check_pixel_values(self.config, pixel_values), encoder))

    def _features(self, pixel_values, encoder_hidden_states):
        """The `(images, regions, channels)` features, given or encoded from `pixel_values`: validated, not standardised."""
        if encoder_hidden_states is not None:
            return _check_region_features(self.config, encoder_hidden_states, "encoder_hidden_states", allow_map=True)
        return self._encode(_check_pixel_values(self.config, pixel_values))

    def _encode(self, pixel_values, encoder=None):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            feature_map = self._run_encoder(pixel_values.to(self.dtype), encoder)  # (images, channels, height, width)
        return feature_map.flatten(2).transpose(1, 2)  # (images, regions, channels)

    def _run_encoder(self, pixel_values, encoder=None):
        """The ResNet's `(images, channels, height, width)` map. With activation checkpointing on and the encoder
        training (the memory-heavy case: ResNet-152's activations), each stage's activations are recomputed in the
        backward pass instead of kept. The decoder is not checkpointed: its fused kernel keeps only `(rows, hidden)`
        states per step, and a frozen encoder runs without gradients, so checkpointing then changes nothing."""
        encoder = self.encoder if encoder is None else encoder
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return encoder(pixel_values, return_dict=True).last_hidden_state
        hidden = encoder.embedder(pixel_values)
        for stage in encoder.encoder.stages:
            hidden = self._gradient_checkpointing_func(stage.__call__, hidden)
        return hidden

    # ------------------------------------------------------------------------------------------ 2. features
    def standardize_features(self, features: torch.Tensor) -> torch.Tensor:
        """The decoder's input from `(images, regions, channels)` features as `get_image_features` returns them (or a
        feature cache holds them): standardised with the training set's statistics and, with `config.whiten_features`,
        whitened. Pass the result as `image_embeds` to `forward` / `generate` to standardise each image once, however
        many captions it has (whitening costs a `(regions, channels) × (channels, channels)` product per call)."""
        return self._standardize(_check_region_features(self.config, features, "features"))

    def _standardize(self, features):
        """`standardize_features` without the checks. Dividing by the rms first also makes raw encoder maps of any
        scale safe (it is idempotent on `get_image_features` / cached features)."""
        features = normalize_features(features.to(self.dtype))  # (images, regions, channels)
        divisor = (self.feature_scale * self.feature_std).to(features.dtype)  # (regions, channels)
        standardized = (features - self.feature_mean.to(features.dtype)) / divisor
        if self.config.whiten_features:
            standardized = standardized @ self.feature_whitening.to(features.dtype)  # symmetric: rows or columns alike
        return standardized

    def _image_embeds(self, pixel_values, encoder_hidden_states, image_embeds):
        """The decoder's `(images, regions, channels)` input from whichever of the three image inputs was given."""
        _check_one_image_input(pixel_values, encoder_hidden_states, image_embeds)
        if image_embeds is not None:
            return _check_region_features(self.config, image_embeds, "image_embeds").to(self.dtype)
        return self._standardize(self._features(pixel_values, encoder_hidden_states))

    @torch.no_grad()
    def set_feature_statistics(self, mean, std, whitening=None):
        """Standardise features as `(features - mean) / std` from now on. `mean`: `(regions, channels)`, the training
        set's mean of `get_image_features`; `std`: a number, or a tensor `(channels,)` / `(1, channels)` /
        `(regions, channels)` of positive spreads (`FeatureCache.statistics()` gives both). `whitening`: the
        `(channels, channels)` matrix applied after (`whitening_matrix`), required when `config.whiten_features`
        and refused otherwise."""
        mean = torch.as_tensor(mean, dtype=self.feature_mean.dtype)
        std = torch.as_tensor(std, dtype=self.feature_std.dtype)
        if mean.shape != self.feature_mean.shape:
            raise ValueError(f"feature mean must have shape {tuple(self.feature_mean.shape)}, got {tuple(mean.shape)}")
        try:
            std = std.expand_as(self.feature_std)
        except RuntimeError:
            raise ValueError(f"feature std must be a number or have shape (channels,) or {tuple(self.feature_std.shape)}, "
                             f"got {tuple(std.shape)}") from None
        if not torch.isfinite(mean).all() or not torch.isfinite(std).all() or not (std > 0).all():
            raise ValueError(f"feature statistics must be finite with a positive std, got std in "
                             f"[{std.min().item():g}, {std.max().item():g}]")
        whitening = self._checked_whitening(whitening)
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)
        self.feature_scale.fill_(1.0)
        if whitening is not None:
            self.feature_whitening.copy_(whitening)

    def _checked_whitening(self, whitening):
        if not self.config.whiten_features:
            if whitening is not None:
                raise ValueError("a whitening matrix was given but config.whiten_features is off")
            return None
        if whitening is None:
            raise ValueError("config.whiten_features is on: pass the whitening matrix too (FeatureCache.whitening)")
        whitening = torch.as_tensor(whitening, dtype=self.feature_whitening.dtype)
        if whitening.shape != self.feature_whitening.shape:
            raise ValueError(f"feature whitening must have shape {tuple(self.feature_whitening.shape)}, got {tuple(whitening.shape)}")
        if not torch.isfinite(whitening).all():
            raise ValueError("feature whitening must be finite")
        return whitening

    # ------------------------------------------------------------------------------------------ 3. initial state
    def initial_state(self, features, rows_per_image: int = 1) -> ShowAttendTellState:
        """h0 and c0 from the mean feature. `features` `(images, regions, channels)`, standardised; `rows_per_image`
        consecutive rows (captions, beams) per image."""
        mean_feature = features.mean(dim=1)  # (images, channels)
        return ShowAttendTellState(
            features=features,
            projected_features=self.attention.project_regions(features),  # (images, regions, attention), once per image
            hidden=self.init_hidden(mean_feature).repeat_interleave(rows_per_image, dim=0),  # (rows, hidden)
            cell=self.init_cell(mean_feature).repeat_interleave(rows_per_image, dim=0),  # (rows, hidden)
            rows_per_image=rows_per_image,
        )

    # ------------------------------------------------------------------------------------------ 4. attention
    # `self.attention`, a `ShowAttendTellAttention` (above): the regions' projection once per image
    # (`initial_state`), one query per row and step (`step`).

    # ------------------------------------------------------------------------------------------ 5. LSTM step
    def step(self, token_ids, state: ShowAttendTellState):
        """One word of the decoder: THE SPECIFICATION of Show, Attend and Tell's decoder in this package.

        Every path computes exactly this: the cached forward and `generate()` call it; the training kernel
        `fused_teacher_forcing.teacher_forced_decode` rearranges it for speed, each of its lines marked with the
        tag ([attend], [gate], [input], [lstm]) of the line here that it computes (tested equal, outputs and gradients).

        `token_ids` (rows,): the previous word y_{t-1}. Updates `state` in place (h, c) and returns the new hidden
        state h_t `(rows, hidden)` and the attention weights α_t `(rows, regions)`.
        """
        # [attend] z_t, α_t: additive attention over the regions, queried with the previous hidden state h_{t-1}
        context, alpha = self.attention(state.features, state.projected_features, state.hidden)  # (rows, channels), (rows, regions)
        # [gate] β_t ⊙ z_t with β_t = σ(W_β h_{t-1} + b_β)
        gated_context = torch.sigmoid(self.context_gate(state.hidden)) * context  # (rows, channels)
        # [input] the LSTM's input [E y_{t-1}; β_t ⊙ z_t]
        lstm_input = torch.cat([self.embed_tokens(token_ids), gated_context], dim=-1)  # (rows, embedding + channels)
        # [lstm] one LSTMCell step: (h_t, c_t) from the input and (h_{t-1}, c_{t-1})
        state.hidden, state.cell = self.lstm(lstm_input, (state.hidden, state.cell))  # (rows, hidden) each
        state.seen_tokens += 1
        return state.hidden, alpha

    # ------------------------------------------------------------------------------------------ 6. output layer, loss
    def next_token_logits(self, hidden):
        hidden = self.dropout(hidden)  # (..., hidden) -> (..., vocab) logits
        if _runs_as_written(self.lm_head, nn.Linear):
            return fast_linear(hidden, self.lm_head.weight, self.lm_head.bias)  # lm_head(hidden); oneDNN on CPU in generation
        return self.lm_head(hidden)

    def _next_token_targets(self, labels, input_ids):
        """Position t is scored against label t+1 (-100: not scored); the last position has no target."""
        _check_same_shape(labels, "labels", input_ids)
        target = torch.full_like(labels, -100)  # (captions, seq_len)
        target[:, :-1] = labels[:, 1:]
        _check_label_ids(self.config, target)
        return target

    def loss(self, targets, alphas, rows, num_captions, hiddens=None, logits=None, num_items_in_batch=None,
             num_captions_in_batch=None):
        """(loss, caption_loss, attention_loss) over the scored positions: `targets` (positions,) their next tokens,
        `alphas` (positions, regions) their attention, `rows` (positions,) their caption, and their `hiddens`
        (positions, hidden) or `logits` (positions, vocab). See `forward` for the two counts."""
        if logits is None and not _runs_as_written(self.lm_head, nn.Linear):
            logits = self.next_token_logits(hiddens)  # a wrapped or hooked output layer runs as itself, not fused
        if logits is None:  # the output layer fused with the loss: no (positions, vocab) log-probabilities in memory
            summed = LinearCrossEntropy.apply(self.dropout(hiddens), self.lm_head.weight, self.lm_head.bias, targets)
        else:
            summed = F.cross_entropy(logits.float(), targets, reduction="sum")
        caption_loss = summed / (len(targets) if num_items_in_batch is None else num_items_in_batch)
        # Doubly stochastic attention: every region should receive about one unit of attention over the steps
        # that write the caption. Per caption: the mean over regions of (1 - Σ_t α)²; summed, then normalised.
        attention_per_region = alphas.new_zeros(num_captions, alphas.shape[1]).index_add_(0, rows, alphas)  # (captions, regions)
        summed_attention = ((1.0 - attention_per_region) ** 2).mean(dim=1).sum()
        if num_captions_in_batch is None and num_items_in_batch is not None:  # Trainer: the step's token count only
            num_captions_in_batch = num_captions * num_items_in_batch / max(len(targets), 1)  # weigh by the token share
        attention_loss = summed_attention / (num_captions if num_captions_in_batch is None else num_captions_in_batch)
        return caption_loss + self.config.attention_regularization * attention_loss, caption_loss, attention_loss

    def _losses(self, *args, **kwargs) -> dict:
        return dict(zip(("loss", "caption_loss", "attention_loss"), self.loss(*args, **kwargs)))

    # ------------------------------------------------------------------------------------------ 7. forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: ShowAttendTellState | None = None,
        past_key_values: ShowAttendTellState | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_logits: bool = True,
        num_items_in_batch: int | torch.Tensor | None = None,
        num_captions_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> ShowAttendTellOutput:
        r"""
        The images come in one of three forms (there may be fewer images than captions: k captions per image, in
        consecutive rows of `input_ids`):
        pixel_values (`(batch, 3, H, W)`): images from the processor.
        encoder_hidden_states (`(batch, regions, channels)`): their features, from `get_image_features` or the
            feature cache; standardised here.
        image_embeds (`(batch, regions, channels)`): the decoder's input itself, from `standardize_features`: used as
            given. Standardise each image once and pass the result here when an image has several captions.
        input_ids (`(batch, seq_len)`): captions starting with the start token ([CLS]); right-padded. If omitted,
            built from `labels` (a Seq2SeqTrainer batch; see `_inputs_from_labels`).
        attention_mask: 1 for real tokens; if omitted, tokens equal to `pad_token_id` are padding.
        labels: usually `input_ids` with padding set to -100; position t is scored against label t+1.
        output_hidden_states / return_dict=False: the decoder's hidden states / a tuple, as in transformers.
        cache / use_cache: step-by-step decoding with a [`ShowAttendTellState`] (as `generate()` does);
            `past_key_values` is the same argument, under the name transformers below 5.24 passes it by.
        return_logits: set False in training loops to skip materialising the `(batch, seq_len, vocab)`
            logits; the output layer then runs only where the loss needs it.
        num_items_in_batch: divide the summed token cross-entropy by this instead of this batch's token
            count (as transformers' Trainer does), so that several processes or accumulated micro-batches
            weigh every token of the global batch equally.
        num_captions_in_batch: divide the summed attention regulariser by this instead of this batch's caption
            count. The regulariser is one term per caption (Xu et al.), the mean over regions of (1 − Σ_t α)², so
            it is normalised by captions, not tokens: λ then keeps its meaning whatever the caption lengths. Pass
            the global batch's counts in both arguments (divided by the number of processes under DDP, which
            averages gradients) and the parts' losses add up exactly to the full batch's loss and gradient. With
            only `num_items_in_batch` (transformers' Trainer), this batch's share of the tokens weighs its mean.
        """
        cache = cache if cache is not None else past_key_values
        # Step by step with a cache, and for a left-padded batch (generate()'s prompts): each row skips its padding
        # there. The whole-caption kernel needs right padding.
        stepwise = cache is not None or bool(use_cache) or _left_padded(attention_mask)
        input_ids, attention_mask, labels = self._inputs_from_labels(input_ids, attention_mask, labels)
        attention_mask = _check_text_inputs(self.config, input_ids, attention_mask, labels, cache, stepwise)
        target = None if labels is None else self._next_token_targets(labels, input_ids)  # (batch, seq_len)
        features = None
        if cache is None:
            features = self._image_embeds(pixel_values, encoder_hidden_states, image_embeds)  # (images, regions, channels)
            _check_batch(features, input_ids, allow_several_per_image=True)
        counts = {"num_items_in_batch": num_items_in_batch, "num_captions_in_batch": num_captions_in_batch}
        wanted = {"attentions": bool(output_attentions),
                  "hidden_states": self.config.output_hidden_states if output_hidden_states is None else output_hidden_states}
        if stepwise:
            fields = self._forward_stepwise(input_ids, features, cache, attention_mask, target, counts)
            fields["cache"] = fields["cache"] if use_cache or (use_cache is None and cache is not None) else None
            fields = {name: value for name, value in fields.items() if wanted.get(name, True)}
        else:
            fields = self._forward_teacher_forced(input_ids, features, attention_mask, target, return_logits, wanted, counts)
        if fields.get("hidden_states") is not None:
            fields["hidden_states"] = (fields["hidden_states"],)  # one tensor per decoder layer, as transformers returns them
        return ShowAttendTellOutput(**fields)

    def _inputs_from_labels(self, input_ids, attention_mask, labels):
        """A labels-only batch (as a `Seq2SeqTrainer` data collator makes it): build the captions' input from the
        labels, start token first and -100 replaced by padding, as seq2seq models' `shift_tokens_right` does.

        The model scores position t against label t+1 (the causal-LM convention), so labels that already start with
        the start token (the processor's `input_ids` with padding set to -100) are the input as they are; labels
        without it (the seq2seq convention: the first word first) get it prepended, and their first word becomes
        the target of the start token. Returns `(input_ids, attention_mask, labels)`."""
        if input_ids is not None or labels is None:
            return input_ids, attention_mask, labels
        if not torch.is_tensor(labels) or labels.ndim != 2 or 0 in labels.shape:
            raise ValueError(f"labels must be a non-empty (batch, seq_len) tensor of token ids, got {getattr(labels, 'shape', type(labels))}")
        start = self.config.decoder_start_token_id
        start = self.config.bos_token_id if start is None else start
        starts = labels[:, 0] == start
        if not starts.all():
            if starts.any():
                raise ValueError(f"labels: rows {starts.nonzero().flatten().tolist()} start with the start token ({start}) and others "
                                 "do not; give every row in the same convention")
            labels = torch.cat([labels.new_full((labels.shape[0], 1), start), labels], dim=1)
        input_ids = labels.masked_fill(labels == -100, self.config.pad_token_id)
        return input_ids, (labels != -100).long() if attention_mask is None else attention_mask, labels

    def _forward_teacher_forced(self, input_ids, features, attention_mask, target, return_logits, wanted, counts):
        """Whole right-padded captions at once with the fused kernel; the output layer only at real positions."""
        batch_size, seq_len = input_ids.shape
        lengths = self._caption_lengths(input_ids, attention_mask)  # (captions,)
        if target is not None and not return_logits:  # a caption's output after its last scored position is unused
            last_scored = torch.where(target != -100, torch.arange(seq_len, device=target.device), -1).amax(1) + 1
            lengths = torch.minimum(lengths, last_scored.clamp(min=1))
        if features.shape[0] != batch_size:  # consecutive captions of the same image
            features = features.repeat_interleave(batch_size // features.shape[0], dim=0)  # (captions, regions, channels)
        # Packed time-major: position 0 of every caption, then position 1 of those still running, ...
        state = self.initial_state(features)
        if self._fused_kernel_applies():
            hiddens, alphas, rows, positions = teacher_forced_decode(self, state, input_ids, lengths)
        else:
            hiddens, alphas, rows, positions = self._decode_step_by_step(state, input_ids, lengths)

        fields = {}
        packed_logits = self.next_token_logits(hiddens) if return_logits else None  # (positions, vocab)
        if target is not None:
            packed_target = target[rows, positions]
            scored = packed_target != -100
            fields |= self._losses(packed_target[scored], alphas[scored], rows[scored], batch_size, hiddens=hiddens[scored],
                                   logits=None if packed_logits is None else packed_logits[scored], **counts)
        for name, packed in (("logits", packed_logits), ("attentions", alphas), ("hidden_states", hiddens)):
            if return_logits if name == "logits" else wanted[name]:
                fields[name] = self._unpack(packed, rows, positions, batch_size, seq_len)
        return fields

    def _fused_kernel_applies(self) -> bool:
        """`teacher_forced_decode` reads these layers' weights by name and computes what their forwards would."""
        attention = self.attention
        return (_runs_as_written(attention, ShowAttendTellAttention) and _runs_as_written(attention.decoder_proj, ShowAttendTellLinear)
                and _runs_as_written(attention.score, nn.Linear) and _runs_as_written(self.context_gate, ShowAttendTellLinear)
                and _runs_as_written(self.lstm, ShowAttendTellLSTMCell))

    def _decode_step_by_step(self, state, input_ids, lengths):
        """What `teacher_forced_decode` returns, by calling `step` at every position: for a model whose decoder
        layers a user has wrapped (e.g. PEFT adapters), replaced or hooked, which the kernel would bypass. Slower."""
        hiddens, alphas = [], []
        for position in range(int(lengths.max())):
            hidden, alpha = self.step(input_ids[:, position], state)  # (captions, hidden), (captions, regions)
            hiddens.append(hidden)
            alphas.append(alpha)
        positions = torch.arange(len(hiddens), device=lengths.device)
        positions, rows = (lengths.unsqueeze(0) > positions.unsqueeze(1)).nonzero(as_tuple=True)  # time-major
        return torch.stack(hiddens)[positions, rows], torch.stack(alphas)[positions, rows], rows, positions

    def _caption_lengths(self, input_ids, attention_mask):
        """Each caption's number of real tokens `(captions,)`; refuses empty captions and masks that are not 1…1 0…0."""
        real = input_ids != self.config.pad_token_id if attention_mask is None else attention_mask.bool()
        if attention_mask is None:
            real[:, 0] = True
        lengths = real.sum(1)
        if (lengths == 0).any():
            raise ValueError(f"caption {int((lengths == 0).nonzero()[0])} in the batch is empty (attention_mask all 0)")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if (real != (positions < lengths.unsqueeze(1))).any():
            raise ValueError("captions must be right-padded (attention_mask 1…1 0…0 on every row) or left-padded (0…0 1…1 "
                         "on every row)")
        return lengths

    @staticmethod
    def _unpack(packed, rows, positions, batch_size, seq_len):
        """`(positions, ·)` values of the real positions `(rows, positions)` -> `(batch, seq_len, ·)`, zero elsewhere."""
        unpacked = packed.new_zeros(batch_size, seq_len, packed.shape[-1])
        unpacked[rows, positions] = packed
        return unpacked

    def _forward_stepwise(self, input_ids, features, state, attention_mask, target, counts) -> dict:
        """`forward` with a cache (what generate() runs at every step): `step` through `input_ids`; where
        `attention_mask` is 0 (padding, e.g. the left padding of a batch of prompts) the state is left as it was, so
        a padded row decodes exactly as it would alone."""
        if state is None:
            state = self.initial_state(features, rows_per_image=input_ids.shape[0] // features.shape[0])
        elif state.decoded_images is not None and input_ids.shape[1] == 1 and target is None and not state.decoded_images.all():
            return self._step_decoded_images(input_ids[:, 0], state)
        hiddens, alphas = [], []
        for position in range(input_ids.shape[1]):
            before = state.hidden, state.cell
            hidden, alpha = self.step(input_ids[:, position], state)  # (rows, hidden), (rows, regions)
            if attention_mask is not None and not attention_mask[:, position].all():
                real = attention_mask[:, position].bool().unsqueeze(1)
                state.hidden = hidden = torch.where(real, state.hidden, before[0])
                state.cell = torch.where(real, state.cell, before[1])
            hiddens.append(hidden)
            alphas.append(alpha)
        hiddens, alphas = torch.stack(hiddens, dim=1), torch.stack(alphas, dim=1)  # (rows, seq_len, hidden / regions)
        logits = self.next_token_logits(hiddens)  # (rows, seq_len, vocab)
        fields = {"logits": logits, "cache": state, "attentions": alphas, "hidden_states": hiddens}
        if target is not None:
            rows, positions = (target != -100).nonzero(as_tuple=True)
            fields |= self._losses(target[rows, positions], alphas[rows, positions], rows, input_ids.shape[0],
                                   logits=logits[rows, positions], **counts)
        return fields

    # ------------------------------------------------------------------------------------------ 8. generation
    def _step_images(self, token_ids, state: ShowAttendTellState, images: torch.Tensor):
        """`step` for the rows of `images` (`(images,)` bool) only; the other rows keep their state. Returns the
        decoded rows' hidden states `(decoded rows, hidden)` and attention weights `(decoded rows, regions)`."""
        if bool(images.all()):
            return self.step(token_ids, state)
        rows = images.repeat_interleave(state.rows_per_image).nonzero().squeeze(1)
        if len(rows) == 0:  # all finished: generate() calls on only to keep in step with other processes (synced_gpus)
            state.seen_tokens += 1
            hidden, alpha = state.hidden.new_zeros(0, state.hidden.shape[1]), state.hidden.new_zeros(0, state.features.shape[1])
        else:
            part = state.of_images(images)
            hidden, alpha = self.step(token_ids[rows], part)  # (decoded rows, hidden), (decoded rows, regions)
            state.hidden = state.hidden.index_copy(0, rows, part.hidden)
            state.cell = state.cell.index_copy(0, rows, part.cell)
            state.seen_tokens = part.seen_tokens
        return hidden, alpha

    def _step_decoded_images(self, token_ids, state: ShowAttendTellState) -> dict:
        """A generation step that decodes only the rows of `state.decoded_images`. The other images have finished
        (nothing their rows could still produce changes the result), so their rows keep their state and get zero
        logits, attention and hidden state, which generate() uses for nothing but those rows."""
        decoded = state.decoded_images.repeat_interleave(state.rows_per_image)  # (rows,)
        rows, finished_rows = decoded.nonzero().squeeze(1), (~decoded).nonzero().squeeze(1)
        hidden, alpha = self._step_images(token_ids, state, state.decoded_images)
        logits = self.next_token_logits(hidden)

        def all_rows(values):  # (decoded rows, ·) -> (rows, 1, ·), zero in the finished images' rows
            every_row = values.new_empty(len(token_ids), values.shape[-1]).index_copy_(0, rows, values)
            return every_row.index_fill_(0, finished_rows, 0).unsqueeze(1)

        return {"logits": all_rows(logits), "cache": state, "attentions": all_rows(alpha), "hidden_states": all_rows(hidden)}

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is a ShowAttendTellState, not a key/value cache

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, past_key_values=None, image_embeds=None, attention_mask=None,
        output_attentions=None, output_hidden_states=None, use_cache=True, **kwargs
    ):
        # output_attentions never reaches a step: generate() returns the attentions of the chosen sequences instead.
        outputs = {"output_hidden_states": True} if output_hidden_states else {}
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            return {"input_ids": input_ids[:, -1:], "cache": cache, "use_cache": True, **outputs}
        # First step, or no cache: the whole (left-padded) prefix, with the standardised images.
        return {"input_ids": input_ids, "attention_mask": attention_mask, "image_embeds": image_embeds, "use_cache": use_cache,
                **outputs}

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # Beams and returned sequences of an image share its features: keep one copy per image, not one per beam.
        image_embeds = model_kwargs.pop("image_embeds", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        model_kwargs["image_embeds"] = image_embeds
        return input_ids, model_kwargs

    def _prepare_generation_config(self, generation_config, **kwargs):
        """transformers' merge of the caller's settings with `self.generation_config`, except that a caller's
        `max_length` wins over a `max_new_tokens` that came from the model's defaults (config.json or
        generation_config.json): transformers lets any `max_new_tokens` override `max_length`, so the model's default
        caption length would silently override e.g. `Seq2SeqTrainingArguments(generation_max_length=...)`. A caller
        giving both gets transformers' rule (max_new_tokens wins)."""
        merged, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        if self._caller_set("max_length", generation_config, kwargs) and not self._caller_set("max_new_tokens", generation_config, kwargs):
            merged.max_new_tokens = None
        # Attentions, asked for by keyword or in a generation config, come from one pass over the chosen sequences
        # after the search (see `generate`), not from its steps.
        _GENERATION.attentions_wanted = bool(merged.output_attentions)
        merged.output_attentions = False
        model_kwargs.pop("output_attentions", None)
        prompt_mask = model_kwargs.get("attention_mask")
        if _GENERATION.attentions_wanted and prompt_mask is not None and not prompt_mask.all():
            raise ValueError("output_attentions needs prompts of equal length; generate prompts of different lengths one by one")
        per_step_outputs = (merged.output_scores, merged.output_logits, merged.output_hidden_states, merged.output_attentions)
        _GENERATION.skip_finished_images = not (merged.return_dict_in_generate and any(per_step_outputs))
        _GENERATION.state_ref = None
        return merged, model_kwargs

    @staticmethod
    def _caller_set(name: str, generation_config, kwargs: dict) -> bool:
        """Whether the caller of `generate()` set a generation option: as a keyword or in the `GenerationConfig` they
        passed (whose unset options are None in transformers 5)."""
        return kwargs.get(name) is not None or (generation_config is not None and getattr(generation_config, name, None) is not None)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)
        if outputs.cache is not None:  # use_cache=False: each step runs on the whole prefix, with nothing to carry
            model_kwargs[CACHE_KWARG] = outputs.cache
        _GENERATION.state_ref = weakref.ref(outputs.cache) if outputs.cache is not None else None
        return model_kwargs

    # Skipping finished images. transformers decodes every row of a batch until the whole batch ends, also the rows
    # whose result is already fixed: a third of the rows for captions of Flickr-like lengths. The two hooks below
    # note in the decoding state which images are still open, and the cached forward decodes only their rows
    # (`_step_decoded_images`); the captions are the same.
    def _check_early_stop_heuristic(self, *args, **kwargs):
        """Beam search asks this after every step: which images' running beams could still beat their finished
        captions (`(images, 1)` bool). An image answered False has its result fixed and stays so."""
        improvable = super()._check_early_stop_heuristic(*args, **kwargs)
        state = _GENERATION.state()
        if _GENERATION.skip_finished_images and state is not None and improvable.numel() == state.features.shape[0]:
            state.decoded_images = improvable.reshape(-1)
        return improvable

    def _beam_search(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False, **model_kwargs):
        """transformers' beam search. In its everyday form (no logits processors, stopping at the end token or the
        length limit, no per-step outputs) it runs as `beam_search` (beam_search.py): the same search and result, with
        each beam's continuations ranked first and only the open images decoded. That search calls the decoder's step
        directly, so a model whose forward is wrapped (accelerate's mixed-precision autocast) or hooked runs
        transformers' search, which calls the forward at every step."""
        if _runs_as_written(self, type(self)) and beam_search_handles(
                self, logits_processor, stopping_criteria, generation_config, synced_gpus, model_kwargs):
            return beam_search(self, input_ids, stopping_criteria, generation_config, **model_kwargs)
        return super()._beam_search(input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus, **model_kwargs)

    def _get_stopping_criteria(self, generation_config, *args, **kwargs):
        """Greedy search and sampling with an end token: their stopping criteria also note the rows they stop."""
        criteria = super()._get_stopping_criteria(generation_config, *args, **kwargs)
        if generation_config.num_beams == 1 and any(hasattr(criterion, "eos_token_id") for criterion in criteria):
            return _FinishedRowsRecorder(criteria)
        return criteria

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, encoder_hidden_states=None, image_embeds=None, **kwargs):
        """`GenerationMixin.generate` for images: greedy, beam search, sampling and every logits processor.

        The images as in `forward`: `pixel_values`, their features `encoder_hidden_states` or the standardised
        `image_embeds`. Each image is encoded and standardised once (not once per beam) before decoding starts.
        `input_ids` (with its `attention_mask`), e.g. from `processor(images=..., text=...)`, is a prompt to
        continue: its trailing [SEP] is dropped and prompts of different lengths are left-padded, so each row's
        caption is the one its prompt gives alone. With `output_attentions=True, return_dict_in_generate=True`,
        `attentions` is a `(num_sequences, generated_len, regions)` tensor: the attention behind each
        generated token of the returned sequences (recomputed by a teacher-forced pass over the chosen
        sequences, so it is exact for beam search as well); zero after a sequence's end.

        `labels` (a training batch, as `Seq2SeqTrainer(predict_with_generate=True)` passes it) are the reference
        captions: they are ignored, and so are `input_ids` of their shape (the reference captions as the model's
        input), as Seq2SeqTrainer evicts `decoder_input_ids` made from labels: generation starts from the image.
        """
        labels = kwargs.pop("labels", None)
        if labels is not None and input_ids is not None and input_ids.shape == labels.shape:
            input_ids = None
            kwargs.pop("attention_mask", None)
        if kwargs.get("inputs") is not None:  # transformers' name for the main input: the pixel values
            if pixel_values is not None:
                raise ValueError("pixel_values given twice: as the first argument and as inputs=; pass one")
            pixel_values = kwargs.pop("inputs")
        _check_num_beams(self._generation_option(kwargs, "num_beams"))
        given = next((name for name, value in (("pixel_values", pixel_values), ("encoder_hidden_states", encoder_hidden_states),
                                               ("image_embeds", image_embeds)) if value is not None), "images")
        image_embeds = self._image_embeds(pixel_values, encoder_hidden_states, image_embeds)  # (images, regions, channels)
        _check_finite(image_embeds, given)
        if input_ids is None:
            input_ids = torch.full((image_embeds.shape[0], 1), self._start_token_id(kwargs), dtype=torch.long,
                                   device=image_embeds.device)
        else:
            _check_token_ids(self.config, input_ids, "input_ids")
            _check_batch(image_embeds, input_ids)
            input_ids, prompt_mask = self._prompts_for_generation(input_ids, kwargs.pop("attention_mask", None))
            kwargs["attention_mask"] = prompt_mask
        kwargs.pop("token_type_ids", None)
        try:
            outputs = super().generate(input_ids=input_ids, image_embeds=image_embeds, **kwargs)
            want_attentions = _GENERATION.attentions_wanted
        finally:  # a decoding state returned to the caller decodes all its rows again
            state = _GENERATION.state()
            if state is not None:
                state.decoded_images = state.finished_rows = None
            _GENERATION.state_ref, _GENERATION.skip_finished_images, _GENERATION.attentions_wanted = None, False, False
        if want_attentions and not torch.is_tensor(outputs):
            outputs["attentions"] = self.attention_for_sequences(outputs.sequences, image_embeds=image_embeds,
                                                                 prompt_length=input_ids.shape[1],
                                                                 eos_token_id=self._generation_option(kwargs, "eos_token_id"))
        return outputs

    def _generation_option(self, kwargs: dict, *names: str):
        """The first of `names` set for this generate() call: in the caller's keywords, else in the `GenerationConfig`
        they passed, else in the model's `generation_config`; None if none is."""
        for source in (kwargs, kwargs.get("generation_config"), self.generation_config):
            for name in names:
                value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
                if value is not None:
                    return value
        return None

    def _start_token_id(self, kwargs: dict) -> int:
        """The token a caption starts from: `decoder_start_token_id` or `bos_token_id`, the caller's before the model's."""
        start = self._generation_option(kwargs, "decoder_start_token_id", "bos_token_id")
        return int(self.config.bos_token_id if start is None else start)

    def _prompts_for_generation(self, input_ids, attention_mask):
        """Prompts (e.g. `processor(images=..., text=...)`, right-padded, ending with [SEP]) as generation needs
        them: without a trailing end token, so generation continues the text instead of starting after a caption
        that has ended, and left-padded, so that every row's newest token is its last column. Returns the ids and
        their attention mask; `_forward_stepwise` skips the padding, so each row decodes as it would alone."""
        pad, eos = self.config.pad_token_id, self.config.eos_token_id
        _check_same_shape(attention_mask, "attention_mask", input_ids)
        real = input_ids != pad if attention_mask is None else attention_mask.bool()
        prompts = [ids[keep] for ids, keep in zip(input_ids, real)]
        if any(len(prompt) == 0 for prompt in prompts):
            raise ValueError("a prompt in input_ids is empty (no token outside padding / attention_mask 0 everywhere)")
        prompts = [prompt[:-1] if len(prompt) > 1 and prompt[-1] == eos else prompt for prompt in prompts]
        length = max(len(prompt) for prompt in prompts)
        ids = input_ids.new_full((len(prompts), length), pad)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, length - len(prompt) :] = prompt
            mask[row, length - len(prompt) :] = 1
        return ids, mask

    @torch.no_grad()
    def caption(self, images, processor, batch_size: int = 16, return_attentions: bool = False, **generate_kwargs):
        """Captions for images (paths, PIL images or arrays; one or a list), the short path for notebooks.

        `processor` is the model's `ShowAttendTellProcessor`; `generate_kwargs` go to `generate()` (e.g.
        `num_beams=5`, `max_new_tokens=30`). Returns a list of strings, or with `return_attentions=True` a list of
        dicts with `caption`, `tokens` (the generated word pieces) and `attentions` (`(len(tokens), h, w)`); with
        `num_return_sequences=k`, k of them per image, one image after the other. An image that cannot be read
        raises a `ValueError` naming it, before any image is captioned.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not callable(processor) or not hasattr(processor, "batch_decode"):
            raise TypeError("processor must be the model's processor (AutoProcessor.from_pretrained(the model's folder)), "
                            f"got {type(processor).__name__}")
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        # Every file is checked (header and a cheap decode) before the first batch: a broken one late in a long list
        # must not cost the captions of the ones before it.
        for index, image in enumerate(images):
            if isinstance(image, (str, os.PathLike, bytes, dict)) and not str(image).startswith(URL_SCHEMES):
                verify_image(image, getattr(processor, "max_image_pixels", MAX_IMAGE_PIXELS), describe(image, index))
        side = math.isqrt(self.config.num_regions)
        results = []
        for start in range(0, len(images), batch_size):
            pixel_values = processor(images=images[start : start + batch_size]).pixel_values.to(self.device)
            if not return_attentions:
                results.extend(processor.batch_decode(self.generate(pixel_values=pixel_values, **generate_kwargs)))
                continue
            out = self.generate(
                pixel_values=pixel_values, output_attentions=True, return_dict_in_generate=True, **generate_kwargs
            )
            for row in range(out.sequences.shape[0]):
                generated = out.sequences[row, 1:]
                special = set(processor.tokenizer.all_special_ids)
                keep = [i for i, token in enumerate(generated.tolist()) if token not in special]
                results.append(
                    {
                        "caption": processor.decode(out.sequences[row]),
                        "tokens": processor.tokenizer.convert_ids_to_tokens(generated[keep].tolist()),
                        "attentions": out.attentions[row, keep].reshape(len(keep), side, side).cpu(),
                    }
                )
        return results[0] if single else results

    @torch.no_grad()
    def attention_for_sequences(self, sequences, encoder_hidden_states=None, prompt_length=1, image_embeds=None,
                                eos_token_id=None):
        """Attention `(num_sequences, generated_len, regions)` behind each generated token of `sequences`; zero
        after a sequence's first end token (`eos_token_id`: one id or a list; default the model's).

        The images as in `forward` (`encoder_hidden_states` or `image_embeds`), one per image; several sequences per
        image are matched to them in order.
        """
        image_embeds = self._image_embeds(None, encoder_hidden_states, image_embeds)  # (images, regions, channels)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.config.pad_token_id
        generated = sequences[:, prompt_length:]
        # A token is real up to and including the first end token.
        is_end = torch.isin(generated, torch.as_tensor(eos, device=generated.device).reshape(-1))
        ended_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()
        real = torch.cat([torch.ones_like(sequences[:, :prompt_length], dtype=torch.bool), ended_before == 0], dim=1)
        # The attention at input position p produced token p+1: feed every position whose next token is real.
        next_is_real = real[:, 1:]
        out = self.forward(
            input_ids=sequences[:, :-1].masked_fill(~next_is_real, pad),
            attention_mask=next_is_real.long(),
            image_embeds=image_embeds,
            output_attentions=True,
            return_logits=False,
        )
        attentions = out.attentions[:, prompt_length - 1 :]
        return attentions * real[:, prompt_length:].unsqueeze(-1)

    # ------------------------------------------------------------------------------------------ 9. save / load
    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` (safetensors, the code files, `auto_map`), with every auto class of
        `AUTO_MAP` and the captioning pipeline's `custom_pipelines` entry in config.json. The code files are checked
        before anything is written: a folder is complete or not written at all."""
        missing = missing_code_files()
        if missing:
            raise OSError(f"cannot save {type(self).__name__}: its code file(s) {missing} are missing, so the saved folder "
                          "would not load. Load the model from a folder or repo that holds all its .py files, or install hf-imgcap")
        self.config.auto_map = dict(AUTO_MAP)
        self.config.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, strict about the folder: a weights file that cannot be read, or that lacks,
        adds or misshapes a tensor of the model its config.json describes, is refused naming the file and the tensors
        (transformers would fill them with random values and only log it). `ignore_mismatched_sizes=True` allows other
        shapes, as in transformers. A checkpoint without `feature_std` loads (it stays at ones)."""
        return_loading_info = kwargs.pop("output_loading_info", False)
        allow_other_shapes = kwargs.get("ignore_mismatched_sizes", False)
        kwargs["ignore_mismatched_sizes"] = True  # mismatches are refused below, naming the tensors and both shapes
        try:
            loaded, loading_info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise OSError(f"{weights_file(pretrained_model_name_or_path, kwargs)}: not a complete safetensors file, truncated "
                          f"or corrupt ({error})") from None
        problems = loading_problems(loading_info, allow_other_shapes)
        if problems:
            raise ValueError(f"{weights_file(pretrained_model_name_or_path, kwargs)}: {'; '.join(problems)}. These are not the "
                             "weights of the model its config.json describes: refused rather than filled with random values")
        # Loading replaces every parameter with a new `nn.Parameter` (requires_grad=True), undoing the freeze that
        # __init__ applied: freeze again, or a reloaded model trains its "frozen" encoder (and DDP breaks).
        loaded._apply_encoder_freeze()
        return (loaded, loading_info) if return_loading_info else loaded


# ---------------------------------------------------------------------------------------------- 9. save / load
# Written into config.json on save so that AutoConfig, AutoModel and AutoModelForImageTextToText all load
# a saved folder with trust_remote_code=True (register_for_auto_class keeps only one auto class per model).
AUTO_MAP = {
    "AutoConfig": "configuration_show_attend_tell.ShowAttendTellConfig",
    "AutoModel": "modeling_show_attend_tell.ShowAttendTellForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_show_attend_tell.ShowAttendTellForConditionalGeneration",
}
# The captioning pipeline travels with the model, named here in config.json, where `pipeline(task,
# model=folder_or_repo, trust_remote_code=True)` looks it up before anything else: under the Hub's task for the card's
# `pipeline_tag` (image-to-text, which transformers 5 would otherwise redirect to its built-in image-text-to-text),
# image-text-to-text itself and hf-imgcap's image-captioning. These entries are remote code for users without
# hf-imgcap; the installed package ignores them and serves the same names itself (`ShowAttendTellConfig`).
# The pipeline's file is imported (relatively) for this entry, which also makes transformers treat it as part of the
# model's code: it is copied into the modules cache when the model is loaded with remote code and next to the weights
# when the model is saved, so a remote-code model saves a folder that serves the pipeline too.
_PIPELINE_ENTRY = {
    "impl": f"{ShowAttendTellCaptioningPipeline.__module__.rsplit('.', 1)[-1]}.{ShowAttendTellCaptioningPipeline.__name__}",
    "pt": ["AutoModel"],
    "type": "multimodal",
}
CUSTOM_PIPELINES = {task: dict(_PIPELINE_ENTRY) for task in ("image-to-text", IMAGE_TEXT_TO_TEXT, PIPELINE_TASK)}


def missing_code_files() -> list[str]:
    """The files of the model's code (this file and everything it imports relatively, as transformers copies them on
    saving) that are not where this module runs from: a folder saved without them would not load."""
    here = Path(__file__)
    return [str(path) for path in [here, *map(Path, get_relative_import_files(here))] if not path.is_file()]


def weights_file(name_or_path, from_pretrained_kwargs: dict) -> str:
    """The weights file an error should name: its local path (a folder's, or the Hub cache's) when there is one."""
    variant = from_pretrained_kwargs.get("variant")
    names = [SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME]
    if variant:
        names = [name.replace(".safetensors", f".{variant}.safetensors") for name in names]
    where = {key: from_pretrained_kwargs[key] for key in ("subfolder", "revision", "cache_dir") if from_pretrained_kwargs.get(key)}
    for name in names:
        path = cached_file(name_or_path, name, local_files_only=True, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **where)
        if path is not None:
            return path
    return os.path.join(str(name_or_path), names[0])


def loading_problems(loading_info: dict, allow_other_shapes: bool = False) -> list[str]:
    """What makes a checkpoint not this model's weights, from `from_pretrained`'s loading info (missing keys there
    already leave out `_keys_to_ignore_on_load_missing`)."""
    problems = []
    if loading_info["missing_keys"]:
        problems.append(f"missing tensor(s) {sorted(loading_info['missing_keys'])}")
    if loading_info["unexpected_keys"]:
        problems.append(f"unexpected tensor(s) {sorted(loading_info['unexpected_keys'])}")
    if not allow_other_shapes:
        problems += [f"tensor {key} has shape {list(saved)} but the model needs {list(needed)}"
                     for key, saved, needed in sorted(loading_info["mismatched_keys"])]
    problems += [str(message) for message in loading_info.get("error_msgs", [])]
    return problems


# ---------------------------------------------------------------------------------------------- input checks
# Each raises a `ValueError` that names the argument and the problem, before anything reaches torch.
def _check_text_inputs(config, input_ids, attention_mask, labels, cache, stepwise):
    """The checks of `forward`'s text inputs. Returns the attention mask over `input_ids` (with a cache, the part of
    the mask over the cached tokens dropped)."""
    if input_ids is None:
        raise ValueError("input_ids is required (start with the start token, e.g. [CLS] = %d)" % config.bos_token_id)
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, seq_len) tensor, got shape {tuple(input_ids.shape)}")
    _check_token_ids(config, input_ids, "input_ids")
    if labels is not None and cache is not None:
        raise ValueError(
            "labels with a cache from earlier steps: the loss (its attention regulariser sums over every step) "
            "needs the whole caption; pass the whole caption in one call"
        )
    if attention_mask is not None and stepwise:  # HF convention: the mask may also cover the cached tokens
        attention_mask = attention_mask[:, -input_ids.shape[1] :]
    _check_same_shape(attention_mask, "attention_mask", input_ids)
    return attention_mask


def _left_padded(attention_mask) -> bool:
    """Whether `attention_mask` is 0…0 1…1 on every row, with padding on some row: left padding, which only the
    step-by-step path reads."""
    if attention_mask is None or bool(attention_mask[:, 0].all()):
        return False
    mask = attention_mask.long()
    return bool((mask.cummax(dim=1).values == mask).all())


def _check_same_shape(tensor, name, input_ids):
    if tensor is not None and tensor.shape != input_ids.shape:
        raise ValueError(f"{name} {tuple(tensor.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")


def _check_token_ids(config, ids, name):
    bad = (ids < 0) | (ids >= config.vocab_size)
    if bad.any():
        raise ValueError(f"{name} contains token id {int(ids[bad][0])} outside the vocabulary (0..{config.vocab_size - 1})")


def _check_label_ids(config, target):
    bad = (target != -100) & ((target < 0) | (target >= config.vocab_size))
    if bad.any():
        raise ValueError(f"labels contain id {int(target[bad][0])} outside the vocabulary (0..{config.vocab_size - 1}) or -100")


def _check_batch(features, input_ids, allow_several_per_image=False):
    images, captions = features.shape[0], input_ids.shape[0]
    if captions != images and not (allow_several_per_image and captions % images == 0):
        raise ValueError(f"{images} images but {captions} captions in input_ids")


def _check_one_image_input(pixel_values, encoder_hidden_states, image_embeds):
    given = [name for name, value in (("pixel_values", pixel_values), ("encoder_hidden_states", encoder_hidden_states),
                                      ("image_embeds", image_embeds)) if value is not None]
    if len(given) > 1:
        raise ValueError(
            f"{' and '.join(given)} were both given: pass the images one way, as pixel_values (from the processor), "
            "encoder_hidden_states (their features, from get_image_features) or image_embeds (the standardised "
            "features, from standardize_features)"
        )


def _check_num_beams(num_beams):
    if num_beams is None:  # not set: one beam
        return
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")


def _check_finite(image_embeds, given: str):
    """Images whose features hold NaN or inf (NaN pixels, a corrupted feature cache, an fp16 overflow) decode to
    some caption all the same: refused, by index, before decoding."""
    finite = torch.isfinite(image_embeds).flatten(1).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        images = f"image {bad[0]}" if len(bad) == 1 else f"images {', '.join(map(str, bad[:10]))}{', ...' if len(bad) > 10 else ''}"
        raise ValueError(f"the {given} of {images} give features that are NaN or infinite: nothing can be decoded "
                         "from them (check those inputs, or an fp16 overflow)")


def _check_pixel_values(config, pixel_values):
    if pixel_values is None:
        raise ValueError("No image given: pass pixel_values (from the processor), encoder_hidden_states or image_embeds")
    channels = config.encoder_config.num_channels
    if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a (batch, {channels}, height, width) tensor, got {shape}")
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values is an empty batch (0 images)")
    if pixel_values.shape[1] != channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels, the encoder expects {channels} "
            f"(shape {tuple(pixel_values.shape)}; convert images to RGB, e.g. with the processor)"
        )
    _check_region_map(config, pixel_values)
    return pixel_values


def _check_region_map(config, pixel_values):
    """The decoder's feature statistics and attention are per region of the map the model was built for: images
    giving another map size are refused before the encoder runs."""
    height, width = pixel_values.shape[2:]
    got = (config.feature_map_side(height), config.feature_map_side(width))
    side = config.feature_map_side(config.image_size)
    if got != (side, side):
        raise ValueError(
            f"pixel_values {tuple(pixel_values.shape)} are {height}×{width} images, which the encoder turns into a "
            f"{got[0]}×{got[1]} region map; this model expects {config.image_size}×{config.image_size} images "
            f"({side}×{side} regions, config.image_size): make them with the model's processor "
            "(AutoProcessor.from_pretrained(model folder) or ShowAttendTellProcessor.from_config(model.config))"
        )


def _check_region_features(config, features, name, allow_map=False):
    """`(images, regions, channels)` features named `name`, validated; with `allow_map`, also the encoder's
    `(images, channels, height, width)` map, returned flattened."""
    size = config.encoder_hidden_size
    if not torch.is_tensor(features) or features.ndim not in ((3, 4) if allow_map else (3,)):
        got = tuple(features.shape) if torch.is_tensor(features) else type(features)
        raise ValueError(f"{name} must be (batch, regions, {size}) features, got {got}")
    if features.ndim == 4:  # (images, channels, height, width) as the encoder emits it
        if features.shape[1] != size:
            raise ValueError(f"{name} {tuple(features.shape)}: expected {size} channels in dim 1")
        features = features.flatten(2).transpose(1, 2)
    if features.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (0 images)")
    if features.shape[-1] != size:
        raise ValueError(f"{name} {tuple(features.shape)}: last dimension must be the encoder's {size} channels")
    if features.shape[1] != config.num_regions:
        raise ValueError(
            f"{name} has {features.shape[1]} regions; this model expects {config.num_regions} "
            f"(images of {config.image_size}×{config.image_size}: use the model's processor)"
        )
    return features


__all__ = ["ShowAttendTellForConditionalGeneration", "ShowAttendTellPreTrainedModel", "ShowAttendTellState"]
