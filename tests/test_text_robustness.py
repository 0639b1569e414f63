"""Captions as people write them, through each local layout's parser, and property-based tests of the parsers.

Accounting rule tested throughout (see `LoadReport`): every non-blank line of a token file or CSV, and every
caption of a Karpathy JSON entry (an entry without captions counts once), is either kept as a caption or counted
exactly once in the report.
"""

import codecs
import csv
import io
import json
import logging
import unicodedata

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_imgcap.data.caption_datasets import (
    LoadReport,
    is_kaggle_header,
    load_caption_dataset,
    normalize_caption,
    read_kaggle_captions,
    read_karpathy_json,
    read_token_file,
)
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.data.training_data import tokenize_captions

from conftest import tiny_processor

SIZES = dict(num_train=6, num_val=2, num_test=2, image_size=32)
LONG = " ".join(["a very long caption about a dog"] * 50)  # 350 words: far over any caption length
# (as written in the file, as it must come out; None = rejected as empty)
CAPTIONS = [
    ("A café in Zürich .", "A café in Zürich ."),
    ("a naïve dog", "a naïve dog"),
    ("Cafe\u0301 written decomposed", "Caf\u00e9 written decomposed"),  # NFD -> NFC
    ("a dog 🐶 runs after a 🏃\u200d♂️", "a dog 🐶 runs after a 🏃\u200d♂️"),
    ("a dog &amp; a cat", "a dog & a cat"),
    ("he says &quot;sit&quot;", 'he says "sit"'),
    ("it&#39;s a dog", "it's a dog"),
    ("escaped twice &amp;amp; still one ampersand", "escaped twice & still one ampersand"),
    ("a, b, and c, with commas", "a, b, and c, with commas"),
    ("a\u00a0dog\tin  the\u2003park\u0007", "a dog in the park"),
    ("  \t \u00a0 ", None),
    ("\u200b\u200c\u200d\u2060", None),  # zero-width space / (non-)joiner / word joiner: nothing to read
    ("\u200e \u00ad\u200f \ufeff\u200b", None),  # direction marks, soft hyphen, BOM: format (Cf) characters only
    ("a\u200bdog", "a\u200bdog"),  # a real word next to one stays a caption
    (LONG, LONG),
]
EMPTY = [written for written, expected in CAPTIONS if expected is None]


# ---------------------------------------------------------------------------------------------- the three layouts
def add_captions(root, layout: str, captions: list[str]) -> tuple[str, list[str]]:
    """Append `captions` for the first training image in the layout's own format. Returns the image name and,
    per caption, where the loader's log must place it (file:line, or the JSON path)."""
    if layout == "flickr8k":
        name = (root / "Flickr_8k.trainImages.txt").read_text().split()[0]
        token_file = root / "Flickr8k.token.txt"
        first = len(token_file.read_bytes().splitlines()) + 1
        with open(token_file, "a", encoding="utf-8") as handle:
            handle.writelines(f"{name}#{5 + k}\t{caption}\n" for k, caption in enumerate(captions))
        return name, [f"Flickr8k.token.txt:{first + k}" for k in range(len(captions))]
    if layout == "kaggle":
        caption_file = root / "captions.txt"
        name = caption_file.read_text().splitlines()[1].split(",")[0]
        first = len(caption_file.read_bytes().splitlines()) + 1
        with open(caption_file, "a", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([name, caption] for caption in captions)  # quotes what needs quoting
        return name, [f"captions.txt:{first + k}" for k in range(len(captions))]
    json_file = root / "dataset_flickr8k.json"
    data = json.loads(json_file.read_text())
    entry = data["images"][0]
    first = len(entry["sentences"])
    entry["sentences"] += [{"raw": caption, "tokens": caption.split()} for caption in captions]
    json_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return entry["filename"], [f"dataset_flickr8k.json: images[0].sentences[{first + k}]" for k in range(len(captions))]


@pytest.mark.parametrize("layout", ["flickr8k", "kaggle", "karpathy"])
def test_real_world_captions_through_each_layout(layout, tmp_path, caplog):
    root = write_synthetic_flickr8k(tmp_path / layout, layout=layout, **SIZES)
    name, places = add_captions(root, layout, [written for written, _ in CAPTIONS])
    with caplog.at_level(logging.WARNING):
        dataset, report = load_caption_dataset(str(root), return_report=True)
    assert report.counts == {"empty_caption": len(EMPTY)}  # the whitespace / zero-width ones, with their line numbers:
    for place, (_, expected) in zip(places, CAPTIONS):
        if expected is None:
            assert f"{place}: empty caption for {name}; skipped" in caplog.text
    by_image = {image_id: captions for split in dataset.values() for image_id, captions in zip(split["image_id"], split["captions"])}
    assert by_image[name][5:] == [expected for _, expected in CAPTIONS if expected is not None]

    # Training examples: the long caption is cut at the configured maximum and counted, nothing else is.
    tokenizer = tiny_processor().tokenizer
    train = next(split for split in dataset.values() if name in split["image_id"])
    pairs, counts = tokenize_captions(train, tokenizer, max_length=40)
    assert counts["truncated"] == 1 and counts["captions"] == len(pairs) == sum(len(c) for c in train["captions"])
    lengths = [len(ids) for ids in pairs["input_ids"]]
    assert max(lengths) == 40 and lengths.count(40) >= 1
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in pairs["input_ids"])


