"""`hf-imgcap caption` / `hf-imgcap evaluate`, in process through `main()` and once through the console script."""

import errno
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from hf_imgcap.evaluation.attention_maps import grid_size
from hf_imgcap.evaluation.caption_metrics import TOKENIZER_LABELS, compute_caption_metrics, tokenize_captions
from hf_imgcap.cli import main
from hf_imgcap.demo.scenes import write_synthetic_flickr8k

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


def test_an_attention_map_folder_that_cannot_be_made_is_refused_before_the_model_loads(saved, tmp_path, capsys, monkeypatch):
    from hf_imgcap import cli

    _, _, folder, paths = saved
    monkeypatch.setattr(cli, "load_model_and_processor", lambda *args: pytest.fail("the model was loaded first"))
    code = main(["caption", str(paths[0]), "--model", str(folder), "--attention-map", str(paths[0] / "maps")])
    assert code == 2 and f"--attention-map {paths[0] / 'maps'}" in capsys.readouterr().err


def test_usage_errors_exit_2_with_one_line(saved, tmp_path, capsys):
    _, _, folder, paths = saved
    (tmp_path / "empty").mkdir()
    cases = [
        (["caption", str(paths[0]), "--model", str(tmp_path / "no_such_model")], "model folder not found"),
        (["caption", str(paths[0]), "--model", str(paths[0].parent)], "not a model folder"),  # a folder, not a model
        (["caption", str(tmp_path / "empty"), "--model", str(folder)], "no images found"),
        (["evaluate", "--model", str(folder), "--dataset", str(tmp_path / "no_such_dataset")], "dataset folder not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err
        assert len(err.splitlines()) == 1, err
    assert main(["caption", str(paths[0]), "--model", str(folder), "--num-beams", "0"]) == 2  # argparse's own


@pytest.mark.parametrize("removed, message", [
    (["config.json"], "no config.json"),
    (["tokenizer.json", "tokenizer_config.json"], "no tokenizer files"),
    (["tokenizer.json"], "tokenizer files complete"),
])
def test_a_model_folder_missing_a_file_says_which(saved, tmp_path, capsys, removed, message):
    import shutil

    _, _, folder, paths = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    for name in removed:
        (broken / name).unlink()
    assert main(["caption", str(paths[0]), "--model", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err, err


def test_help_documents_exit_codes(capsys):
    assert main(["caption", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1 if some could not be read" in text and "HF_IMGCAP_DEBUG=1" in text
    assert main(["--help"]) == 0
    assert "HF_IMGCAP_DEBUG=1" in capsys.readouterr().out


class FullDisk:
    """A stdout on a full disk: every write fails as the OS reports it."""

    encoding = "utf-8"

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass


def test_a_user_error_met_while_a_command_runs_is_one_line_and_exit_2(saved, tmp_path, capsys, monkeypatch):
    """Not only the errors the commands check for: an OSError or ValueError met on the way (a full disk, Java
    missing for --meteor) is the user's to fix as well."""
    _, _, folder, paths = saved
    monkeypatch.delenv("HF_IMGCAP_DEBUG", raising=False)
    monkeypatch.setattr(sys, "stdout", FullDisk())
    assert main(["caption", str(paths[0]), "--model", str(folder), *OPTIONS]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "hf-imgcap: error: No space left on device", err
    monkeypatch.undo()

    dataset = write_synthetic_flickr8k(tmp_path / "flickr8k", num_train=4, num_val=2, num_test=2, image_size=64)
    monkeypatch.setenv("PATH", str(tmp_path / "no_programs_here"))  # no java
    monkeypatch.delenv("HF_IMGCAP_DEBUG", raising=False)
    assert main(["evaluate", "--model", str(folder), "--dataset", str(dataset), "--meteor", *OPTIONS]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "--meteor needs Java" in err, err


def test_hf_imgcap_debug_shows_the_traceback_of_a_user_error(saved, tmp_path, capsys, monkeypatch):
    _, _, _, paths = saved
    monkeypatch.setenv("HF_IMGCAP_DEBUG", "1")
    assert main(["caption", str(paths[0]), "--model", str(tmp_path / "no_such_model")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "load_model_and_processor" in err
    assert err.strip().splitlines()[-1] == f"hf-imgcap: error: model folder not found: {tmp_path / 'no_such_model'}"


def test_a_bug_keeps_its_traceback_and_ctrl_c_exits_130(saved, capsys, monkeypatch):
    from hf_imgcap import cli

    _, _, folder, paths = saved

    def bug(*args, **kwargs):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(cli, "load_model_and_processor", bug)  # not the user's fault: Python's own report
    with pytest.raises(TypeError, match="not subscriptable"):
        main(["caption", str(paths[0]), "--model", str(folder)])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_model_and_processor", interrupted)
    assert main(["caption", str(paths[0]), "--model", str(folder)]) == 130
    assert capsys.readouterr().err == "hf-imgcap: interrupted\n"


def test_evaluate_prints_metrics(saved, tmp_path, capsys):
    _, _, folder, _ = saved
    dataset = write_synthetic_flickr8k(tmp_path / "flickr8k", num_train=4, num_val=2, num_test=3, image_size=64)
    common = ["evaluate", "--model", str(folder), "--dataset", str(dataset), "--no-meteor", "--num-beams", "2", "--max-new-tokens", "5"]
    assert main([*common, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"} <= set(metrics) and "meteor" not in metrics
    assert metrics["num_images"] == 3
    assert all(0 <= metrics[k] <= 10 for k in ("bleu_1", "bleu_4", "rouge_l", "cider"))
    assert metrics["tokenizer"] == TOKENIZER_LABELS[tokenize_captions(["a dog"]).tokenizer]  # which one scored them
    assert main([*common, "--split", "validation", "--max-images", "1"]) == 0
    table = capsys.readouterr().out
    assert "[validation], 1 images" in table and "bleu_4" in table and "cider" in table
    # The captions it scored, to read or to score with other tools: the same numbers.
    assert main([*common, "--json", "--captions", str(tmp_path / "scored.json")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert len(scored) == 3 and all(set(entry) == {"image_id", "caption", "references"} for entry in scored)
    again = compute_caption_metrics([e["caption"] for e in scored], [e["references"] for e in scored], meteor=False)
    assert all(metrics[name] == pytest.approx(again[name]) for name in again)
    assert main([*common, "--captions", str(tmp_path / "no_such_folder" / "scored.json")]) == 2


def test_evaluate_leaves_out_test_images_that_are_also_training_images_unless_allowed(saved, tmp_path, capsys):
    _, _, folder, _ = saved
    dataset = write_synthetic_flickr8k(tmp_path / "flickr8k", num_train=4, num_val=2, num_test=3, image_size=64)
    test_names = (dataset / "Flickr_8k.testImages.txt").read_text().split()
    train_names = (dataset / "Flickr_8k.trainImages.txt").read_text().split()
    images = dataset / "Flicker8k_Dataset"
    shutil.copyfile(images / train_names[0], images / test_names[0])  # a training photo under a test name
    common = ["evaluate", "--model", str(folder), "--dataset", str(dataset), "--no-meteor", "--num-beams", "1",
              "--max-new-tokens", "3", "--json"]
    assert main(common) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 2
    assert main([*common, "--allow-split-overlap"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 3


def test_evaluate_carves_a_missing_test_split_as_the_training_run_did(saved, tmp_path, capsys, monkeypatch):
    """A dataset without a test split gets one carved from its images by a seed: evaluate must carve it with the
    training run's seed (its training_args.json; --seed; else train.py's default), or it scores training images."""
    from hf_imgcap.data.caption_datasets import load_caption_dataset
    from hf_imgcap.evaluation import generation
    from test_own_data import write_imagefolder

    _, _, folder, _ = saved
    model = tmp_path / "model"
    shutil.copytree(folder, model)
    pairs = [(Image.new("RGB", (32, 32), (9 * i, 3 * i, 255 - 9 * i)), [f"a photo number {i}", f"picture {i}"]) for i in range(20)]
    dataset = tmp_path / "photos"
    write_imagefolder(dataset, pairs)
    scored = []
    real = generation.evaluate_captioner

    def recording(model, processor, split, **kwargs):
        scored.append(sorted(split["image_id"]))
        return real(model, processor, split, **kwargs)

    monkeypatch.setattr(generation, "evaluate_captioner", recording)
    common = ["evaluate", "--model", str(model), "--dataset", str(dataset), "--no-meteor", "--num-beams", "1", "--max-new-tokens", "3", "--json"]

    def test_images(seed):
        return sorted(load_caption_dataset(str(dataset), seed=seed)["test"]["image_id"])

    assert test_images(7) != test_images(42)
    (model / "training_args.json").write_text(json.dumps({"data": {"dataset": str(dataset)}, "training": {"seed": 7}}))
    assert main(common) == 0 and scored[-1] == test_images(7)
    err = capsys.readouterr().err
    assert "seed 7" in err and "training_args.json" in err
    assert main([*common, "--seed", "3"]) == 0 and scored[-1] == test_images(3)
    (model / "training_args.json").unlink()
    assert main(common) == 0 and scored[-1] == test_images(42)  # train.py's default seed
    assert "--seed" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_gives_the_same_captions(saved, tmp_path):
    model, processor, folder, paths = saved
    script = console_script()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [script, "caption", *map(str, paths), "--model", str(folder), *OPTIONS, "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["image"]: r["caption"] for r in json_lines(result.stdout)} == expected_by_batch(model, processor, paths, 16)


def console_script() -> str:
    """The hf-imgcap script of this interpreter's environment (next to it), whatever PATH holds."""
    script = os.path.join(os.path.dirname(sys.executable), "hf-imgcap")
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------- names on a terminal
# File names that would break lines or drive the terminal if printed raw, and how each is shown instead.
HOSTILE_NAMES = {
    "new\nline.png": "new\\nline.png",
    "carriage\rreturn.png": "carriage\\rreturn.png",
    "esc\x1b[31mred.png": "esc\\x1b[31mred.png",
    "title\x1b]0;pwned\x07.png": "title\\x1b]0;pwned\\x07.png",
    "bidi\u202egnp.exe.png": "bidi\\u202egnp.exe.png",  # RIGHT-TO-LEFT OVERRIDE: "bidi" + reversed text
    "isolate\u2067x\u2069.png": "isolate\\u2067x\\u2069.png",
    "line\u2028separator.png": "line\\u2028separator.png",
    "c1\x9bcontrol.png": "c1\\x9bcontrol.png",
}
READABLE_NAMES = ["café.png", "日本の写真.png", "emoji 👩\u200d💻.png", "tab-free name (1).png"]  # stay as they are
RAW_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def hostile_folder(saved, tmp_path):
    _, _, _, paths = saved
    folder = tmp_path / "names"
    folder.mkdir()
    for name in [*HOSTILE_NAMES, *READABLE_NAMES]:
        shutil.copy(paths[0], folder / name)
    (folder / "broken\x1b[2J\u202e.png").write_text("not an image")  # reported on stderr, with its name
    latin1 = os.fsdecode(b"latin1-caf\xe9.png")  # not UTF-8: Python keeps the byte as a lone surrogate
    shutil.copy(paths[0], folder / latin1)
    return folder, latin1


def test_file_names_are_escaped_in_the_table_and_kept_exact_in_json(saved, hostile_folder, capsys, monkeypatch):
    _, _, folder, _ = saved
    images, latin1 = hostile_folder
    monkeypatch.chdir(images)
    assert main(["caption", ".", "--model", str(folder), *OPTIONS]) == 1  # the broken one fails
    out, err = capsys.readouterr()
    assert not RAW_CONTROLS.search(out) and not RAW_CONTROLS.search(err), (out, err)
    rows = out.splitlines()[1:]
    assert len(rows) == len(HOSTILE_NAMES) + len(READABLE_NAMES) + 1  # one line per image, none broken in two
    shown = {row.split("  ")[0].strip() for row in rows}
    assert set(HOSTILE_NAMES.values()) <= shown, shown
    assert set(READABLE_NAMES) <= shown  # é, 日本, a joined emoji: readable
    assert "latin1-caf\\xe9.png" in shown  # the byte that is not UTF-8, as \xNN
    (skipped,) = [line for line in err.splitlines() if "skipped" in line]
    assert "broken\\x1b[2J\\u202e.png" in skipped and "not an image" in skipped

    assert main(["caption", ".", "--model", str(folder), *OPTIONS, "--json"]) == 1
    out, err = capsys.readouterr()
    assert not RAW_CONTROLS.search(out) and not RAW_CONTROLS.search(err)
    lines = out.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {record["image"] for record in records} == {*HOSTILE_NAMES, *READABLE_NAMES, latin1}
    assert "café" in out and "日本の写真" in out  # readable in the JSON text too, not \u escapes


def test_names_in_error_messages_are_escaped(saved, tmp_path, capsys):
    _, _, folder, paths = saved
    empty = tmp_path / "empty\x1b[2J\u202efolder"
    empty.mkdir()
    missing_model = tmp_path / "model\nfolder\x1b]0;x\x07"
    for argv, message in (
        (["caption", str(empty), "--model", str(folder)], f"no images found in {tmp_path}/empty\\x1b[2J\\u202efolder"),
        (["caption", str(paths[0]), "--model", str(missing_model)], f"model folder not found: {tmp_path}/model\\nfolder\\x1b]0;x\\x07"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert not RAW_CONTROLS.search(err) and len(err.splitlines()) == 1 and message in err, err


# ---------------------------------------------------------------------------------------------- push
def test_push_uploads_a_training_folder_and_its_card_names_the_repository(saved, tmp_path, capsys, monkeypatch):
    from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl

    _, _, folder, _ = saved
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    (run / "metrics.json").write_text(json.dumps({"test": {"bleu_4": 0.2, "num_images": 3}, "num_train_images": 9,
                                                  "eval": {"split": "test", "num_beams": 1, "max_new_tokens": 6}}))
    commits = []

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        commits.append((repo_id, sorted(op.path_in_repo for op in operations)))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message=commit_message,
                          commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    assert main(["push", str(run), "--repo-id", "someone/tiny-captioner"]) == 0
    (repo_id, files), = commits
    assert repo_id == "someone/tiny-captioner" and {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert "https://huggingface.co/someone/tiny-captioner" in capsys.readouterr().out
    card = ModelCard.load(run / "README.md")
    assert card.data.model_name == "someone/tiny-captioner" and 'from_pretrained("someone/tiny-captioner"' in card.text

    for argv, message in ((["push", str(tmp_path), "--repo-id", "someone/x"], "holds no saved model"),
                          (["push", str(run), "--repo-id", "not a repo"], "--repo-id 'not a repo'")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err
    assert len(commits) == 1
