"""`fast_linear` and `fast_tanh`, the CPU fast paths of the decoder: the same values as `F.linear` and `torch.tanh`
wherever they are used, and the plain ops (with their gradients and autocast) wherever the fast ones could not be."""

import pytest
import torch
import torch.nn.functional as F

from hf_imgcap.models.show_attend_tell.fused_teacher_forcing import fast_linear, fast_tanh


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5), (0, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_f_linear_for_any_leading_shape(shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(7, 5, generator=generator), torch.randn(7, generator=generator) if with_bias else None
    x = torch.randn(*shape, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(fast_linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-6)


def test_a_non_contiguous_weight_or_input_gives_the_same_values():
    weight = torch.randn(5, 7).t()  # (7, 5), not contiguous
    x = torch.randn(5, 3).t()
    with torch.no_grad():
        torch.testing.assert_close(fast_linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-6)


def test_gradients_flow_when_autograd_needs_them():
    weight = torch.randn(7, 5, requires_grad=True)
    x = torch.randn(3, 5, requires_grad=True)
    fast_linear(x, weight).square().sum().backward()
    expected_x, expected_w = torch.autograd.grad(F.linear(x, weight).square().sum(), (x, weight))
    torch.testing.assert_close(x.grad, expected_x)
    torch.testing.assert_close(weight.grad, expected_w)


def test_autocast_keeps_its_dtype():
    weight, x = torch.randn(7, 5), torch.randn(3, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_linear(x, weight).dtype == F.linear(x, weight).dtype == torch.bfloat16


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("mkl_fast_paths", [True, False], ids=["torch.tanh", "2σ(2x) − 1"])
def test_fast_tanh_equals_tanh_and_keeps_autograd(monkeypatch, overwrite, mkl_fast_paths):
    """Either way of computing tanh (picked by CPU) gives tanh, and leaves its input alone unless asked."""
    from hf_imgcap.models.show_attend_tell import fused_teacher_forcing

    monkeypatch.setattr(fused_teacher_forcing, "_mkl_fast_paths", lambda: mkl_fast_paths)
    x = torch.linspace(-20, 20, 4001)
    with torch.no_grad():
        torch.testing.assert_close(fast_tanh(x.clone(), overwrite=overwrite), torch.tanh(x), rtol=0, atol=3e-7)
    kept = x.clone()
    with torch.no_grad():
        fast_tanh(kept, overwrite=False)
    assert torch.equal(kept, x)  # not overwritten unless asked
    leaf = x.clone().requires_grad_()
    fast_tanh(leaf, overwrite=overwrite).sum().backward()
    torch.testing.assert_close(leaf.grad, 1 - torch.tanh(x) ** 2)


def test_a_hooked_or_wrapped_output_layer_runs_as_itself_in_generation():
    """An adapter or a hook on `lm_head` must not be bypassed by the fast path."""
    from conftest import tiny_model

    model = tiny_model().eval()
    hidden = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        plain = model.next_token_logits(hidden)
        handle = model.lm_head.register_forward_hook(lambda module, args, output: output + 1.0)
        hooked = model.next_token_logits(hidden)
        handle.remove()
    torch.testing.assert_close(hooked, plain + 1.0)