def test_what_the_bert_vocabulary_makes_of_them():
    """BERT uncased strips accents and has no emoji: accented words train as their plain forms, emoji as [UNK]."""
    tokenizer = tiny_processor().tokenizer
    assert tokenizer.decode(tokenizer("A café in Zürich, naïve")["input_ids"], skip_special_tokens=True) == "a cafe in zurich, naive"
    assert tokenizer.unk_token_id in tokenizer("a dog 🐶")["input_ids"]


@pytest.mark.parametrize("line_end, bom", [(b"\r\n", True), (b"\r", False), (b"\r", True)])
def test_windows_and_old_mac_files_load_like_unix_ones(tmp_path, line_end, bom):
    """CRLF and a byte-order mark (Windows editors), a lone CR (classic Mac OS): the same dataset, no skips."""
    for layout in ("flickr8k", "kaggle", "karpathy"):
        root = write_synthetic_flickr8k(tmp_path / f"{layout}-unix", layout=layout, **SIZES)
        reference = load_caption_dataset(str(root))
        other = write_synthetic_flickr8k(tmp_path / f"{layout}-other", layout=layout, **SIZES)
        text_files = [p for p in other.iterdir() if p.suffix in (".txt", ".json")]
        for path in text_files:
            data = path.read_bytes().replace(b"\r\n", b"\n")
            path.write_bytes((codecs.BOM_UTF8 if bom else b"") + (data if path.suffix == ".json" else data.replace(b"\n", line_end)))
        loaded, report = load_caption_dataset(str(other), return_report=True)
        assert not report.counts, (layout, report.summary())
        for split in reference:
            assert loaded[split]["captions"] == reference[split]["captions"], layout


# ---------------------------------------------------------------------------------------------- normalize_caption
ENTITY_SOUP = st.lists(
    st.one_of(
        st.sampled_from(["&", "amp", ";", "&amp;", "&lt", "&#39;", "&#x", "3b;", "quot", "nbsp;", "&#", "\u037e", "\u0301",
                         "e", " ", "\t", "\n", "\u00a0", "\u2003", "\x00", "\x85", "\ufeff", "\u200b", "\r"]),
        st.characters(),
    ),
    max_size=24,
).map("".join)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), ENTITY_SOUP))
def test_normalize_caption_is_clean_and_idempotent(text):
    result = normalize_caption(text)
    assert result == result.strip() and "  " not in result
    assert all(c == " " or not c.isspace() for c in result)  # every whitespace run became one plain space
    assert not any(unicodedata.category(c) == "Cc" for c in result)
    assert normalize_caption(result) == result


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(categories=["L", "M", "N", "Zs"])))
def test_normalize_caption_keeps_the_words(text):
    words = " ".join(unicodedata.normalize("NFC", text).split())
    assert normalize_caption(text) == (words if any(c.isalnum() for c in words) else "")


