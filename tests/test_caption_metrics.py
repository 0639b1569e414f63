"""Caption metrics: COCO-caption conventions, agreement with pycocoevalcap and nltk, evaluate module, input checks."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import random
import re
import shutil
import socket
import stat
import warnings
from pathlib import Path

import pytest
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from hf_imgcap.evaluation.caption_metrics import (
    METRIC_MODULE_DIR,
    METRIC_NAMES,
    PUNCTUATIONS,
    compute_caption_metrics,
    load_caption_metric,
    normalize_for_scoring,
    tokenize_for_scoring,
)

from conftest import run_fresh_python

BLEU_KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]
NLTK_WEIGHTS = [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (1 / 3,) * 3, (0.25,) * 4]
VOCAB = "a dog cat runs on the grass red ball".split()  # small, so n-gram matches occur at every order
JAVA = shutil.which("java")


# --- helpers --------------------------------------------------------------------------------------------------


def random_corpus(seed: int, mode: str, n_images: int = 25) -> tuple[list[str], list[list[str]]]:
    """Seeded captions with 1-5 references of 5-12 words; hypotheses of >= 4 words (see the nltk test below).

    mode "short": hypotheses shorter than every reference of their image (corpus brevity penalty < 1);
    "long": longer than every reference (penalty 1); "mixed": either, or in between.
    Image 0's hypothesis copies a reference, so every n-gram order has a match at corpus level (pycocoevalcap
    smooths zero counts with tiny constants, nltk does not: without a match they would differ by design).
    Raw strings get random capitals and punctuation, so the normalisation path is exercised too.
    """
    rng = random.Random(seed)
    predictions, references = [], []
    for i in range(n_images):
        refs = [[rng.choice(VOCAB) for _ in range(rng.randint(5, 12))] for _ in range(rng.randint(1, 5))]
        shortest, longest = min(map(len, refs)), max(map(len, refs))
        kind = rng.choice(["short", "long", "any"]) if mode == "mixed" else mode
        length = {
            "short": rng.randint(4, shortest - 1),
            "long": rng.randint(longest + 1, longest + 6),
            "any": rng.randint(4, 14),
        }[kind]
        source = rng.choice(refs)
        hypothesis = [w if rng.random() < 0.4 else rng.choice(VOCAB) for w in (source * 3)[:length]]
        if i == 0:
            hypothesis = list(refs[0])
        predictions.append(noisy(hypothesis, rng))
        references.append([noisy(ref, rng) for ref in refs])
    return predictions, references


def noisy(words: list[str], rng: random.Random) -> str:
    """Join words like a human caption: maybe capitalised, maybe a comma, maybe a final period."""
    words = list(words)
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    if len(words) > 2 and rng.random() < 0.3:
        words[1] += ","
    return " ".join(words) + ("." if rng.random() < 0.5 else "")


def normalised_dicts(predictions, references):
    """The gts/res dicts pycocoevalcap's scorers take, built from our tokenisation (one call for all captions)."""
    tokens = iter(tokenize_for_scoring(list(predictions) + [r for refs in references for r in refs]))
    res = {i: [next(tokens)] for i in range(len(predictions))}
    gts = {i: [next(tokens) for _ in refs] for i, refs in enumerate(references)}
    return gts, res


def pycoco_bleu(predictions, references) -> list[float]:
    gts, res = normalised_dicts(predictions, references)
    with contextlib.redirect_stdout(io.StringIO()):
        return Bleu(4).compute_score(gts, res)[0]


