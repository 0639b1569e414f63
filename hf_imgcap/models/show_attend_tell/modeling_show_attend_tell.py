# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Show, Attend and Tell (Xu et al., 2015): a ResNet encoder and an attention LSTM decoder.

The remote-code bundle: this file and the same-folder files it imports (transformers copies them all next to the
weights, so `AutoModel.from_pretrained(folder, trust_remote_code=True)` works without hf_imgcap):
`ShowAttendTellDecoder` states the decoder's equations; `fused_teacher_forcing` is its fast training kernel;
`input_checks` validates every input; `generation_show_attend_tell` adds `generate()` and `caption()`;
`trainer_support` adds what transformers' Trainer expects (labels-only batches, activation checkpointing).
"""

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel, ResNetModel
from transformers import initialization as init
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, can_return_tuple, cached_file

from .configuration_show_attend_tell import ShowAttendTellConfig
from .feature_standardization import FeatureStandardization, normalize_features
from .fused_teacher_forcing import LinearCrossEntropy, teacher_forced_decode
from .generation_show_attend_tell import ShowAttendTellGenerationMixin, ShowAttendTellState
from .input_checks import ShowAttendTellInputChecks
from .pipeline_show_attend_tell import IMAGE_TEXT_TO_TEXT, PIPELINE_TASK, ShowAttendTellCaptioningPipeline
from .trainer_support import ShowAttendTellTrainerSupport


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
    supports_gradient_checkpointing = True  # the encoder's stages when it trains; see `trainer_support`
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


class ShowAttendTellDecoder:
    """The decoder of Show, Attend and Tell (Xu et al., 2015): `initial_state`, `step` and `loss` state it once.

    A mixin of the model, which owns these parameters under the names its checkpoints use (`embed_tokens`,
    `init_hidden`, `attention.*`, `lstm.*`, ...). `fused_teacher_forcing.teacher_forced_decode` is the fast
    training version of stepping `step` over whole captions (tested equal, outputs and gradients).
    Sizes: C encoder channels, R regions, E embedding, H hidden, V vocabulary.
    """

    def _build_decoder(self, config):
        C, H, E = config.encoder_hidden_size, config.hidden_size, config.embedding_size
        self.embed_tokens = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.init_hidden = nn.Linear(C, H)  # h0 and c0 from the mean feature
        self.init_cell = nn.Linear(C, H)
        self.attention = ShowAttendTellAttention(C, H, config.attention_size)
        self.context_gate = nn.Linear(H, C)  # β in the paper
        self.lstm = nn.LSTMCell(E + C, H)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(H, config.vocab_size)

    def initial_state(self, features, rows_per_image: int = 1) -> ShowAttendTellState:
        """`features` (images, R, C), standardised; `rows_per_image` consecutive captions (beams) per image."""
        mean_feature = features.mean(dim=1)  # (images, C)
        return ShowAttendTellState(
            features=features,
            projected_features=self.attention.project_regions(features),  # (images, R, A), once per image
            hidden=self.init_hidden(mean_feature).repeat_interleave(rows_per_image, dim=0),  # (rows, H)
            cell=self.init_cell(mean_feature).repeat_interleave(rows_per_image, dim=0),  # (rows, H)
            rows_per_image=rows_per_image,
        )

    def step(self, token_ids, state: ShowAttendTellState):
        """One word: attend with the previous hidden state, gate the context, one LSTM step (in place on `state`).
        `token_ids` (rows,) -> hidden (rows, H), attention weights α (rows, R)."""
        context, alpha = self.attention(state.features, state.projected_features, state.hidden)  # (rows, C), (rows, R)
        gated_context = torch.sigmoid(self.context_gate(state.hidden)) * context  # β ⊙ z, (rows, C)
        lstm_input = torch.cat([self.embed_tokens(token_ids), gated_context], dim=-1)  # (rows, E + C)
        state.hidden, state.cell = self.lstm(lstm_input, (state.hidden, state.cell))
        state.seen_tokens += 1
        return state.hidden, alpha

    def next_token_logits(self, hidden):
        return self.lm_head(self.dropout(hidden))  # (..., H) -> (..., V)

    def loss(self, targets, alphas, rows, num_captions, hiddens=None, logits=None, num_items_in_batch=None,
             num_captions_in_batch=None):
        """(loss, caption_loss, attention_loss) over the scored positions: `targets` (N,) their next tokens,
        `alphas` (N, R) their attention, `rows` (N,) their caption, and their `hiddens` (N, H) or `logits` (N, V).
        See `forward` for the two counts."""
        if logits is None:  # the output layer fused with the loss: no (N, V) log-probabilities in memory
            summed = LinearCrossEntropy.apply(self.dropout(hiddens), self.lm_head.weight, self.lm_head.bias, targets)
        else:
            summed = F.cross_entropy(logits.float(), targets, reduction="sum")
        caption_loss = summed / (len(targets) if num_items_in_batch is None else num_items_in_batch)
        # Doubly stochastic attention: every region should receive about one unit of attention over the steps
        # that write the caption. Per caption: the mean over regions of (1 - Σ_t α)²; summed, then normalised.
        attention_per_region = alphas.new_zeros(num_captions, alphas.shape[1]).index_add_(0, rows, alphas)  # (captions, R)
        summed_attention = ((1.0 - attention_per_region) ** 2).mean(dim=1).sum()
        if num_captions_in_batch is None and num_items_in_batch is not None:  # Trainer: the step's token count only
            num_captions_in_batch = num_captions * num_items_in_batch / max(len(targets), 1)  # weigh by the token share
        attention_loss = summed_attention / (num_captions if num_captions_in_batch is None else num_captions_in_batch)
        return caption_loss + self.config.attention_regularization * attention_loss, caption_loss, attention_loss


class ShowAttendTellForConditionalGeneration(
    ShowAttendTellPreTrainedModel, ShowAttendTellDecoder, FeatureStandardization, ShowAttendTellInputChecks,
    ShowAttendTellTrainerSupport, ShowAttendTellGenerationMixin
):
    """ResNet encoder (frozen by default) + attention LSTM decoder, with `generate()` for captioning."""

    _auto_class = "AutoModel"  # save_pretrained copies the code files next to the weights
    # Checkpoints saved before per-channel standardisation have no feature_std: it stays at ones (same outputs).
    _keys_to_ignore_on_load_missing = [r"^feature_std$"]

    def __init__(self, config: ShowAttendTellConfig):
        super().__init__(config)
        self.encoder = ResNetModel(config.encoder_config)
        self._build_decoder(config)
        # Feature standardisation (feature_standardization.py), set from training data by `set_feature_statistics`.
        self._build_feature_standardization(config.num_regions, config.encoder_hidden_size)
        self.post_init()
        self._apply_encoder_freeze()
        # Captions are short: without this, generate() warns and stops at 20 tokens, and image-text-to-text at 256.
        # A saved generation_config.json (e.g. the settings a model was evaluated with) overrides it on loading.
        if self.generation_config.max_new_tokens is None:
            self.generation_config.max_new_tokens = 40

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
        shapes, as in transformers. Checkpoints saved before `feature_std` existed load (it stays at ones)."""
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

    # get/set_input_embeddings and get/set_output_embeddings: transformers' defaults (`embed_tokens`, `lm_head`).

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images to the `(batch, regions, channels)` map the decoder attends over (7×7×2048 at 224²).

        Each image's map is divided by its root-mean-square: the decoder then sees O(1) inputs whatever
        the encoder's scale (pretrained ResNet-152 features are O(1); randomly initialised ones ~1e7,
        which would also overflow an fp16 feature cache). This is a fixed, parameter-free step, so the
        result is still a pure function of the image and can be cached.
        """
        return normalize_features(self._features(pixel_values, None))

    def _encode(self, pixel_values):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            feature_map = self._run_encoder(pixel_values.to(self.dtype))
        return feature_map.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)

    def _features(self, pixel_values, encoder_hidden_states):
        """The `(batch, regions, channels)` features, given or encoded from `pixel_values`: validated, not standardised."""
        if encoder_hidden_states is not None:
            return self._check_encoder_hidden_states(encoder_hidden_states)
        return self._encode(self._check_pixel_values(pixel_values))

    # ------------------------------------------------------------------ forward
    @can_return_tuple
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
        output_hidden_states: bool | None = None,
        return_logits: bool = True,
        num_items_in_batch: int | torch.Tensor | None = None,
        num_captions_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> ShowAttendTellOutput:
        r"""
        pixel_values (`(batch, 3, H, W)`): images from the processor. Or pass `encoder_hidden_states`
            (`(batch, regions, channels)`, e.g. from the feature cache or `get_image_features`). There may be
            fewer images than captions: k captions per image, in consecutive rows of `input_ids`.
        input_ids (`(batch, seq_len)`): captions starting with the start token ([CLS]); right-padded. If omitted,
            built from `labels` (a Seq2SeqTrainer batch; see `ShowAttendTellTrainerSupport._inputs_from_labels`).
        attention_mask: 1 for real tokens; if omitted, tokens equal to `pad_token_id` are padding.
        labels: usually `input_ids` with padding set to -100; position t is scored against label t+1.
        output_hidden_states / return_dict=False: the decoder's hidden states / a tuple, as in transformers.
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
            averages gradients) and the parts' losses add up exactly to the full batch's loss and gradient. With
            only `num_items_in_batch` (transformers' Trainer), this batch's share of the tokens weighs its mean.
        """
        cache = cache if cache is not None else past_key_values
        stepwise = cache is not None or bool(use_cache)
        input_ids, attention_mask, labels = self._inputs_from_labels(input_ids, attention_mask, labels)
        attention_mask, target = self._check_inputs(input_ids, attention_mask, labels, cache, stepwise)
        features = None
        if cache is None:
            features = self._standardize(self._features(pixel_values, encoder_hidden_states))
            self._check_batch(features, input_ids, allow_several_per_image=True)
        counts = {"num_items_in_batch": num_items_in_batch, "num_captions_in_batch": num_captions_in_batch}
        wanted = {"attentions": bool(output_attentions),
                  "hidden_states": self.config.output_hidden_states if output_hidden_states is None else output_hidden_states}
        if stepwise:
            fields = self._forward_stepwise(input_ids, features, cache, attention_mask, target, counts)
            fields["cache"] = fields["cache"] if use_cache is not False else None
            fields = {name: value for name, value in fields.items() if wanted.get(name, True)}
        else:
            fields = self._forward_teacher_forced(input_ids, features, attention_mask, target, return_logits, wanted, counts)
        if fields.get("hidden_states") is not None:
            fields["hidden_states"] = (fields["hidden_states"],)  # one tensor per decoder layer, as transformers returns them
        return ShowAttendTellOutput(**fields)

    def _losses(self, *args, **kwargs) -> dict:
        return dict(zip(("loss", "caption_loss", "attention_loss"), self.loss(*args, **kwargs)))

    def _forward_teacher_forced(self, input_ids, features, attention_mask, target, return_logits, wanted, counts):
        """Whole right-padded captions at once with the fused kernel; the output layer only at real positions."""
        batch_size, seq_len = input_ids.shape
        lengths = self._caption_lengths(input_ids, attention_mask)
        if target is not None and not return_logits:  # a caption's output after its last scored position is unused
            last_scored = torch.where(target != -100, torch.arange(seq_len, device=target.device), -1).amax(1) + 1
            lengths = torch.minimum(lengths, last_scored.clamp(min=1))
        if features.shape[0] != batch_size:  # consecutive captions of the same image
            features = features.repeat_interleave(batch_size // features.shape[0], dim=0)
        hiddens, alphas, rows, positions = teacher_forced_decode(self, self.initial_state(features), input_ids, lengths)

        fields = {}
        packed_logits = self.next_token_logits(hiddens) if return_logits else None
        if target is not None:
            packed_target = target[rows, positions]
            scored = packed_target != -100
            fields |= self._losses(packed_target[scored], alphas[scored], rows[scored], batch_size, hiddens=hiddens[scored],
                                   logits=None if packed_logits is None else packed_logits[scored], **counts)
        for name, packed in (("logits", packed_logits), ("attentions", alphas), ("hidden_states", hiddens)):
            if return_logits if name == "logits" else wanted[name]:
                fields[name] = self._unpack(packed, rows, positions, batch_size, seq_len)
        return fields


__all__ = ["ShowAttendTellForConditionalGeneration", "ShowAttendTellPreTrainedModel", "ShowAttendTellState"]
