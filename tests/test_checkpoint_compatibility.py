"""Checkpoints users already have keep loading and computing what they computed when they were saved.

`tests/fixtures/` holds two tiny model folders (plain, and with whitened features) written by
`tests/fixtures/make_checkpoint_fixtures.py`, each with the outputs its model gave for a fixed input at saving time.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_imgcap import ShowAttendTellForConditionalGeneration

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAX_NEW_TOKENS = 10  # as the fixtures were made


@pytest.fixture(scope="module")
def inputs():
    return load_file(str(FIXTURES / "checkpoint_inputs.safetensors"))


@pytest.mark.parametrize("folder", ["tiny_model", "tiny_model_whitened"])
def test_a_saved_checkpoint_loads_and_gives_the_outputs_it_gave_when_saved(folder, inputs):
    expected = load_file(str(FIXTURES / folder / "expected_outputs.safetensors"))
    model = ShowAttendTellForConditionalGeneration.from_pretrained(FIXTURES / folder).eval()
    assert model.config.whiten_features == (folder == "tiny_model_whitened")

    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    torch.testing.assert_close(out.logits, expected["logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.attentions, expected["attentions"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, expected["loss"], rtol=1e-5, atol=1e-6)

    pixel_values = inputs["pixel_values"]
    greedy = model.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    beam = model.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS, num_beams=3, do_sample=False)
    assert greedy.tolist() == expected["greedy_ids"].tolist()
    assert beam.tolist() == expected["beam3_ids"].tolist()
