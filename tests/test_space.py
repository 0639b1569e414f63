"""The Gradio Space of a model: what the page computes (called directly, no server), the folder `hf-imgcap space`
writes, and gradio staying out of everything else."""

import ast
import json
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import SpaceCard
from PIL import Image

from hf_imgcap.cli import main
from hf_imgcap.evaluation.attention_maps import grid_size
from hf_imgcap.space.captioning import SpaceCaptioner

from conftest import run_fresh_python, tiny_model, tiny_processor

gr = pytest.importorskip("gradio", reason='the Space needs gradio: pip install "hf-imgcap[space]"')
from hf_imgcap.space import page  # noqa: E402  (imports gradio)


def save_model(folder: Path):
    model, processor = tiny_model(seed=0), tiny_processor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def reference_captions(model, processor, image, **generate_kwargs) -> list[str]:
    """The Python API: generate + batch_decode."""
    return processor.batch_decode(model.generate(**processor(images=[image]), **generate_kwargs))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    model, processor = save_model(root / "model")
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(image)
    return root / "model", model, processor, image


@pytest.fixture(scope="module")
def captioner(saved):
    return SpaceCaptioner.load(str(saved[0]), device="cpu")


class GenerateSpy:
    """Counts the model's generate calls: proves a refused image never reached the model."""

    def __init__(self, model, monkeypatch):
        self.calls = 0
        original = model.generate

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "generate", counting)


# --- what the page shows ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_pages_caption_is_the_python_apis(saved, captioner, num_beams):
    _, model, processor, image = saved
    result = captioner.caption(str(image), num_beams=num_beams, max_new_tokens=8, num_return_sequences=3)
    assert result.caption == reference_captions(model, processor, str(image), num_beams=num_beams, max_new_tokens=8)[0]
    assert len(result.beams) == num_beams and result.beams[0].caption == result.caption  # at most one per beam
    if num_beams > 1:
        top = reference_captions(model, processor, str(image), num_beams=num_beams, max_new_tokens=8, num_return_sequences=num_beams)
        assert [beam.caption for beam in result.beams] == top
    scores = [beam.score for beam in result.beams]
    assert all(math.isfinite(score) and score <= 0 for score in scores) and scores == sorted(scores, reverse=True)
    assert len(result.tokens) == len(result.attentions) == len(result.word_panels) > 0
    assert np.allclose(result.attentions.sum(axis=(1, 2)), 1.0, atol=1e-4)  # one distribution over the regions per word
    assert result.figure.size == grid_size(len(result.tokens))


def test_the_beam_scores_are_generates_sequences_scores(saved, captioner):
    _, model, processor, image = saved
    out = model.generate(**processor(images=[str(image)]), num_beams=4, num_return_sequences=2, max_new_tokens=6,
                         output_scores=True, return_dict_in_generate=True)
    result = captioner.caption(str(image), num_beams=4, max_new_tokens=6, num_return_sequences=2)
    assert [beam.score for beam in result.beams] == pytest.approx(out.sequences_scores.tolist(), abs=1e-5)


def test_the_page_function_returns_caption_figure_gallery_and_beams(saved, captioner):
    caption, figure, gallery, beams = page.caption_for_page(captioner, str(saved[3]), 3, 8, 2)
    assert isinstance(caption, str) and caption
    assert isinstance(figure, Image.Image)
    assert [token for _, token in gallery] == captioner.caption(str(saved[3]), 3, 8, 2).tokens
    assert [row[0] for row in beams] == [1, 2] and beams[0][1] == caption


def bomb_png(path: Path) -> Path:
    """A 10,000 × 9,000 image (90 M pixels, over the processor's limit) that is only a few KB on disk."""
    Image.new("1", (10_000, 9_000)).save(path)
    return path


def file_with(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda folder: file_with(folder / "notes.png", b"not an image"), "notes.png: not an image"),
    (lambda folder: bomb_png(folder / "huge.png"), "huge.png: 10000×9000 = 90,000,000 pixels is over the pixel limit"),
    (lambda folder: file_with(folder / "empty.jpg", b""), "empty.jpg: not an image"),
])
def test_a_bad_image_is_a_message_on_the_page_and_never_reaches_the_model(saved, captioner, tmp_path, monkeypatch, make, message):
    spy = GenerateSpy(captioner.model, monkeypatch)
    with pytest.raises(gr.Error) as raised:
        page.caption_for_page(captioner, str(make(tmp_path)), 3, 8, 2)
    assert message in raised.value.message
    assert spy.calls == 0


