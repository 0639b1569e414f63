"""How long generated captions are: the model's default `max_new_tokens` (config / generation_config.json) is a
default, so a caller's `max_length` (directly, in a `GenerationConfig`, or as `Seq2SeqTrainingArguments`'
`generation_max_length`) wins over it; a caller giving both gets transformers' rule (`max_new_tokens` wins)."""

import pytest
import torch
from transformers import GenerationConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments

from conftest import tiny_model

# A random tiny model with the 30,522-word vocabulary practically never writes the end token within 40 steps, so a
# caption's length is the length limit (checked below: the default limit is reached).
DEFAULT_MAX_NEW_TOKENS = 40


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64)


def test_the_default_limit_is_max_new_tokens_from_the_generation_config(model, pixels):
    assert model.generation_config.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert model.generate(pixel_values=pixels).shape[1] == 1 + DEFAULT_MAX_NEW_TOKENS


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_callers_max_length_wins_over_the_default_max_new_tokens(model, pixels, num_beams):
    assert model.generate(pixel_values=pixels, max_length=5, num_beams=num_beams).shape[1] == 5
    assert model.generate(pixel_values=pixels, generation_config=GenerationConfig(max_length=5, num_beams=num_beams)).shape[1] == 5
    # A prompt counts in max_length, as transformers defines it.
    prompt = torch.tensor([[101, 1037, 3899], [101, 1037, 4937]])
    assert model.generate(pixel_values=pixels, input_ids=prompt, max_length=6).shape[1] == 6
    # The model's settings are untouched.
    assert model.generation_config.max_new_tokens == DEFAULT_MAX_NEW_TOKENS


def test_a_caller_giving_both_gets_max_new_tokens_as_transformers_does(model, pixels):
    assert model.generate(pixel_values=pixels, max_length=5, max_new_tokens=7).shape[1] == 1 + 7
    assert model.generate(pixel_values=pixels, max_new_tokens=3).shape[1] == 1 + 3


def test_a_loaded_models_saved_max_new_tokens_yields_to_max_length(model, pixels, tmp_path):
    model.generation_config.max_new_tokens = 12
    try:
        model.save_pretrained(tmp_path)
    finally:
        model.generation_config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.generation_config.max_new_tokens == 12
    assert loaded.generate(pixel_values=pixels).shape[1] == 1 + 12
    assert loaded.generate(pixel_values=pixels, max_length=4).shape[1] == 4


def test_seq2seq_trainer_generation_max_length_limits_the_predictions(model, tmp_path):
    torch.manual_seed(1)
    labels = torch.tensor([[101, 1037, 3899, 102, -100], [101, 1037, 4937, 2003, 102]])
    rows = [{"pixel_values": torch.randn(3, 64, 64), "labels": row} for row in labels]
    generated_lengths = []

    def record_lengths(prediction):
        predictions = torch.as_tensor(prediction.predictions)
        generated_lengths.extend((predictions > 0).sum(1).tolist())  # pad (0) and -100 are not generated tokens
        return {}

    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, predict_with_generate=True,
                                    generation_max_length=8, report_to="none", use_cpu=True, remove_unused_columns=False)
    trainer = Seq2SeqTrainer(model=model, args=args, eval_dataset=rows, compute_metrics=record_lengths)
    trainer.evaluate()
    assert generated_lengths == [8, 8]
    predictions = torch.as_tensor(trainer.predict(rows).predictions)
    assert (predictions > 0).sum(1).tolist() == [8, 8]
    # And beam search through generation_num_beams, the other setting Seq2SeqTrainer passes to generate().
    args.generation_num_beams = 2
    predictions = torch.as_tensor(Seq2SeqTrainer(model=model, args=args).predict(rows).predictions)
    assert (predictions > 0).sum(1).tolist() == [8, 8]
