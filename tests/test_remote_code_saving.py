"""A model loaded with `trust_remote_code=True` where hf_imgcap is not installed saves a complete folder: through
`save_pretrained`, `Trainer.save_model` and a Trainer checkpoint. Each folder loads again in a fresh process without
hf_imgcap and captions exactly as the original model did."""

import json

import pytest
import torch

from conftest import run_fresh_python, tiny_model, tiny_processor

GENERATE = {"max_new_tokens": 6, "num_beams": 3}


@pytest.mark.slow
def test_a_remote_code_model_saves_folders_that_load_again_without_the_package(tmp_path):
    model, processor = tiny_model(), tiny_processor()
    model.save_pretrained(tmp_path / "original")
    processor.save_pretrained(tmp_path / "original")
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 64, 64)
    torch.save({"pixels": pixels, "expected": model.generate(pixel_values=pixels, **GENERATE)}, tmp_path / "reference.pt")

    save = f"""
import os
import pytest
import torch
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments
root = {str(tmp_path)!r}
model = AutoModel.from_pretrained(os.path.join(root, "original"), trust_remote_code=True)
processor = AutoProcessor.from_pretrained(os.path.join(root, "original"), trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__

model.save_pretrained(os.path.join(root, "saved"))
processor.save_pretrained(os.path.join(root, "saved"))

args = TrainingArguments(output_dir=os.path.join(root, "run"), max_steps=1, save_strategy="steps", save_steps=1,
                         per_device_train_batch_size=2, learning_rate=0.0, report_to="none", use_cpu=True,
                         remove_unused_columns=False, dataloader_num_workers=0)
batch = processor(images=[torch.rand(3, 64, 64)] * 2, text=["a dog", "a cat"], do_rescale=False)
labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
rows = [{{"pixel_values": batch["pixel_values"][i], "labels": labels[i]}} for i in range(2)]
trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=processor)
trainer.train()  # one step, then its checkpoint
trainer.save_model(os.path.join(root, "trainer_saved"))
print("SAVED")
"""
    result = run_fresh_python(save, cwd=tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]

    folders = ["saved", "trainer_saved", "run/checkpoint-1"]
    for name in folders:
        folder = tmp_path / name
        assert (folder / "pipeline_show_attend_tell.py").is_file(), name
        config = json.loads((folder / "config.json").read_text())
        assert {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"} <= set(config["auto_map"]), name
        assert "image-to-text" in config["custom_pipelines"], name

    reload = f"""
import os
import pytest
import torch
from transformers import AutoModel, pipeline
root = {str(tmp_path)!r}
reference = torch.load(os.path.join(root, "reference.pt"))
for name in {folders!r}:
    folder = os.path.join(root, name)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    out = model.generate(pixel_values=reference["pixels"], **{GENERATE!r})
    assert torch.equal(out, reference["expected"]), (name, out, reference["expected"])
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    assert isinstance(captioner(torch.rand(3, 64, 64).numpy(), max_new_tokens=3)[0]["generated_text"], str)
print("RELOADED")
"""
    result = run_fresh_python(reload, cwd=tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RELOADED" in result.stdout


def test_saving_without_every_code_file_writes_nothing(tmp_path, monkeypatch):
    """A model whose code files are not all there (e.g. a modules cache missing one) refuses to save before writing
    anything: no weights without the code that loads them."""
    from hf_imgcap.models.show_attend_tell import modeling_show_attend_tell

    model = tiny_model()
    assert modeling_show_attend_tell.missing_code_files() == []
    gone = str(tmp_path / "cache" / "fused_teacher_forcing.py")
    monkeypatch.setattr(modeling_show_attend_tell, "missing_code_files", lambda: [gone])
    with pytest.raises(OSError, match="fused_teacher_forcing.py"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
