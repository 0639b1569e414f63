"""Decoder training throughput on cached features, against the tutorial-style reference decoder.

Show-Attend-Tell sizes: batch 32, 49 regions × 2048 channels, embedding / attention / LSTM 512, caption lengths
10–16 tokens; vocabularies of 30,522 (BERT) and 8,000. One training step = forward + backward + Adam step.
Also: the arithmetic the model cannot avoid (counted from the shapes) divided by this machine's dense fp32
matmul rate measured in the same run, and the bf16 mixed-precision rows with their loss difference to fp32.

    python bench/bench_training.py [--repeats 5]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, matmul_gflops, table  # noqa: E402
from reference_decoder import TutorialDecoder, tutorial_loss  # noqa: E402

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402

BATCH, REGIONS, CHANNELS, SIZE = 32, 49, 2048, 512


def batch(vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 17, (BATCH,), generator=generator)
    ids = torch.randint(5, vocab, (BATCH, int(lengths.max())), generator=generator)
    ids[:, 0] = 2
    ids[torch.arange(BATCH), lengths - 1] = 3
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    ids = ids * mask
    return torch.randn(BATCH, REGIONS, CHANNELS, generator=generator), ids, mask, lengths


def unavoidable_flops(vocab, lengths) -> float:
    """Multiply-adds per training step that any implementation must do, ×2 for FLOPs, ×3 for forward + backward."""
    steps = int((lengths - 1).sum())  # positions that predict a token
    per_step = 4 * SIZE * (SIZE + CHANNELS + SIZE)  # LSTM cell: input (embedding, context) and recurrent
    per_step += SIZE * SIZE + CHANNELS * SIZE  # attention query, context gate
    per_step += REGIONS * SIZE + REGIONS * CHANNELS  # attention scores for one query, weighted context
    per_step += SIZE * vocab  # output layer
    per_image = REGIONS * CHANNELS * SIZE + 2 * CHANNELS * SIZE  # region projection, h0 / c0
    return 2 * 3 * (steps * per_step + BATCH * per_image)


def ours(vocab):
    config = ShowAttendTellConfig(
        vocab_size=vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
        encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, CHANNELS], embedding_size=8),  # unused: cached features
    )
    torch.manual_seed(0)
    model = ShowAttendTellForConditionalGeneration(config).train()
    # As train.py does: the fused Adam kernel (one pass over the 31 M decoder parameters instead of several).
    return model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-4, fused=True)


def step_ours(model, optimizer, data, dtype=None):
    features, ids, mask, _ = data
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        loss = model(encoder_hidden_states=features, input_ids=ids, attention_mask=mask,
                     labels=ids.masked_fill(mask == 0, -100), return_logits=False).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_reference(decoder, optimizer, data):
    features, ids, _, lengths = data
    loss = tutorial_loss(decoder, features, ids, lengths)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def bf16_loss_difference(vocab) -> float:
    """Relative difference of the loss under bf16 autocast vs fp32 (same weights, same batch, eval mode)."""
    model, _ = ours(vocab)
    model.eval()
    features, ids, mask, _ = batch(vocab, seed=1)
    kwargs = dict(encoder_hidden_states=features, input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    with torch.no_grad():
        fp32 = model(**kwargs).loss.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(**kwargs).loss.item()
    return abs(bf16 - fp32) / fp32


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab", type=int, nargs="+", default=[30522, 8000])
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    rows, summary = [], {}
    for vocab in args.vocab:
        data = batch(vocab)
        model, optimizer = ours(vocab)
        model_bf16, optimizer_bf16 = ours(vocab)
        torch.manual_seed(0)
        reference = TutorialDecoder(vocab).train()
        reference_optimizer = torch.optim.Adam(reference.parameters(), lr=4e-4)
        gflops_fp32 = matmul_gflops(torch.float32)
        times = interleaved(
            {
                "reference": lambda: step_reference(reference, reference_optimizer, data),
                "ours fp32": lambda: step_ours(model, optimizer, data),
                "ours bf16": lambda: step_ours(model_bf16, optimizer_bf16, data, torch.bfloat16),
            },
            repeats=args.repeats,
        )
        gflops_fp32 = (gflops_fp32 + matmul_gflops(torch.float32)) / 2  # before and after: the machine drifts
        flops = unavoidable_flops(vocab, data[3])
        for name, seconds in times.items():
            achieved = flops / seconds / 1e9
            rows.append([f"{vocab}", name, f"{BATCH / seconds:.1f}", f"{times['reference'] / seconds:.2f}x",
                         f"{achieved:.0f}", f"{achieved / gflops_fp32:.0%}"])
        summary[vocab] = (times["reference"] / times["ours fp32"], flops / times["ours fp32"] / 1e9 / gflops_fp32)
        rows.append(["", "fp32 matmul limit", "", "", f"{gflops_fp32:.0f}", "100%"])
    print(table(["vocab", "decoder", "captions/s", "vs reference", "useful GFLOP/s", "of fp32 matmul"], rows))
    difference = bf16_loss_difference(args.vocab[0])
    print(f"bf16 autocast loss vs fp32 on the same batch: {difference:.2%} relative difference")
    ratio, fraction = summary[args.vocab[0]]
    print(f"summary: fp32 training at vocab {args.vocab[0]} is {ratio:.2f}x the reference decoder and runs at "
          f"{fraction:.0%} of this machine's fp32 matmul rate (goals: 3x, 60%)")
    return {"summary": summary, "rows": rows, "bf16_loss_difference": difference}


if __name__ == "__main__":
    main()
