"""Caption generation: our batched `generate()` against one image at a time and against the tutorial's per-image beam
search (`reference_decoder.tutorial_beam_search`, which drops finished beams), interleaved in one process.

Cached-feature sizes (49 regions × 2048), Show-Attend-Tell decoder sizes, vocabularies 30,522 and 8,000. The decoder
is random except for one LSTM unit set up as a step counter (`install_length_counter`) that the end token's logit
reads, its start set by the image: captions end on their own at lengths that vary by image, with the end token's
bias set (`calibrate_end_bias`) for a Flickr8k-like median of about 12 tokens. A batch then carries finished rows,
as it does with a trained model, and the tutorial's search sheds its finished beams. The tutorial decoder gets our weights (`tutorial_from`) and
our standardised features, so both searches score the same model; the table says how often their captions agree
(ours uses length_penalty 0 here: the summed log-probability, the tutorial's score).

The batched beam search also runs through transformers' own `_beam_search` (what `generate()` falls back to for
logits processors; here forced by patching the model's check), to show what the package's search buys on the same
call; both return the same captions (tests/test_beam_search.py).

The last table sets the batched beam search's measured time against its arithmetic: the rows it decodes (the
beams of images whose result can still change; the search skips the others), counted from the shapes at the fp32
matmul rate measured in the same run. Next to it the decoder's own share: its cached forward on all images × beams
rows against that forward's arithmetic; the rest of a step is the search (log-softmax, each beam's top-k, the
image-wide top-k, reordering the state).

    python bench/bench_generation.py [--quick] [--images 24] [--repeats 3]
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_arguments, interleaved, load, machine, matmul_rates, require_device, table  # noqa: E402
from reference_decoder import tutorial_beam_search, tutorial_from  # noqa: E402

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402
from hf_imgcap.models.show_attend_tell import modeling_show_attend_tell as modeling  # noqa: E402

REGIONS, CHANNELS, SIZE = 49, 2048, 512
START, END, PAD = 2, 3, 0
MAX_NEW_TOKENS, BEAMS = 40, 5
TARGET_MEDIAN_LENGTH = 12  # generated tokens, end token included


def build(vocab: int, device) -> ShowAttendTellForConditionalGeneration:
    config = ShowAttendTellConfig(vocab_size=vocab, pad_token_id=PAD, bos_token_id=START, eos_token_id=END, decoder_start_token_id=START,
                                  encoder_config=dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, CHANNELS], embedding_size=8))
    torch.manual_seed(0)
    model = ShowAttendTellForConditionalGeneration(config).to(device).eval()
    model.generation_config.update(eos_token_id=END, pad_token_id=PAD, max_new_tokens=MAX_NEW_TOKENS)
    return model


def generated_lengths(sequences: torch.Tensor) -> list[int]:
    """Tokens generated per row up to and including the end token (rows are padded after it)."""
    lengths = []
    for row in sequences[:, 1:].tolist():
        lengths.append(row.index(END) + 1 if END in row else len(row))
    return lengths


def install_length_counter(model, features, unit: int = 0, per_step: float = 0.15, end_weight: float = 30.0, spread: float = 0.6):
    """LSTM unit `unit` counts steps: forget and input gates held open, a constant cell input, the output gate open,
    so c_t = c_0 + t·per_step and h_t = tanh(c_t) rises step by step; c_0 comes from the image's mean feature. The end
    token's logit reads only h_t of that unit: it overtakes the other words after a number of steps set by the image."""
    hidden = model.config.hidden_size
    gates = {"input": 0, "forget": 1, "cell": 2, "output": 3}  # nn.LSTMCell's order
    with torch.no_grad():
        for gate, offset in gates.items():
            row = offset * hidden + unit
            model.lstm.weight_ih[row].zero_()
            model.lstm.weight_hh[row].zero_()
            model.lstm.bias_hh[row] = 0.0
            model.lstm.bias_ih[row] = float(torch.atanh(torch.tensor(per_step))) if gate == "cell" else 12.0
        # c_0 varies by image, with standard deviation `spread` over these images (a few steps' worth).
        direction = torch.randn(model.config.encoder_hidden_size, generator=torch.Generator().manual_seed(0)).to(features.device)
        mean_features = model.standardize_features(features).mean(dim=1)
        model.init_cell.weight[unit] = direction * (spread / (mean_features @ direction).std())
        model.init_cell.bias[unit] = -1.5 - float(model.init_cell.weight[unit] @ mean_features.mean(0))
        model.lm_head.weight[END].zero_()
        model.lm_head.weight[END, unit] = end_weight


