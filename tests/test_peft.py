"""PEFT's LoRA on the decoder: the adapters train (their gradients are those of step-by-step decoding) and the saved
adapter reloads onto a fresh model with the same outputs."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import tiny_model
from test_model import assert_training_forward_matches_step_by_step

TARGETS = ["attention.decoder_proj", "context_gate", "lm_head"]


def lora_model():
    config = LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False)  # non-zero B: the adapters show
    return get_peft_model(tiny_model(dropout=0.0).train(), config)


def test_lora_adapters_on_the_decoder_get_the_gradients_of_step_by_step_decoding():
    trained = assert_training_forward_matches_step_by_step(lora_model())
    assert trained and all("lora_" in name for name in trained)
    assert all(grad.abs().sum() > 0 for grad in trained.values()), trained.keys()


def test_a_saved_lora_adapter_reloads_onto_the_base_model_and_captions_alike(tmp_path):
    model = lora_model().eval()
    features = torch.randn(2, 4, 64)
    expected = model.generate(encoder_hidden_states=features, num_beams=2, max_new_tokens=6)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model(dropout=0.0).eval(), tmp_path)
    assert torch.equal(reloaded.generate(encoder_hidden_states=features, num_beams=2, max_new_tokens=6), expected)
