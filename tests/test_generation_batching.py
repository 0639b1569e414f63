"""Captioning images in a batch gives each image the caption it gets alone, for greedy and beam search, when the
captions end (end token) at different lengths: finished rows must not change what the still-running rows produce."""

import pytest
import torch

from conftest import tiny_model

VOCAB, START, END, PAD = 40, 1, 2, 0
IMAGES, REGIONS, CHANNELS = 6, 4, 64
MAX_NEW_TOKENS = 12


def caption_of(image: int) -> list[int]:
    """The caption taught for image `image`: its own words, its own length (3 to 8 words), then the end token."""
    length = 3 + image
    return [START, *[(3 + (image * 7 + position * 5) % (VOCAB - 3)) for position in range(length)], END]


@pytest.fixture(scope="module")
def trained():
    """A tiny model taught one caption per image (a hundred fast steps), so that captions end on their own at
    different lengths, as a trained captioner's do."""
    model = tiny_model(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=START, eos_token_id=END,
                       decoder_start_token_id=START).train()
    torch.manual_seed(0)
    features = torch.randn(IMAGES, REGIONS, CHANNELS)
    captions = [caption_of(image) for image in range(IMAGES)]
    longest = max(map(len, captions))
    input_ids = torch.tensor([caption + [PAD] * (longest - len(caption)) for caption in captions])
    attention_mask = (input_ids != PAD).long()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(100):
        loss = model(encoder_hidden_states=features, input_ids=input_ids, attention_mask=attention_mask,
                     labels=input_ids.masked_fill(attention_mask == 0, -100), return_logits=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.eos_token_id = END
    model.generation_config.pad_token_id = PAD
    return model, features


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