def calibrate_end_bias(model, features) -> float:
    """Set the end token's output bias so that greedy captions of `features` have the target median length
    (bisection: a larger bias ends captions sooner)."""
    low, high = -60.0, 60.0
    for _ in range(12):
        middle = (low + high) / 2
        with torch.no_grad():
            model.lm_head.bias[END] = middle
            with torch.inference_mode():
                lengths = generated_lengths(model.generate(encoder_hidden_states=features, do_sample=False))
        low, high = (middle, high) if statistics.median(lengths) > TARGET_MEDIAN_LENGTH else (low, middle)
    return middle


def beam_step_flops(rows: int, vocab: int) -> float:
    """FLOPs of one decoding step for `rows` (images × beams): attention query and scores, weighted context, gate,
    LSTM cell, output layer (2 per multiply-add)."""
    per_row = SIZE * SIZE + REGIONS * SIZE + REGIONS * CHANNELS + SIZE * CHANNELS + 4 * SIZE * (SIZE + CHANNELS + SIZE) + SIZE * vocab
    return 2 * rows * per_row


def decoded_rows(model, run) -> int:
    """Rows the decoder computes over all steps of `run()` (a generate() call)."""
    rows = []
    step = model.step

    def counting_step(token_ids, state):
        rows.append(len(token_ids))
        return step(token_ids, state)

    model.step = counting_step
    try:
        run()
    finally:
        del model.step
    return sum(rows)


def until_end(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(END) + 1] if END in tokens else tokens


def run_vocab(vocab, images, args, device, rows, step_rows, agreement):
    model = build(vocab, device)
    generator = torch.Generator().manual_seed(vocab)
    features = torch.randn(images, REGIONS, CHANNELS, generator=generator).to(device)
    install_length_counter(model, features)
    bias = calibrate_end_bias(model, features)
    tutorial = tutorial_from(model).to(device)
    with torch.inference_mode():
        standardized = model.standardize_features(features)
    beam = dict(num_beams=BEAMS, do_sample=False, length_penalty=0.0)
    greedy = dict(do_sample=False)
    outputs = {}

    def ours(options, batch, key):
        def run():
            with torch.inference_mode():
                results = [model.generate(encoder_hidden_states=features[i : i + batch], **options) for i in range(0, images, batch)]
            outputs[key] = results
        return run

    def transformers_search(options, key):
        run = ours(options, images, key)

        def forced():
            original = modeling.beam_search_handles
            modeling.beam_search_handles = lambda *args: False
            try:
                run()
            finally:
                modeling.beam_search_handles = original
        return forced

    def tutorial_run():
        outputs["tutorial"] = [tutorial_beam_search(tutorial, standardized[i], START, END, BEAMS, MAX_NEW_TOKENS) for i in range(images)]

    runs = {
        ("beam 5", "hf-imgcap, batched"): ours(beam, images, "beam batched"),
        ("beam 5", "hf-imgcap, batched, transformers' search"): transformers_search(beam, "beam transformers"),
        ("beam 5", "hf-imgcap, one at a time"): ours(beam, 1, "beam alone"),
        ("beam 5", "tutorial, one at a time"): tutorial_run,
        ("greedy", "hf-imgcap, batched"): ours(greedy, images, "greedy batched"),
        ("greedy", "hf-imgcap, one at a time"): ours(greedy, 1, "greedy alone"),
    }
    times = interleaved(runs, repeats=args.repeats, device=device)
    for (decoding, name), seconds in times.items():
        yardstick = times[(decoding, "hf-imgcap, one at a time" if decoding == "greedy" else "tutorial, one at a time")]
        rows.append([vocab, decoding, name, f"{images / seconds:.1f}", f"{yardstick / seconds:.2f}x"])

    # Do the searches agree? Batched vs alone must (tests/test_generation_batching.py); ours vs the tutorial's
    # differ only where the two searches' rules differ (ours keeps searching while a better beam may come).
    batched_beam = [until_end(row) for row in outputs["beam batched"][0].tolist()]
    alone_beam = [until_end(result[0].tolist()) for result in outputs["beam alone"]]
    lengths = generated_lengths(outputs["greedy batched"][0])
    agreement.append([vocab, f"{bias:.2f}", f"{statistics.median(lengths):.0f} ({min(lengths)}-{max(lengths)})",
                      f"{sum(a == b for a, b in zip(batched_beam, alone_beam))}/{images}",
                      f"{sum(a == b for a, b in zip(batched_beam, outputs['tutorial']))}/{images}",
                      "yes" if torch.equal(outputs["beam batched"][0], outputs["beam transformers"][0]) else "NO"])

    # The batched beam search against the arithmetic of the rows it decodes, and the model's share of a step: its
    # cached forward (one decoding step) on all images × beams rows against that forward's arithmetic; the rest is
    # the search's own work (log-softmax, each beam's top-k, the image-wide top-k, reordering the state).
    steps = outputs["beam batched"][0].shape[1] - 1
    rows_decoded = decoded_rows(model, ours(beam, images, "beam batched"))
    rate = matmul_rates(device, dtypes=(torch.float32,))[torch.float32]
    per_step = times[("beam 5", "hf-imgcap, batched")] / steps
    arithmetic = beam_step_flops(rows_decoded, vocab) / 1e9 / rate / steps
    forward = model_forward_seconds(model, features, args.repeats, device)
    forward_arithmetic = beam_step_flops(images * BEAMS, vocab) / 1e9 / rate
    step_rows.append([vocab, images * BEAMS, steps, f"{rows_decoded / steps:.0f} ({rows_decoded / (images * BEAMS * steps):.0%})",
                      f"{arithmetic * 1e3:.1f}", f"{per_step * 1e3:.1f}", f"{per_step / arithmetic:.2f}x", f"{forward * 1e3:.1f}",
                      f"{forward / forward_arithmetic:.2f}x"])


