# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What transformers' `Trainer` / `Seq2SeqTrainer` expect of a model beyond the decoder's equations: a batch of
only `labels` (the captions' input built from them), activation checkpointing (`gradient_checkpointing=True`), and
the `(batch, seq_len, ·)` layout of per-position outputs. Part of the remote-code bundle: imports torch only."""

import torch


class ShowAttendTellTrainerSupport:
    """A mixin of [`ShowAttendTellForConditionalGeneration`] (reads `self.config`, `self.encoder`)."""

    gradient_checkpointing = False  # set by `gradient_checkpointing_enable()` / TrainingArguments(gradient_checkpointing=True)

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

    def _run_encoder(self, pixel_values):
        """The ResNet's `(batch, channels, h, w)` map. With activation checkpointing on and the encoder training (the
        memory-heavy case: ResNet-152's activations), each stage's activations are recomputed in the backward pass
        instead of kept. The decoder is not checkpointed: its fused kernel keeps only `(captions, hidden)` states per
        step, and a frozen encoder runs without gradients, so checkpointing then changes nothing."""
        encoder = self.encoder
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return encoder(pixel_values, return_dict=True).last_hidden_state
        hidden = encoder.embedder(pixel_values)
        for stage in encoder.encoder.stages:
            hidden = self._gradient_checkpointing_func(stage.__call__, hidden)
        return hidden

    @staticmethod
    def _unpack(packed, rows, positions, batch_size, seq_len):
        """`(N, ·)` values of the real positions `(rows, positions)` -> `(batch, seq_len, ·)`, zero elsewhere."""
        unpacked = packed.new_zeros(batch_size, seq_len, packed.shape[-1])
        unpacked[rows, positions] = packed
        return unpacked


__all__ = ["ShowAttendTellTrainerSupport"]
