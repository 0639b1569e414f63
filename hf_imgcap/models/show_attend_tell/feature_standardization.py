# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""How the decoder's input is standardised: `(features / rms - feature_mean) / (feature_scale * feature_std)`, then,
with `config.whiten_features`, multiplied by `feature_whitening` (ZCA: the channels decorrelated).

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
- `feature_whitening` (channels, channels), only when `config.whiten_features`: the symmetric ZCA matrix V·diag((λ +
  ε·mean λ)^-½)·Vᵀ of the standardised features' channel covariance VΛVᵀ (0 for directions the training set does not
  span). Per-channel scaling leaves the channels correlated: a random ResNet's features vary mostly along a few
  directions (background, size), and what tells one colour from another lies along weak ones, which Adam's updates
  hardly move along. Whitened, every direction has unit variance (issue 12, `bench/recipe_demo.py --variants
  per_channel whitened`: the demo's test captions then name the colour of one-object images 79% of the time against
  18% without, with the same decoder, data and recipe; a linear probe of the features reads 79% / 75%). On the
  directions the training set spans the whitening is invertible, so the decoder can represent the same functions
  there: it changes how fast training finds them, not what can be learned.
"""

import torch

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


class FeatureStandardization:
    """A mixin of the model: owns the standardisation buffers (see the module's docstring) and applies them."""

    def _build_feature_standardization(self, num_regions: int, channels: int):
        # Identity until `set_feature_statistics`; `_init_weights` resets them the same way.
        self.register_buffer("feature_mean", torch.zeros(num_regions, channels))
        self.register_buffer("feature_std", torch.ones(num_regions, channels))
        self.register_buffer("feature_scale", torch.ones(()))
        if self.config.whiten_features:
            self.register_buffer("feature_whitening", torch.eye(channels))

    def _standardize(self, features):
        """The decoder's input, standardised once per call. Dividing by the rms also makes raw encoder maps of any
        scale safe (it is idempotent on `get_image_features` / cached features)."""
        features = normalize_features(features.to(self.dtype))
        divisor = (self.feature_scale * self.feature_std).to(features.dtype)
        standardized = (features - self.feature_mean.to(features.dtype)) / divisor
        if self.config.whiten_features:
            standardized = standardized @ self.feature_whitening.to(features.dtype)  # symmetric: rows or columns alike
        return standardized

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
