# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""The fast teacher-forced pass of the Show, Attend and Tell decoder: the training kernel, not the specification.

The specification is `ShowAttendTellForConditionalGeneration.step` (modeling_show_attend_tell.py). This kernel
computes exactly what stepping `step` over every position of right-padded captions computes (the tests compare
outputs and gradients), reading the model's parameters by name; each line of its per-step loop is marked with the
tag of the line of `step` it computes ([attend], [gate], [input], [lstm]) and how it is rearranged. Why it is fast:
the region projection is computed once per image; the embedding half of the LSTM input projection is one matmul for
all positions; the three projections of the hidden state (attention query, context gate, LSTM recurrence) are one
matmul per step; the per-step weight gradients of those matmuls are deferred into one large matmul
(`_DeferredWeightGrad`); captions are sorted by length so each step only runs the captions still going; and the
output layer runs once, on the real positions only, fused with the loss when training (`LinearCrossEntropy`).

Part of the remote-code bundle: imports torch only.
"""


import functools

import torch
import torch.nn.functional as F


def _compute_dtype(x, weight):
    # Custom functions are not autocast: follow the autocast dtype (e.g. bf16) by hand, as F.linear would.
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def _uses_onednn(weight) -> bool:
    """On CPU in fp32, oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the kernel torch.compile emits
    for CPU linear layers) multiplies by our weights 1.3–2× faster than the BLAS matmul on a 2-core AMD EPYC: a few
    rows times a large weight (a recurrence's step) most of all, and the output layer's (tokens, hidden) × (hidden,
    vocab). On a 2-core Intel Xeon the two run about as fast (bench/bench_kernels.py)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def fast_linear(x, weight, bias=None):
    """`F.linear(x, weight, bias)`, through oneDNN where `_uses_onednn`, nothing needs autograd (the op has no
    derivative: the autograd functions here call it from their forward and backward), autocast is off, and
    torch.compile is not tracing (its CPU backend picks its own kernel for `F.linear`, the same one)."""
    needs_autograd = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if (_uses_onednn(weight) and x.dtype == torch.float32 and not needs_autograd
            and not torch.is_autocast_enabled(x.device.type) and not torch.compiler.is_compiling()):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "")
    return F.linear(x, weight, bias)


