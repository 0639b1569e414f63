"""Captioning images in a batch gives each image the caption it gets alone, for greedy and beam search, when the
captions end (end token) at different lengths: finished rows must not change what the still-running rows produce."""

import os
import re
import socket

import pytest
import torch

from conftest import REPO_ROOT, launch_two_processes, taught_captioner

VOCAB, START, END, PAD = 40, 1, 2, 0
IMAGES, REGIONS, CHANNELS = 6, 4, 64
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def trained():
    return taught_captioner(vocab=VOCAB, start=START, end=END, pad=PAD, images=IMAGES, regions=REGIONS, channels=CHANNELS)


def until_end(sequence: torch.Tensor) -> list[int]:
    """The caption's tokens up to and including the end token (batched rows are padded after it)."""
    tokens = sequence.tolist()
    return tokens[: tokens.index(END) + 1] if END in tokens else tokens


def generate(model, features, **options):
    with torch.inference_mode():
        return model.generate(encoder_hidden_states=features, max_new_tokens=MAX_NEW_TOKENS, **options)


def test_the_trained_model_ends_its_captions_at_different_lengths(trained):
    """The premise of the comparisons below: captions end (end token) before the limit, not all at one length."""
    model, features = trained
    captions = [until_end(row) for row in generate(model, features, do_sample=False)]
    assert all(caption[-1] == END for caption in captions)
    assert len({len(caption) for caption in captions}) >= 3


@pytest.mark.parametrize("options", [dict(do_sample=False), dict(num_beams=3, do_sample=False),
                                     dict(num_beams=4, do_sample=False, length_penalty=0.0)],
                         ids=["greedy", "beam3", "beam4-no-length-penalty"])
def test_batched_captions_equal_one_image_at_a_time(trained, options):
    model, features = trained
    # Noisy features: not the taught images exactly, so the captions are the model's own, with uncertain steps.
    noisy = features + 0.8 * torch.randn(features.shape, generator=torch.Generator().manual_seed(1))
    inputs = torch.cat([features, noisy])
    batched = [until_end(row) for row in generate(model, inputs, **options)]
    alone = [until_end(generate(model, inputs[index : index + 1], **options)[0]) for index in range(len(inputs))]
    assert batched == alone


