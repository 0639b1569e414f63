"""What each of the decoder training step's optimisations buys: the model-only step of `bench_training.py` (its fixed
batch of 32 captions, fused Adam) with one optimisation turned off at a time and all the others on, interleaved in
one process, each row with its own model and optimizer from the same initial weights.

Rows:
- all on: the kernel as `train.py` trains with it (model only: no data loading, no clipping);
- without the kernel: `step` called at every position under autograd (what a model whose decoder layers a user has
  wrapped trains with); every optimisation below is part of the kernel;
- per-step weight gradients: each step's backward computes its own weight gradients of the two per-step products,
  instead of one product over all steps at the end;
- attention backward by autograd: the attention weights differentiated by autograd, instead of the hand-written
  backward that sums the regions' projection gradient in place over the steps;
- attention through tanh: the hand-written attention computing the energy e = tanh(x) with `torch.tanh` and its
  backward through 1 − e², instead of working with σ(2x) (fewer passes over the energy, and no `torch.tanh`);
- BLAS, not oneDNN: the per-step products and the output layer's forward as torch's matmul (CPU only);
- the recurrence's input gradients the other way: through oneDNN with a transposed weight copy where the kernel uses
  BLAS (Intel CPUs, `_mkl_fast_paths`), through BLAS elsewhere (CPU only);
- output layer and loss unfused: `F.linear` then `F.cross_entropy` over the (tokens, vocabulary) logits;
- Adam unfused: torch's default (foreach) Adam.

Before any timing, each row's loss and gradients on the batch (dropout off) are compared with those of "all on":
the largest difference of any gradient, relative to that gradient's largest value, is printed.

    python bench/bench_ablation.py [--quick] [--repeats 3] [--vocab 30522 8000]
"""

import contextlib
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import build_ours, fixed_batch, model_step, ours_loss, training_loader  # noqa: E402
from common import bench_arguments, interleaved, load, machine, require_device, table, write_feature_cache  # noqa: E402

from hf_imgcap.data.feature_cache import FeatureCache  # noqa: E402
from hf_imgcap.models.show_attend_tell import fused_teacher_forcing, modeling_show_attend_tell  # noqa: E402
from hf_imgcap.training.freed_memory import keep_freed_memory_for_reuse  # noqa: E402


# ---------------------------------------------------------------------------------------------- the plain versions
class _PerStepLinear(torch.autograd.Function):
    """The kernel's per-step product (oneDNN forward and input gradient) with its weight gradient computed in each
    step's backward, as autograd would."""

    @staticmethod
    def forward(ctx, x, weight, products):
        ctx.save_for_backward(x)
        ctx.products = products
        return products.forward(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return ctx.products.input_grad(grad_output), grad_output.t() @ x, None


class _PerStepWeightGradProjection:
    """Stands in for the kernel's `_RecordingProjection`: nothing recorded, nothing deferred."""

    def __init__(self, weight, weight_trains: bool = True):
        self.weight = weight  # still attached to the parameters: autograd takes each step's weight gradient back
        self.products = fused_teacher_forcing._SmallBatchProducts(weight.detach())
        self.records = None

    def __call__(self, x):
        return _PerStepLinear.apply(x, self.weight, self.products)


class _AttentionByAutograd:
    """Stands in for the kernel's `_AttentionWeights`: the same formula, out of place, differentiated by autograd."""

    @staticmethod
    def apply(doubled_projected_features, query, score_weight, projected_grad):
        energy = torch.sigmoid(doubled_projected_features[: query.shape[0]] + 2 * query.unsqueeze(1)) * 2 - 1
        return torch.softmax(energy @ score_weight, dim=-1)


class _AttentionThroughTanh(torch.autograd.Function):
    """Stands in for the kernel's `_AttentionWeights`: its hand-written backward, but with the energy e = tanh(x)
    from `torch.tanh` and differentiated through 1 − e²."""

    @staticmethod
    def forward(ctx, doubled_projected_features, query, score_weight, projected_grad):
        energy = torch.add(query.unsqueeze(1), doubled_projected_features[: query.shape[0]], alpha=0.5).tanh_()
        alpha = torch.softmax(energy @ score_weight, dim=-1)
        ctx.save_for_backward(energy, alpha, score_weight)
        ctx.projected_grad = projected_grad
        return alpha

    @staticmethod
    def backward(ctx, grad_alpha):
        energy, alpha, score_weight = ctx.saved_tensors
        grad_scores = alpha * (grad_alpha - (grad_alpha * alpha).sum(-1, keepdim=True))
        grad_score_weight = torch.einsum("nr,nra->a", grad_scores, energy)
        grad_energy = energy.square().neg_().add_(1).mul_(grad_scores.unsqueeze(-1)).mul_(score_weight)
        if ctx.projected_grad is not None:
            ctx.projected_grad[: grad_energy.shape[0]] += grad_energy
        return None, grad_energy.sum(1), grad_score_weight, None


class _UnfusedLoss:
    """Stands in for `LinearCrossEntropy`: the logits, then the loss."""

    @staticmethod
    def apply(hidden, weight, bias, targets):
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def _patching(patches):
    """A function entering `patches` (`mock.patch.object` argument tuples) for the duration of a `with`."""
    def enter():
        stack = contextlib.ExitStack()
        for target, name, value in patches:
            stack.enter_context(mock.patch.object(target, name, value))
        return stack
    return enter


def variants(device) -> dict:
    """Row name -> (the patches its steps run under, given its model; whether its Adam is fused)."""
    kernel = fused_teacher_forcing
    through_blas = kernel._mkl_fast_paths()
    input_grads_other_way = f"input gradients through {'oneDNN, not BLAS' if through_blas else 'BLAS, not oneDNN'}"
    rows = {
        "all on": (lambda model: [], True),
        "without the kernel (step at every position)": (lambda model: [(model, "_fused_kernel_applies", lambda: False)], True),
        "per-step weight gradients": (lambda model: [(kernel, "_RecordingProjection", _PerStepWeightGradProjection)], True),
        "attention backward by autograd": (lambda model: [(kernel, "_AttentionWeights", _AttentionByAutograd)], True),
        "attention through tanh": (lambda model: [(kernel, "_AttentionWeights", _AttentionThroughTanh)], True),
        "BLAS, not oneDNN": (lambda model: [(kernel, "_uses_onednn", lambda weight: False)], True),
        input_grads_other_way: (lambda model: [(kernel, "_mkl_fast_paths", lambda: not through_blas)], True),
        "output layer and loss unfused": (lambda model: [(modeling_show_attend_tell, "LinearCrossEntropy", _UnfusedLoss)], True),
        "Adam unfused (foreach)": (lambda model: [], False),
    }
    if torch.device(device).type != "cpu":  # CPU choices
        del rows["BLAS, not oneDNN"], rows[input_grads_other_way]
    return rows


def build(vocab, cache, device, patches_for, fused_adam):
    """A row's model, optimizer and patching, from the same initial weights as every other row."""
    model, optimizer = build_ours(vocab, cache, device)
    if not fused_adam:
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-4, foreach=True)
    return model, optimizer, _patching(patches_for(model))


