"""Decoder training throughput on cached features, against competent baselines, interleaved in one process.

Sizes: batch 32 captions, 49 regions × 2048 channels, embedding / attention / LSTM 512, caption lengths drawn like
Flickr8k's (`common.flickr8k_like_lengths`), vocabularies of 30,522 (BERT) and 8,000. A step is forward + backward +
optimizer step.

Two kinds of rows:
- "train.py step": what `train.py` does by default for every batch: the shuffled DataLoader over a cached fp16
  feature file (`FeatureCache`, `CaptionPairs`, `collate_captions`), the model's feature standardisation, gradient
  norm clipping at 5, fused Adam. The tutorial baselines read the same DataLoader and clip as the tutorial does
  (clamp every gradient to ±5).
- "model only": one fixed fp32 batch already in memory, no clipping: the model's own speed.

Baselines: the tutorial decoder as written (`reference_decoder.TutorialDecoder`, plain Adam); the tuned tutorial
(region projection once per batch, fused Adam) that every ratio is taken against; torch.compile of the tuned tutorial
and of ours (model only, on the one fixed batch: a compiled loop specialised to its caption lengths never recompiles,
compile's best case; ours keeps its teacher-forcing loop eager under torch.compile, so that row compiles only what
surrounds it). Run from their own source when `--baselines` holds their checkouts: the tutorial itself
(`a-PyTorch-Tutorial-to-Image-Captioning/`: its models.py's `DecoderWithAttention` with its train.py's loss and
Adam, model only, next to `reference_decoder`'s reproduction on the same batch; it scores attention through ReLU
where the paper and the reproduction use tanh, the same work) and
ruotianluo/ImageCaptioning.pytorch's Att2in2 (`ImageCaptioning.pytorch/`). Att2in2 is a different model: it first embeds each 2048-channel region to 512 (one
more matmul per region, then attention over 512 channels), has no context gate, and computes log-probabilities for
every padded position; its useful-FLOP column is left empty.

Useful FLOPs are counted from the shapes (`useful_flops`): ×2 per multiply-add, and for the backward pass ×2 more where
both the input and the weight need a gradient, ×1 more where the input is the frozen features (only the weight's
gradient). They are divided by the dense fp32 matmul rate measured in the same run (the best of three measurements
before the timed steps and of three after, averaged; bf16 rows: the bf16 rate). They
are given for the model-only rows, whose batch is fixed; the train.py-step rows all read the same sequence of
shuffled batches, so their ratios compare the same work.

    python bench/bench_training.py [--quick] [--no-compile] [--repeats 3] [--vocab 30522 8000] [--baselines /tmp/speed_baselines]
"""

import contextlib
import functools
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (bench_arguments, caption_pairs, interleaved, load, machine, matmul_rates, require_device,  # noqa: E402
                    table, write_feature_cache)
from reference_decoder import TutorialDecoder, tutorial_clip_gradient, tutorial_loss, tutorial_optimizer  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402
from hf_imgcap.data.feature_cache import FeatureCache  # noqa: E402
from hf_imgcap.data.training_data import CaptionPairs, collate_captions  # noqa: E402
try:
    from hf_imgcap.training.freed_memory import keep_freed_memory_for_reuse  # noqa: E402
except ImportError:  # a revision without it, under compare_revisions.py: its train.py did not do this either
    def keep_freed_memory_for_reuse():
        return False

BATCH, REGIONS, CHANNELS, SIZE = 32, 49, 2048, 512
GRAD_CLIP = 5.0  # train.py's --grad_clip default, and the tutorial's
DEFAULT_BASELINES = os.environ.get("HF_IMGCAP_BASELINES", "/tmp/speed_baselines")