def test_batched_beam_scores_equal_one_image_at_a_time(trained):
    model, features = trained
    options = dict(num_beams=3, do_sample=False, return_dict_in_generate=True, output_scores=True)
    batched = generate(model, features, **options).sequences_scores
    alone = torch.cat([generate(model, features[index : index + 1], **options).sequences_scores for index in range(IMAGES)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def decoded_rows(model, features, **options) -> tuple[list[int], torch.Tensor]:
    """Rows the decoder computes at each step of a generate() call, and the sequences it returns."""
    rows = []
    step = model.step

    def counting_step(token_ids, state):
        rows.append(len(token_ids))
        return step(token_ids, state)

    model.step = counting_step
    try:
        sequences = generate(model, features, **options)
    finally:
        del model.step
    return rows, sequences if torch.is_tensor(sequences) else sequences.sequences


@pytest.mark.parametrize("options", [dict(do_sample=False), dict(num_beams=3, do_sample=False),
                                     dict(num_beams=4, do_sample=False, length_penalty=0.0),
                                     dict(num_beams=3, do_sample=False, early_stopping=True)],
                         ids=["greedy", "beam3", "beam4-no-length-penalty", "beam3-early-stopping"])
def test_generation_stops_decoding_images_whose_result_is_fixed(trained, options):
    """Once an image's caption has ended (greedy) or its finished captions cannot be beaten by its running beams
    (beam search), its result is fixed: later steps decode only the other images' rows, and every caption is the
    one decoding all rows gives (as generate() does when per-step scores are asked for, which show every row)."""
    model, features = trained
    beams = options.get("num_beams", 1)
    rows, sequences = decoded_rows(model, features, **options)
    all_rows, all_sequences = decoded_rows(model, features, return_dict_in_generate=True, output_scores=True, **options)
    assert set(all_rows) == {IMAGES * beams}
    assert rows[0] == IMAGES * beams and min(rows) < IMAGES * beams and sum(rows) < sum(all_rows)
    assert all(row % beams == 0 for row in rows) and rows == sorted(rows, reverse=True)
    assert [until_end(row) for row in sequences] == [until_end(row) for row in all_sequences]


def test_sampling_several_captions_per_image_stops_decoding_images_whose_captions_all_ended(trained):
    """Sampling k captions per image: an image's rows are decoded until all k have ended, and every returned
    caption ends with the end token followed by padding only."""
    model, features = trained
    torch.manual_seed(0)
    rows, sequences = decoded_rows(model, features, do_sample=True, num_return_sequences=2, top_k=3)
    assert rows[0] == IMAGES * 2 and min(rows) < IMAGES * 2 and all(row % 2 == 0 for row in rows)
    for row in sequences.tolist():
        assert END in row and set(row[row.index(END) + 1 :]) <= {PAD}


def test_a_returned_decoding_state_decodes_all_its_rows(trained):
    """The state generate() returns (return_dict_in_generate) continues every row, settled images' too."""
    model, features = trained
    outputs = generate(model, features, num_beams=3, do_sample=False, return_dict_in_generate=True)
    state = outputs.past_key_values
    with torch.inference_mode():
        logits = model(input_ids=torch.full((len(state), 1), END), past_key_values=state, use_cache=True).logits
    assert logits.shape[0] == IMAGES * 3 and bool((logits.abs().amax(dim=(1, 2)) > 0).all())


def test_generations_in_concurrent_threads_give_the_captions_each_gives_alone(trained):
    """What generate() shares between its steps is per thread: two threads (e.g. a Space serving two requests)
    decoding different batches at once get the captions each batch gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    model, features = trained
    noisy = features + 0.8 * torch.randn(features.shape, generator=torch.Generator().manual_seed(2))
    batches = [features, noisy, features[:3], noisy[2:]]
    options = dict(num_beams=3, do_sample=False)
    alone = [[until_end(row) for row in generate(model, batch, **options)] for batch in batches]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            together = list(pool.map(lambda batch: [until_end(row) for row in generate(model, batch, **options)], batches))
            assert together == alone


SYNCED_GENERATION = """
import torch
from accelerate import Accelerator
from hf_imgcap import ShowAttendTellForConditionalGeneration

accelerator = Accelerator()
rank = accelerator.process_index
model = ShowAttendTellForConditionalGeneration.from_pretrained({model!r}).eval()
features = torch.load({features!r})[[0, 1] if rank == 0 else [4, 5]]  # rank 0's captions end first
for options in (dict(do_sample=False), dict(num_beams=3, do_sample=False)):
    with torch.inference_mode():
        alone = model.generate(encoder_hidden_states=features, max_new_tokens={max_new_tokens}, **options)
        synced = model.generate(encoder_hidden_states=features, max_new_tokens={max_new_tokens}, synced_gpus=True, **options)
    assert torch.equal(alone, synced), (rank, options, alone, synced)
    print(f"rank {{rank}}: {{'beam' if 'num_beams' in options else 'greedy'}} same captions", flush=True)
"""


@pytest.mark.slow
def test_generation_kept_in_step_with_other_processes_gives_the_same_captions(trained, tmp_path):
    """With `synced_gpus=True` (DeepSpeed ZeRO-3, FSDP) a process whose captions have all ended keeps calling the
    model until every process is done; its captions are the ones it gets on its own."""
    model, features = trained
    model.save_pretrained(tmp_path / "model")
    torch.save(features, tmp_path / "features.pt")
    script = tmp_path / "synced.py"
    script.write_text(SYNCED_GENERATION.format(model=str(tmp_path / "model"), features=str(tmp_path / "features.pt"),
                                               max_new_tokens=MAX_NEW_TOKENS))
    with socket.socket() as probe:  # a free port: not the default 29500, which another run on this machine may hold
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    returncode, stdout, stderr = launch_two_processes([script], env, timeout=300, port=port)
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert sorted(re.findall(r"rank (\d): (\w+) same captions", stdout)) == [("0", "beam"), ("0", "greedy"), ("1", "beam"),
                                                                            ("1", "greedy")], stdout
