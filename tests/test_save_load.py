"""Saving, loading, auto classes and remote code; pretrained encoder weights."""

import ast
import inspect
import json
import sys
from pathlib import Path

import pytest

import torch
import torchvision
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    ResNetConfig,
    ResNetForImageClassification,
    ResNetModel,
)

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, ShowAttendTellProcessor
from hf_imgcap.models.pretrained_encoder import build_captioner, convert_torchvision_resnet_state_dict, load_encoder

from conftest import run_fresh_python, tiny_model, tiny_processor

import hf_imgcap.models.show_attend_tell as bundle

BUNDLE_FILES = sorted(path for path in Path(bundle.__file__).parent.glob("*.py") if path.name != "__init__.py")
# huggingface_hub and safetensors: installed with transformers (its own dependencies; its configs use the former's
# `strict`, its loading the latter).
ALLOWED_PACKAGES = {"transformers", "huggingface_hub", "safetensors", "torch", "torchvision", "PIL", "numpy"} | set(sys.stdlib_module_names)


def imports_of(path):
    """The same-folder modules (relative imports) and the top-level packages (absolute imports) a file imports."""
    relative, packages = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            relative |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            packages.add(node.module.split(".")[0])
    return relative, packages


def save_tiny(folder):
    model, processor = tiny_model(), tiny_processor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def test_saved_folder_is_safetensors_with_code_files(tmp_path):
    save_tiny(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    for code_file in ("configuration_show_attend_tell.py", "modeling_show_attend_tell.py",
                      "processing_show_attend_tell.py", "image_loading.py"):
        assert code_file in names
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    assert "AutoProcessor" in json.loads((tmp_path / "processor_config.json").read_text())["auto_map"]


def test_bundle_files_import_only_each_other_and_allowed_libraries():
    """The bundle is copied next to the weights and runs without hf_imgcap: each file may import only the other
    bundle files, transformers (and its dependencies huggingface_hub and safetensors), torch, torchvision, PIL, numpy
    and the standard library."""
    names = {path.stem for path in BUNDLE_FILES}
    assert {"modeling_show_attend_tell", "fused_teacher_forcing", "pipeline_show_attend_tell"} <= names
    for path in BUNDLE_FILES:
        relative, packages = imports_of(path)
        assert relative <= names, (path.name, relative - names)
        assert packages <= ALLOWED_PACKAGES, (path.name, packages - ALLOWED_PACKAGES)


def test_a_saved_folder_contains_every_bundle_file_its_code_imports(tmp_path):
    save_tiny(tmp_path)
    saved = {path.stem for path in tmp_path.glob("*.py")}
    # Everything the model, processor and pipeline import, recursively, is there (and is the bundle's own copy).
    needed, todo = set(), ["modeling_show_attend_tell", "processing_show_attend_tell", "pipeline_show_attend_tell"]
    while todo:
        name = todo.pop()
        assert name in saved, f"{name}.py is missing from the saved folder"
        needed.add(name)
        assert (tmp_path / f"{name}.py").read_text() == (Path(bundle.__file__).parent / f"{name}.py").read_text()
        todo += sorted(imports_of(tmp_path / f"{name}.py")[0] - needed)
    assert {"fused_teacher_forcing", "configuration_show_attend_tell", "image_loading"} <= needed


def test_every_file_of_a_saved_folder_is_uploaded_and_replaced_by_a_new_run(tmp_path):
    """The files `save_pretrained` writes (weights, config, every code file of the bundle, the processor's) are what
    `hf-imgcap push` uploads, names a run may write, and, once a run recorded them, what --overwrite_output_dir
    deletes before writing its own."""
    from hf_imgcap.hub import HUB_FILE_NAMES
    from hf_imgcap.training.output_folder import RUN_FILES, RunFiles
    from hf_imgcap.training.run_arguments import check_output_dir, is_run_output_name

    save_tiny(tmp_path)
    saved = sorted(path.name for path in tmp_path.iterdir())
    assert all(is_run_output_name(name) for name in saved), [name for name in saved if not is_run_output_name(name)]
    RunFiles(tmp_path, set(saved), training_started=True).save()  # as the run that saved them records them
    to_delete = sorted(path.name for path in check_output_dir(tmp_path, resume=False, overwrite=True))
    assert [name for name in to_delete if name != RUN_FILES] == saved
    assert set(saved) <= HUB_FILE_NAMES, set(saved) - HUB_FILE_NAMES
    assert {name for name in saved if name.endswith(".py")} == set(bundle.bundle_code_files())


def test_save_load_in_package_gives_identical_generations(tmp_path):
    model, processor = save_tiny(tmp_path)
    pixels = torch.randn(2, 3, 64, 64)
    expected = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3)
    for auto_class in (AutoModel, AutoModelForImageTextToText, ShowAttendTellForConditionalGeneration):
        loaded = auto_class.from_pretrained(tmp_path).eval()
        assert type(loaded) is ShowAttendTellForConditionalGeneration
        assert torch.equal(loaded.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3), expected)
        assert torch.equal(loaded.feature_mean, model.feature_mean)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ShowAttendTellConfig)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded_processor, ShowAttendTellProcessor)
    assert loaded_processor.tokenizer("a dog").input_ids == processor.tokenizer("a dog").input_ids