@functools.cache
def _mkl_fast_paths() -> bool:
    """Whether MKL runs its fastest code on this CPU. On x86, torch's BLAS matmul and its `torch.tanh` are MKL's
    (BLAS and VML), which picks its fastest kernels on Intel CPUs. Measured on a 2-core Intel Xeon: a recurrence's
    input gradients `grad @ weight` through BLAS read the weight as stored and are as fast as oneDNN's product or
    faster, which needs `weight.T` copied contiguous once per forward (a slow transposing copy of up to 16 MB); and
    `torch.tanh` is ~3× as fast as 2σ(2x) − 1. On a 2-core AMD EPYC oneDNN ran the recurrence's forward products
    1.3–2.2× as fast as BLAS (the input-gradient form was not measured there) and `torch.tanh` was 2.3× slower than
    2σ(2x) − 1, so other CPUs keep oneDNN and 2σ(2x) − 1. bench/bench_kernels.py prints both comparisons on the
    machine at hand."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return "GenuineIntel" in cpuinfo.read(4096)
    except OSError:
        return False


class _SmallBatchProducts:
    """`x @ weight.T` and `grad @ weight` for the many small batches (one per time step, at most a batch of rows)
    that a recurrence multiplies by one large weight; where oneDNN computes `grad @ weight`, `weight.T` is made
    contiguous once, for the backward."""

    def __init__(self, weight):
        self.weight = weight.contiguous()
        self._transposed = None  # weight.T, made when the first gradient arrives

    def forward(self, x):
        return fast_linear(x, self.weight)

    def input_grad(self, grad):
        if not _uses_onednn(self.weight) or _mkl_fast_paths():
            return grad @ self.weight
        if self._transposed is None:
            self._transposed = self.weight.t().contiguous()
        return fast_linear(grad, self._transposed)


class _StepLinear(torch.autograd.Function):
    """`x @ weight.T` for one time step whose weight gradient is left to `_DeferredWeightGrad`: backward only
    returns the input gradient and records `(x, grad)`. Per-step weight gradients have an inner dimension of one
    batch (≤ 32) and must be summed over the steps; one matmul over all steps at the end is several times faster."""

    @staticmethod
    def forward(ctx, x, projection):
        products = projection.products(_compute_dtype(x, projection.weight))
        ctx.input_dtype = x.dtype
        x = x.to(products.weight.dtype)
        ctx.save_for_backward(x)
        ctx.products, ctx.records = products, projection.records
        return products.forward(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_output = grad_output.to(ctx.products.weight.dtype)
        if ctx.records is not None:
            ctx.records.append((x, grad_output))
        return ctx.products.input_grad(grad_output).to(ctx.input_dtype), None


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


def _tanh(x):
    """tanh(x) = 2σ(2x) − 1, in place: under half of torch.tanh's time on a CPU where MKL's vectorised tanh is
    slow (`_mkl_fast_paths`); equal within 2e-7."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def fast_tanh(x, overwrite: bool = False):
    """`torch.tanh(x)`, in `x`'s memory if `overwrite`; as `_tanh` when no gradient is needed (generation) on a CPU
    where that is faster."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.tanh(x)
    if x.device.type != "cpu" or _mkl_fast_paths():
        return x.tanh_() if overwrite else torch.tanh(x)
    return _tanh(x if overwrite else x.clone())


class _AttentionWeights(torch.autograd.Function):
    """[attend]'s α_t = softmax_regions(w · tanh(W_a a + W_h h_{t-1})) for the captions still running, with a hand-written
    backward: `ShowAttendTellAttention.weights` would leave autograd a zero-padded full-size gradient of the regions'
    projection per step (zero-fill, copy, add); this one adds its part into `projected_grad` in place, and
    `_AccumulatedGrad` hands the sum on once. Returns α `(active, regions)`.

    It works with s = σ(2x), tanh(x) = 2s − 1, so that the per-step passes over the `(active, regions, attention)`
    energy are few: w · tanh(x) = 2 w · s − Σ w, and tanh'(x) = 1 − tanh² = 4 s (1 − s). Hence it takes the regions'
    projection doubled (`2 W_a a`, once per batch) and doubles the query itself."""

    @staticmethod
    def forward(ctx, doubled_projected_features, query, score_weight, projected_grad):
        # doubled_projected_features (captions, regions, attention), the first `active` rows used; query (active, attention)
        active = query.shape[0]
        sigmoids = torch.add(doubled_projected_features[:active], query.unsqueeze(1), alpha=2).sigmoid_()  # s = σ(2x)
        ctx.projected_grad, ctx.query_dtype, ctx.score_dtype = projected_grad, query.dtype, score_weight.dtype
        score_weight = score_weight.to(sigmoids.dtype)
        scores = (sigmoids @ score_weight).mul_(2).sub_(score_weight.sum())  # w · (2s − 1)
        alpha = torch.softmax(scores, dim=-1)  # (active, regions)
        ctx.save_for_backward(sigmoids, alpha, score_weight)
        return alpha

    @staticmethod
    def backward(ctx, grad_alpha):
        sigmoids, alpha, score_weight = ctx.saved_tensors
        grad_scores = alpha * (grad_alpha - (grad_alpha * alpha).sum(-1, keepdim=True))  # softmax's backward
        grad_scores = grad_scores.to(sigmoids.dtype)  # under autocast: softmax ran in fp32, the sigmoids in bf16
        # d w = Σ grad_scores · (2s − 1)
        grad_score_weight = torch.einsum("nr,nra->a", grad_scores, sigmoids).mul_(2).sub_(grad_scores.sum())
        # d x = grad_scores ⊗ w · 4 s (1 − s), s left intact for a retained graph
        grad_energy = torch.addcmul(sigmoids, sigmoids, sigmoids, value=-1).mul_(grad_scores.unsqueeze(-1)).mul_(score_weight * 4)
        if ctx.projected_grad is not None:
            ctx.projected_grad[: grad_energy.shape[0]] += grad_energy
        return None, grad_energy.sum(1).to(ctx.query_dtype), grad_score_weight.to(ctx.score_dtype), None


class _AccumulatedGrad(torch.autograd.Function):
    """Identity on `anchor` (the recurrence's initial state) that returns `target`'s gradient as the steps summed it
    into `buffer`. Every step depends on the initial state, so backpropagation reaches this node only after all
    steps have added their part."""

    @staticmethod
    def forward(ctx, anchor, target, buffer):
        ctx.buffer, ctx.target_dtype = buffer, target.dtype
        return anchor.view_as(anchor)

    @staticmethod
    def backward(ctx, grad_anchor):
        grad = ctx.buffer.to(ctx.target_dtype, copy=True)
        ctx.buffer.zero_()  # a second backward through a retained graph sums its steps afresh
        return grad_anchor, grad, None


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `targets`.

    Same value and gradients as `F.cross_entropy(F.linear(...), reduction="sum")`, with less memory traffic over
    the `(tokens, vocab)` logits, the largest tensor of a step: one fused log-softmax pass, the logits freed at once,
    and the backward turns the saved log-probabilities into softmax − one-hot in place.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        dtype = _compute_dtype(hidden, weight)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
        log_probs = torch.log_softmax(fast_linear(hidden, weight.contiguous(), bias).float(), dim=-1)  # the loss in fp32, as autocast does
        loss = -log_probs.gather(1, targets.unsqueeze(1)).sum()
        ctx.save_for_backward(hidden, weight, log_probs, targets)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if getattr(ctx, "used", False):
            raise RuntimeError("the fused output layer and loss (return_logits=False) backpropagate once per forward: they "
                               "turn their saved log-probabilities into the gradient in place. Run the forward again, or "
                               "pass return_logits=True, to backpropagate through one forward twice (retain_graph=True)")
        ctx.used = True
        hidden, weight, log_probs, targets = ctx.saved_tensors
        grad = log_probs.exp_()  # softmax, in place of the log-probabilities
        grad[torch.arange(len(targets), device=grad.device), targets] -= 1.0
        grad = grad.mul_(grad_loss).to(weight.dtype)
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        return (grad @ weight).to(hidden_dtype), (grad.t() @ hidden).to(weight_dtype), grad.sum(0).to(bias_dtype), None


class _RecordingProjection:
    """A per-step `x @ weight.T` whose weight gradient `_DeferredWeightGrad` computes from `records` (a frozen
    weight records nothing)."""

    def __init__(self, weight, weight_trains: bool = True):
        self.weight = weight.detach().contiguous()  # one contiguous copy per forward, not a strided read per step
        self.records = [] if weight_trains else None  # None: a frozen weight, only input gradients are needed
        self._products = {}  # compute dtype -> _SmallBatchProducts, built once per forward

    def products(self, dtype) -> _SmallBatchProducts:
        if dtype not in self._products:
            self._products[dtype] = _SmallBatchProducts(self.weight.to(dtype))
        return self._products[dtype]

    def __call__(self, x):
        return _StepLinear.apply(x, self)


def _inference_projection(weight):
    """A per-step `x @ weight.T` without gradients (`fast_linear` leaves autocast to `F.linear`)."""
    return _SmallBatchProducts(weight.detach()).forward


def _hidden_projections(model):
    """The three linear maps of the previous hidden state, by name: `{name: (weight, bias)}`. They are applied as
    one matmul; each output is split back by the sizes of these same weights, so no order can drift apart."""
    lstm = model.lstm
    return {
        "query": (model.attention.decoder_proj.weight, model.attention.decoder_proj.bias),  # [attend]'s W_h h_{t-1}
        "gate": (model.context_gate.weight, model.context_gate.bias),  # [gate]'s W_β h_{t-1} + b_β
        "recurrent": (lstm.weight_hh, torch.zeros_like(lstm.bias_hh)),  # [lstm]'s W_hh h_{t-1}; b_hh goes with the embedding half
    }


# Left to eager mode under torch.compile: the loop's length depends on the batch's caption lengths, so a compiled
# version would be specialised on them and recompiled for almost every new batch; its products are oneDNN's already.
@torch.compiler.disable
def teacher_forced_decode(model, state, input_ids, lengths):
    """All positions of right-padded captions at once, equal to stepping `model.step` over them.

    `state`: `model.initial_state(features)` for one image per caption; `lengths`: the positions to run per
    caption. Returns the hidden states and attention weights of the real positions, packed time-major (position 0
    of every caption, then position 1 of those still running, ...), and for each packed row its (caption, position).
    """
    # Longest captions first: at each step the captions still running are the first `active` rows.
    lengths, order = torch.sort(lengths, descending=True)
    features, projected_features = state.features[order], state.projected_features[order]
    device = features.device.type
    if torch.is_autocast_enabled(device):
        # The context's bmm would cast the (captions, regions, channels) features to the autocast dtype at every
        # position: cast them once. The bmm then casts only α, as it did.
        features = features.to(torch.get_autocast_dtype(device))
    hidden, cell, input_ids = state.hidden[order], state.cell[order], input_ids[order]
    lstm = model.lstm

    active_per_step = (lengths.unsqueeze(0) > torch.arange(int(lengths[0]), device=lengths.device).unsqueeze(1)).sum(1)
    active_counts = active_per_step.tolist()  # captions still running at each position

    # [input] + [lstm]: the LSTMCell multiplies its input [E y_{t-1}; β_t ⊙ z_t] by weight_ih, i.e. the embedding by
    # the first `embedding_size` columns and the gated context by the rest. Split the weight (split, not two slices: its
    # backward concatenates the two gradients instead of zero-filling twice) and compute the embedding half, with both
    # LSTM biases, for every real position (padding skipped) in one matmul.
    embedding_size = model.embed_tokens.embedding_dim
    weight_embedding, weight_context = lstm.weight_ih.split([embedding_size, lstm.input_size - embedding_size], dim=1)
    # Packed time-major, so that each step reads (and backpropagates into) its own rows, not the whole tensor.
    packed_ids = torch.cat([input_ids[:active, position] for position, active in enumerate(active_counts)])
    embed_gates = F.linear(model.embed_tokens(packed_ids), weight_embedding, lstm.bias_ih + lstm.bias_hh)
    embed_gates = embed_gates.split(active_counts)  # per position: (captions still running, 4 * hidden)
    # The three maps of h_{t-1} ([attend]'s query, [gate]'s pre-activation, [lstm]'s recurrence) as one matmul.
    projections = _hidden_projections(model)
    hidden_weight = torch.cat([weight for weight, _ in projections.values()])
    hidden_bias = torch.cat([bias for _, bias in projections.values()])
    split_sizes = [weight.shape[0] for weight, _ in projections.values()]
    if torch.is_grad_enabled():
        # Training: the per-step weight gradients of the two products, for each weight that trains (a user may freeze
        # any layer), are computed once, when backprop reaches h0.
        project_hidden = _RecordingProjection(hidden_weight, weight_trains=hidden_weight.requires_grad)
        project_context = _RecordingProjection(weight_context, weight_trains=weight_context.requires_grad)
        for weight, projection in ((hidden_weight, project_hidden), (weight_context, project_context)):
            if projection.records is not None:
                hidden = _DeferredWeightGrad.apply(hidden, weight, projection.records)
    else:
        project_hidden, project_context = _inference_projection(hidden_weight), _inference_projection(weight_context)
    projected_grad = None
    if torch.is_grad_enabled() and projected_features.requires_grad:
        # [attend]'s regions' projection: its per-step gradients are summed in place, handed on once.
        projected_grad = torch.zeros(projected_features.shape, dtype=torch.float32, device=projected_features.device)
        hidden = _AccumulatedGrad.apply(hidden, projected_features, projected_grad)

    score_weight = model.attention.score.weight[0]  # [attend]'s w
    doubled_projected_features = projected_features * 2  # `_AttentionWeights` works with σ(2x)
    hiddens, alphas = [], []
    for position, active in enumerate(active_counts):
        # The captions still running at this position (sorted longest first); `step` runs every row every time.
        hidden, cell = hidden[:active], cell[:active]
        # [attend] query W_h h_{t-1}, [gate] W_β h_{t-1} + b_β and [lstm] W_hh h_{t-1}: one matmul, split by name.
        projected = dict(zip(projections, (project_hidden(hidden) + hidden_bias).split(split_sizes, dim=-1)))
        # [attend] α_t: `ShowAttendTellAttention.forward` with the query projected above; the regions' projection
        # is the state's, computed once per image.
        alpha = _AttentionWeights.apply(doubled_projected_features, projected["query"], score_weight, projected_grad)
        # [attend] z_t = Σ α_t a (one image per caption here, so a batched vector-matrix product), then
        # [gate] β_t ⊙ z_t with β_t = σ(W_β h_{t-1} + b_β) from the shared matmul.
        context = torch.bmm(alpha.unsqueeze(1), features[:active]).squeeze(1) * torch.sigmoid(projected["gate"])
        # [input] + [lstm] the LSTMCell's gate pre-activations W_ih [E y_{t-1}; β_t ⊙ z_t] + b_ih + W_hh h_{t-1} + b_hh,
        # without building the concatenation: embedding half and biases precomputed, context half here, recurrence
        # from the shared matmul.
        gates = embed_gates[position] + project_context(context) + projected["recurrent"]
        # [lstm] nn.LSTMCell's equations, in its gate order (input, forget, cell, output).
        in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
        hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
        hiddens.append(hidden)
        alphas.append(alpha)

    row_in_sorted = torch.cat([torch.arange(n, device=lengths.device) for n in active_counts])
    position = torch.repeat_interleave(torch.arange(len(active_per_step), device=lengths.device), active_per_step)
    return torch.cat(hiddens), torch.cat(alphas), order[row_in_sorted], position