# ---------------------------------------------------------------------------------------------- arithmetic
def useful_flops(vocab: int, lengths: torch.Tensor) -> float:
    """FLOPs of one training step that any Show-Attend-Tell implementation must do, counted from the shapes.

    Forward: 2 per multiply-add. Backward: where the input and the weight both need a gradient, twice the forward
    (input gradient and weight gradient); where the input is the frozen encoder features (the region projection,
    h0 / c0 from the mean features, the attention-weighted sum over the features) only one gradient is needed: once
    the forward."""
    steps = int((lengths - 1).sum())  # positions that predict a token
    both = 4 * SIZE * (SIZE + CHANNELS + SIZE)  # LSTM cell: embedding, gated context and recurrent inputs
    both += SIZE * SIZE + SIZE * CHANNELS  # attention query, context gate
    both += REGIONS * SIZE  # attention scores of one query
    both += SIZE * vocab  # output layer
    frozen_input = REGIONS * CHANNELS  # context = alpha · features: only alpha needs a gradient
    per_image_frozen = REGIONS * CHANNELS * SIZE + 2 * CHANNELS * SIZE  # region projection, h0 / c0
    multiply_adds_x3 = steps * both
    multiply_adds_x2 = steps * frozen_input + len(lengths) * per_image_frozen
    return 2 * (3 * multiply_adds_x3 + 2 * multiply_adds_x2)


# ---------------------------------------------------------------------------------------------- data
def training_loader(cache: FeatureCache, vocab: int, images: int, seed: int):
    """train.py's DataLoader: (image, caption) pairs over the cache, shuffled, batches of 32, padded per batch."""
    pairs = CaptionPairs(caption_pairs(images, vocab), features=cache)
    loader = torch.utils.data.DataLoader(pairs, batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=collate_captions,
                                         generator=torch.Generator().manual_seed(seed))
    return itertools.chain.from_iterable(itertools.repeat(loader))  # endless: a new epoch when one ends


def fixed_batch(loader, device) -> dict:
    """One batch from the loader, its features in fp32, on the device: the model-only rows' input."""
    batch = next(loader)
    batch.pop("image_index")
    batch["encoder_hidden_states"] = batch["encoder_hidden_states"].float()
    return {key: value.to(device) for key, value in batch.items()}


# ---------------------------------------------------------------------------------------------- ours
def build_ours(vocab: int, cache: FeatureCache, device):
    config = ShowAttendTellConfig(
        vocab_size=vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
        encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, CHANNELS], embedding_size=8),  # unused: cached features
    )
    torch.manual_seed(0)
    model = ShowAttendTellForConditionalGeneration(config)
    model.set_feature_statistics(*cache.statistics())  # as train.py does: per-channel standardisation
    model.to(device).train()
    # As train.py: Adam over the trainable decoder parameters, fused.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-4, fused=True)
    return model, optimizer


def ours_loss(model, batch, dtype=None):
    device = batch["input_ids"].device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        return model(**batch, return_logits=False).loss