@pytest.mark.slow
def test_remote_code_loads_in_a_fresh_offline_process_without_the_package(tmp_path):
    model, processor = save_tiny(tmp_path / "model")
    torch.manual_seed(1)
    image = torch.randint(0, 255, (80, 90, 3), dtype=torch.uint8).numpy()
    pixels = processor(images=image).pixel_values
    expected = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3)
    torch.save({"image": torch.from_numpy(image), "expected": expected}, tmp_path / "reference.pt")
    code = f"""
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
folder = {str(tmp_path / "model")!r}
reference = torch.load({str(tmp_path / "reference.pt")!r})
try:
    import hf_imgcap
    raise SystemExit("hf_imgcap should not be importable here")
except ImportError:
    pass
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__name__ == "ShowAttendTellConfig", type(config)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
pixels = processor(images=reference["image"].numpy()).pixel_values
for auto_class in (AutoModel, AutoModelForImageTextToText):
    model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
    out = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3)
    assert torch.equal(out, reference["expected"]), (out, reference["expected"])
print("REMOTE-OK", type(model).__module__)
"""
    result = run_fresh_python(code, cwd=tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK transformers_modules" in result.stdout


@pytest.mark.slow
def test_torchvision_resnet152_converts_to_identical_encoder_outputs():
    torch.manual_seed(0)
    reference = torchvision.models.resnet152(weights=None).eval()
    # Non-trivial BatchNorm statistics, so that a misplaced buffer would show.
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state_dict = reference.state_dict()
    converted = convert_torchvision_resnet_state_dict(state_dict)
    assert len(converted) == len(state_dict) - 2  # everything but fc.weight / fc.bias
    model = build_captioner(state_dict).eval()  # through post_init(): weights must survive it
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(reference.children())[:-2])  # up to layer4, before pooling
        expected = trunk(image)
        got = model.encoder(image).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert model.config.encoder_config.depths == [3, 8, 36, 3]


def test_encoder_from_a_transformers_resnet_folder_survives_post_init(tmp_path):
    """`microsoft/resnet-152` is a ResNetForImageClassification checkpoint; a local folder of one works the same."""
    torch.manual_seed(0)
    classifier = ResNetForImageClassification(
        ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], embedding_size=8, layer_type="bottleneck")
    ).eval()
    classifier.save_pretrained(tmp_path)
    model = build_captioner(str(tmp_path), image_size=64, embedding_size=16, attention_size=16, hidden_size=16).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = classifier.resnet(image).last_hidden_state
        torch.testing.assert_close(model.encoder(image).last_hidden_state, expected)
    assert isinstance(load_encoder(str(tmp_path)), ResNetModel)
    assert not any(p.requires_grad for p in model.encoder.parameters())


