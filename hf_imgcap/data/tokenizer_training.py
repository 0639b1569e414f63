# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""A WordPiece vocabulary built from the captions themselves (instead of BERT's 30,522 tokens).

The output layer over the vocabulary is the decoder's largest cost; Flickr8k's captions use a few thousand
words. The result is a normal `BertTokenizerFast` (uncased, [PAD]/[UNK]/[CLS]/[SEP]/[MASK]), so the processor,
`generate()` and the Hub files work exactly as with bert-base-uncased.

Why not `tokenizers`' WordPieceTrainer: its vocabulary changes from run to run on the same data (hash-map
iteration order breaks ties between merges: huggingface/tokenizers#1794), which breaks seeded reproducibility.
This builder is deterministic: every character seen (alone and as a `##` continuation, so any caption can be
spelled) and then the most frequent whole words (ties broken alphabetically), with BERT's own normaliser and
pre-tokeniser deciding what a word is.
"""

import logging
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import BertTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_NAMED_CAPTIONS = 5  # captions quoted in a warning; the count says how many more


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> BertTokenizerFast:
    """An uncased WordPiece tokenizer whose vocabulary is the frequent words of `captions` (see module doc).

    A `vocab_size` too small to spell every character seen keeps the most frequent characters and logs a
    warning: captions with the others then contain [UNK] (which `tokenize_captions` reports by caption)."""
    if vocab_size < len(SPECIAL_TOKENS):
        logger.warning("vocab_size=%d cannot hold the %d special tokens %s: using %d (every caption will be [UNK])",
                       vocab_size, len(SPECIAL_TOKENS), SPECIAL_TOKENS, len(SPECIAL_TOKENS))
        vocab_size = len(SPECIAL_TOKENS)
    normalizer, pre_tokenizer = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = Counter(
        word for caption in captions for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption))
    )
    character_counts = Counter()
    for word, count in words.items():
        for char in word:
            character_counts[char] += count
    characters = sorted(character_counts, key=lambda char: (-character_counts[char], char))  # most frequent first
    room = (vocab_size - len(SPECIAL_TOKENS)) // 2  # each character takes two tokens: "x" and "##x"
    if len(characters) > room:
        dropped = characters[room:]
        logger.warning(
            "vocab_size=%d is too small to spell every character of the captions (%d special + 2 × %d character tokens "
            "needed): kept the %d most frequent characters; %d others (%s) will be [UNK]. Raise --caption_vocab_size "
            "to at least %d to avoid this.", vocab_size, len(SPECIAL_TOKENS), len(characters), room, len(dropped),
            " ".join(repr(char) for char in dropped[:20]) + (" ..." if len(dropped) > 20 else ""),
            len(SPECIAL_TOKENS) + 2 * len(characters))
        characters = characters[:room]
    characters = sorted(characters)
    vocab = SPECIAL_TOKENS + characters + [f"##{char}" for char in characters]
    known = set(vocab)
    frequent = sorted((word for word, count in words.items() if count >= min_frequency and word not in known),
                      key=lambda word: (-words[word], word))
    vocab += frequent[: vocab_size - len(vocab)]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
        # from_pretrained(folder): BertTokenizerFast(vocab_file=...) silently builds a 5-token vocabulary in v5.
        return BertTokenizerFast.from_pretrained(folder)


def warn_about_unknown_tokens(tokenizer, captions: list[str], input_ids: list[list[int]], names: list[str]) -> int:
    """Log which captions the tokenizer could only write with [UNK] (the first few, by `names`, and how many in
    all); returns how many. Training goes on: those words are learnt as [UNK], the rest of each caption is fine."""
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return 0
    at_fault = [index for index, ids in enumerate(input_ids) if unknown in ids]
    if at_fault:
        examples = "; ".join(f"{names[index]}: {captions[index]!r}" for index in at_fault[:MAX_NAMED_CAPTIONS])
        logger.warning(
            "%d of %d captions contain %s (text the tokenizer's %d-token vocabulary cannot spell), e.g. %s%s",
            len(at_fault), len(captions), tokenizer.unk_token, len(tokenizer), examples,
            " ..." if len(at_fault) > MAX_NAMED_CAPTIONS else "")
    return len(at_fault)