@pytest.mark.parametrize("caption", ["...", "!!! ?", "\u0301\u0301", "- -", "\U0001f436", "( )"])
def test_a_caption_without_a_letter_or_digit_is_empty(caption):
    # Nothing to learn and, after the COCO tokenizer drops punctuation, nothing to score against.
    assert normalize_caption(caption) == ""
    assert normalize_caption(f"a dog {caption}") != ""


def test_normalize_caption_examples():
    for written, expected in CAPTIONS:
        assert normalize_caption(written) == (expected or "")


# ---------------------------------------------------------------------------------------------- parsers, fuzzed
IMAGE_NAMES = ["1000_a.jpg", "b.jpg", "c d.jpg", "é.jpg"]
KNOWN_KINDS = {"not_utf8", "no_tab", "no_image_name", "empty_caption", "missing_image", "bad_csv_row", "no_caption",
               "malformed_entry", "unknown_split", "image_without_captions", "malformed_caption"}
FILE_SETTINGS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])

caption_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["a dog runs", "  ", "", "&amp;", "café", "🐶", "\u00a0", '"quoted"', "a, b", "\t\t"]),
)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


def utf8(text: str) -> bytes:
    return text.encode("utf-8")


def file_bytes(lines: list[bytes], line_end: bytes, bom: bool, final_newline: bool) -> bytes:
    return (codecs.BOM_UTF8 if bom else b"") + line_end.join(lines) + (line_end if final_newline and lines else b"")


def text_lines(content: bytes) -> list[str | None]:
    """The file's lines as an editor shows them (LF, CRLF or CR), decoded; None for a line that is not UTF-8."""
    if content.startswith(codecs.BOM_UTF8):
        content = content[len(codecs.BOM_UTF8) :]
    decoded = []
    for raw in content.splitlines():
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(None)
    return decoded


def non_blank(lines: list[str | None]) -> list[str | None]:
    return [line for line in lines if line is None or line.strip()]


def assert_accounted(captions: dict, report: LoadReport, units: int):
    kept = [caption for values in captions.values() for caption in values]
    assert len(kept) + sum(report.counts.values()) == units, (len(kept), dict(report.counts), units)
    assert set(report.counts) <= KNOWN_KINDS
    assert all(caption and normalize_caption(caption) == caption for caption in kept)
    assert set(captions) <= set(IMAGE_NAMES)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One folder for all examples (hypothesis reruns a test body many times within one fixture instance)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images").mkdir()
    for name in IMAGE_NAMES:
        (root / "images" / name).write_bytes(b"")
    return root


token_lines = st.one_of(
    st.builds(
        lambda key, suffix, separator, caption: utf8(f"{key}{suffix}{separator}{caption}"),
        st.one_of(st.sampled_from(IMAGE_NAMES + ["", " ", "2258277193_586949ec62.jpg.1", "missing.jpg"]), st.text(max_size=8)),
        st.one_of(st.just(""), st.integers(0, 9).map("#{}".format), st.text(max_size=3)),
        st.sampled_from(["\t", "\t\t", " ", "", "#"]),
        caption_text,
    ),
    st.binary(max_size=30),
)


@FILE_SETTINGS
@given(st.lists(token_lines, max_size=12), line_ends, st.booleans(), st.booleans())
def test_token_file_parser_accounts_for_every_line(scratch, lines, line_end, bom, final_newline):
    content = file_bytes(lines, line_end, bom, final_newline)
    path = scratch / "Flickr8k.token.txt"
    path.write_bytes(content)
    report = LoadReport("fuzz", "flickr8k")
    captions = read_token_file(path, set(IMAGE_NAMES), report)
    assert_accounted(captions, report, units=len(non_blank(text_lines(content))))


def csv_row(fields: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)  # may quote, and may contain line breaks inside quotes
    return utf8(out.getvalue())


