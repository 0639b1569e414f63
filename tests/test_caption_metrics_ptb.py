"""Caption scores equal pycocoevalcap's, tokeniser included, on everyday caption text.

The oracle is pycocoevalcap itself, used as the COCO caption evaluation server uses it: its `PTBTokenizer` (the
Stanford PTB tokenizer on Java) over the references and over the predictions, then `Bleu(4)`, `Meteor()`,
`Rouge()` and `Cider()`. The corpora are random: 1-7 references per image, written like crowd-sourced captions
(clitics, hyphens and dashes, quotes, numbers, punctuation runs, brackets, accents, CJK, emoji).
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import shutil
import time

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from hf_imgcap.evaluation.caption_metrics import compute_caption_metrics

JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(JAVA is None, reason="the Stanford PTB tokenizer needs Java and `java` is not on PATH")

BLEU_KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]

# --- a generator of caption-like text ----------------------------------------------------------------------------

WORDS = (
    "a an the man woman dog dogs girl boy child people two three black white brown red blue green young old "
    "is are runs running sits sitting plays playing jumps jumping stands walks on in at of with near into over "
    "grass water street beach snow ball bike field park wall shirt hat air rock crowd camera"
).split()
CLITICS = [
    "man's", "dog's", "isn't", "aren't", "doesn't", "can't", "won't", "they're", "we'll", "I've", "she'd", "I'm",
    "It's", "DON'T", "Man's", "dogs'", "James'", "dog\u2019s", "isn\u2019t", "it\u2019s", "they\u2019re",
    "o'clock", "cannot", "gonna", "y'all", "'tis",
]
HYPHENS = ["t-shirt", "black-and-white", "well-known", "x-ray", "--", "\u2014", "\u2013", "-", "---", "a--b", "mid-air"]
NUMBERS = ["3.5", "10,000", "1990s", "'90s", "2", "3:30", "1.5.2", "20%", "$5", "\u00bd", "No. 5"]
PUNCT_RUNS = ["!!!", "?!", "...", "\u2026", ",", ".", ";", ":", "?", "!", "..", "!?"]
NON_ASCII = ["caf\u00e9", "na\u00efve", "r\u00e9sum\u00e9", "\u6771\u4eac", "\u30bf\u30ef\u30fc", "\u0395\u03bb\u03bb\u03ac\u03b4\u03b1",
             "\u043f\u0440\u0438\u0432\u0435\u0442", "Stra\u00dfe", "\U0001F600", "\U0001F436", "\u00c9COLE"]
ABBREVIATIONS = ["Mr.", "Dr.", "U.S.", "etc.", "e.g.", "St."]


def _wrap(rng: random.Random, words: list[str]) -> list[str]:
    """Put a random span of words in quotes or brackets (straight, curly, round, square, curly braces)."""
    if len(words) < 2:
        return words
    start = rng.randrange(len(words) - 1)
    end = rng.randint(start + 1, len(words))
    left, right = rng.choice(['""', "''", "\u201c\u201d", "\u2018\u2019", "()", "[]", "{}", "``", "<>"])
    words = list(words)
    words[start] = left + words[start]
    words[end - 1] = words[end - 1] + right
    return words


def _decorate(rng: random.Random, word: str) -> str:
    """Sometimes replace or glue a word with one of the special kinds of text."""
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(CLITICS)
    if roll < 0.12:
        return rng.choice(HYPHENS)
    if roll < 0.15:
        return rng.choice(NUMBERS)
    if roll < 0.19:
        return word + rng.choice(PUNCT_RUNS)  # glued to the word, as people type it
    if roll < 0.21:
        return rng.choice(PUNCT_RUNS)
    if roll < 0.24:
        return rng.choice(NON_ASCII)
    if roll < 0.25:
        return rng.choice(ABBREVIATIONS)
    if roll < 0.30:
        return word.capitalize() if rng.random() < 0.7 else word.upper()
    return word


def random_caption(rng: random.Random, base: list[str] | None = None) -> str:
    """A caption-like string; from `base` (a list of words) with some words changed, so captions share n-grams."""
    if base is None:
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
    else:
        words = [w if rng.random() < 0.7 else rng.choice(WORDS) for w in base]
        if rng.random() < 0.3:
            words = words[: rng.randint(1, len(words))]
    words = [_decorate(rng, w) for w in words]
    if rng.random() < 0.25:
        words = _wrap(rng, words)
    if words and rng.random() < 0.6:
        words[0] = words[0][:1].upper() + words[0][1:]
    caption = " ".join(words) + rng.choice(["", "", ".", ".", " .", "!", "...", "?"])
    return caption.replace(" ", rng.choice([" ", " ", " ", "  ", "\t"]), 1) if rng.random() < 0.1 else caption


def random_corpus(seed: int, n_images: int) -> tuple[list[str], list[list[str]]]:
    """n_images images with 1-7 references each; each reference keeps at least one plain word (an all-punctuation
    reference is refused, see test_reference_empty_after_tokenisation_is_refused) and predictions may be anything,
    empty included."""
    rng = random.Random(seed)
    predictions, references = [], []
    for _ in range(n_images):
        base = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        refs = [random_caption(rng, base) + " " + rng.choice(WORDS) for _ in range(rng.randint(1, 7))]
        roll = rng.random()
        if roll < 0.03:
            prediction = rng.choice(["", "   ", "...", "!!!"])
        elif roll < 0.1:
            prediction = rng.choice(refs)
        else:
            prediction = random_caption(rng, base)
        predictions.append(prediction)
        references.append(refs)
    return predictions, references


# --- the oracle ----------------------------------------------------------------------------------------------------


def pycocoevalcap_scores(predictions, references, meteor=True) -> dict[str, float]:
    """What the COCO caption evaluation code gives: its PTBTokenizer, then its scorers."""
    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": p}] for i, p in enumerate(predictions)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores = dict(zip(BLEU_KEYS, map(float, bleu)))
    if meteor:
        scorer = Meteor()
        scores["meteor"] = float(scorer.compute_score(gts, res)[0])
        del scorer
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return scores


# --- equality with pycocoevalcap --------------------------------------------------------------------------------


def test_the_generator_writes_the_text_it_promises():
    predictions, references = random_corpus(0, 300)
    text = "\n".join(predictions + [r for refs in references for r in refs])
    for needle in ("'s", "n't", "\u2019", "t-shirt", "--", "\u2014", '"', "\u201c", "3.5", "10,000", "1990s", "!!!",
                   "?!", "...", "(", "[", "{", "caf\u00e9", "\u6771\u4eac", "\U0001F600"):
        assert needle in text, needle
    counts = {len(refs) for refs in references}
    assert counts == set(range(1, 8))
    assert "" in predictions or "   " in predictions


@needs_java
@pytest.mark.parametrize("seed", range(4))
def test_scores_equal_pycocoevalcap_on_random_corpora(seed):
    predictions, references = random_corpus(seed, 250)
    ours = compute_caption_metrics(predictions, references, meteor=False)
    oracle = pycocoevalcap_scores(predictions, references, meteor=False)
    assert ours.keys() == oracle.keys()
    for name in oracle:
        assert ours[name] == pytest.approx(oracle[name], abs=1e-9), name


@needs_java
@pytest.mark.parametrize("last", ["A bus with the letter B.", "nice :)", "so sad :(", "they 're", "bus no.", "A."])
def test_the_last_prediction_and_reference_tokenise_as_pycocoevalcap_tokenises_them(last):
    """PTB reads the end of its input differently from the end of a line ("b." stays one token at the very end):
    pycocoevalcap tokenises the references and the predictions as two inputs, so the last of each is at the end
    of its input, whatever follows it in a corpus."""
    predictions = ["A dog runs.", last]
    references = [["A dog is running.", "2 dogs run."], ["A dog.", last]]
    ours = compute_caption_metrics(predictions, references, meteor=False)
    oracle = pycocoevalcap_scores(predictions, references, meteor=False)
    for name in oracle:
        assert ours[name] == pytest.approx(oracle[name], abs=1e-9), name


@pytest.mark.slow
@needs_java
def test_meteor_equals_pycocoevalcap_on_a_random_corpus():
    """One corpus only: each METEOR run starts a JVM that loads its paraphrase table (tens of seconds)."""
    predictions, references = random_corpus(100, 150)
    ours = compute_caption_metrics(predictions, references, meteor=True)
    oracle = pycocoevalcap_scores(predictions, references, meteor=True)
    assert list(ours) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"]
    for name in oracle:
        assert ours[name] == pytest.approx(oracle[name], abs=1e-9), name


@needs_java
def test_clitics_score_as_in_the_papers():
    """The example of the task: PTB splits "isn't" into "is n't", so the hypothesis shares "a man 's dog is" and
    "red at all" with the reference; dropping the apostrophe ("isnt") would break every 4-gram across it."""
    predictions, references = ["a man's dog isn't red at all."], [["a man's dog is not red at all."]]
    ours = compute_caption_metrics(predictions, references, meteor=False)
    oracle = pycocoevalcap_scores(predictions, references, meteor=False)
    assert ours["bleu_4"] == pytest.approx(oracle["bleu_4"], abs=1e-12)
    assert ours["bleu_4"] == pytest.approx(0.597, abs=1e-3)


# --- the SCST reward ---------------------------------------------------------------------------------------------


@needs_java
def test_the_scst_reward_is_pycocoevalcap_cider_d_on_its_tokenisation():
    """With the scored images equal to the corpus, the reward of each caption is pycocoevalcap's per-image CIDEr-D
    on pycocoevalcap's tokens, clitics and brackets included (this corpus's last prediction is not one that PTB
    reads differently at the end of its input, where the reward tokenises every caption as followed by a line)."""
    from hf_imgcap.training.scst import CiderDReward

    predictions, references = random_corpus(7, 40)
    rewards = CiderDReward(references)(predictions, range(len(predictions)))
    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = PTBTokenizer().tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    expected = Cider().compute_score(gts, res)[1]
    assert rewards == pytest.approx(list(expected), abs=1e-9)


@needs_java
def test_the_scst_reward_tokenises_each_new_caption_once_in_one_java_call(monkeypatch):
    from hf_imgcap.training import scst

    calls = []

    def counting_ptb_tokenize(texts, **kwargs):
        calls.append(list(texts))
        return ptb_tokenize(texts, **kwargs)

    from hf_imgcap.evaluation.caption_metrics import ptb_tokenize

    reward = scst.CiderDReward([["A man's dog isn't red."], ["two dogs run"]])
    assert reward.tokenizer == "ptb"
    monkeypatch.setattr(scst, "ptb_tokenize", counting_ptb_tokenize)
    first = reward(["a man's dog", "two dogs", "a man's dog"], [0, 1, 1])
    second = reward(["two dogs", "a red dog"], [1, 0])
    assert [texts[:-1] for texts in calls] == [["a man's dog", "two dogs"], ["a red dog"]]  # and the line after them
    assert first[1] == second[0] and first[0] > 0


@needs_java
@pytest.mark.parametrize("caption", ["A bus with the letter B.", "nice :)", "they 're"])
def test_a_sampled_caption_gets_the_same_reward_wherever_it_falls_in_a_step(caption):
    """PTB reads the last line of its input differently; a reward must not depend on a caption's place in the batch."""
    from hf_imgcap.training.scst import CiderDReward

    references = [["a bus with the letter b on it", "nice smile :)", "they are happy"], ["two dogs run on the grass"]]
    first = CiderDReward(references)([caption, "two dogs run"], [0, 1])
    last = CiderDReward(references)(["two dogs run", caption], [1, 0])
    alone = CiderDReward(references)([caption], [0])
    assert first[0] == last[1] == alone[0]


