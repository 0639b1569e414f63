"""A model folder that cannot give back the saved model is refused with an error naming the file and the field or
tensor: wrong types in config.json, a truncated model.safetensors, a missing, unexpected or wrongly shaped tensor.
Never a model with random weights in place of the missing ones, never a traceback from deep inside torch."""

import json
import re
import shutil

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration

from conftest import run_fresh_python, tiny_model


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    tiny_model().save_pretrained(folder)
    return folder


def altered(good_folder, folder, config=None, encoder_config=None, weights=None, truncate=0):
    """A copy of the good folder with config.json fields replaced, weights changed (a dict of tensors, None to
    delete) and the weights file cut short by `truncate` bytes."""
    shutil.copytree(good_folder, folder)
    saved = json.loads((folder / "config.json").read_text())
    saved.update(config or {})
    saved["encoder_config"].update(encoder_config or {})
    (folder / "config.json").write_text(json.dumps(saved))
    if weights:
        tensors = load_file(folder / "model.safetensors")
        for key, value in weights.items():
            if value is None:
                del tensors[key]
            else:
                tensors[key] = value
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if truncate:
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:-truncate])
    return folder


LOADERS = {
    "from_pretrained": ShowAttendTellForConditionalGeneration.from_pretrained,
    "AutoModel": lambda folder: AutoModel.from_pretrained(folder, trust_remote_code=True),
}


@pytest.mark.parametrize("field, value", [
    ("hidden_size", "16"), ("hidden_size", None), ("hidden_size", [16]), ("hidden_size", 16.5), ("hidden_size", -16),
    ("hidden_size", True), ("hidden_size", 0), ("vocab_size", "30522"), ("image_size", 64.0), ("dropout", "0.1"),
    ("dropout", 1.5), ("freeze_encoder", "yes"), ("eos_token_id", 1.5), ("eos_token_id", 40000),
])
def test_a_config_field_of_the_wrong_type_or_value_is_refused_naming_file_and_field(good_folder, tmp_path, field, value):
    folder = altered(good_folder, tmp_path / "bad", config={field: value})
    for name, load in {**LOADERS, "AutoConfig": AutoConfig.from_pretrained}.items():
        with pytest.raises(ValueError) as error:
            load(folder)
        message = str(error.value)
        assert str(folder / "config.json") in message and field in message, (name, message)
    # In code too, without a file to name: a ValueError or, as transformers' own configs raise, a strict-dataclass error.
    with pytest.raises((ValueError, StrictDataclassError), match=field):
        ShowAttendTellConfig(**{field: value})


def test_a_wrong_encoder_config_field_is_refused_naming_it(good_folder, tmp_path):
    folder = altered(good_folder, tmp_path / "bad", encoder_config={"depths": "1111"})
    for load in LOADERS.values():
        with pytest.raises(ValueError, match=rf"{folder / 'config.json'}.*depths"):
            load(folder)


@pytest.mark.parametrize("cut", [5, 4000])
def test_a_truncated_weights_file_is_refused_naming_it(good_folder, tmp_path, cut):
    folder = altered(good_folder, tmp_path / "bad", truncate=cut)
    for load in LOADERS.values():
        with pytest.raises(OSError, match=rf"{folder / 'model.safetensors'}.*(truncated|incomplete|not fully covered)"):
            load(folder)


@pytest.mark.parametrize("key", [
    "lm_head.weight", "lm_head.bias", "embed_tokens.weight", "lstm.weight_hh", "attention.score.weight",
    "attention.encoder_proj.bias", "context_gate.weight", "init_hidden.weight", "init_cell.bias",
    "encoder.embedder.embedder.convolution.weight", "encoder.encoder.stages.3.layers.0.layer.2.normalization.running_var",
    "feature_mean", "feature_scale",
])
def test_a_folder_missing_a_weight_is_refused_naming_the_file_and_the_key(good_folder, tmp_path, key):
    folder = altered(good_folder, tmp_path / "bad", weights={key: None})
    for load in LOADERS.values():
        with pytest.raises(ValueError, match=rf"{folder / 'model.safetensors'}.*missing.*{re.escape(key)}"):
            load(folder)