class _Exploit:
    """Unpickling this would run a command: what a malicious checkpoint does."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/hf_imgcap_pwned",))


def test_a_malicious_pickle_is_refused_not_executed(tmp_path):
    import os
    import pickle

    marker = "/tmp/hf_imgcap_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "resnet152.pth"
    torch.save({"conv1.weight": _Exploit()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_encoder(str(path))  # torch.load(weights_only=True): only tensors and plain containers
    assert not os.path.exists(marker)


def test_weights_load_from_safetensors_only(tmp_path):
    """A folder with both formats loads model.safetensors; a stray pickle beside it is never opened."""
    model, _ = save_tiny(tmp_path)
    torch.save({"anything": _Exploit()}, tmp_path / "pytorch_model.bin")
    loaded = ShowAttendTellForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
    import os

    assert not os.path.exists("/tmp/hf_imgcap_pwned")



def check_frozen_encoder(model):
    model.train()  # as a training loop (or DDP on a reloaded model) does
    assert not any(p.requires_grad for p in model.encoder.parameters()), "encoder parameters are trainable again"
    assert not any(m.training for m in model.encoder.modules()), "encoder BatchNorm layers are in train mode"
    decoder = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("encoder."))
    assert model.num_parameters(only_trainable=True) == decoder, (model.num_parameters(only_trainable=True), decoder)
    assert all(p.requires_grad for name, p in model.named_parameters() if not name.startswith("encoder."))


@pytest.mark.slow
def test_a_frozen_encoder_stays_frozen_after_save_and_load(tmp_path):
    """AutoModel.from_pretrained(folder) of a model saved with freeze_encoder=True keeps every encoder parameter
    frozen (loading replaces parameters with new, trainable ones)."""
    model, _ = save_tiny(tmp_path)
    assert model.config.freeze_encoder
    check_frozen_encoder(model)
    for auto_class in (AutoModel, AutoModelForImageTextToText, ShowAttendTellForConditionalGeneration):
        check_frozen_encoder(auto_class.from_pretrained(tmp_path))
    loaded, _ = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    check_frozen_encoder(loaded)

    code = inspect.getsource(check_frozen_encoder) + f"""
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
check_frozen_encoder(model)
print("FROZEN-OK")
"""
    result = run_fresh_python(code, cwd=tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FROZEN-OK" in result.stdout


def test_a_model_saved_with_one_global_feature_scale_loads_and_gives_the_same_outputs(tmp_path):
    """Folders saved before per-channel standardisation hold a scalar `feature_scale` and no `feature_std`: they
    load without a missing-weights report and caption exactly as they did."""
    from safetensors.torch import load_file, save_file

    model, _ = save_tiny(tmp_path)  # tiny_model: a (regions, channels) mean and one scale, 0.5
    weights = load_file(tmp_path / "model.safetensors")
    assert torch.equal(weights["feature_std"], torch.full_like(weights["feature_std"], 0.5))
    del weights["feature_std"]  # the earlier layout: the single scale was feature_scale itself
    weights["feature_scale"] = torch.tensor(0.5)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    pixels = torch.randn(2, 3, 64, 64)
    ids = torch.tensor([[101, 7, 8, 9], [101, 10, 11, 12]])
    loaded, info = ShowAttendTellForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    assert loaded.feature_scale.item() == 0.5 and torch.equal(loaded.feature_std, torch.ones_like(loaded.feature_std))
    loaded.eval()
    torch.testing.assert_close(loaded(pixel_values=pixels, input_ids=ids).logits, model(pixel_values=pixels, input_ids=ids).logits,
                               rtol=0, atol=0)
    assert torch.equal(loaded.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3),
                       model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3))
    # Statistics set afterwards replace the old scale: features are divided by the new std alone.
    loaded.set_feature_statistics(model.feature_mean, torch.full((model.config.encoder_hidden_size,), 0.25))
    assert loaded.feature_scale.item() == 1.0 and torch.equal(loaded.feature_std, torch.full_like(loaded.feature_std, 0.25))
