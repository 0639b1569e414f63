"""What feature whitening costs a training step on cached features, side by side in one run.

Show-Attend-Tell sizes: batch 32 captions, 49 regions × 2048 channels (fp16, as the feature cache stores them),
embedding / attention / LSTM 512, caption lengths 10–16 tokens, vocabulary 30,522. One training step = forward +
backward + Adam step, measured in turn (off, on per image, on per caption, ...) so that the shared machine's load hits
every row alike. The rows:

  whitening off               the default: the model standardises each caption's features (elementwise);
  whitening on, per image     what train.py does: each image's decoder input is computed once and kept
                              (`standardized_feature_cache`), the step reads it as `image_embeds`; the once-per-image
                              work, spread over one epoch's steps (5 captions per image), is added to it;
                              ("step only": without that once-per-image work);
  whitening on, per caption   the model whitens each caption's features (a 49×2048 · 2048×2048 product per caption);
  standardised input given    whitening off with `image_embeds`: what the per-caption standardisation costs.

The cost of whitening is a row's step time over the "whitening off" row. Each row gives the median wall time and the
median CPU time of this process (`time.process_time`): on a machine shared with other jobs, the wall time grows with
their load while the CPU time stays what the step costs (run with `--threads 1` when the machine is oversubscribed:
waiting threads then cannot spin on the clock). The first two rows and the last run on
revisions without `standardize_features` too (shown as n/a), so `compare_revisions.py` can compare a revision's step:

    python bench/bench_whitening.py [--repeats 5]
    python bench/compare_revisions.py 4892cc3 WORKTREE --bench bench_whitening.py --rounds 2 --repeats 3
"""

import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_arguments, interleaved_times, machine, require_device, table  # noqa: E402

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402
from hf_imgcap.training.freed_memory import keep_freed_memory_for_reuse  # noqa: E402

BATCH, REGIONS, CHANNELS, SIZE = 32, 49, 2048, 512
CAPTIONS_PER_IMAGE = 5  # Flickr8k and COCO


def batch(vocab, seed=0):
    """32 captions of 32 images (a shuffled epoch's batch almost never holds two captions of one image)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 17, (BATCH,), generator=generator)
    ids = torch.randint(5, vocab, (BATCH, int(lengths.max())), generator=generator)
    ids[:, 0] = 2
    ids[torch.arange(BATCH), lengths - 1] = 3
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    features = torch.randn(BATCH, REGIONS, CHANNELS, generator=generator).half()  # the cache's format
    return features, ids * mask, mask


def model_and_optimizer(vocab, whiten: bool, device="cpu"):
    """The bench's model with feature statistics that mean something (a mean, per-channel spreads and, with `whiten`,
    a symmetric matrix that mixes every channel), as train.py sets them from the training cache."""
    config = ShowAttendTellConfig(
        vocab_size=vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2, whiten_features=whiten,
        encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, CHANNELS], embedding_size=8),  # unused: cached features
    )
    torch.manual_seed(0)
    model = ShowAttendTellForConditionalGeneration(config).train()
    whitening = None
    if whiten:
        mixing = torch.randn(CHANNELS, CHANNELS) / CHANNELS**0.5
        whitening = torch.eye(CHANNELS) + 0.5 * (mixing + mixing.T)
    model.set_feature_statistics(torch.randn(REGIONS, CHANNELS) * 0.1, torch.rand(CHANNELS) + 0.5, whitening)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-4, fused=True)
    return model, optimizer


def step(model, optimizer, ids, mask, **images):
    loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), return_logits=False, **images).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def kept_input(model, features):
    """The decoder's input as the kept array holds it: computed once per image, stored in fp16."""
    with torch.no_grad():
        return model.standardize_features(features).half()


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="(default: 5; 2 with --quick)")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    device = require_device(args.device)
    keep_freed_memory_for_reuse()  # as train.py does
    repeats = args.repeats or (2 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the start")
    features, ids, mask = (tensor.to(device) for tensor in batch(args.vocab))
    plain, plain_optimizer = model_and_optimizer(args.vocab, whiten=False, device=device)
    whitened, whitened_optimizer = model_and_optimizer(args.vocab, whiten=True, device=device)
    per_image = hasattr(whitened, "standardize_features")  # revisions before it: no per-image rows
    functions = {"whitening off": lambda: step(plain, plain_optimizer, ids, mask, encoder_hidden_states=features)}
    if per_image:
        whitened_input, standardized_input = kept_input(whitened, features), kept_input(plain, features)
        functions["whitening on, per image"] = lambda: step(whitened, whitened_optimizer, ids, mask, image_embeds=whitened_input)
    functions["whitening on, per caption"] = lambda: step(whitened, whitened_optimizer, ids, mask, encoder_hidden_states=features)
    if per_image:
        functions["standardised input given"] = lambda: step(plain, plain_optimizer, ids, mask, image_embeds=standardized_input)
        # The once-per-image work (standardise, whiten, round to fp16) for one batch of images, in the same rotation.
        functions["once-per-image work, 32 images"] = lambda: kept_input(whitened, features)
    measured = {name: tuple(statistics.median(column) for column in zip(*values))  # median (wall, CPU) seconds
                for name, values in interleaved_times(functions, repeats=repeats, device=device).items()}
    if per_image:
        # train.py computes each image's input once (kept across epochs and runs); charged here to a single epoch,
        # whose steps read each image CAPTIONS_PER_IMAGE times: per step, BATCH / CAPTIONS_PER_IMAGE images' worth.
        once = measured.pop("once-per-image work, 32 images")
        step_only = measured.pop("whitening on, per image")
        measured["whitening on, per image (step only)"] = step_only
        measured["whitening on, per image"] = tuple(a + b / CAPTIONS_PER_IMAGE for a, b in zip(step_only, once))
    off_wall, off_cpu = measured["whitening off"]
    rows = [[name, f"{wall * 1000:.0f}", f"{(wall - off_wall) / off_wall:+.1%}", f"{cpu * 1000:.0f}", f"{(cpu - off_cpu) / off_cpu:+.1%}"]
            for name, (wall, cpu) in measured.items()]
    if not per_image:
        rows.insert(1, ["whitening on, per image", "n/a", "n/a", "n/a", "n/a"])
    print(table([f"training step (vocab {args.vocab}, {torch.get_num_threads()} threads)", "wall ms", "vs off", "CPU ms", "vs off"], rows))
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    cpu = {name: value[1] for name, value in measured.items()}
    on = cpu.get("whitening on, per image")
    print(f"summary: step {off_cpu * 1000:.0f} CPU ms with whitening off; whitening on costs "
          + (f"{(on - off_cpu) / off_cpu:+.1%} per image (goal: at most +3%), " if on is not None else "")
          + f"{(cpu['whitening on, per caption'] - off_cpu) / off_cpu:+.1%} per caption (CPU time)")
    return measured


if __name__ == "__main__":
    main()