def test_a_folder_saved_before_feature_std_existed_still_loads(good_folder, tmp_path):
    folder = altered(good_folder, tmp_path / "old", weights={"feature_std": None})
    for load in LOADERS.values():
        assert torch.equal(load(folder).feature_std, torch.ones_like(tiny_model().feature_std))


@pytest.mark.parametrize("key, shape", [("lm_head.weight", (5, 16)), ("feature_mean", (3, 64)), ("lstm.bias_ih", (8,))])
def test_a_tensor_of_the_wrong_shape_is_refused_naming_it_and_both_shapes(good_folder, tmp_path, key, shape):
    folder = altered(good_folder, tmp_path / "bad", weights={key: torch.zeros(shape)})
    expected = tuple(tiny_model().state_dict()[key].shape)
    for load in LOADERS.values():
        with pytest.raises(ValueError, match=rf"{folder / 'model.safetensors'}.*{re.escape(key)}.*"
                                             rf"{re.escape(str(list(shape)))}.*{re.escape(str(list(expected)))}"):
            load(folder)


def test_an_unexpected_tensor_is_refused_naming_it(good_folder, tmp_path):
    """E.g. a whitening matrix in a folder whose config does not whiten: loading it silently would drop it."""
    folder = altered(good_folder, tmp_path / "bad", weights={"feature_whitening": torch.eye(64)})
    for load in LOADERS.values():
        with pytest.raises(ValueError, match=rf"{folder / 'model.safetensors'}.*unexpected.*feature_whitening"):
            load(folder)


@pytest.mark.slow
def test_bad_folders_are_refused_by_remote_code_without_the_package(good_folder, tmp_path):
    folders = {
        "config": (altered(good_folder, tmp_path / "config", config={"hidden_size": "16"}), "ValueError", "config.json", "hidden_size"),
        "truncated": (altered(good_folder, tmp_path / "truncated", truncate=5), "OSError", "model.safetensors", "truncated"),
        "missing": (altered(good_folder, tmp_path / "missing", weights={"lm_head.weight": None}), "ValueError", "model.safetensors",
                    "lm_head.weight"),
        "shape": (altered(good_folder, tmp_path / "shape", weights={"lm_head.weight": torch.zeros(5, 16)}), "ValueError",
                  "model.safetensors", "lm_head.weight"),
    }
    paths = {name: str(spec[0]) for name, spec in folders.items()}
    code = f"""
import json
from transformers import AutoModel
results = {{}}
for name, folder in {paths!r}.items():
    try:
        AutoModel.from_pretrained(folder, trust_remote_code=True)
        results[name] = ["loaded", ""]
    except Exception as error:
        kind = "ValueError" if isinstance(error, ValueError) else "OSError" if isinstance(error, OSError) else type(error).__name__
        results[name] = [kind, str(error)]
print("RESULT" + json.dumps(results))
"""
    result = run_fresh_python(code, cwd=tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.split("RESULT", 1)[1])
    for name, (folder, error_type, file_name, detail) in folders.items():
        kind, message = got[name]
        assert kind == error_type and str(folder / file_name) in message and detail in message, (name, kind, message)



def test_a_processor_whose_tokenizer_file_is_missing_is_refused_naming_the_folder(tmp_path):
    """Without tokenizer.json, transformers builds a 5-token tokenizer from tokenizer_config.json alone, which would
    read every caption as unknown tokens and decode every id to nothing: the processor loaded from a model folder
    must fit the model saved with it."""
    from transformers import AutoProcessor

    from conftest import tiny_processor

    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    assert len(AutoProcessor.from_pretrained(folder).tokenizer) == 30522
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: .*bos_token_id=101.*tokenizer files"):
        AutoProcessor.from_pretrained(folder)
