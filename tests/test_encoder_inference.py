"""The encoder as the feature cache runs it: BatchNorm folded into the convolutions on a copy, the same features."""

import pytest
import torch
from torch import nn

from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.data.encoder_inference import batch_norm_folded, image_features_for_inference
from hf_imgcap.data.feature_cache import build_feature_cache
from hf_imgcap.demo.scenes import write_synthetic_flickr8k

from conftest import tiny_model, tiny_processor


def with_trained_batch_norm(model, seed=0):
    """Running statistics and affine parameters unlike a fresh BatchNorm's (mean 0, variance 1, scale 1, shift 0),
    as a trained encoder's are: folding a fresh one would hardly change the convolutions."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) * 2 + 0.2)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.3)
    return model


def batch_norms(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_the_folded_copy_computes_the_encoders_features_and_leaves_the_encoder_as_it_was():
    model = with_trained_batch_norm(tiny_model())
    before = {name: tensor.clone() for name, tensor in model.encoder.state_dict().items()}
    folded = batch_norm_folded(model.encoder)
    assert folded is not model.encoder and batch_norms(folded) == []
    assert len(batch_norms(model.encoder)) > 0  # the model keeps its BatchNorms, weights and statistics
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.encoder.state_dict().items())
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.get_image_features(pixels)
        with image_features_for_inference(model) as image_features:
            folded_features = image_features(pixels)
    assert (expected - model.get_image_features(torch.zeros_like(pixels))).abs().max() > 0.1  # the features depend on the pixels
    torch.testing.assert_close(folded_features, expected, rtol=1e-4, atol=1e-5)


def test_the_cache_of_an_encoder_with_trained_batch_norm_equals_a_direct_run(tmp_path):
    root = write_synthetic_flickr8k(tmp_path / "ds", num_train=6, num_val=1, num_test=1, image_size=48)
    images = load_caption_dataset(str(root))["train"]
    model, processor = with_trained_batch_norm(tiny_model()), tiny_processor()
    cache = build_feature_cache(model, processor, images, tmp_path / "cache", batch_size=4, num_workers=0, show_progress=False)
    with torch.no_grad():
        direct = model.get_image_features(processor(images=images["image"]).pixel_values)
    torch.testing.assert_close(cache.batch(range(len(images))).float(), direct.half().float(), rtol=2**-10, atol=1e-4)
    assert len(batch_norms(model.encoder)) > 0


@pytest.mark.parametrize("change", ["forward hook on a convolution", "pre-hook on the encoder", "forward replaced"])
def test_a_hooked_encoder_is_run_as_itself(change):
    """A copy would bypass a user's hooks: such an encoder is not folded, and its hooks run while the cache encodes."""
    model = tiny_model()
    calls = []
    if change == "forward hook on a convolution":
        next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)).register_forward_hook(lambda *args: calls.append(1))
    elif change == "pre-hook on the encoder":
        model.encoder.register_forward_pre_hook(lambda *args: calls.append(1))
    else:
        stage = model.encoder.encoder.stages[0]
        original = stage.forward
        stage.forward = lambda *args, **kwargs: (calls.append(1), original(*args, **kwargs))[1]
    assert batch_norm_folded(model.encoder) is None
    with torch.no_grad(), image_features_for_inference(model) as image_features:
        image_features(torch.randn(2, 3, 64, 64))
    assert calls


def test_an_encoder_without_resnet_layers_is_not_copied():
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())  # not a transformers ResNet: left alone
    assert batch_norm_folded(encoder) is None