def train_py_step(model, optimizer, loader, device):
    """One step of `hf_imgcap.training.loop.optimizer_step` with train.py's defaults (one process, no accumulation)."""
    batch = next(loader)
    batch.pop("image_index")
    batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    loss = model(**batch, return_logits=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def model_step(loss_fn, optimizer):
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


# ---------------------------------------------------------------------------------------------- tutorial
def build_tutorial(vocab, device, tuned):
    torch.manual_seed(0)
    decoder = TutorialDecoder(vocab, hoist_region_projection=tuned).to(device).train()
    return decoder, tutorial_optimizer(decoder, fused=tuned)


def tutorial_inputs(batch):
    return batch["encoder_hidden_states"].float(), batch["input_ids"], batch["attention_mask"].sum(1)


def tutorial_pipeline_step(decoder, optimizer, loader, device):
    """The tutorial's training step, reading the same DataLoader as ours; its clipping (clamp by value)."""
    batch = next(loader)
    features, ids, lengths = (t.to(device) for t in tutorial_inputs(batch))
    loss = tutorial_loss(decoder, features, ids, lengths)
    optimizer.zero_grad()
    loss.backward()
    tutorial_clip_gradient(optimizer, GRAD_CLIP)
    optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------------------------------------- the tutorial's source
def tutorial_source(baselines: Path) -> Path | None:
    source = baselines / "a-PyTorch-Tutorial-to-Image-Captioning"
    return source if (source / "models.py").is_file() else None


def build_source_tutorial(vocab, device, source: Path):
    """sgrvinod's `DecoderWithAttention`, imported from its checkout's models.py, at its train.py's settings (Adam at
    4e-4, not fused). Its attention scores through ReLU where the paper (and ours) uses tanh: the same work."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sgrvinod_tutorial_models", source / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports torch and torchvision only; builds no encoder
    if torch.device(module.device).type != device.type:
        raise ImportError(f"its models.py runs on {module.device} (it picks CUDA when available), the bench on {device}")
    torch.manual_seed(0)
    decoder = module.DecoderWithAttention(attention_dim=SIZE, embed_dim=SIZE, decoder_dim=SIZE, vocab_size=vocab,
                                          encoder_dim=CHANNELS, dropout=0.5).to(device).train()
    return decoder, torch.optim.Adam(decoder.parameters(), lr=4e-4)


def source_tutorial_loss(decoder, features, ids, lengths):
    """Its train.py's loss on cached features: packed cross-entropy plus the doubly stochastic attention term
    (alpha_c 1). The model-only rows leave out clipping, so its clamp to ±5 is left out here too."""
    scores, captions_sorted, decode_lengths, alphas, _ = decoder(features, ids, lengths.unsqueeze(1))
    targets = captions_sorted[:, 1:]
    scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    return torch.nn.functional.cross_entropy(scores, targets) + 1.0 * ((1.0 - alphas.sum(dim=1)) ** 2).mean()


# ---------------------------------------------------------------------------------------------- Att2in2
def att2in2_source(baselines: Path) -> Path | None:
    source = baselines / "ImageCaptioning.pytorch"
    return source if (source / "captioning" / "models" / "AttModel.py").is_file() else None


def build_att2in2(vocab, device, source: Path):
    """ruotianluo's Att2in2Model, imported from its checkout, at our sizes (its options as its opts.py names them)."""
    from types import SimpleNamespace

    for path in (str(source), str(source.parent / "deps")):  # deps: its pure-Python requirements (six), if installed there
        if path not in sys.path:
            sys.path.insert(0, path)
    with contextlib.redirect_stdout(None):  # it prints a notice about an optional package on import
        from captioning.models.AttModel import Att2in2Model
    options = SimpleNamespace(vocab_size=vocab - 1, input_encoding_size=SIZE, rnn_size=SIZE, num_layers=1, drop_prob_lm=0.5,
                              max_length=40, seq_length=40, fc_feat_size=CHANNELS, att_feat_size=CHANNELS, att_hid_size=SIZE,
                              vocab={})  # its vocabulary has vocab_size + 1 entries (0 = start / end / padding)
    torch.manual_seed(0)
    model = Att2in2Model(options).to(device).train()
    return model, torch.optim.Adam(model.parameters(), lr=4e-4, fused=True)


def att2in2_loss(model, batch):
    """Its training loss (LanguageModelCriterion): masked mean of the target tokens' negative log-probabilities."""
    features, ids, mask = batch["encoder_hidden_states"], batch["input_ids"], batch["attention_mask"]
    ids = ids * mask  # its padding is 0
    logprobs = model(features.mean(1), features, ids[:, :-1], None)
    target_mask = mask[:, 1:].to(logprobs.dtype)
    picked = logprobs.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)
    return -(picked * target_mask).sum() / target_mask.sum()


def att2in2_step(model, optimizer, batch):
    loss = att2in2_loss(model, batch)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(model.parameters(), 0.1)  # its default clipping (grad_clip_mode value, 0.1)
    optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------------------------------------- compile
def compiled_or_reason(name, build_step, run_warmup):
    """(step function, None) when torch.compile builds and runs it, else (None, the reason)."""
    started = time.perf_counter()
    try:
        step = build_step()
        run_warmup(step)
    except Exception as error:  # noqa: BLE001 - any compiler failure: report it, the other rows still run
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"{name}: torch.compile failed on this machine ({type(error).__name__}: {first_line[:160]})"
    print(f"{name}: compiled in {time.perf_counter() - started:.0f} s", flush=True)
    return step, None