def model_forward_seconds(model, features, repeats, device, steps=10) -> float:
    """Median seconds of one cached forward of the model on images × beams rows: one decoding step of all rows."""
    with torch.inference_mode():
        state = model.initial_state(model.standardize_features(features), rows_per_image=BEAMS)
        tokens = torch.full((features.shape[0] * BEAMS, 1), START, device=features.device)

        def run():
            for _ in range(steps):
                model(input_ids=tokens, past_key_values=state, use_cache=True)

        return interleaved({"forward": run}, repeats=max(repeats, 3), device=device)["forward"] / steps


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; 1 with --quick)")
    parser.add_argument("--images", type=int, default=None, help="images captioned per run (default 24; 6 with --quick)")
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help="default 30522 8000; 8000 with --quick")
    args = parser.parse_args(argv)
    device = require_device(args.device)
    args.repeats = args.repeats or (1 if args.quick else 3)
    images = args.images or (6 if args.quick else 24)
    vocabularies = args.vocab or ([8000] if args.quick else [30522, 8000])
    print(f"machine: {machine()}; {load()}\n")
    rows, step_rows, agreement = [], [], []
    started = time.perf_counter()
    for vocab in vocabularies:
        run_vocab(vocab, images, args, device, rows, step_rows, agreement)
    print(table(["vocab", "decoding", "search", "images/s", "vs one at a time*"], rows))
    print("\n*beam 5: vs the tutorial's per-image search; greedy: vs ours one image at a time\n")
    print(table(["vocab", "end-token bias", "greedy length, median (range)", "beam: batched = alone", "beam: batched = tutorial",
                 "beam: same output as transformers' search"], agreement))
    print()
    print(table(["vocab", "images x beams", "steps", "rows decoded per step", "arithmetic ms*", "beam step ms", "vs arithmetic",
                 "model forward ms, all rows", "vs its arithmetic"], step_rows))
    print("\n*per step: the decoded rows' GFLOP at the fp32 matmul rate measured in this run (the search skips the rows of "
          "images whose result is fixed). The model's forward is the decoder's cached step, here on all images x beams "
          "rows; the rest of a beam step is the search's own work")
    print(f"\n{images} images, median of {args.repeats} interleaved repeats, {time.perf_counter() - started:.0f} s; {load()}")
    first = rows[0]
    print(f"summary: at vocab {first[0]}, batched beam-5 generation runs {rows[0][4]} the tutorial's per-image beam search")


if __name__ == "__main__":
    main()
