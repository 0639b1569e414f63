# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Every check of the Show, Attend and Tell model's inputs, in one place: pixel values, encoder hidden states,
token ids, attention masks, labels and batch shapes. Each raises a `ValueError` that names the problem. Part of
the remote-code bundle."""

import torch


class ShowAttendTellInputChecks:
    """Input checks of [`ShowAttendTellForConditionalGeneration`] (a mixin: reads `self.config`)."""

    def _check_inputs(self, input_ids, attention_mask, labels, cache, stepwise):
        """The checks of `forward`'s text inputs. Returns the attention mask over `input_ids` (the cached tokens'
        part dropped) and the shifted targets (None without labels)."""
        if input_ids is None:
            raise ValueError("input_ids is required (start with the start token, e.g. [CLS] = %d)" % self.config.bos_token_id)
        if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, seq_len) tensor, got shape {tuple(input_ids.shape)}")
        self._check_token_ids(input_ids, "input_ids")
        if labels is not None and cache is not None:
            raise ValueError(
                "labels with a cache from earlier steps: the loss (its attention regulariser sums over every step) "
                "needs the whole caption; pass the whole caption in one call"
            )
        if attention_mask is not None and stepwise:  # HF convention: the mask may also cover the cached tokens
            attention_mask = attention_mask[:, -input_ids.shape[1] :]
        self._check_same_shape(attention_mask, "attention_mask", input_ids)
        return attention_mask, None if labels is None else self._shifted_targets(labels, input_ids)

    @staticmethod
    def _check_same_shape(tensor, name, input_ids):
        if tensor is not None and tensor.shape != input_ids.shape:
            raise ValueError(f"{name} {tuple(tensor.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")

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

    def _check_pixel_values(self, pixel_values):
        if pixel_values is None:
            raise ValueError("No image given: pass pixel_values (from the processor) or encoder_hidden_states")
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
        self._check_region_map(pixel_values)
        return pixel_values

    def _check_region_map(self, pixel_values):
        """The decoder's feature statistics and attention are per region of the map the model was built for: images
        giving another map size are refused before the encoder runs."""
        config = self.config
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

    def _check_encoder_hidden_states(self, encoder_hidden_states):
        """`(batch, regions, channels)` features (or the encoder's `(B, C, H, W)` map, flattened), validated."""
        features, size = encoder_hidden_states, self.config.encoder_hidden_size
        if not torch.is_tensor(features) or features.ndim not in (3, 4):
            raise ValueError(f"encoder_hidden_states must be (batch, regions, {size}) features, got {type(features)}")
        if features.ndim == 4:  # (B, C, H, W) as the encoder emits it
            if features.shape[1] != size:
                raise ValueError(f"encoder_hidden_states {tuple(features.shape)}: expected {size} channels in dim 1")
            features = features.flatten(2).transpose(1, 2)
        if features.shape[0] == 0:
            raise ValueError("encoder_hidden_states is an empty batch (0 images)")
        if features.shape[-1] != size:
            raise ValueError(f"encoder_hidden_states {tuple(features.shape)}: last dimension must be the encoder's {size} channels")
        if features.shape[1] != self.config.num_regions:
            raise ValueError(
                f"encoder_hidden_states has {features.shape[1]} regions; this model expects {self.config.num_regions} "
                f"(images of {self.config.image_size}×{self.config.image_size}: use the model's processor)"
            )
        return features

    def _caption_lengths(self, input_ids, attention_mask):
        real = input_ids != self.config.pad_token_id if attention_mask is None else attention_mask.bool()
        if attention_mask is None:
            real[:, 0] = True
        lengths = real.sum(1)
        if (lengths == 0).any():
            raise ValueError(f"caption {int((lengths == 0).nonzero()[0])} in the batch is empty (attention_mask all 0)")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if (real != (positions < lengths.unsqueeze(1))).any():
            raise ValueError("captions must be right-padded: attention_mask must be 1…1 0…0 on every row")
        return lengths

    def _shifted_targets(self, labels, input_ids):
        """Position t predicts label t+1 (-100: not scored); the last position has no target."""
        self._check_same_shape(labels, "labels", input_ids)
        target = torch.full_like(labels, -100)
        target[:, :-1] = labels[:, 1:]
        bad = (target != -100) & ((target < 0) | (target >= self.config.vocab_size))
        if bad.any():
            raise ValueError(f"labels contain id {int(target[bad][0])} outside the vocabulary (0..{self.config.vocab_size - 1}) or -100")
        return target


__all__ = ["ShowAttendTellInputChecks"]