@pytest.mark.parametrize("settings, message", [
    ((0, 8, 1), "beam size must be a whole number from 1 to 10, got 0"),
    ((3, 1000, 1), "max new tokens must be a whole number from 1 to 60, got 1000"),
    ((2.5, 8, 1), "beam size must be a whole number"),
    ((3, None, 1), "max new tokens must be a whole number, got None"),
])
def test_settings_out_of_range_are_a_message(saved, captioner, settings, message):
    with pytest.raises(gr.Error, match=message.replace("(", r"\(")):
        page.caption_for_page(captioner, str(saved[3]), *settings)


def test_no_image_asks_for_one(captioner):
    with pytest.raises(gr.Error, match="Upload an image"):
        page.caption_for_page(captioner, None, 3, 8, 2)


def test_the_upload_reaches_the_app_unopened(tmp_path):
    """gradio's own gr.Image would open the file first (a non-image fails there with gradio's message, not ours)."""
    from gradio.data_classes import ImageData

    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    assert page.ImageFile(type="filepath").preprocess(ImageData(path=str(not_an_image), orig_name="notes.jpg")) == str(not_an_image)
    assert page.ImageFile(type="filepath").get_block_name() == "image"  # drawn by gr.Image's front end


def test_the_page_queues_requests_and_sends_no_analytics(captioner):
    built = page.build_page(captioner, "Tiny captioner", [])
    assert built.analytics_enabled is False
    assert built._queue.max_size == page.QUEUE_SIZE
    assert built._queue.default_concurrency_limit == page.CONCURRENT_CAPTIONS  # one caption at a time, the rest wait
    assert "/caption" in built.get_api_info()["named_endpoints"]


# --- the Space folder ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, saved):
    """A training output folder: the model, training_args.json naming a local dataset, test_captions.json."""
    from hf_imgcap.data.caption_datasets import load_caption_dataset
    from hf_imgcap.demo.scenes import write_synthetic_flickr8k

    root = tmp_path_factory.mktemp("run")
    dataset = write_synthetic_flickr8k(root / "flickr8k", num_train=6, num_val=2, num_test=4, image_size=48)
    run = root / "run"
    save_model(run)
    test = load_caption_dataset(str(dataset))["test"]
    examples = [{"image_id": image_id, "caption": "a caption", "references": list(refs)}
                for image_id, refs in zip(test["image_id"], test["captions"])]
    (run / "test_captions.json").write_text(json.dumps(examples))
    (run / "training_args.json").write_text(json.dumps({"data": {"dataset": str(dataset)}, "model": {}, "training": {}}))
    import datasets

    paths = dict(zip(test["image_id"], (row["path"] for row in test.cast_column("image", datasets.Image(decode=False))["image"])))
    return run, [paths[example["image_id"]] for example in examples]


def test_space_command_writes_the_app_its_requirements_metadata_and_test_set_examples(run_folder, tmp_path, capsys):
    run, test_images = run_folder
    assert main(["space", str(run), "--output", str(tmp_path / "space"), "--num-examples", "3"]) == 0
    space = tmp_path / "space"
    assert "python " in capsys.readouterr().out
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.license == "apache-2.0"
    assert card.data.title == "run captioner" and card.data.sdk_version == metadata.version("gradio")
    assert card.data.models is None  # a local folder is no Hub model to link
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert f"gradio=={metadata.version('gradio')}" in requirements
    assert f"transformers=={metadata.version('transformers')}" in requirements and f"torch=={metadata.version('torch')}" in requirements
    assert any(line.startswith("hf-imgcap") for line in requirements)
    app = ast.parse((space / "app.py").read_text())
    model = next(node.value.value for node in app.body if isinstance(node, ast.Assign) and node.targets[0].id == "MODEL")
    assert model == str(run.resolve())
    examples = sorted((space / "examples").iterdir())
    assert len(examples) == 3  # the first 3 test images named by test_captions.json, copied byte for byte
    assert [path.read_bytes() for path in examples] == [Path(path).read_bytes() for path in test_images[:3]]