kaggle_lines = st.one_of(
    st.builds(lambda name, caption: csv_row([name, caption]), st.sampled_from(IMAGE_NAMES + ["missing.jpg", ""]), caption_text),
    st.lists(st.one_of(caption_text, st.sampled_from(IMAGE_NAMES)), max_size=4).map(csv_row),
    st.text(alphabet='ab,"\t é&;#\\', max_size=20).map(utf8),  # stray quotes and commas
    st.binary(max_size=30),
)


@FILE_SETTINGS
@given(st.lists(kaggle_lines, max_size=12), line_ends, st.booleans(), st.booleans(), st.booleans())
def test_kaggle_csv_parser_accounts_for_every_line(scratch, lines, line_end, bom, header, final_newline):
    content = file_bytes(([b"image,caption"] if header else []) + lines, line_end, bom, final_newline)
    path = scratch / "captions.txt"
    path.write_bytes(content)
    report = LoadReport("fuzz", "kaggle")
    captions = read_kaggle_captions(path, set(IMAGE_NAMES), report)
    lines_read = non_blank(text_lines(content))
    first = next((line for line in lines_read if line is not None), None)
    try:
        has_header = first is not None and is_kaggle_header(next(csv.reader([first])))
    except csv.Error:
        has_header = False
    assert_accounted(captions, report, units=len(lines_read) - has_header)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
sentence = st.one_of(
    st.builds(lambda raw: {"raw": raw, "tokens": []}, caption_text),  # mostly what the format has
    st.fixed_dictionaries({}, optional={"raw": st.one_of(caption_text, json_values)}),
    json_values,
)
plausible_entries = st.fixed_dictionaries(  # close to the real format, so that the per-caption paths are reached
    {
        "filename": st.sampled_from(IMAGE_NAMES + ["missing.jpg"]),
        "split": st.sampled_from(["train", "restval", "val", "test", "TRAIN"]),
        "sentences": st.lists(sentence, max_size=5),
    },
    optional={"filepath": st.sampled_from(["", "images", "nowhere"]), "cocoid": json_values},
)
chaotic_entries = st.fixed_dictionaries(
    {},
    optional={
        "filename": st.one_of(st.sampled_from(IMAGE_NAMES + ["missing.jpg", "", "x" * 300]), json_values),
        "split": st.one_of(st.sampled_from(["train", "val"]), json_values),
        "filepath": json_values,
        "sentences": st.one_of(st.lists(sentence, max_size=3), json_values),
    },
)
entries = st.one_of(plausible_entries, chaotic_entries, json_values)


def karpathy_units(images: list) -> int:
    """One per caption (sentence) of each entry; an entry without a non-empty sentence list counts once."""
    def units(entry):
        listed = entry.get("sentences") if isinstance(entry, dict) else None
        return len(listed) if isinstance(listed, list) and listed else 1

    return sum(units(entry) for entry in images)


@FILE_SETTINGS
@given(st.one_of(st.fixed_dictionaries({"images": st.lists(entries, max_size=6)}), json_values), st.booleans())
def test_karpathy_parser_accounts_for_every_caption(scratch, data, bom):
    path = scratch / "dataset_fuzz.json"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + utf8(json.dumps(data, ensure_ascii=False)))
    report = LoadReport("fuzz", "karpathy")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)):
        with pytest.raises(ValueError, match="not a Karpathy split file"):
            read_karpathy_json(path, scratch, None, report)
        return
    records = read_karpathy_json(path, scratch, None, report)
    captions = {}
    for split_records in records.values():
        for image_path, _, image_captions in split_records:
            captions.setdefault(image_path.name, []).extend(image_captions)
    assert_accounted(captions, report, units=karpathy_units(data["images"]))


