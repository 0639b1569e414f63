# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Captioning with `GenerationMixin.generate` for the Show, Attend and Tell model: the decoding state carried
between steps, prompts, `caption()` and the attention behind generated tokens. Part of the remote-code bundle."""

import inspect
import math

import torch
from transformers import GenerationMixin

# The name under which generate() carries the decoding state between steps (model kwargs, forward argument):
# transformers 5.24 renamed `past_key_values` to `cache` (and renames it when a ModelOutput is built).
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"


def _caller_set(name: str, generation_config, kwargs: dict) -> bool:
    """Whether the caller of `generate()` set a generation option: as a keyword or in the `GenerationConfig` they
    passed (whose unset options are None in transformers 5)."""
    return kwargs.get(name) is not None or (generation_config is not None and getattr(generation_config, name, None) is not None)


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


class ShowAttendTellGenerationMixin(GenerationMixin):
    """`generate()` over [`ShowAttendTellState`]s; the model's `forward` does every step."""

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

    def _prepare_generation_config(self, generation_config, **kwargs):
        """transformers' merge of the caller's settings with `self.generation_config`, except that a caller's
        `max_length` wins over a `max_new_tokens` that came from the model's defaults (config.json or
        generation_config.json): transformers lets any `max_new_tokens` override `max_length`, so the model's default
        caption length would silently override e.g. `Seq2SeqTrainingArguments(generation_max_length=...)`. A caller
        giving both gets transformers' rule (max_new_tokens wins)."""
        merged, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        if _caller_set("max_length", generation_config, kwargs) and not _caller_set("max_new_tokens", generation_config, kwargs):
            merged.max_new_tokens = None
        return merged, model_kwargs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)
        model_kwargs[CACHE_KWARG] = outputs.cache
        return model_kwargs

    def _forward_stepwise(self, input_ids, features, state, attention_mask, target, counts) -> dict:
        """`forward` with a cache (what generate() runs at every step): step through `input_ids`; where
        `attention_mask` is 0 (padding, e.g. the left padding of a batch of prompts) the state is left as it was, so
        a padded row decodes exactly as it would alone."""
        if state is None:
            state = self.initial_state(features, rows_per_image=input_ids.shape[0] // features.shape[0])
        hiddens, alphas = [], []
        for position in range(input_ids.shape[1]):
            before = state.hidden, state.cell
            hidden, alpha = self.step(input_ids[:, position], state)
            if attention_mask is not None and not attention_mask[:, position].all():
                real = attention_mask[:, position].bool().unsqueeze(1)
                state.hidden = hidden = torch.where(real, state.hidden, before[0])
                state.cell = torch.where(real, state.cell, before[1])
            hiddens.append(hidden)
            alphas.append(alpha)
        logits, alphas = self.next_token_logits(torch.stack(hiddens, dim=1)), torch.stack(alphas, dim=1)
        fields = {"logits": logits, "cache": state, "attentions": alphas, "hidden_states": torch.stack(hiddens, dim=1)}
        if target is not None:
            rows, positions = (target != -100).nonzero(as_tuple=True)
            fields |= self._losses(target[rows, positions], alphas[rows, positions], rows, input_ids.shape[0],
                                   logits=logits[rows, positions], **counts)
        return fields

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

        `labels` (a training batch, as `Seq2SeqTrainer(predict_with_generate=True)` passes it) are the reference
        captions: they are ignored, and so are `input_ids` of their shape (the reference captions as the model's
        input), as Seq2SeqTrainer evicts `decoder_input_ids` made from labels: generation starts from the image.
        """
        labels = kwargs.pop("labels", None)
        if labels is not None and input_ids is not None and input_ids.shape == labels.shape:
            input_ids = None
            kwargs.pop("attention_mask", None)
        features = self._features(pixel_values, encoder_hidden_states)  # standardised by forward
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
        self._check_same_shape(attention_mask, "attention_mask", input_ids)
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


__all__ = ["CACHE_KWARG", "ShowAttendTellGenerationMixin", "ShowAttendTellState"]
