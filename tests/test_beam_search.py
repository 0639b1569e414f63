"""Beam search through `generate()` returns what transformers' own beam search returns: the same sequences, padding,
lengths and beam indices, for the options users set (beams, length penalty, early stopping, several returned
sequences, several end tokens, prompts, the length limit)."""

import copy

import pytest
import torch

from conftest import taught_captioner
from hf_imgcap.models.show_attend_tell import modeling_show_attend_tell as modeling

VOCAB, START, END, PAD = 200, 1, 2, 0


@pytest.fixture(scope="module")
def captioner():
    """A model whose captions end on their own at different lengths, and inputs on which its beams disagree: the
    taught images and noisy versions of them."""
    model, features = taught_captioner(vocab=VOCAB, start=START, end=END, pad=PAD)
    noisy = features + 0.8 * torch.randn(features.shape, generator=torch.Generator().manual_seed(1))
    return model, torch.cat([features, noisy])


def searches(model, features, monkeypatch, **options):
    """generate() as a user calls it, and the same call run by transformers' `_beam_search`; and how many times
    the package's own search ran in the first."""
    calls = []
    own_search = modeling.beam_search

    def counted(*args, **kwargs):
        calls.append(1)
        return own_search(*args, **kwargs)

    with torch.inference_mode():
        with monkeypatch.context() as patch:
            patch.setattr(modeling, "beam_search", counted)
            ours = model.generate(encoder_hidden_states=features, **options)
        with monkeypatch.context() as patch:
            patch.setattr(modeling, "beam_search_handles", lambda *args: False)
            theirs = model.generate(encoder_hidden_states=features, **options)
    return ours, theirs, len(calls)


OPTIONS = {
    "beam3": dict(num_beams=3),
    "beam5-no-length-penalty": dict(num_beams=5, length_penalty=0.0),
    "beam4-long-captions-never-stop-early": dict(num_beams=4, length_penalty=2.0, early_stopping="never"),
    "beam4-short-captions": dict(num_beams=4, length_penalty=-0.5),
    "beam3-early-stopping": dict(num_beams=3, early_stopping=True),
    "beam4-return-4": dict(num_beams=4, num_return_sequences=4),
    "beam3-length-limit": dict(num_beams=3, max_new_tokens=4),
    "beam3-two-end-tokens": dict(num_beams=3, eos_token_id=[END, 5]),
    "beam2-no-padding-token": dict(num_beams=2, pad_token_id=None),
    "beam3-padding-token-5": dict(num_beams=3, pad_token_id=5),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_beam_search_returns_what_transformers_beam_search_returns(captioner, monkeypatch, options):
    model, features = captioner
    ours, theirs, own_searches = searches(model, features, monkeypatch, **{"max_new_tokens": 12, **options})
    assert own_searches == 1
    assert torch.equal(ours, theirs), (ours, theirs)


def test_beam_search_returns_transformers_beam_indices_and_state(captioner, monkeypatch):
    model, features = captioner
    ours, theirs, own_searches = searches(model, features, monkeypatch, num_beams=3, max_new_tokens=12,
                                          num_return_sequences=2, return_dict_in_generate=True)
    assert own_searches == 1
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.equal(ours.beam_indices, theirs.beam_indices)
    assert ours.sequences_scores is None and theirs.sequences_scores is None
    assert len(ours.past_key_values) == len(theirs.past_key_values) == len(features) * 3


def test_beam_search_continues_prompts_as_transformers_does(captioner, monkeypatch):
    """Prompts of different lengths (left-padded by generate()) continue as transformers' search continues them."""
    model, features = captioner
    prompts = [[START, 9], [START], [START, 40, 41], [START, 9], [START], [START, 12]] * 2
    longest = max(map(len, prompts))
    input_ids = torch.tensor([prompt + [PAD] * (longest - len(prompt)) for prompt in prompts])
    attention_mask = (torch.arange(longest) < torch.tensor([len(p) for p in prompts])[:, None]).long()
    ours, theirs, own_searches = searches(model, features, monkeypatch, input_ids=input_ids, attention_mask=attention_mask,
                                          num_beams=3, max_new_tokens=10)
    assert own_searches == 1
    assert torch.equal(ours, theirs)


def test_logits_processors_run_in_transformers_beam_search(captioner, monkeypatch):
    """Options that need transformers' own search (a logits processor, per-step scores) still give its result."""
    model, features = captioner
    for options in (dict(no_repeat_ngram_size=2), dict(return_dict_in_generate=True, output_scores=True)):
        ours, theirs, own_searches = searches(model, features, monkeypatch, num_beams=3, max_new_tokens=12, **options)
        assert own_searches == 0
        sequences = (ours, theirs) if torch.is_tensor(ours) else (ours.sequences, theirs.sequences)
        assert torch.equal(*sequences)


@pytest.mark.parametrize("n, k", [(30522, 10), (8000, 15), (1000, 6), (100, 10)])
def test_each_rows_top_k_is_torch_topk(n, k):
    """The search's per-beam ranking gives torch.topk's values and positions (distinct values): with a row's best
    value in the last, partial chunk, and with all its best values in one chunk."""
    from hf_imgcap.models.show_attend_tell.beam_search import top_k_per_row

    values = torch.randn(6, n, generator=torch.Generator().manual_seed(n))
    values[0, -1] = 100.0
    values[1, 3 : 3 + k] = 50.0 + torch.arange(k)
    top, positions = top_k_per_row(values, k)
    expected = values.topk(k, dim=-1)
    assert torch.equal(top, expected.values) and torch.equal(positions, expected.indices)


def test_a_model_prepared_for_mixed_precision_runs_beam_search_through_its_forward(captioner, monkeypatch):
    """accelerate's mixed precision wraps the model's forward in autocast: beam search must call that forward at
    every step (transformers' search does), not the decoder's step around it."""
    from accelerate import Accelerator

    model, features = captioner
    prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare(copy.deepcopy(model))
    ours, theirs, own_searches = searches(prepared, features, monkeypatch, num_beams=3, max_new_tokens=12)
    assert own_searches == 0
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("num_beams", [0, -1, 2.5])
def test_a_number_of_beams_that_is_not_a_positive_integer_is_refused(captioner, num_beams):
    model, features = captioner
    with pytest.raises(ValueError, match=rf"num_beams must be a positive integer, got {num_beams}"):
        model.generate(encoder_hidden_states=features[:2], num_beams=num_beams)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_images_whose_features_are_not_finite_are_refused_by_index(captioner, value):
    """A NaN image (a corrupted cache entry, an fp16 overflow) would decode to some caption: refuse it by name."""
    model, features = captioner
    bad = features[:3].clone()
    bad[1, 0, 3] = value
    with pytest.raises(ValueError, match=r"encoder_hidden_states of image 1 .*NaN or infinite"):
        model.generate(encoder_hidden_states=bad, num_beams=2)
    model.generate(encoder_hidden_states=features[:3], num_beams=2)  # the same images, finite: fine