def nltk_bleu(predictions, references) -> list[float]:
    gts, res = normalised_dicts(predictions, references)
    hypotheses = [res[i][0].split() for i in range(len(predictions))]
    refs = [[r.split() for r in gts[i]] for i in range(len(predictions))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a zero-match order would warn: the data must avoid that
        return corpus_bleu(refs, hypotheses, weights=NLTK_WEIGHTS)


def brevity_lengths(predictions, references) -> tuple[int, int]:
    """Corpus hypothesis length c and sum of closest reference lengths r (ties -> shorter)."""
    gts, res = normalised_dicts(predictions, references)
    c = r = 0
    for i in range(len(predictions)):
        n = len(res[i][0].split())
        ref_lengths = [len(ref.split()) for ref in gts[i]]
        c += n
        r += min(ref_lengths, key=lambda length: (abs(length - n), length))
    return c, r


# --- tokenisation ---------------------------------------------------------------------------------------------

# What pycocoevalcap's PTBTokenizer gives (Stanford PTB -lowerCase, then its PUNCTUATIONS dropped).
TOKENISATION_CASES = [
    ("A dog, running.", "a dog running"),
    ("  A\tBROWN   dog\n", "a brown dog"),
    ("Don't stop the dog's ball!", "do n't stop the dog 's ball"),  # clitics split
    ("A black-and-white photo of a t-shirt.", "a black-and-white photo of a t-shirt"),
    ("It costs 3.5 dollars... really -- yes; no: ok?", "it costs 3.5 dollars really yes no ok"),
    # -LRB- etc. are in PUNCTUATIONS but the output is lowercased first, so the bracket tokens stay
    ('He said "hi" to `her` (twice) {ok}', "he said hi to her -lrb- twice -rrb- -lcb- ok -rcb-"),
    ("\u201cCurly\u201d \u2018quotes\u2019 \u2026 pre\u2013war a\u2014b", "curly quotes pre war a b"),
    ("dog,cat -a dog-", "dog cat a dog"),
    ("50% [box]", "50 % -lsb- box -rsb-"),  # not in PUNCTUATIONS: kept as tokens
    ("They're here, we'll go; I've seen, she'd say, I'M ok", "they 're here we 'll go i 've seen she 'd say i 'm ok"),
    ("10,000 dogs in the 1990s!!! Really?!", "10,000 dogs in the 1990s !!! really ?!"),  # runs are not in the list
    ("caf\u00e9 \u6771\u4eac \U0001F600 dog", "caf\u00e9 \u6771\u4eac dog"),  # PTB deletes the emoji
    ("line\rbreak\u2028here", "line break here"),  # Java line breaks inside a caption are spaces
    ("...", ""),
    ("   ", ""),
    ("", ""),
]


@pytest.mark.skipif(JAVA is None, reason="the PTB tokenizer needs Java and `java` is not on PATH")
def test_tokenize_for_scoring_is_pycocoevalcaps_tokenisation():
    raw = [case[0] for case in TOKENISATION_CASES]
    assert tokenize_for_scoring(raw) == [case[1] for case in TOKENISATION_CASES]
    assert normalize_for_scoring(raw[2]) == TOKENISATION_CASES[2][1]


@pytest.mark.parametrize("raw, expected", TOKENISATION_CASES)
def test_the_python_approximation_on_everyday_cases(raw, expected):
    assert tokenize_for_scoring([raw], tokenizer="python") == [expected]


def test_punctuations_are_pycocoevalcaps_list():
    assert PUNCTUATIONS == frozenset(ptbtokenizer.PUNCTUATIONS)


# --- BLEU -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["short", "long", "mixed"])
@pytest.mark.parametrize("seed", range(5))
def test_bleu_matches_pycocoevalcap_and_nltk(seed, mode):
    predictions, references = random_corpus(seed, mode)
    c, r = brevity_lengths(predictions, references)
    if mode == "short":
        assert c < r  # the brevity penalty applies ...
    elif mode == "long":
        assert c > r  # ... or does not

    ours = compute_caption_metrics(predictions, references, meteor=False)
    bleu = [ours[k] for k in BLEU_KEYS]
    assert bleu == pytest.approx(pycoco_bleu(predictions, references), abs=1e-12)
    assert bleu == pytest.approx(nltk_bleu(predictions, references), abs=1e-9)
    assert all(0 < b < 1 for b in bleu)


def test_bleu_identical_caption_scores_one():
    predictions = ["a dog runs on the grass", "two cats sleep on a red sofa"]
    references = [["a brown dog is running", "a dog runs on the grass"], ["two cats sleep on a red sofa"]]
    scores = compute_caption_metrics(predictions, references, meteor=False)
    # pycocoevalcap's 1e-15 / 1e-9 smoothing constants leave it 1 - O(1e-9) short of 1.
    assert [scores[k] for k in BLEU_KEYS] == pytest.approx([1.0] * 4, abs=1e-8)
    assert scores["rouge_l"] == pytest.approx(1.0)


def test_punctuation_and_case_do_not_change_scores():
    references = [["A dog is running.", "a dog runs fast"], ["A cat, sitting on a mat."]]
    plain = compute_caption_metrics(["a dog running", "a cat sitting"], references, meteor=False)
    fancy = compute_caption_metrics(["A dog, running.", "A CAT... sitting!"], references, meteor=False)
    assert fancy == plain


def test_bleu_short_hypotheses_nltk_differs_and_pycocoevalcap_is_right():
    """nltk counts max(1, #n-grams) per hypothesis in the precision denominator; BLEU counts the real n-grams.

    Two perfect captions, one of 2 words: it has no 3- or 4-grams. Every n-gram there is matches and the
    lengths equal the references, so BLEU is 1 (pycocoevalcap). nltk adds a phantom unmatched 3-gram and
    4-gram for the short caption: p3 = 2/3, p4 = 1/2, BLEU-4 = (2/3 * 1/2) ** (1/4).
    """
    predictions, references = ["a dog runs fast", "a cat"], [["a dog runs fast"], ["a cat"]]
    ours = compute_caption_metrics(predictions, references, meteor=False)
    assert [ours[k] for k in BLEU_KEYS] == pytest.approx([1.0] * 4, abs=1e-8)
    assert ours["bleu_4"] == pytest.approx(pycoco_bleu(predictions, references)[3], abs=1e-12)
    nltk_scores = corpus_bleu([[r.split() for r in rs] for rs in references], [p.split() for p in predictions],
                              weights=NLTK_WEIGHTS)
    assert nltk_scores[2] == pytest.approx((2 / 3) ** (1 / 3))
    assert nltk_scores[3] == pytest.approx((1 / 3) ** (1 / 4))


def test_empty_predictions_are_scored_not_crashed():
    references = [["a dog runs on the grass"], ["a cat sits on a mat"], ["a red ball"]]
    some_empty = compute_caption_metrics(["", "a cat sits on a mat", "!!"], references, meteor=False)
    assert set(some_empty) == set(METRIC_NAMES) - {"meteor"}
    assert all(math.isfinite(v) for v in some_empty.values())
    all_empty = compute_caption_metrics(["", "", ""], references, meteor=False)
    assert all_empty == {k: 0.0 for k in some_empty}


# --- CIDEr-D and ROUGE-L --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_cider_and_rouge_match_pycocoevalcap(seed):
    predictions, references = random_corpus(seed, "mixed")
    ours = compute_caption_metrics(predictions, references, meteor=False)
    gts, res = normalised_dicts(predictions, references)
    assert ours["cider"] == pytest.approx(float(Cider().compute_score(gts, res)[0]), abs=1e-12)
    assert ours["rouge_l"] == pytest.approx(float(Rouge().compute_score(gts, res)[0]), abs=1e-12)
    assert ours["cider"] > 0 and 0 < ours["rouge_l"] < 1


# --- METEOR ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(JAVA is None, reason="METEOR needs Java and `java` is not on PATH")
def test_meteor_identical_captions_auto_detected():
    references = [["a dog runs on the grass", "a brown dog"], ["two cats sleep on a red sofa"]]
    scores = compute_caption_metrics(["a dog runs on the grass", "two cats sleep on a red sofa"], references)
    assert list(scores) == list(METRIC_NAMES)  # meteor=None found Java
    assert scores["meteor"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(JAVA is None, reason="METEOR needs Java and `java` is not on PATH")
def test_meteor_in_unit_interval():
    predictions, references = random_corpus(0, "mixed", n_images=10)
    scores = compute_caption_metrics(predictions, references, meteor=True)
    assert 0 < scores["meteor"] < 1


def test_meteor_false_omits_key():
    scores = compute_caption_metrics(["a dog runs"], [["a dog runs"]], meteor=False)
    assert list(scores) == [k for k in METRIC_NAMES if k != "meteor"]


def fake_java(tmp_path: Path, monkeypatch, script: str) -> None:
    """Put a `java` that runs `script` first on PATH (or, with an empty script, no java at all)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script:
        java = bin_dir / "java"
        java.write_text("#!/bin/sh\n" + script + "\n")
        java.chmod(java.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_meteor_java_missing(tmp_path, monkeypatch):
    fake_java(tmp_path, monkeypatch, "")
    assert "meteor" not in compute_caption_metrics(["a dog"], [["a dog"]])
    with pytest.raises(RuntimeError, match="METEOR failed: Java not found on PATH"):
        compute_caption_metrics(["a dog"], [["a dog"]], meteor=True)


def test_meteor_java_crash(tmp_path, monkeypatch, caplog):
    fake_java(tmp_path, monkeypatch, 'echo "Error: could not reserve heap" >&2; exit 1')
    with pytest.raises(RuntimeError, match="METEOR failed.*could not reserve heap"):
        compute_caption_metrics(["a dog"], [["a dog"]], meteor=True)
    with caplog.at_level(logging.WARNING):
        scores = compute_caption_metrics(["a dog"], [["a dog"]])
    assert "meteor" not in scores and "rouge_l" in scores
    assert "METEOR failed" in caplog.text


def test_meteor_java_hang(tmp_path, monkeypatch):
    fake_java(tmp_path, monkeypatch, f"exec {shutil.which('sleep')} 60")
    with pytest.raises(RuntimeError, match=r"METEOR failed: no answer from Java within 0.5 s"):  # (the PTB
        # tokenizer would hang on this java too: that is test_the_ptb_tokenizer_times_out)
        compute_caption_metrics(["a dog"], [["a dog"]], meteor=True, meteor_timeout=0.5, tokenizer="python")


# --- evaluate module ------------------------------------------------------------------------------------------


def test_metric_module_layout():
    assert (METRIC_MODULE_DIR / f"{METRIC_MODULE_DIR.name}.py").is_file()  # evaluate: file name = folder name


def test_evaluate_module_loads_offline_and_matches(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = load_caption_metric(cache_dir=str(tmp_path))
    assert type(metric).__name__ == "CaptionMetrics"
    assert "Microsoft COCO Captions" in metric.citation

    predictions, references = random_corpus(1, "mixed", n_images=8)
    expected = compute_caption_metrics(predictions, references, meteor=False)
    tokenizer = "ptb" if JAVA else "python (approximate PTB: not comparable with published scores)"
    assert metric.compute(predictions=predictions, references=references, meteor=False) == {**expected, "tokenizer": tokenizer}
    # the incremental API goes through the same arrow cache and _compute
    for p, refs in zip(predictions, references):
        metric.add(prediction=p, reference=refs)
    assert metric.compute(meteor=False) == {**expected, "tokenizer": tokenizer}
    approximate = metric.compute(predictions=predictions, references=references, meteor=False, tokenizer="python")
    assert approximate["tokenizer"] == "python (approximate PTB: not comparable with published scores)"


@pytest.mark.slow
def test_evaluate_module_works_without_hf_imgcap(tmp_path):
    """The folder as published on the Hub: copied out of the package and loaded with `evaluate.load(path)` in a
    process where `import hf_imgcap` fails, it gives exactly the scores of hf-imgcap's compute_caption_metrics."""
    folder = tmp_path / "caption_metrics"
    shutil.copytree(METRIC_MODULE_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    predictions, references = random_corpus(2, "mixed", n_images=8)
    predictions[0] = "A Dog's T-shirt, (red)!"  # the tokenisation must travel with the module too
    expected = compute_caption_metrics(predictions, references, meteor=False)
    code = f"""
import json
import evaluate
try:
    import hf_imgcap
    raise SystemExit("hf_imgcap should not be importable here")
except ImportError:
    pass
metric = evaluate.load({str(folder)!r}, cache_dir={str(tmp_path / "cache")!r})
scores = metric.compute(predictions={predictions!r}, references={references!r}, meteor=False)
try:
    metric.compute(predictions=["a dog"], references=[[" ... "]], meteor=False)
    raise SystemExit("an empty reference should be refused")
except ValueError as error:
    assert "references[0][0] is empty after tokenisation" in str(error), error
print("RESULT" + json.dumps({{"scores": scores, "name": type(metric).__name__}}))
"""
    result = run_fresh_python(code, cwd=tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.split("RESULT", 1)[1])
    assert got["name"] == "CaptionMetrics"
    assert got["scores"].pop("tokenizer") == ("ptb" if JAVA else got["scores"]["tokenizer"])
    assert got["scores"] == expected


def test_hf_imgcap_scores_with_the_modules_code():
    """One implementation: the package's functions are the evaluate module's, not a copy of them."""
    import importlib

    module = importlib.import_module("hf_imgcap.evaluation.metric_modules.caption_metrics.scoring")
    assert compute_caption_metrics is module.compute_caption_metrics
    assert normalize_for_scoring is module.normalize_for_scoring
    assert tokenize_for_scoring is module.tokenize_for_scoring


def test_metric_card_is_a_hub_metric_card():
    """README.md in evaluate's format: Space metadata (tags evaluate + metric, an app file that exists) and the
    sections of evaluate's metric cards, with an example that gives what it says."""
    from huggingface_hub import metadata_load

    readme = METRIC_MODULE_DIR / "README.md"
    metadata = metadata_load(readme)
    assert {"evaluate", "metric"} <= set(metadata["tags"])
    assert metadata["sdk"] == "gradio" and (METRIC_MODULE_DIR / metadata["app_file"]).is_file()
    assert metadata["title"] and metadata["description"].strip()
    text = readme.read_text()
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    for section in ("Metric Description", "How to Use", "Inputs", "Output Values", "Examples", "Limitations and Bias",
                    "Citation", "Further References"):
        assert section in headings, section
    requirements = (METRIC_MODULE_DIR / "requirements.txt").read_text().split()
    assert any(r.startswith("pycocoevalcap") for r in requirements) and any(r.startswith("evaluate") for r in requirements)
    scores = compute_caption_metrics(["A dog runs on the grass."], [["a dog runs on the grass", "a brown dog is running"]], meteor=False)
    assert scores["rouge_l"] == 1.0  # the card's example


# --- input validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        (["a", "b"], [["a"]], "got 2 predictions and 1 reference lists"),
        ([], [], "predictions is empty"),
        (["a dog", "a cat"], [["a dog"], []], r"references\[1\] is empty: image 1 has no reference captions"),
        (["a dog", None], [["a dog"], ["a cat"]], r"predictions\[1\] must be a str, got NoneType"),
        (["a dog"], [["a dog", 3]], r"references\[0\]\[1\] must be a str, got int"),
        (["a dog"], ["a dog"], r"references\[0\] must be a list of reference strings, got str"),
        (["a dog"], [["a dog", " ... "]], r"references\[0\]\[1\] is empty after tokenisation"),
        (["a dog"], [["a dog", "\U0001F600 !"]], r"references\[0\]\[1\] is empty after tokenisation"),
        (["a dog\ud800"], [["a dog"]], r"predictions\[0\] is not valid Unicode text"),
        ("a dog", [["a dog"]], "predictions must be a list, got str"),
    ],
)
def test_invalid_inputs(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        compute_caption_metrics(predictions, references, meteor=False)


def test_unknown_tokenizer_is_refused():
    with pytest.raises(ValueError, match=r"unknown tokenizer 'moses' \(expected one of ptb, python, or None\)"):
        compute_caption_metrics(["a dog"], [["a dog"]], meteor=False, tokenizer="moses")