@FILE_SETTINGS
@given(st.binary(max_size=200))
def test_every_parser_survives_arbitrary_bytes(scratch, content):
    for name, parse in (
        ("Flickr8k.token.txt", lambda path, report: read_token_file(path, set(IMAGE_NAMES), report)),
        ("captions.txt", lambda path, report: read_kaggle_captions(path, set(IMAGE_NAMES), report)),
        ("dataset_bytes.json", lambda path, report: read_karpathy_json(path, scratch, None, report)),
    ):
        path = scratch / name
        path.write_bytes(content)
        try:
            parse(path, LoadReport("fuzz", name))
        except ValueError as error:
            assert name.endswith(".json") and str(path) in str(error)  # the JSON as a whole is not a split file


def test_absurd_json_is_a_value_error(scratch):
    for text in ("[" * 100_000 + "]" * 100_000, '{"images": ' + "1" * 5000 + "}", '{"images": {"a": 1}}', "\ufeff{}"):
        path = scratch / "dataset_absurd.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match="not a Karpathy split file"):
            read_karpathy_json(path, scratch, None, LoadReport("fuzz", "karpathy"))


def test_the_same_broken_data_counts_the_same_in_every_layout(tmp_path):
    """An image missing from the folder and a whitespace-only caption: identical counts from all three parsers."""
    counts = {}
    for layout in ("flickr8k", "kaggle", "karpathy"):
        root = write_synthetic_flickr8k(tmp_path / layout, layout=layout, num_train=8, num_val=2, num_test=2, image_size=32)
        name, _ = add_captions(root, layout, ["   "])
        folder = next(p for p in root.iterdir() if p.is_dir())
        missing = sorted(p.name for p in folder.iterdir() if p.name != name)[0]
        (folder / missing).unlink()
        for split_file in root.glob("Flickr_8k.*Images.txt"):  # only the caption file should mention it
            split_file.write_text("".join(f"{n}\n" for n in split_file.read_text().split() if n != missing))
        _, report = load_caption_dataset(str(root), return_report=True)
        counts[layout] = dict(report.counts)
    assert counts["flickr8k"] == counts["kaggle"] == counts["karpathy"] == {"missing_image": 5, "empty_caption": 1}


# ---------------------------------------------------------------------------------------------- vocabulary too small
TINY_VOCAB_CAPTIONS = ["a dog runs on the grass", "two dogs play with a ball", "a girl in a pink dress",
                       "a man rides a bike", "the boy jumps into the water"]


def test_a_caption_vocabulary_too_small_for_every_character_still_trains_and_names_the_captions(caplog):
    """--tokenizer captions with a tiny --caption_vocab_size: keep going with the most frequent characters and
    say which captions now contain [UNK], instead of refusing the run."""
    from hf_imgcap.data.tokenizer_training import train_caption_tokenizer

    with caplog.at_level(logging.WARNING):
        tokenizer = train_caption_tokenizer(TINY_VOCAB_CAPTIONS, vocab_size=15)
    assert len(tokenizer) == 15
    assert "vocab_size=15" in caplog.text  # the setting at fault, named
    # The most frequent characters are kept ("a" is the most frequent): a caption of them is spelled without [UNK].
    assert tokenizer.unk_token_id not in tokenizer("a")["input_ids"]
    # Below the special tokens: those alone, every word [UNK], and still no refusal.
    tokenizer = train_caption_tokenizer(TINY_VOCAB_CAPTIONS, vocab_size=2)
    assert len(tokenizer) == 5 and tokenizer("a dog")["input_ids"] == [tokenizer.cls_token_id] + [tokenizer.unk_token_id] * 2 + [tokenizer.sep_token_id]
    caplog.clear()
    train = datasets.Dataset.from_dict({"image_id": ["img1.jpg", "img2.jpg"], "captions": [TINY_VOCAB_CAPTIONS[:3], TINY_VOCAB_CAPTIONS[3:]]})
    with caplog.at_level(logging.WARNING):
        pairs, counts = tokenize_captions(train, tokenizer, max_length=40)
    assert len(pairs) == 5 and counts["with_unknown_tokens"] == 5
    assert "5 of 5 captions contain [UNK]" in caplog.text
    assert "img1.jpg: 'a dog runs on the grass'" in caplog.text  # the first captions at fault, by image


