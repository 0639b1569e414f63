"""Caption generation throughput: batched `generate()` against captioning the same images one at a time.

64 images' cached encoder features (49 regions × 2048), Show-Attend-Tell decoder sizes, the 30,522-token BERT
vocabulary and an 8,000-token one; beam search with 5 beams and greedy decoding, 20 new tokens. The decoder is randomly initialised and
never emits the end token early, so every caption runs the full 20 steps: the worst case for both.

    python bench/bench_generation.py [--repeats 3]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, table  # noqa: E402

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402

IMAGES, NEW_TOKENS = 64, 20


def build(vocab=30522):
    config = ShowAttendTellConfig(vocab_size=vocab, encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 2048], embedding_size=8))
    torch.manual_seed(0)
    model = ShowAttendTellForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # full-length captions: the same work in every run
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--vocab", type=int, nargs="+", default=[30522, 8000])
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    features = torch.randn(IMAGES, 49, 2048)
    rows, ratios = [], {}
    for vocab, name, options in [(v, n, o) for v in args.vocab for n, o in (("beam 5", dict(num_beams=5)), ("greedy", dict(do_sample=False)))]:
        model = build(vocab)
        options.update(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

        def batched():
            with torch.inference_mode():
                for start in range(0, IMAGES, args.batch_size):
                    model.generate(encoder_hidden_states=features[start : start + args.batch_size], **options)

        def one_at_a_time():
            with torch.inference_mode():
                for index in range(IMAGES):
                    model.generate(encoder_hidden_states=features[index : index + 1], **options)

        times = interleaved({"batched": batched, "one at a time": one_at_a_time}, repeats=args.repeats)
        ratios[(vocab, name)] = times["one at a time"] / times["batched"]
        for mode, seconds in times.items():
            rows.append([vocab, name, mode if mode == "one at a time" else f"batches of {args.batch_size}",
                         f"{IMAGES / seconds:.1f}", f"{times['one at a time'] / seconds:.2f}x"])
    print(table(["vocab", "decoding", "images", "images/s", "vs one at a time"], rows))
    first = args.vocab[0]
    print(f"summary: at vocab {first}, batched beam-5 generation is {ratios[(first, 'beam 5')]:.1f}x one image at a time "
          f"(greedy {ratios[(first, 'greedy')]:.1f}x; goal 8x)")
    return ratios


if __name__ == "__main__":
    main()