def test_space_for_a_hub_repository_loads_and_links_it(run_folder, tmp_path):
    run, _ = run_folder
    assert main(["space", str(run), "--output", str(tmp_path / "space"), "--repo-id", "someone/tiny-captioner",
                 "--num-examples", "1"]) == 0
    card = SpaceCard.load(tmp_path / "space" / "README.md")
    assert card.data.models == ["someone/tiny-captioner"] and card.data.title == "tiny-captioner captioner"
    assert 'MODEL = "someone/tiny-captioner"' in (tmp_path / "space" / "app.py").read_text()


def test_without_a_readable_test_set_the_space_has_no_examples_and_says_why(run_folder, tmp_path, caplog):
    run, _ = run_folder
    moved = tmp_path / "run"
    moved.mkdir()
    for name in ("config.json", "model.safetensors", "test_captions.json"):
        (moved / name).write_bytes((run / name).read_bytes())
    (moved / "training_args.json").write_text(json.dumps({"data": {"dataset": str(tmp_path / "gone")}}))
    assert main(["space", str(moved), "--output", str(tmp_path / "space")]) == 0
    assert not (tmp_path / "space" / "examples").exists()
    assert "no example images" in caplog.text and "pass --examples" in caplog.text


def test_space_command_refuses_a_missing_model_or_example(tmp_path, capsys):
    assert main(["space", str(tmp_path / "missing"), "--output", str(tmp_path / "space")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    save_model(tmp_path / "model")
    assert main(["space", str(tmp_path / "model"), "--output", str(tmp_path / "space"), "--examples", str(tmp_path / "x.jpg")]) == 2
    assert "--examples: no such image file" in capsys.readouterr().err
    assert not (tmp_path / "space").exists()


def test_gradio_is_imported_only_by_the_page(run_folder, tmp_path):
    """The model, training, the CLI (the space command included) run without gradio: it is an optional extra."""
    run, _ = run_folder
    code = f"""
import sys
import hf_imgcap, hf_imgcap.cli, hf_imgcap.hub, hf_imgcap.training, hf_imgcap.space.captioning
from hf_imgcap.cli import main
assert main(["space", {str(run)!r}, "--output", {str(tmp_path / "space")!r}, "--num-examples", "0"]) == 0
print("gradio" in sys.modules)
"""
    result = run_fresh_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_serve_listens_on_localhost_without_a_share_link_and_caps_uploads(captioner, monkeypatch):
    built = page.build_page(captioner, "Tiny captioner", [])
    launched = {}
    monkeypatch.setattr(built, "launch", lambda **kwargs: launched.update(kwargs))
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    page.serve(built, port=7999)
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7999 and launched["share"] is False
    assert launched["max_file_size"] == page.MAX_UPLOAD  # a larger upload is refused by gradio before it is stored
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # what a hosted Space sets
    page.serve(built)
    assert launched["server_name"] == "0.0.0.0"


def test_any_title_or_folder_name_gives_a_valid_app_and_rewriting_replaces_the_examples(saved, tmp_path):
    from hf_imgcap.space.folder import write_space

    odd = tmp_path / 'a "quoted\\" folder'
    odd.mkdir()
    for path in saved[0].iterdir():
        (odd / path.name).write_bytes(path.read_bytes())
    first, second = tmp_path / "one.png", tmp_path / "two.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(first)
    Image.new("RGB", (40, 40), (0, 0, 255)).save(second)
    space = write_space(str(odd), tmp_path / "space", title='Tom\'s """captioner"""\\', examples=[str(first), str(second)])
    write_space(str(odd), space, title='Tom\'s """captioner"""\\', examples=[str(second)],
                hf_imgcap_requirement="hf-imgcap @ git+https://example.org/hf-imgcap.git")
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse((space / "app.py").read_text()).body
              if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}
    assert values["MODEL"] == str(odd.resolve()) and values["TITLE"] == 'Tom\'s """captioner"""\\'
    assert [path.read_bytes() for path in sorted((space / "examples").iterdir())] == [second.read_bytes()]
    assert (space / "requirements.txt").read_text().splitlines()[0] == "hf-imgcap @ git+https://example.org/hf-imgcap.git"


def _installed_as(folder: Path, direct_url) -> Path:
    """A dist-info for hf-imgcap 9.9.0 in `folder`, as pip records an install (INSTALLER; direct_url.json, PEP 610,
    for an install from a URL or a path: a dict, or the file's text as it is)."""
    dist_info = folder / "hf_imgcap-9.9.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: hf-imgcap\nVersion: 9.9.0\n")
    (dist_info / "INSTALLER").write_text("pip\n")
    if direct_url is not None:
        (dist_info / "direct_url.json").write_text(direct_url if isinstance(direct_url, str) else json.dumps(direct_url))
    return folder


