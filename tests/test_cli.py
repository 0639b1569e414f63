"""`hf-imgcap caption` / `hf-imgcap evaluate`, in process through `main()` and once through the console script."""

import json
import os
import resource
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from hf_imgcap.evaluation.attention_maps import grid_size
from hf_imgcap.cli import main
from hf_imgcap.data.synthetic import write_synthetic_flickr8k

from test_pipeline import generate_captions, save_captioner, write_test_images

OPTIONS = ["--num-beams", "3", "--max-new-tokens", "6"]
GENERATE = {"num_beams": 3, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, processor = save_captioner(root / "model")
    paths = write_test_images(root / "images")  # gradient.png, noise.png, red.png once sorted
    return model, processor, root / "model", paths


def expected_by_batch(model, processor, paths, batch_size) -> dict[str, str]:
    """What `generate()` gives for the same batches as the CLI makes."""
    captions = {}
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        captions.update(zip(map(str, batch), generate_captions(model, processor, batch, **GENERATE)))
    return captions


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_caption_json_matches_generate(saved, capsys):
    model, processor, folder, paths = saved
    code = main(["caption", *map(str, paths), "--model", str(folder), *OPTIONS, "--batch-size", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    records = json_lines(out)
    assert [r["image"] for r in records] == [str(p) for p in paths]  # files in the order given
    assert {r["image"]: r["caption"] for r in records} == expected_by_batch(model, processor, paths, 2)
    assert "captioned 3 of 3 images" in err


def test_caption_folder_as_a_table(saved, capsys, monkeypatch):
    model, processor, folder, paths = saved
    monkeypatch.chdir(paths[0].parent.parent)  # short relative paths: an aligned table
    code = main(["caption", "images", "--model", str(folder), *OPTIONS, "--batch-size", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["image", "caption"]
    column = header.index("caption")
    found = {row[:column].strip(): row[column:] for row in rows}
    in_order = sorted(paths, key=lambda p: p.name)
    assert list(found) == [os.path.join("images", p.name) for p in in_order]  # the folder's images, sorted
    assert list(found.values()) == [generate_captions(model, processor, [p], **GENERATE)[0] for p in in_order]


def test_recursive_folders_and_hidden_files(saved, tmp_path, capsys):
    _, _, folder, paths = saved
    (tmp_path / "top" / "nested").mkdir(parents=True)
    shutil.copy(paths[0], tmp_path / "top" / "b.png")
    shutil.copy(paths[1], tmp_path / "top" / "nested" / "a.PNG")  # extensions in any case
    (tmp_path / "top" / "._b.png").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: skipped
    (tmp_path / "top" / "readme.txt").write_text("not an image extension: skipped")
    assert main(["caption", str(tmp_path / "top"), "--model", str(folder), "--json"]) == 0
    assert [r["image"] for r in json_lines(capsys.readouterr().out)] == [str(tmp_path / "top" / "b.png")]
    assert main(["caption", str(tmp_path / "top"), "--model", str(folder), "--json", "--recursive"]) == 0
    images = [r["image"] for r in json_lines(capsys.readouterr().out)]
    assert images == [str(tmp_path / "top" / "b.png"), str(tmp_path / "top" / "nested" / "a.PNG")]


def test_bad_images_are_reported_and_the_others_captioned(saved, tmp_path, capsys):
    model, processor, folder, paths = saved
    images = tmp_path / "mixed"
    images.mkdir()
    for path in paths:
        shutil.copy(path, images / path.name)
    (images / "fake.jpg").write_text("a text file named .jpg")
    truncated = images / "truncated.png"
    truncated.write_bytes(paths[0].read_bytes()[:200])
    missing = tmp_path / "missing.jpg"
    code = main(["caption", str(images), str(missing), "--model", str(folder), *OPTIONS, "--json", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    for bad, reason in ((images / "fake.jpg", "not an image"), (truncated, "cannot decode"), (missing, "no such image file")):
        assert any(str(bad) in line and reason in line for line in err.splitlines()), err
    assert "3 could not be read" in err and "captioned 3 of 6 images" in err
    good = sorted(images / p.name for p in paths)
    assert {r["image"]: r["caption"] for r in json_lines(out)} == {
        str(p): generate_captions(model, processor, [p], **GENERATE)[0] for p in good
    }


def test_attention_maps_one_png_per_image(saved, tmp_path, capsys):
    model, processor, folder, paths = saved
    maps = tmp_path / "maps"
    code = main(["caption", *map(str, paths), "--model", str(folder), *OPTIONS, "--json", "--attention-map", str(maps)])
    assert code == 0
    records = json_lines(capsys.readouterr().out)
    assert sorted(p.name for p in maps.iterdir()) == sorted(f"{p.stem}_attention.png" for p in paths)
    for record, path in zip(records, paths):
        result = model.caption(path, processor, return_attentions=True, **GENERATE)
        assert record["caption"] == result["caption"]
        assert record["attention_map"] == str(maps / f"{path.stem}_attention.png")
        with Image.open(record["attention_map"]) as figure:
            assert figure.size == grid_size(len(result["tokens"]))


def test_attention_maps_replace_a_symlink_in_the_folder_instead_of_writing_through_it(saved, tmp_path, capsys):
    _, _, folder, paths = saved
    maps, victim = tmp_path / "maps", tmp_path / "victim.txt"
    maps.mkdir()
    victim.write_text("not to be overwritten")
    (maps / f"{paths[0].stem}_attention.png").symlink_to(victim)
    code = main(["caption", str(paths[0]), "--model", str(folder), *OPTIONS, "--json", "--attention-map", str(maps)])
    assert code == 0
    assert victim.read_text() == "not to be overwritten"
    written = maps / f"{paths[0].stem}_attention.png"
    assert not written.is_symlink()
    with Image.open(written) as figure:
        assert figure.format == "PNG"


def test_usage_errors_exit_2_with_one_line(saved, tmp_path, capsys):
    _, _, folder, paths = saved
    (tmp_path / "empty").mkdir()
    cases = [
        (["caption", str(paths[0]), "--model", str(tmp_path / "no_such_model")], "model folder not found"),
        (["caption", str(paths[0]), "--model", str(paths[0].parent)], "cannot load model"),  # a folder, not a model
        (["caption", str(tmp_path / "empty"), "--model", str(folder)], "no images found"),
        (["evaluate", "--model", str(folder), "--dataset", str(tmp_path / "no_such_dataset")], "dataset folder not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err
        assert len(err.splitlines()) == 1, err
    assert main(["caption", str(paths[0]), "--model", str(folder), "--num-beams", "0"]) == 2  # argparse's own


def test_help_documents_exit_codes(capsys):
    assert main(["caption", "--help"]) == 0
    assert "1 if some could not be read" in " ".join(capsys.readouterr().out.split())


def test_evaluate_prints_metrics(saved, tmp_path, capsys):
    _, _, folder, _ = saved
    dataset = write_synthetic_flickr8k(tmp_path / "flickr8k", num_train=4, num_val=2, num_test=3, image_size=64)
    common = ["evaluate", "--model", str(folder), "--dataset", str(dataset), "--no-meteor", "--num-beams", "2", "--max-new-tokens", "5"]
    assert main([*common, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"} <= set(metrics) and "meteor" not in metrics
    assert metrics["num_images"] == 3
    assert all(0 <= metrics[k] <= 10 for k in ("bleu_1", "bleu_4", "rouge_l", "cider"))
    assert main([*common, "--split", "validation", "--max-images", "1"]) == 0
    table = capsys.readouterr().out
    assert "[validation], 1 images" in table and "bleu_4" in table and "cider" in table


def test_console_script_gives_the_same_captions(saved, tmp_path):
    model, processor, folder, paths = saved
    script = shutil.which("hf-imgcap")
    if script is None:  # installed next to this interpreter even when that directory is not on PATH
        script = os.path.join(os.path.dirname(sys.executable), "hf-imgcap")
    assert os.path.exists(script), "hf-imgcap is not installed: pip install -e ."
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [script, "caption", *map(str, paths), "--model", str(folder), *OPTIONS, "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["image"]: r["caption"] for r in json_lines(result.stdout)} == expected_by_batch(model, processor, paths, 16)


def console_script() -> str:
    script = shutil.which("hf-imgcap") or os.path.join(os.path.dirname(sys.executable), "hf-imgcap")
    assert os.path.exists(script), "hf-imgcap is not installed: pip install -e ."
    return script


def test_symlink_loops_and_dangling_links_are_reported_and_the_others_captioned(saved, tmp_path, capsys):
    model, processor, folder, paths = saved
    images = tmp_path / "links"
    images.mkdir()
    shutil.copy(paths[0], images / "good.png")
    (images / "loop.jpg").symlink_to("loop.jpg")  # points at itself
    (images / "dangling.png").symlink_to(tmp_path / "deleted.png")
    for recursive in ([], ["--recursive"]):
        code = main(["caption", str(images), str(images / "loop.jpg"), "--model", str(folder), *OPTIONS, "--json", *recursive])
        out, err = capsys.readouterr()
        assert code == 1, err
        assert {r["image"]: r["caption"] for r in json_lines(out)} == {
            str(images / "good.png"): generate_captions(model, processor, [paths[0]], **GENERATE)[0]}
        skipped = [line for line in err.splitlines() if "skipped" in line]
        assert sum(str(images / "loop.jpg") in line and "symlink loop" in line for line in skipped) == 2, err
        assert any(str(images / "dangling.png") in line and "broken symlink" in line for line in skipped), err
        assert "captioned 1 of 4 images; 3 could not be read" in err and "Traceback" not in err


def test_piping_the_output_into_head_stops_quietly(saved, tmp_path):
    _, _, folder, paths = saved
    # More than a pipe buffer (64 KB) of JSON lines, so the writer is still writing when `head` goes away.
    images = [str(path) for path in paths] * 600
    command = shlex.join([console_script(), "caption", *images, "--model", str(folder), "--num-beams", "1",
                          "--max-new-tokens", "4", "--batch-size", "64", "--json"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(["bash", "-c", f"{command} 2>{tmp_path / 'stderr'} | head -n 1; echo ${{PIPESTATUS[0]}} >{tmp_path / 'status'}"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert len(result.stdout.splitlines()) == 1 and json.loads(result.stdout)["image"] == images[0]
    errors = (tmp_path / "stderr").read_text()
    assert "Traceback" not in errors and "BrokenPipeError" not in errors and "Exception ignored" not in errors, errors
    assert (tmp_path / "status").read_text().strip() == "141"  # as `cat big | head -1`: 128 + SIGPIPE


def absurd_model_folder(saved, folder, **sizes):
    """A copy of the model folder with a few KB of weights and a config.json asking for `sizes`."""
    shutil.copytree(saved, folder)
    from safetensors.torch import save_file
    import torch

    save_file({"feature_scale": torch.ones(())}, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config.update(sizes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("sizes, why", [
    ({"vocab_size": 2_000_000, "embedding_size": 20_000, "hidden_size": 20_000}, "limit"),  # 160 GB in float32
    ({"vocab_size": 100_000, "embedding_size": 1_000, "hidden_size": 1_000}, "model.safetensors"),  # 0.8 GB from 8 bytes
])
def test_a_model_folder_asking_for_absurd_sizes_is_refused_before_allocating(saved, tmp_path, sizes, why):
    _, _, folder, paths = saved
    absurd = absurd_model_folder(folder, tmp_path / "absurd", **sizes)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    limit = 12 * 2**30  # address space: an attempt to allocate fails here instead of exhausting the shared machine
    result = subprocess.run([console_script(), "caption", str(paths[0]), "--model", str(absurd), "--num-beams", "1"],
                            capture_output=True, text=True, env=env, timeout=600,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    for name, value in sizes.items():
        assert f"{name}={value}" in result.stderr
    assert why in result.stderr and str(absurd) in result.stderr


def test_the_parameter_estimate_matches_the_built_model():
    import torch
    from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration

    from conftest import tiny_config

    basic = tiny_config(encoder_config=dict(layer_type="basic", depths=[2, 1, 1, 2], hidden_sizes=[8, 16, 32, 64], embedding_size=4))
    for config in (tiny_config(), tiny_config(vocab_size=500, hidden_size=24), basic, ShowAttendTellConfig()):
        with torch.device("meta"):  # the real size, nothing allocated
            model = ShowAttendTellForConditionalGeneration(config)
        assert config.estimated_num_parameters() == model.num_parameters(), config