def test_captions_the_vocabulary_cannot_spell_are_named_not_refused(caplog):
    """A given tokenizer (here BERT's) whose vocabulary lacks the captions' characters: all [UNK], still trains."""
    tokenizer = tiny_processor().tokenizer
    captions = [[f"{'🐶' * (k + 1)} 🐱"] for k in range(12)] + [["a dog on the grass"]]
    train = datasets.Dataset.from_dict({"image_id": [f"img{k}.jpg" for k in range(13)], "captions": captions})
    with caplog.at_level(logging.WARNING):
        pairs, counts = tokenize_captions(train, tokenizer, max_length=40)
    assert len(pairs) == 13 and counts["with_unknown_tokens"] == 12
    assert "12 of 13 captions contain [UNK]" in caplog.text
    assert "img0.jpg: '🐶 🐱'" in caplog.text and "img11.jpg" not in caplog.text  # the first few, not all 12


@pytest.mark.slow
def test_train_with_a_tiny_caption_vocabulary_finishes_and_says_why_captions_have_unk(tmp_path, caplog, tiny_encoder):
    from test_train import run, tiny_args

    data = write_synthetic_flickr8k(tmp_path / "data", num_train=8, num_val=2, num_test=2, image_size=64)
    argv = tiny_args(data, tiny_encoder, tmp_path / "out", tmp_path / "cache", "--num_epochs", "1")
    argv[argv.index("--caption_vocab_size") + 1] = "15"
    with caplog.at_level(logging.WARNING):
        results = run(argv)
    assert results["vocab_size"] == 15 and (tmp_path / "out" / "model.safetensors").is_file()
    assert "vocab_size=15 is too small" in caplog.text and "captions contain [UNK]" in caplog.text


# ---------------------------------------------------------------------------------------------- nothing to train on
# Text the tokenizer reduces to nothing: BERT's normaliser strips combining marks and drops control and format
# characters, so each of these would train as [CLS][SEP] alone.
NOTHING_TO_TOKENIZE = ["\u0301\u0301", "\u0300 \u0308\u0327", "\u200b\u2060", "\x00\x01", "\ufffd"]


def test_captions_the_tokenizer_reduces_to_nothing_are_counted_and_skipped(caplog):
    tokenizer = tiny_processor().tokenizer
    assert all(tokenizer(text)["input_ids"] == [tokenizer.cls_token_id, tokenizer.sep_token_id] for text in NOTHING_TO_TOKENIZE)
    train = datasets.Dataset.from_dict({
        "image_id": ["dog.jpg", "marks.jpg", "cat.jpg"],
        "captions": [["a dog runs", NOTHING_TO_TOKENIZE[0]], NOTHING_TO_TOKENIZE[1:], ["a cat", "\u0301a cat"]],
    })
    with caplog.at_level(logging.WARNING):
        pairs, counts = tokenize_captions(train, tokenizer, max_length=40)
    assert counts["empty_after_tokenization"] == len(NOTHING_TO_TOKENIZE) and counts["captions"] == 3
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in pairs["input_ids"]]
    assert decoded == ["a dog runs", "a cat", "a cat"] and pairs["image_index"] == [0, 2, 2]
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in pairs["input_ids"])
    assert f"left out {len(NOTHING_TO_TOKENIZE)} of 8 captions" in caplog.text and "dog.jpg" in caplog.text  # counted, named
    # A caption of text the vocabulary cannot spell is not empty: it stays, as [UNK].
    pairs, counts = tokenize_captions(datasets.Dataset.from_dict({"captions": [["🐶"]]}), tokenizer, max_length=40)
    assert counts["empty_after_tokenization"] == 0 and pairs["input_ids"] == [[101, tokenizer.unk_token_id, 102]]


def test_a_split_whose_captions_all_tokenize_to_nothing_is_refused_with_the_reason():
    train = datasets.Dataset.from_dict({"image_id": ["a.jpg"], "captions": [NOTHING_TO_TOKENIZE]})
    with pytest.raises(ValueError, match="no real tokens"):
        tokenize_captions(train, tiny_processor().tokenizer, max_length=40)