def gradients(model, batch, patching):
    """The loss and every gradient on `batch` with dropout off, under `patching`; the model is left as it was."""
    model.eval()
    model.zero_grad(set_to_none=True)
    with patching():
        loss = ours_loss(model, batch)
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.train()
    return loss.item(), grads


def largest_difference(grads, reference) -> float:
    if grads.keys() != reference.keys():
        raise AssertionError(f"different parameters got gradients: {sorted(grads.keys() ^ reference.keys())}")
    return max(float((grads[n] - reference[n]).abs().max() / reference[n].abs().max().clamp_min(1e-30)) for n in reference)


def ablation_rows(vocab, device, repeats, cache_images=64):
    with tempfile.TemporaryDirectory() as work:
        return _ablation_rows(FeatureCache(write_feature_cache(Path(work) / "cache", cache_images)), vocab, device, repeats, cache_images)


def _ablation_rows(cache, vocab, device, repeats, cache_images):
    batch = fixed_batch(training_loader(cache, vocab, cache_images, 0), device)
    built = {name: build(vocab, cache, device, patches_for, fused) for name, (patches_for, fused) in variants(device).items()}
    reference_model, _, reference_patching = built["all on"]
    reference_loss, reference_grads = gradients(reference_model, batch, reference_patching)
    differences = {}
    for name, (model, _, patching) in built.items():
        loss, grads = gradients(model, batch, patching)
        if abs(loss - reference_loss) > 1e-4 * abs(reference_loss):
            raise AssertionError(f"{name}: loss {loss} differs from all on's {reference_loss}")
        differences[name] = largest_difference(grads, reference_grads)

    def timed(model, optimizer, patching):
        def run():
            with patching():
                model_step(lambda: ours_loss(model, batch), optimizer)
        return run

    times = interleaved({name: timed(*parts) for name, parts in built.items()}, repeats=repeats, device=device)
    base = times["all on"]
    return [[vocab, name, f"{times[name] * 1e3:.0f}", f"{times[name] / base:.2f}x", f"{differences[name]:.1e}"]
            for name in built]


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; 1 with --quick)")
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help="vocabulary sizes (default 30522 8000; 8000 with --quick)")
    args = parser.parse_args(argv)
    device = require_device(args.device)
    repeats = args.repeats or (1 if args.quick else 3)
    vocabs = args.vocab or ([8000] if args.quick else [30522, 8000])
    keep_freed_memory_for_reuse()  # as train.py does; every row runs in this process alike
    print(f"machine: {machine()}; {load()}\n", flush=True)
    rows = []
    for vocab in vocabs:
        rows += ablation_rows(vocab, device, repeats)
    print(table(["vocab", "training step (model only)", "ms per step", "vs all on", "largest gradient difference*"], rows))
    print(f"\n*from all on's gradients, relative to each gradient's largest value; loss equal within 1e-4\n"
          f"median of {repeats} interleaved repeats; batch 32, Flickr8k-like caption lengths; {load()}")


if __name__ == "__main__":
    main()