# --- robustness of the Java path, and the fallback ---------------------------------------------------------------


@needs_java
def test_java_line_breaks_inside_a_caption_do_not_shift_the_captions_after_it():
    """pycocoevalcap replaces only "\\n"; Java also ends lines at \\r, \\x0b, \\x0c, \\u2028, \\u2029, so there every
    later caption lands on the wrong image. Here they are spaces: the scores equal pycocoevalcap's on the text with
    spaces instead."""
    breaks = ["\r", "\r\n", "\x0b", "\x0c", "\u2028", "\u2029", "\n"]
    predictions, references = random_corpus(3, 30)
    broken = [p.replace(" ", breaks[i % len(breaks)], 1) for i, p in enumerate(predictions)]
    broken_refs = [[r.replace(" ", breaks[(i + j) % len(breaks)], 1) for j, r in enumerate(refs)]
                   for i, refs in enumerate(references)]
    spaced = [p.replace(" ", "  ", 1) for p in predictions]
    spaced_refs = [[r.replace(" ", "  ", 1) for r in refs] for refs in references]
    ours = compute_caption_metrics(broken, broken_refs, meteor=False)
    assert ours == pytest.approx(pycocoevalcap_scores(spaced, spaced_refs, meteor=False), abs=1e-9)


@needs_java
def test_empty_and_blank_predictions_score_as_empty_captions_wherever_they_are():
    """An empty or blank prediction is an empty caption, also last in the file (where a missing final line
    would misalign); pycocoevalcap agrees."""
    references = [["a dog runs on the grass"], ["a cat sits on a mat"], ["a red ball"], ["two men"]]
    for predictions in (["", "a cat sits on a mat", "a red ball", "   "], ["a dog", "", "\t", ""]):
        ours = compute_caption_metrics(predictions, references, meteor=False)
        assert ours == pytest.approx(pycocoevalcap_scores(predictions, references, meteor=False), abs=1e-12)


