"""The demo wing: `python train.py --demo` trains through `train()` like any user, then scores what the runs wrote
(content accuracy, the linear probe, attention grounding) into its own report; training records none of it."""

import json
import re

import pytest

from hf_imgcap.demo.content_accuracy import SceneVocabulary, caption_words, score_caption
from hf_imgcap.demo.presets import DEMO_REPORT_FILE
from hf_imgcap.demo.run import run_demo

from test_train import data, tiny_args, train_script  # noqa: F401 (data is a fixture)


@pytest.mark.slow
def test_the_demo_scores_the_saved_runs_for_content_and_prints_its_tables(data, tmp_path, capsys, tiny_encoder):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    argv = ["--demo", *tiny_args(data, tiny_encoder, out, cache, "--num_epochs", "2", "--scst_epochs", "1")]
    model_args, data_args, args = train_script.parse_args(argv)
    assert model_args.whiten_features and args.scst_baseline == "mean"  # the demo's presets
    result = run_demo(train_script.train, model_args, data_args, args)

    # Training recorded what any run records; the demo's scores are in its own report.
    for folder in (out, out / "blind_baseline"):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert "content_accuracy" not in metrics and "feature_probe" not in metrics
    report = json.loads((out / DEMO_REPORT_FILE).read_text())
    assert report == result["report"]
    scenes = json.loads((data / "scenes.json").read_text())
    vocabulary = SceneVocabulary.from_scenes(scenes)
    captions = json.loads((out / "test_captions.json").read_text())
    test_scenes = [scenes[example["image_id"]] for example in captions]
    assert {len(scene["objects"]) for scene in test_scenes} == {1, 2}  # the fixture has both kinds of test image
    # Computed from the saved test captions: each caption scored against its image's scene, every object counted.
    verdicts = [score_caption(example["caption"], scene, vocabulary) for example, scene in zip(captions, test_scenes)]
    content = report["with_images"]["content_accuracy"]
    assert content["color"]["total"] == content["shape"]["total"] == sum(len(s["objects"]) for s in test_scenes)
    assert content["color"]["correct"] == sum(sum(v.color) for v in verdicts)
    assert content["shape"]["correct"] == sum(sum(v.shape) for v in verdicts)
    assert content["relation"]["total"] == sum(len(s["objects"]) == 2 for s in test_scenes)
    assert content["relation"]["correct"] == sum(v.relation is True for v in verdicts)
    assert content["num_images"] == 5
    # The linear probe of the same features, scored on the test images each task applies to.
    probe = report["with_images"]["feature_probe"]
    assert probe["relation"]["total"] == content["relation"]["total"]
    assert probe["color"]["total"] == probe["shape"]["total"] == content["one_object"]["color"]["total"]
    for task in ("color", "shape", "relation"):
        assert probe[task]["accuracy"] is None or 0 <= probe[task]["accuracy"] <= 1
    # Where the model looked when it named a colour: one entry per colour word naming an object of a two-object image.
    colour_words = sum(word in {o["color"] for o in scene["objects"]}
                       for example, scene in zip(captions, test_scenes) if len(scene["objects"]) == 2
                       for word in caption_words(example["caption"]))
    grounding = report["with_images"]["attention_grounding"]
    if colour_words == 0:
        assert grounding is None
    else:
        assert grounding["colour_words"] == colour_words and grounding["half_share"] == 0.5
        assert 0 <= grounding["on_named_object"] + grounding["on_other_object"] <= 1 + 1e-6
    # The blind baseline: scored the same way; zero features have nothing to whiten, so its model skips the product.
    assert "content_accuracy" in report["blind"] and "feature_probe" not in report["blind"]
    configs = {name: json.loads((folder / "config.json").read_text()) for name, folder in (("out", out), ("blind", out / "blind_baseline"))}
    assert configs["out"]["whiten_features"] is True and configs["blind"]["whiten_features"] is False

    printed = capsys.readouterr().out
    assert "with images, cross-entropy" in printed and "with images, + SCST" in printed and "image-blind baseline" in printed
    table = printed[printed.index("content accuracy (test split)"):].splitlines()
    assert table[0].split()[-3:] == ["colour", "shape", "relation"]
    assert [line[:28].strip() for line in table[1:4]] == ["with images", "image-blind baseline", "linear probe (features)"]
    assert len(re.findall(r": '.*' \[colour (right|wrong).*, shape (right|wrong)", printed)) == 4  # the examples say if they are right


def test_training_and_the_model_never_import_the_demo():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "hf_imgcap"
    for path in [*package.glob("training/*.py"), *package.glob("models/**/*.py"), *package.glob("data/*.py"),
                 *package.glob("evaluation/*.py"), package / "hub.py", package / "cli.py"]:
        tree = ast.parse(path.read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in imported if name.startswith("hf_imgcap.demo")], path
    train_py = (package.parent / "train.py").read_text()
    body = train_py[train_py.index("def train("):train_py.index("# ---", train_py.index("def train("))]
    assert "demo" not in body and "scenes" not in body
