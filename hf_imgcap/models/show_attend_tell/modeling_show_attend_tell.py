# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Show, Attend and Tell (Xu et al., 2015): a ResNet encoder and an attention LSTM decoder.

Only same-folder relative imports here: `save_pretrained` copies this file next to the weights so that
`AutoModel.from_pretrained(folder, trust_remote_code=True)` works without the package installed.
"""

import functools
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, ResNetModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_show_attend_tell import ShowAttendTellConfig

# The name under which generate() carries the decoding state between steps (model kwargs, forward argument):
# transformers 5.24 renamed `past_key_values` to `cache` (and renames it when a ModelOutput is built).
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"


@dataclass
class ShowAttendTellOutput(ModelOutput):
    """
    Args:
        loss: caption cross-entropy (mean over real tokens) + the attention regulariser.
        logits: `(batch, seq_len, vocab)` scores for the token after each input position; positions
            after a caption's end are zero (they are never computed). `None` with `return_logits=False`.
        cache: the recurrent decoding state ([`ShowAttendTellState`]) when `use_cache=True` (also readable as
            `past_key_values`, its name before transformers 5.24).
        attentions: `(batch, seq_len, regions)` attention weights of each position (`output_attentions=True`).
        caption_loss / attention_loss: the two parts of `loss`, for logging.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: "ShowAttendTellState | None" = None
    attentions: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    attention_loss: torch.FloatTensor | None = None

    @property
    def past_key_values(self) -> "ShowAttendTellState | None":
        return self.cache


class ShowAttendTellState:
    """Recurrent decoding state carried by `generate()` in `cache` (`past_key_values` before transformers 5.24).

    Holds the image features and their attention projection (computed once per image, kept once per image)
    next to the LSTM state of every caption being decoded: `rows_per_image` consecutive rows (beams, returned
    sequences) share an image, so later steps need neither `pixel_values`, nor a re-encoding, nor a copy of the
    features per beam.
    """

    def __init__(self, features, projected_features, hidden, cell, rows_per_image=1, seen_tokens=0):
        self.features = features  # (images, regions, channels)
        self.projected_features = projected_features  # (images, regions, attention)
        self.hidden = hidden  # (images * rows_per_image, hidden)
        self.cell = cell
        self.rows_per_image = rows_per_image
        self.seen_tokens = seen_tokens

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


class _StepLinear(torch.autograd.Function):
    """`x @ weight.T` for one time step whose weight gradient is left to `_DeferredWeightGrad`: backward only
    returns the input gradient and records `(x, grad)`. Per-step weight gradients have an inner dimension of one
    batch (≤ 32) and must be summed over the steps; one matmul over all steps at the end is several times faster."""

    @staticmethod
    def forward(ctx, x, weight, records):
        # Custom functions are not autocast: follow the autocast dtype (e.g. bf16) by hand, as F.linear would.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        ctx.input_dtype = x.dtype
        x, weight = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.records = records
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.to(weight.dtype)
        ctx.records.append((x, grad_output))
        return (grad_output @ weight).to(ctx.input_dtype), None, None


