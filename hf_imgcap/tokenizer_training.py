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

import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> BertTokenizerFast:
    """An uncased WordPiece tokenizer whose vocabulary is the frequent words of `captions` (see module doc)."""
    normalizer, pre_tokenizer = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = Counter(
        word for caption in captions for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption))
    )
    characters = sorted({char for word in words for char in word})
    vocab = SPECIAL_TOKENS + characters + [f"##{char}" for char in characters]
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is too small: the captions need {len(vocab)} special and character tokens")
    known = set(vocab)
    frequent = sorted((word for word, count in words.items() if count >= min_frequency and word not in known),
                      key=lambda word: (-words[word], word))
    vocab += frequent[: vocab_size - len(vocab)]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
        # from_pretrained(folder): BertTokenizerFast(vocab_file=...) silently builds a 5-token vocabulary in v5.
        return BertTokenizerFast.from_pretrained(folder)