def test_a_line_count_mismatch_from_java_is_an_error_not_a_misalignment(monkeypatch):
    from hf_imgcap.evaluation.metric_modules.caption_metrics import tokenization

    monkeypatch.setattr(tokenization, "_run_ptb_jar", lambda data, timeout: ("a dog\nruns\nextra", ""))
    with pytest.raises(RuntimeError, match="returned 3 lines for 2 captions"):
        tokenization.ptb_tokenize(["a dog", "runs"])
    with pytest.raises(RuntimeError, match="returned 3 lines for 1 captions"):  # the predictions' input
        compute_caption_metrics(["a dog"], [["runs"]], meteor=False)


def fake_java(tmp_path, monkeypatch, script: str) -> None:
    """Put a `java` that runs `script` first on PATH (or, with an empty script, no java at all)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script:
        java = bin_dir / "java"
        java.write_text("#!/bin/sh\n" + script + "\n")
        java.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_without_java_the_approximation_is_used_and_labelled(tmp_path, monkeypatch, caplog):
    from hf_imgcap.evaluation.caption_metrics import PTBTokenizerError, score_captions

    fake_java(tmp_path, monkeypatch, "")
    predictions, references = ["a man's dog isn't red"], [["a man's dog is not red"]]
    with caplog.at_level(logging.WARNING):
        result = score_captions(predictions, references)
    assert result.tokenizer == "python" and "not comparable" in result.tokenizer_label
    assert "NOT comparable with pycocoevalcap" in caplog.text and "Java not found on PATH" in caplog.text
    assert result.scores == compute_caption_metrics(predictions, references, tokenizer="python")
    with pytest.raises(PTBTokenizerError, match="Java not found on PATH"):
        compute_caption_metrics(predictions, references, tokenizer="ptb")


def test_a_failing_java_falls_back_with_its_error_in_the_warning(tmp_path, monkeypatch, caplog):
    from hf_imgcap.evaluation.caption_metrics import PTBTokenizerError, score_captions

    fake_java(tmp_path, monkeypatch, 'echo "Error: could not reserve heap" >&2; exit 1')
    with caplog.at_level(logging.WARNING):
        assert score_captions(["a dog"], [["a dog"]], meteor=False).tokenizer == "python"
    assert "could not reserve heap" in caplog.text
    with pytest.raises(PTBTokenizerError, match="exited with status 1: Error: could not reserve heap"):
        compute_caption_metrics(["a dog"], [["a dog"]], meteor=False, tokenizer="ptb")


def test_the_ptb_tokenizer_times_out(tmp_path, monkeypatch):
    from hf_imgcap.evaluation.caption_metrics import PTBTokenizerError, ptb_tokenize

    fake_java(tmp_path, monkeypatch, f"exec {shutil.which('sleep')} 60")
    started = time.perf_counter()
    with pytest.raises(PTBTokenizerError, match="no answer within 0.5 s"):
        ptb_tokenize(["a dog"], timeout=0.5)
    assert time.perf_counter() - started < 30


@needs_java
def test_the_java_run_writes_nothing_into_pycocoevalcap(monkeypatch):
    """pycocoevalcap writes its temporary file next to the jar, in its installed package (maybe read-only)."""
    from hf_imgcap.evaluation.caption_metrics import ptb_tokenize
    from hf_imgcap.evaluation.metric_modules.caption_metrics.tokenization import stanford_jar

    folder = stanford_jar().parent
    before = sorted(p.name for p in folder.iterdir())
    assert ptb_tokenize(["A man's dog."]) == ["a man 's dog"]
    assert sorted(p.name for p in folder.iterdir()) == before


# --- how close the approximation is ------------------------------------------------------------------------------


@needs_java
def test_the_python_approximation_agrees_with_java_on_random_captions():
    """Measured on captions from the generator above (seeds not used elsewhere): the approximation is not exact
    (PTB has many rare rules), so it stays labelled approximate; it must still agree on nearly every caption."""
    from hf_imgcap.evaluation.caption_metrics import approximate_ptb_tokenize, ptb_tokenize

    texts = []
    for seed in (500, 501):
        predictions, references = random_corpus(seed, 300)
        texts += predictions + [r for refs in references for r in refs]
    java = ptb_tokenize(texts)
    python = [approximate_ptb_tokenize(t) for t in texts]
    agreement = sum(j == p for j, p in zip(java, python)) / len(texts)
    assert agreement >= 0.995, [(t, j, p) for t, j, p in zip(texts, java, python) if j != p][:5]