@pytest.mark.parametrize("direct_url, expected", [
    (None, "hf-imgcap==9.9.0"),  # from a package index
    ({"url": "https://github.com/someone/hf-imgcap.git", "vcs_info": {"vcs": "git", "commit_id": "0123abc", "requested_revision": "main"}},
     "hf-imgcap @ git+https://github.com/someone/hf-imgcap.git@0123abc"),
    ({"url": "https://github.com/someone/tools.git", "subdirectory": "hf-imgcap", "vcs_info": {"vcs": "git", "commit_id": "0123abc"}},
     "hf-imgcap @ git+https://github.com/someone/tools.git@0123abc#subdirectory=hf-imgcap"),
    ({"url": "https://example.org/dist/hf_imgcap-9.9.0-py3-none-any.whl", "archive_info": {"hashes": {"sha256": "00"}}},
     "hf-imgcap @ https://example.org/dist/hf_imgcap-9.9.0-py3-none-any.whl"),
], ids=["index", "git", "git subdirectory", "archive url"])
def test_the_space_installs_hf_imgcap_from_where_it_was_installed_here(saved, tmp_path, monkeypatch, caplog, direct_url, expected):
    from hf_imgcap.space.folder import write_space

    monkeypatch.syspath_prepend(str(_installed_as(tmp_path / "site", direct_url)))
    space = write_space(str(saved[0]), tmp_path / "space", examples=[])
    assert (space / "requirements.txt").read_text().splitlines()[0] == expected
    assert "cannot install" not in caplog.text


@pytest.mark.parametrize("how", ["editable checkout", "local wheel", "local git clone", "unreadable record",
                                 "source checkout, not installed"])
def test_a_space_for_an_hf_imgcap_installed_from_this_machine_says_how_to_point_it_elsewhere(saved, tmp_path, monkeypatch, caplog, how):
    from hf_imgcap.space.folder import write_space

    site = tmp_path / "site"
    if how == "editable checkout":
        _installed_as(site, {"url": "file:///home/me/hf-imgcap", "dir_info": {"editable": True}})
    elif how == "local wheel":
        _installed_as(site, {"url": "file:///home/me/hf_imgcap-9.9.0-py3-none-any.whl", "archive_info": {}})
    elif how == "local git clone":
        _installed_as(site, {"url": "file:///home/me/hf-imgcap", "vcs_info": {"vcs": "git", "commit_id": "0123abc"}})
    elif how == "unreadable record":
        _installed_as(site, '{"url": "https://exa')
    else:  # the egg-info setuptools leaves in a checkout: no installer wrote it; every real install is hidden
        (site / "hf_imgcap.egg-info").mkdir(parents=True)
        (site / "hf_imgcap.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: hf-imgcap\nVersion: 9.9.0\n")
        monkeypatch.setattr("importlib.metadata.distributions", lambda **kwargs: iter(
            [metadata.PathDistribution(site / "hf_imgcap.egg-info")] if kwargs.get("name") == "hf-imgcap" else []))
    monkeypatch.syspath_prepend(str(site))
    space = write_space(str(saved[0]), tmp_path / "space", examples=[])
    assert (space / "requirements.txt").read_text().splitlines()[0] == "hf-imgcap==9.9.0"
    assert "cannot install" in caplog.text and "--hf-imgcap-requirement" in caplog.text