class _DeferredWeightGrad(torch.autograd.Function):
    """Identity on `anchor` (the recurrence's initial state) that returns `weight`'s gradient from everything the
    `_StepLinear` calls recorded. Every step depends on the initial state, so backpropagation reaches this node
    only after all steps have recorded their part."""

    @staticmethod
    def forward(ctx, anchor, weight, records):
        ctx.records = records
        ctx.weight_dtype = weight.dtype
        return anchor.view_as(anchor)

    @staticmethod
    def backward(ctx, grad_anchor):
        if not ctx.records:  # no step reached the loss
            return grad_anchor, None, None
        inputs = torch.cat([x for x, _ in ctx.records])
        grads = torch.cat([g for _, g in ctx.records])
        ctx.records.clear()
        return grad_anchor, (grads.t() @ inputs).to(ctx.weight_dtype), None


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets`, for training.

    Same value and gradients as `F.cross_entropy(F.linear(...), reduction="sum")`, with less memory traffic over
    the `(tokens, vocab)` logits, the largest tensor of a step: no log-probabilities are materialised, and the
    backward turns the saved logits into softmax − one-hot in place.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
        logits = torch.addmm(bias, hidden, weight.t()).float()  # the loss in fp32, as autocast does
        log_normalizer = torch.logsumexp(logits, dim=-1)
        loss = (log_normalizer - logits.gather(1, targets.unsqueeze(1)).squeeze(1)).sum()
        ctx.save_for_backward(hidden, weight, logits, log_normalizer, targets)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, logits, log_normalizer, targets = ctx.saved_tensors
        grad = logits.sub_(log_normalizer.unsqueeze(1)).exp_()  # softmax, in place of the logits
        grad[torch.arange(len(targets), device=grad.device), targets] -= 1.0
        grad = grad.mul_(grad_loss).to(weight.dtype)
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        return (grad @ weight).to(hidden_dtype), (grad.t() @ hidden).to(weight_dtype), grad.sum(0).to(bias_dtype), None


class _RecordingProjection:
    """A per-step `x @ weight.T` whose weight gradient `_DeferredWeightGrad` computes from `records`."""

    def __init__(self, weight):
        self.weight = weight.detach().contiguous()  # one contiguous copy per forward, not a strided read per step
        self.records = []

    def __call__(self, x):
        return _StepLinear.apply(x, self.weight, self.records)


class ShowAttendTellAttention(nn.Module):
    """Additive (Bahdanau) attention over image regions."""

    def __init__(self, encoder_size: int, hidden_size: int, attention_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_size, attention_size)
        self.decoder_proj = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)  # a bias would be a no-op under the softmax

    def project_regions(self, features: torch.Tensor) -> torch.Tensor:
        # Once per image: (batch, regions, encoder_size) -> (batch, regions, attention_size).
        return self.encoder_proj(features)

    def weights(self, projected_features: torch.Tensor, projected_hidden: torch.Tensor) -> torch.Tensor:
        """Softmax over regions of score(tanh(regions + query)); `projected_hidden` broadcasts over the regions,
        i.e. has a size-1 dimension where `projected_features` has the regions."""
        energy = torch.tanh(projected_features + projected_hidden)
        return torch.softmax(self.score(energy).squeeze(-1), dim=-1)

    def forward(self, features, projected_features, hidden):
        """One query per caption: the context vectors `(captions, encoder_size)` and weights `(captions, regions)`.
        `features` / `projected_features` hold one row per image; each image has `captions / images`
        consecutive captions (e.g. its beams)."""
        images = features.shape[0]
        query = self.decoder_proj(hidden).view(images, -1, 1, self.decoder_proj.out_features)
        alpha = self.weights(projected_features.unsqueeze(1), query)  # (images, captions per image, regions)
        context = torch.bmm(alpha, features)  # (images, captions per image, channels)
        return context.flatten(0, 1), alpha.flatten(0, 1)


class ShowAttendTellPreTrainedModel(PreTrainedModel):
    config: ShowAttendTellConfig
    config_class = ShowAttendTellConfig
    base_model_prefix = "show_attend_tell"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
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
            init.ones_(module.feature_scale)
        elif isinstance(module, nn.Linear):  # torch's default Linear init
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)


# Written into config.json on save so that AutoConfig, AutoModel and AutoModelForImageTextToText all load
# a saved folder with trust_remote_code=True (register_for_auto_class keeps only one auto class per model).
AUTO_MAP = {
    "AutoConfig": "configuration_show_attend_tell.ShowAttendTellConfig",
    "AutoModel": "modeling_show_attend_tell.ShowAttendTellForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_show_attend_tell.ShowAttendTellForConditionalGeneration",
}


class ShowAttendTellForConditionalGeneration(ShowAttendTellPreTrainedModel, GenerationMixin):
    """ResNet encoder (frozen by default) + attention LSTM decoder, with `generate()` for captioning."""

    _auto_class = "AutoModel"  # save_pretrained copies the code files next to the weights

    def __init__(self, config: ShowAttendTellConfig):
        super().__init__(config)
        feature_size, hidden_size = config.encoder_hidden_size, config.hidden_size
        self.encoder = ResNetModel(config.encoder_config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.init_hidden = nn.Linear(feature_size, hidden_size)
        self.init_cell = nn.Linear(feature_size, hidden_size)
        self.attention = ShowAttendTellAttention(feature_size, hidden_size, config.attention_size)
        self.context_gate = nn.Linear(hidden_size, feature_size)  # β in the paper
        self.lstm = nn.LSTMCell(config.embedding_size + feature_size, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(hidden_size, config.vocab_size)
        # Feature standardisation, set from training data by `set_feature_statistics` (identity until then).
        # A frozen encoder's features share a large image-independent part (for a randomly initialised
        # ResNet-152, ~99% of every value); removing the per-(region, channel) mean makes what differs
        # between images visible to the decoder.
        self.register_buffer("feature_mean", torch.zeros(config.num_regions, feature_size))
        self.register_buffer("feature_scale", torch.ones(()))
        self.post_init()
        self._apply_encoder_freeze()
        # Captions are short: without this, generate() warns and stops at 20 tokens, and image-text-to-text at 256.
        # A saved generation_config.json (e.g. the settings a model was evaluated with) overrides it on loading.
        if self.generation_config.max_new_tokens is None:
            self.generation_config.max_new_tokens = 40

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` (safetensors), plus the code files and `auto_map` for remote loading,
        and the captioning pipeline (`custom_pipelines`), so that `pipeline(model=folder, trust_remote_code=True)` works."""
        # Imported here, not at the top: only saving needs it. This relative import is also what puts
        # pipeline_show_attend_tell.py next to the weights: transformers copies every file the modeling file
        # imports relatively (custom_object_save), inside the base save, so push_to_hub uploads it too.
        from .pipeline_show_attend_tell import custom_pipelines_config

        self.config.auto_map = dict(AUTO_MAP)
        self.config.custom_pipelines = custom_pipelines_config()
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        # Loading replaces every parameter with a new `nn.Parameter` (requires_grad=True), undoing the freeze that
        # __init__ applied: freeze again, or a reloaded model trains its "frozen" encoder (and DDP breaks).
        (loaded[0] if isinstance(loaded, tuple) else loaded)._apply_encoder_freeze()  # tuple: output_loading_info
        return loaded

    # ------------------------------------------------------------------ encoder
    def _apply_encoder_freeze(self):
        if self.config.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # BatchNorm statistics of a frozen encoder must never move
        return self

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images to the `(batch, regions, channels)` map the decoder attends over (7×7×2048 at 224²).

        Each image's map is divided by its root-mean-square: the decoder then sees O(1) inputs whatever
        the encoder's scale (pretrained ResNet-152 features are O(1); randomly initialised ones ~1e7,
        which would also overflow an fp16 feature cache). This is a fixed, parameter-free step, so the
        result is still a pure function of the image and can be cached.
        """
        self._check_pixel_values(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            feature_map = self.encoder(pixel_values.to(self.dtype), return_dict=True).last_hidden_state
        features = feature_map.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return normalize_features(features)

    def _check_pixel_values(self, pixel_values):
        channels = self.config.encoder_config.num_channels
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
        if min(pixel_values.shape[2:]) < 32:
            raise ValueError(f"pixel_values {tuple(pixel_values.shape)} is too small for the ResNet encoder (min 32×32)")

    def _features_from_inputs(self, pixel_values, encoder_hidden_states):
        """The `(batch, regions, channels)` image features, validated (not yet standardised)."""
        if encoder_hidden_states is None:
            if pixel_values is None:
                raise ValueError("No image given: pass pixel_values (from the processor) or encoder_hidden_states")
            encoder_hidden_states = self.get_image_features(pixel_values)
        return self._check_encoder_hidden_states(encoder_hidden_states)

    def _check_encoder_hidden_states(self, features):
        size = self.config.encoder_hidden_size
        if not torch.is_tensor(features) or features.ndim not in (3, 4):
            raise ValueError(f"encoder_hidden_states must be (batch, regions, {size}) features, got {type(features)}")
        if features.ndim == 4:  # (B, C, H, W) as the encoder emits it
            if features.shape[1] != size:
                raise ValueError(f"encoder_hidden_states {tuple(features.shape)}: expected {size} channels in dim 1")
            features = features.flatten(2).transpose(1, 2)
        if features.shape[0] == 0:
            raise ValueError("encoder_hidden_states is an empty batch (0 images)")
        if features.shape[-1] != size:
            raise ValueError(
                f"encoder_hidden_states {tuple(features.shape)}: last dimension must be the encoder's {size} channels"
            )
        if features.shape[1] != self.config.num_regions:
            raise ValueError(
                f"encoder_hidden_states has {features.shape[1]} regions; this model expects {self.config.num_regions} "
                f"(images of {self.config.image_size}×{self.config.image_size}: use the model's processor)"
            )
        return features

    def _standardize_features(self, features):
        # Normalising again is idempotent for features from get_image_features or the cache, and makes raw
        # encoder maps of any scale safe too.
        features = normalize_features(features.to(self.dtype))
        return (features - self.feature_mean.to(features.dtype)) / self.feature_scale.to(features.dtype)

    @torch.no_grad()
    def set_feature_statistics(self, mean: torch.Tensor, scale: float | torch.Tensor):
        """Standardise features as `(features - mean) / scale` from now on (`mean`: `(regions, channels)`, the
        training set's mean of `get_image_features`; `scale`: the root-mean-square of what is left)."""
        mean = torch.as_tensor(mean, dtype=self.feature_mean.dtype)
        if mean.shape != self.feature_mean.shape:
            raise ValueError(f"feature mean must have shape {tuple(self.feature_mean.shape)}, got {tuple(mean.shape)}")
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0 or not torch.isfinite(mean).all():
            raise ValueError(f"feature statistics must be finite with a positive scale, got scale={scale}")
        self.feature_mean.copy_(mean)
        self.feature_scale.fill_(scale)

    # ------------------------------------------------------------------ decoder
    def _initial_state(self, features, rows_per_image: int = 1) -> ShowAttendTellState:
        features = self._standardize_features(features)
        mean_feature = features.mean(dim=1)
        return ShowAttendTellState(
            features=features,
            projected_features=self.attention.project_regions(features),
            hidden=self.init_hidden(mean_feature).repeat_interleave(rows_per_image, dim=0),
            cell=self.init_cell(mean_feature).repeat_interleave(rows_per_image, dim=0),
            rows_per_image=rows_per_image,
        )

    def _decode_step(self, token_ids, state: ShowAttendTellState):
        """The reference step: attend with the previous hidden state, gate, one LSTMCell step. In place on `state`."""
        context, alpha = self.attention(state.features, state.projected_features, state.hidden)
        context = torch.sigmoid(self.context_gate(state.hidden)) * context
        lstm_input = torch.cat([self.embed_tokens(token_ids), context], dim=-1)
        state.hidden, state.cell = self.lstm(lstm_input, (state.hidden, state.cell))
        state.seen_tokens += 1
        return state.hidden, alpha

    def _decode_with_cache(self, input_ids, features, state, attention_mask=None):
        """Step through `input_ids`; where `attention_mask` is 0 (padding, e.g. the left padding of a batch of
        prompts) the state is left as it was, so a padded row decodes exactly as it would alone."""
        if state is None:
            state = self._initial_state(features, rows_per_image=input_ids.shape[0] // features.shape[0])
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
        hiddens, alphas = [], []
        for position in range(input_ids.shape[1]):
            before = state.hidden, state.cell
            hidden, alpha = self._decode_step(input_ids[:, position], state)
            if attention_mask is not None and not attention_mask[:, position].all():
                real = attention_mask[:, position].bool().unsqueeze(1)
                state.hidden = hidden = torch.where(real, state.hidden, before[0])
                state.cell = torch.where(real, state.cell, before[1])
            hiddens.append(hidden)
            alphas.append(alpha)
        logits = self.lm_head(self.dropout(torch.stack(hiddens, dim=1)))
        return logits, torch.stack(alphas, dim=1), state

    def _decode_teacher_forced(self, input_ids, features, lengths):
        """All positions of right-padded captions at once, equal to stepping `_decode_step`.

        Why it is fast: the region projection is computed once per image; the embedding half of the LSTM
        input projection is one matmul for all positions; the three projections of the hidden state
        (attention query, context gate, LSTM recurrence) are one fused matmul per step; the per-step
        weight gradients of those matmuls are deferred into one large matmul (`_DeferredWeightGrad`);
        captions are sorted by length so each step only runs the captions still going; and the caller
        applies the output layer once, to the real positions only (fused with the loss when training).

        Returns the hidden states and attention weights of the real positions, packed time-major
        (position 0 of every caption, then position 1 of those still running, ...), and for each packed
        row its (batch index, position).
        """
        lengths, order = torch.sort(lengths, descending=True)
        state = self._initial_state(features[order])
        features, input_ids = state.features, input_ids[order]
        hidden, cell = state.hidden, state.cell
        embedding_size, feature_size = self.config.embedding_size, self.config.encoder_hidden_size
        attention_size = self.config.attention_size

        # split, not two slices: its backward concatenates the two gradients instead of zero-filling twice.
        lstm_w_embed, lstm_w_context = self.lstm.weight_ih.split([embedding_size, feature_size], dim=1)
        # Time-major, so that each step reads (and backpropagates into) its own slice, not the whole tensor.
        embed_gates = F.linear(self.embed_tokens(input_ids), lstm_w_embed, self.lstm.bias_ih + self.lstm.bias_hh)
        embed_gates = embed_gates.transpose(0, 1).unbind(0)
        hidden_weight = torch.cat([self.attention.decoder_proj.weight, self.context_gate.weight, self.lstm.weight_hh])
        hidden_bias = torch.cat(
            [self.attention.decoder_proj.bias, self.context_gate.bias, self.lstm.weight_hh.new_zeros(4 * hidden.shape[1])]
        )
        if torch.is_grad_enabled() and hidden_weight.requires_grad and lstm_w_context.requires_grad:
            # Training: the two per-step weight gradients are computed once, when backprop reaches h0.
            project_hidden, project_context = _RecordingProjection(hidden_weight), _RecordingProjection(lstm_w_context)
            hidden = _DeferredWeightGrad.apply(hidden, hidden_weight, project_hidden.records)
            hidden = _DeferredWeightGrad.apply(hidden, lstm_w_context, project_context.records)
        else:
            project_hidden = functools.partial(F.linear, weight=hidden_weight)
            project_context = functools.partial(F.linear, weight=lstm_w_context)

        active_per_step = (lengths.unsqueeze(0) > torch.arange(int(lengths[0]), device=lengths.device).unsqueeze(1)).sum(1)
        hiddens, alphas = [], []
        for position, active in enumerate(active_per_step.tolist()):
            hidden, cell = hidden[:active], cell[:active]
            query, gate, recurrent = (project_hidden(hidden) + hidden_bias).split(
                [attention_size, feature_size, 4 * hidden.shape[1]], dim=-1
            )
            alpha = self.attention.weights(state.projected_features[:active], query.unsqueeze(1))
            context = torch.bmm(alpha.unsqueeze(1), features[:active]).squeeze(1) * torch.sigmoid(gate)
            gates = embed_gates[position][:active] + project_context(context) + recurrent
            in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
            cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
            hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
            hiddens.append(hidden)
            alphas.append(alpha)

        row_in_sorted = torch.cat([torch.arange(n, device=lengths.device) for n in active_per_step.tolist()])
        position = torch.repeat_interleave(torch.arange(len(active_per_step), device=lengths.device), active_per_step)
        return torch.cat(hiddens), torch.cat(alphas), order[row_in_sorted], position

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: ShowAttendTellState | None = None,
        past_key_values: ShowAttendTellState | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        return_logits: bool = True,
        num_items_in_batch: int | torch.Tensor | None = None,
        num_captions_in_batch: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ShowAttendTellOutput:
        r"""
        pixel_values (`(batch, 3, H, W)`): images from the processor. Or pass `encoder_hidden_states`
            (`(batch, regions, channels)`, e.g. from the feature cache or `get_image_features`). There may be
            fewer images than captions: k captions per image, in consecutive rows of `input_ids`.
        input_ids (`(batch, seq_len)`): captions starting with the start token ([CLS]); right-padded.
        attention_mask: 1 for real tokens; if omitted, tokens equal to `pad_token_id` are padding.
        labels: usually `input_ids` with padding set to -100; position t is scored against label t+1.
        cache / use_cache: step-by-step decoding with a [`ShowAttendTellState`] (as `generate()` does);
            `past_key_values` is the same argument under its name before transformers 5.24.
        return_logits: set False in training loops to skip materialising the `(batch, seq_len, vocab)`
            logits; the output layer then runs only where the loss needs it.
        num_items_in_batch: divide the summed token cross-entropy by this instead of this batch's token
            count (as transformers' Trainer does), so that several processes or accumulated micro-batches
            weigh every token of the global batch equally.
        num_captions_in_batch: divide the summed attention regulariser by this instead of this batch's caption
            count. The regulariser is one term per caption (Xu et al.), the mean over regions of (1 − Σ_t α)², so
            it is normalised by captions, not tokens: λ then keeps its meaning whatever the caption lengths. Pass
            the global batch's counts in both arguments (divided by the number of processes under DDP, which
            averages gradients) and the parts' losses add up exactly to the full batch's loss and gradient.
        """
        if input_ids is None:
            raise ValueError("input_ids is required (start with the start token, e.g. [CLS] = %d)" % self.config.bos_token_id)
        if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, seq_len) tensor, got shape {tuple(input_ids.shape)}")
        self._check_token_ids(input_ids, "input_ids")
        output_attentions = bool(output_attentions)

        if cache is None:
            cache = past_key_values
        if cache is not None or use_cache:
            features = None
            if cache is None:
                features = self._features_from_inputs(pixel_values, encoder_hidden_states)
                self._check_batch(features, input_ids, allow_several_per_image=True)
            if labels is not None and cache is not None:
                raise ValueError(
                    "labels with a cache from earlier steps: the loss (its attention regulariser sums over every step) "
                    "needs the whole caption; pass the whole caption in one call"
                )
            if attention_mask is not None:  # HF convention: the mask may also cover the tokens already in the cache
                attention_mask = attention_mask[:, -input_ids.shape[1] :]
            logits, alphas, state = self._decode_with_cache(input_ids, features, cache, attention_mask)
            loss = caption_loss = attention_loss = None
            if labels is not None:
                target, _ = self._shifted_targets(labels, input_ids)
                rows, positions = (target != -100).nonzero(as_tuple=True)
                summed = F.cross_entropy(logits[rows, positions].float(), target[rows, positions], reduction="sum")
                loss, caption_loss, attention_loss = self._loss(
                    summed, len(rows), alphas[rows, positions], rows, input_ids.shape[0], num_items_in_batch, num_captions_in_batch
                )
            return ShowAttendTellOutput(
                loss=loss,
                logits=logits,
                cache=state if use_cache is not False else None,
                attentions=alphas if output_attentions else None,
                caption_loss=caption_loss,
                attention_loss=attention_loss,
            )

        features = self._features_from_inputs(pixel_values, encoder_hidden_states)
        self._check_batch(features, input_ids, allow_several_per_image=True)
        if features.shape[0] != input_ids.shape[0]:  # consecutive captions of the same image
            features = features.repeat_interleave(input_ids.shape[0] // features.shape[0], dim=0)
        lengths = self._caption_lengths(input_ids, attention_mask)
        batch_size, seq_len = input_ids.shape

        target = None
        if labels is not None:
            target, target_ok = self._shifted_targets(labels, input_ids)
            if not return_logits:
                # The output of a caption's last position is never scored: don't compute it.
                last_scored = torch.where(target_ok, torch.arange(seq_len, device=labels.device), -1).amax(1) + 1
                lengths = torch.minimum(lengths, last_scored.clamp(min=1))

        hiddens, alphas, rows, positions = self._decode_teacher_forced(input_ids, features, lengths)

        loss = caption_loss = attention_loss = None
        packed_logits = None
        if target is not None:
            packed_target = target[rows, positions]
            scored = packed_target != -100
            scored_target = packed_target[scored]
            if return_logits:
                packed_logits = self.lm_head(self.dropout(hiddens))
                summed = F.cross_entropy(packed_logits[scored].float(), scored_target, reduction="sum")
            elif torch.is_grad_enabled():  # training: the output layer and the loss in one pass
                summed = _LinearCrossEntropy.apply(self.dropout(hiddens[scored]), self.lm_head.weight, self.lm_head.bias, scored_target)
            else:
                summed = F.cross_entropy(self.lm_head(self.dropout(hiddens[scored])).float(), scored_target, reduction="sum")
            loss, caption_loss, attention_loss = self._loss(
                summed, scored_target.numel(), alphas[scored], rows[scored], batch_size, num_items_in_batch, num_captions_in_batch
            )
        elif return_logits:
            packed_logits = self.lm_head(self.dropout(hiddens))

        logits = None
        if return_logits:
            logits = packed_logits.new_zeros(batch_size, seq_len, self.config.vocab_size)
            logits[rows, positions] = packed_logits
        attentions = None
        if output_attentions:
            attentions = alphas.new_zeros(batch_size, seq_len, alphas.shape[1])
            attentions[rows, positions] = alphas
        return ShowAttendTellOutput(
            loss=loss,
            logits=logits,
            attentions=attentions,
            caption_loss=caption_loss,
            attention_loss=attention_loss,
        )

    def _check_token_ids(self, ids, name):
        vocab_size = self.config.vocab_size
        bad = (ids < 0) | (ids >= vocab_size)
        if bad.any():
            raise ValueError(f"{name} contains token id {int(ids[bad][0])} outside the vocabulary (0..{vocab_size - 1})")

    @staticmethod
    def _check_batch(features, input_ids, allow_several_per_image=False):
        images, captions = features.shape[0], input_ids.shape[0]
        if captions != images and not (allow_several_per_image and captions % images == 0):
            raise ValueError(f"{images} images but {captions} captions in input_ids")

    def _caption_lengths(self, input_ids, attention_mask):
        if attention_mask is None:
            real = input_ids != self.config.pad_token_id
            real[:, 0] = True
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
                )
            real = attention_mask.bool()
        lengths = real.sum(1)
        if (lengths == 0).any():
            raise ValueError(f"caption {int((lengths == 0).nonzero()[0])} in the batch is empty (attention_mask all 0)")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if (real != (positions < lengths.unsqueeze(1))).any():
            raise ValueError("captions must be right-padded: attention_mask must be 1…1 0…0 on every row")
        return lengths

    def _shifted_targets(self, labels, input_ids):
        """Position t predicts label t+1 (-100: not scored); the last position has no target. Also the mask of
        the scored positions."""
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
        target = torch.full_like(labels, -100)
        target[:, :-1] = labels[:, 1:]
        bad = (target != -100) & ((target < 0) | (target >= self.config.vocab_size))
        if bad.any():
            raise ValueError(f"labels contain id {int(target[bad][0])} outside the vocabulary (0..{self.config.vocab_size - 1}) or -100")
        return target, target != -100

    def _loss(self, summed_cross_entropy, num_tokens, scored_alphas, scored_rows, num_captions, num_items_in_batch, num_captions_in_batch):
        """The one training loss of every forward path: (loss, caption_loss, attention_loss).

        `summed_cross_entropy` over the `num_tokens` scored positions; `scored_alphas` `(num_tokens, regions)` the
        attention at those positions, `scored_rows` the caption each belongs to. See `forward` for the two counts.
        """
        caption_loss = summed_cross_entropy / (num_tokens if num_items_in_batch is None else num_items_in_batch)
        # Doubly stochastic attention: every region should receive about one unit of attention over the steps
        # that write the caption. Per caption: the mean over regions of (1 - Σ_t α)²; summed, then normalised.
        attention_per_region = scored_alphas.new_zeros(num_captions, scored_alphas.shape[1]).index_add_(0, scored_rows, scored_alphas)
        summed_attention = ((1.0 - attention_per_region) ** 2).mean(dim=1).sum()
        attention_loss = summed_attention / (num_captions if num_captions_in_batch is None else num_captions_in_batch)
        return caption_loss + self.config.attention_regularization * attention_loss, caption_loss, attention_loss

    # ------------------------------------------------------------------ generation
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state is a ShowAttendTellState, not a key/value cache

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, past_key_values=None, encoder_hidden_states=None, attention_mask=None,
        output_attentions=None, use_cache=True, **kwargs
    ):
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            return {"input_ids": input_ids[:, -1:], "cache": cache, "use_cache": True}
        # First step, or no cache: the whole (left-padded) prefix, with the (already encoded) images.
        return {"input_ids": input_ids, "attention_mask": attention_mask, "encoder_hidden_states": encoder_hidden_states, "use_cache": use_cache}

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # Beams and returned sequences of an image share its features: keep one copy per image, not one per beam.
        features = model_kwargs.pop("encoder_hidden_states", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        model_kwargs["encoder_hidden_states"] = features
        return input_ids, model_kwargs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)
        model_kwargs[CACHE_KWARG] = outputs.cache
        return model_kwargs

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, encoder_hidden_states=None, **kwargs):
        """`GenerationMixin.generate` for images: greedy, beam search, sampling and every logits processor.

        Each image is encoded once (not once per beam) before decoding starts. Pass `pixel_values` or
        precomputed `encoder_hidden_states`. `input_ids` (with its `attention_mask`), e.g. from
        `processor(images=..., text=...)`, is a prompt to continue: its trailing [SEP] is dropped and prompts of
        different lengths are left-padded, so each row's caption is the one its prompt gives alone. With `output_attentions=True, return_dict_in_generate=True`,
        `attentions` is a `(num_sequences, generated_len, regions)` tensor: the attention behind each
        generated token of the returned sequences (recomputed by a teacher-forced pass over the chosen
        sequences, so it is exact for beam search as well); zero after a sequence's end.
        """
        features = self._features_from_inputs(pixel_values, encoder_hidden_states)
        batch_size = features.shape[0]
        if input_ids is None:
            start = self.generation_config.decoder_start_token_id
            if start is None:
                start = self.config.bos_token_id
            input_ids = torch.full((batch_size, 1), start, dtype=torch.long, device=features.device)
        else:
            self._check_token_ids(input_ids, "input_ids")
            self._check_batch(features, input_ids)
            input_ids, prompt_mask = self._prompts_for_generation(input_ids, kwargs.pop("attention_mask", None))
            kwargs["attention_mask"] = prompt_mask
        kwargs.pop("token_type_ids", None)
        want_attentions = bool(kwargs.pop("output_attentions", False))
        if want_attentions and kwargs.get("attention_mask") is not None and not kwargs["attention_mask"].all():
            raise ValueError("output_attentions needs prompts of equal length; generate prompts of different lengths one by one")
        outputs = super().generate(input_ids=input_ids, encoder_hidden_states=features, **kwargs)
        if want_attentions and not torch.is_tensor(outputs):
            outputs["attentions"] = self.attention_for_sequences(outputs.sequences, features, prompt_length=input_ids.shape[1])
        return outputs

    def _prompts_for_generation(self, input_ids, attention_mask):
        """Prompts (e.g. `processor(images=..., text=...)`, right-padded, ending with [SEP]) as generation needs
        them: without a trailing end token, so generation continues the text instead of starting after a caption
        that has ended, and left-padded, so that every row's newest token is its last column. Returns the ids and
        their attention mask; `_decode_with_cache` skips the padding, so each row decodes as it would alone."""
        pad, eos = self.config.pad_token_id, self.config.eos_token_id
        if attention_mask is None:
            real = input_ids != pad
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
        else:
            real = attention_mask.bool()
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
        dicts with `caption`, `tokens` (the generated word pieces) and `attentions` (`(len(tokens), h, w)`).
        An image that cannot be read raises a `ValueError` naming it.
        """
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
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
            per_image = out.sequences.shape[0] // pixel_values.shape[0]
            for row in range(0, out.sequences.shape[0], per_image):
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
    def attention_for_sequences(self, sequences, features, prompt_length=1):
        """Attention `(num_sequences, generated_len, regions)` behind each generated token of `sequences`.

        `features` are per image; when there are several sequences per image they are matched in order.
        """
        features = self._check_encoder_hidden_states(features)
        per_image = sequences.shape[0] // features.shape[0]
        features = features.repeat_interleave(per_image, dim=0)
        eos, pad = self.config.eos_token_id, self.config.pad_token_id
        generated = sequences[:, prompt_length:]
        # A token is real up to and including the first end token.
        ended_before = torch.cumsum((generated == eos).long(), dim=1) - (generated == eos).long()
        real = torch.cat([torch.ones_like(sequences[:, :prompt_length], dtype=torch.bool), ended_before == 0], dim=1)
        # The attention at input position p produced token p+1: feed every position whose next token is real.
        next_is_real = real[:, 1:]
        out = self.forward(
            input_ids=sequences[:, :-1].masked_fill(~next_is_real, pad),
            attention_mask=next_is_real.long(),
            encoder_hidden_states=features,
            output_attentions=True,
            return_logits=False,
        )
        attentions = out.attentions[:, prompt_length - 1 :]
        return attentions * real[:, prompt_length:].unsqueeze(-1)


def normalize_features(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each image's `(regions, channels)` map by its root-mean-square (computed in fp32)."""
    rms = features.float().pow(2).mean(dim=(1, 2), keepdim=True).add(eps).sqrt()
    return (features.float() / rms).to(features.dtype)


__all__ = ["ShowAttendTellForConditionalGeneration", "ShowAttendTellPreTrainedModel", "ShowAttendTellState"]
