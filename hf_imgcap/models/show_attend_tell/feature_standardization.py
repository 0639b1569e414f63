# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""How the decoder's input is standardised: `(features / rms - feature_mean) / (feature_scale * feature_std)`.

A frozen encoder's features share a large image-independent part (for a randomly initialised ResNet-152, ~99% of
every value): removing the per-(region, channel) mean makes what differs between images visible to the decoder.
Dividing by a per-channel standard deviation then gives every channel the same weight at the start of training; with
one global scale a few high-variance channels dominate (issue 12: a linear probe reads colour 75% / shape 81% of the
demo images after per-channel standardisation, 62% / 59% after the single scale).

Part of the remote-code bundle (imports torch only). Buffers, by their checkpoint names:
- `feature_mean` (regions, channels): the training set's mean of `get_image_features`;
- `feature_std` (regions, channels): the spread each value is divided by (per channel: the same in every region);
- `feature_scale` (): one global divisor, the only scale of checkpoints saved before `feature_std` existed. Those
  checkpoints have no `feature_std`, which then stays at ones: they load and compute exactly what they did.
"""

import torch

# A channel whose values hardly vary (e.g. a ReLU that is almost never active) must not be blown up into noise:
# each standard deviation is at least this fraction of the root-mean-square spread over all values.
STD_FLOOR = 0.1
# What a standard deviation is taken over: "channel" (pooled over the regions), "region_channel" or "global".
STANDARDIZE_PER = "channel"


def normalize_features(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide each image's `(regions, channels)` map by its root-mean-square (computed in fp32)."""
    rms = features.float().pow(2).mean(dim=(1, 2), keepdim=True).add(eps).sqrt()
    return (features.float() / rms).to(features.dtype)


def standard_deviation(variance: torch.Tensor, per: str = STANDARDIZE_PER, floor: float = STD_FLOOR) -> torch.Tensor:
    """The `(regions, channels)` divisor from the per-(region, channel) variance around the per-(region, channel)
    mean: pooled over the regions (`per="channel"`), as is (`"region_channel"`) or over everything (`"global"`,
    the single scale of earlier versions), floored at `floor` times the global spread."""
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


class FeatureStandardization:
    """A mixin of the model: owns the standardisation buffers (see the module's docstring) and applies them."""

    def _build_feature_standardization(self, num_regions: int, channels: int):
        # Identity until `set_feature_statistics`; `_init_weights` resets them the same way.
        self.register_buffer("feature_mean", torch.zeros(num_regions, channels))
        self.register_buffer("feature_std", torch.ones(num_regions, channels))
        self.register_buffer("feature_scale", torch.ones(()))

    def _standardize(self, features):
        """The decoder's input, standardised once per call. Dividing by the rms also makes raw encoder maps of any
        scale safe (it is idempotent on `get_image_features` / cached features)."""
        features = normalize_features(features.to(self.dtype))
        divisor = (self.feature_scale * self.feature_std).to(features.dtype)
        return (features - self.feature_mean.to(features.dtype)) / divisor

    @torch.no_grad()
    def set_feature_statistics(self, mean, std):
        """Standardise features as `(features - mean) / std` from now on. `mean`: `(regions, channels)`, the training
        set's mean of `get_image_features`; `std`: a number, or a tensor `(channels,)` / `(1, channels)` /
        `(regions, channels)` of positive spreads (`FeatureCache.statistics()` gives both)."""
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
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)
        self.feature_scale.fill_(1.0)
