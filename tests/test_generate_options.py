"""generate() options as transformers users pass them: each is honoured, whether it comes as a keyword, in a
GenerationConfig passed to the call or from the model's own generation config, with or without the cache."""

import pytest
import torch
from transformers import AutoProcessor, GenerationConfig

from conftest import tiny_model

START, END, PAD = 1, 2, 0


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=40, pad_token_id=PAD, bos_token_id=START, eos_token_id=END, decoder_start_token_id=START)


def features(model, images=2, seed=0):
    return torch.randn(images, model.config.num_regions, model.config.encoder_hidden_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_without_the_cache_generation_gives_the_captions_it_gives_with_it(model, num_beams):
    images = features(model, images=3)
    cached = model.generate(encoder_hidden_states=images, max_new_tokens=6, num_beams=num_beams)
    uncached = model.generate(encoder_hidden_states=images, max_new_tokens=6, num_beams=num_beams, use_cache=False)
    assert torch.equal(cached, uncached)


def test_without_the_cache_prompts_of_different_lengths_continue_as_with_it(model):
    ids = torch.tensor([[START, 5, 6], [START, PAD, PAD]])
    options = dict(encoder_hidden_states=features(model), input_ids=ids, attention_mask=(ids != PAD).long(), max_new_tokens=4)
    assert torch.equal(model.generate(**options), model.generate(**options, use_cache=False))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_hidden_states_of_every_step_are_returned(model, num_beams):
    images = features(model)
    out = model.generate(encoder_hidden_states=images, max_new_tokens=3, num_beams=num_beams, return_dict_in_generate=True,
                         output_hidden_states=True)
    assert len(out.hidden_states) == out.sequences.shape[1] - 1
    for step in out.hidden_states:
        (hidden,) = step  # one decoder layer
        assert hidden.shape[0] == images.shape[0] * num_beams and hidden.shape[-1] == model.config.hidden_size
        assert torch.isfinite(hidden).all() and hidden.abs().sum() > 0


def test_output_attentions_in_a_generation_config_returns_what_the_keyword_returns(model):
    images = features(model)
    by_keyword = model.generate(encoder_hidden_states=images, max_new_tokens=4, return_dict_in_generate=True, output_attentions=True)
    config = GenerationConfig(max_new_tokens=4, return_dict_in_generate=True, output_attentions=True)
    by_config = model.generate(encoder_hidden_states=images, generation_config=config)
    assert torch.equal(by_config.sequences, by_keyword.sequences)
    assert torch.is_tensor(by_config.attentions) and torch.equal(by_config.attentions, by_keyword.attentions)
    assert config.output_attentions  # the caller's config is not changed


@pytest.mark.parametrize("how", ["decoder_start_token_id", "bos_token_id", "generation_config"])
def test_the_start_token_given_to_generate_starts_the_caption(model, how):
    options = {"generation_config": GenerationConfig(decoder_start_token_id=7, max_new_tokens=2)} if how == "generation_config" \
        else {how: 7, "max_new_tokens": 2}
    sequences = model.generate(encoder_hidden_states=features(model), **options)
    assert sequences[:, 0].tolist() == [7, 7]
    assert model.generate(encoder_hidden_states=features(model), max_new_tokens=2)[:, 0].tolist() == [START, START]


def test_inputs_is_the_images_as_transformers_names_its_main_input(model):
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.generate(inputs=pixel_values, max_new_tokens=3), model.generate(pixel_values, max_new_tokens=3))
    with pytest.raises(ValueError, match="inputs"):
        model.generate(pixel_values, inputs=pixel_values, max_new_tokens=3)


def test_attention_after_an_end_token_given_to_generate_is_zero(model):
    images = features(model, images=4, seed=3)
    plain = model.generate(encoder_hidden_states=images, max_new_tokens=5)
    stop = plain[0, 2].item()  # row 0's second word: an end token of this call only
    out = model.generate(encoder_hidden_states=images, max_new_tokens=5, eos_token_id=[END, stop], output_attentions=True,
                         return_dict_in_generate=True)
    generated = out.sequences[:, 1:]
    ended = torch.cumsum(((generated == END) | (generated == stop)).long(), dim=1)
    after_end = (ended - ((generated == END) | (generated == stop)).long()) > 0
    assert after_end[0].any()  # row 0 ends at its second word
    assert (out.attentions.sum(-1)[after_end] == 0).all()
    assert torch.allclose(out.attentions.sum(-1)[~after_end], torch.ones(1))


def test_low_memory_beam_search_is_refused_as_transformers_refuses_it(model):
    with pytest.raises(ValueError, match="low_memory"):
        model.generate(encoder_hidden_states=features(model), num_beams=2, max_new_tokens=3, low_memory=True)


def test_processor_options_reach_the_processor_of_a_folder_holding_only_a_model(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path, max_caption_length=8)
    assert processor.max_caption_length == 8
    assert processor(text=["word " * 30]).input_ids.shape[1] == 8


def test_forward_reads_a_left_padded_batch_as_each_caption_alone(model):
    """generate()'s prompts are left-padded; forward without a cache reads them step by step."""
    images = features(model)
    ids = torch.tensor([[PAD, PAD, START, 5], [START, 6, 7, 8]])
    batch = model(encoder_hidden_states=images, input_ids=ids, attention_mask=(ids != PAD).long(), use_cache=False)
    assert batch.cache is None
    short = model(encoder_hidden_states=images[:1], input_ids=ids[:1, 2:], use_cache=False)
    long = model(encoder_hidden_states=images[1:], input_ids=ids[1:], use_cache=False)
    torch.testing.assert_close(batch.logits[0, 2:], short.logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch.logits[1], long.logits[0], rtol=1e-5, atol=1e-5)