# ---------------------------------------------------------------------------------------------- main
def variants(vocab, cache, images, device, args, skipped, rates):
    """{row name: (pipeline, step function, flops-rate dtype or None)}"""
    rows = {}
    batch = fixed_batch(training_loader(cache, vocab, images, seed=0), device)

    # train.py step
    tutorial, tutorial_opt = build_tutorial(vocab, device, tuned=False)
    tuned, tuned_opt = build_tutorial(vocab, device, tuned=True)
    ours, ours_opt = build_ours(vocab, cache, device)
    # The same shuffled batches, in the same order, for every train.py-step row: their captions' lengths set the work.
    # (Their useful-FLOP columns stay empty: the count below is the fixed batch's.)
    loader_a, loader_b, loader_c = (training_loader(cache, vocab, images, seed=1) for _ in range(3))
    rows["tutorial as written"] = ("train.py step", lambda: tutorial_pipeline_step(tutorial, tutorial_opt, loader_a, device), None)
    rows["tuned tutorial"] = ("train.py step", lambda: tutorial_pipeline_step(tuned, tuned_opt, loader_b, device), None)
    rows["hf-imgcap"] = ("train.py step", lambda: train_py_step(ours, ours_opt, loader_c, device), None)

    # model only
    features, ids, lengths = tutorial_inputs(batch)
    tuned_m, tuned_m_opt = build_tutorial(vocab, device, tuned=True)
    ours_m, ours_m_opt = build_ours(vocab, cache, device)
    rows["tuned tutorial "] = ("model only", lambda: model_step(lambda: tutorial_loss(tuned_m, features, ids, lengths), tuned_m_opt), torch.float32)
    rows["hf-imgcap "] = ("model only", lambda: model_step(lambda: ours_loss(ours_m, batch), ours_m_opt), torch.float32)
    fp32_rate, bf16_rate = rates[torch.float32], rates[torch.bfloat16]
    if bf16_rate >= fp32_rate / 2:
        ours_bf16, ours_bf16_opt = build_ours(vocab, cache, device)
        rows["hf-imgcap, bf16 autocast"] = ("model only", lambda: model_step(lambda: ours_loss(ours_bf16, batch, torch.bfloat16), ours_bf16_opt), torch.bfloat16)
    else:  # a bf16 step would take minutes and only show that the hardware has no bf16 units
        skipped.append(f"hf-imgcap, bf16 autocast: bf16 matrix products run at {bf16_rate:.1f} GFLOP/s here, {bf16_rate / fp32_rate:.0%} "
                       f"of fp32's {fp32_rate:.1f}: no fast bf16 path on this {device.type.upper()}")

    if args.quick or args.no_compile:
        skipped.append(f"torch.compile rows: skipped ({'--quick' if args.quick else '--no-compile'}; compiling takes minutes)")
    else:
        tuned_c, tuned_c_opt = build_tutorial(vocab, device, tuned=True)
        compiled_tuned = torch.compile(tuned_c)
        step, reason = compiled_or_reason(
            f"tuned tutorial, vocab {vocab}",
            lambda: functools.partial(model_step, lambda: tutorial_loss(compiled_tuned, features, ids, lengths), tuned_c_opt),
            lambda step: [step() for _ in range(2)])
        if step:
            rows["tuned tutorial, torch.compile"] = ("model only", step, torch.float32)
        else:
            skipped.append(reason)
        ours_c, ours_c_opt = build_ours(vocab, cache, device)
        compiled_ours = torch.compile(ours_c)
        step, reason = compiled_or_reason(
            f"hf-imgcap, vocab {vocab}",
            lambda: functools.partial(model_step, lambda: ours_loss(compiled_ours, batch), ours_c_opt),
            lambda step: [step() for _ in range(2)])
        if step:
            rows["hf-imgcap, torch.compile"] = ("model only", step, torch.float32)
        else:
            skipped.append(reason)

    source = tutorial_source(Path(args.baselines))
    if source is None:
        skipped.append(f"the tutorial from its own source (sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning): no checkout at "
                       f"{Path(args.baselines) / 'a-PyTorch-Tutorial-to-Image-Captioning'}")
    else:
        try:
            source_tutorial, source_tutorial_opt = build_source_tutorial(vocab, device, source)
            # Beside it, the reproduction on the same batch: does `reference_decoder` cost what the tutorial costs?
            written, written_opt = build_tutorial(vocab, device, tuned=False)
            rows["tutorial as written "] = ("model only", lambda: model_step(lambda: tutorial_loss(written, features, ids, lengths), written_opt), torch.float32)
            rows["tutorial, its own models.py"] = ("model only", lambda: model_step(
                lambda: source_tutorial_loss(source_tutorial, features, ids, lengths), source_tutorial_opt), torch.float32)
        except ImportError as error:
            skipped.append(f"the tutorial's models.py at {source} does not import here ({error})")

    source = att2in2_source(Path(args.baselines))
    if source is None:
        skipped.append(f"Att2in2 (ruotianluo/ImageCaptioning.pytorch): no checkout at {Path(args.baselines) / 'ImageCaptioning.pytorch'}")
    else:
        try:
            att, att_opt = build_att2in2(vocab, device, source)
            rows["Att2in2 (ruotianluo)"] = ("model only", lambda: att2in2_step(att, att_opt, batch), None)
        except ImportError as error:
            skipped.append(f"Att2in2: its source at {source} does not import here ({error})")
    return rows, lengths


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; 1 with --quick)")
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help="default 30522 8000; 8000 with --quick")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--images", type=int, default=512, help="images in the benchmark's feature cache")
    parser.add_argument("--baselines", default=DEFAULT_BASELINES,
                        help="folder holding baseline checkouts (a-PyTorch-Tutorial-to-Image-Captioning/, "
                             "ImageCaptioning.pytorch/); env HF_IMGCAP_BASELINES")
    args = parser.parse_args(argv)
    device = require_device(args.device)
    keep_freed_memory_for_reuse()  # as train.py does; every row runs in this process alike
    repeats = args.repeats or (1 if args.quick else 3)
    vocabularies = args.vocab or ([8000] if args.quick else [30522, 8000])
    print(f"machine: {machine()}; {load()}\n")
    images = 64 if args.quick else args.images
    work = Path(tempfile.mkdtemp(prefix="hf_imgcap_bench_training_"))
    rows, skipped, summary = [], [], {}
    try:
        cache = FeatureCache(write_feature_cache(work / "cache", images))
        for vocab in vocabularies:
            rates = matmul_rates(device)
            steps, lengths = variants(vocab, cache, images, device, args, skipped, rates)
            times = interleaved({name: step for name, (_, step, _) in steps.items()}, repeats=repeats, device=device)
            rates = {dtype: (rate + matmul_rates(device)[dtype]) / 2 for dtype, rate in rates.items()}  # the machine drifts
            flops = useful_flops(vocab, lengths)
            for name, (pipeline, _, dtype) in steps.items():
                yardstick = times["tuned tutorial" if pipeline == "train.py step" else "tuned tutorial "]
                achieved = flops / times[name] / 1e9
                useful = [f"{flops / 1e9:.1f}", f"{achieved / rates[dtype]:.0%} of {'bf16' if dtype is torch.bfloat16 else 'fp32'}"] if dtype else ["", ""]
                rows.append([vocab, pipeline, name.strip(), f"{BATCH / times[name]:.1f}", f"{yardstick / times[name]:.2f}x", *useful])
            summary[vocab] = {"train.py step": times["tuned tutorial"] / times["hf-imgcap"],
                              "model only": times["tuned tutorial "] / times["hf-imgcap "],
                              "fraction of fp32": flops / times["hf-imgcap "] / 1e9 / rates[torch.float32]}
            rows.append([vocab, "", f"dense matmul: fp32 {rates[torch.float32]:.1f}, bf16 {rates[torch.bfloat16]:.1f} GFLOP/s", "", "", "", ""])
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(table(["vocab", "pipeline", "decoder", "captions/s", "vs tuned tutorial", "useful GFLOP/step", "of matmul rate"], rows))
    print(f"\nmedian of {repeats} interleaved repeats; batch {BATCH}, Flickr8k-like caption lengths; {load()}")
    for reason in skipped:
        print(f"skipped: {reason}")
    for vocab, figures in summary.items():
        print(f"summary: vocab {vocab}: hf-imgcap is {figures['train.py step']:.2f}x the tuned tutorial as train.py runs it, "
              f"{figures['model only']:.2f}x model only, at {figures['fraction of fp32']:.0%} of the fp32 matmul rate "
              f"(targets: 2.5x at 30522, 1.8x at 8000, 70%)")
    return summary


if __name__ == "__main__":
    main()
