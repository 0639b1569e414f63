"""Decoded captions are the text a caption scorer reads: WordPiece puts spaces around every punctuation mark, and
the COCO tokenizer would then read "t - shirt" as two words. Decoding must give back the words of the text."""

import random

import pytest

from hf_imgcap.evaluation.metric_modules.caption_metrics.tokenization import ptb_tokenize
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import detokenize_wordpieces

from conftest import tiny_processor

EXAMPLES = [
    ("a boy in a t-shirt jumps 3.5 feet", "a boy in a t-shirt jumps 3.5 feet"),
    ("10,000 people watch", "10,000 people watch"),
    ("a man's dog isn't red.", "a man's dog isn't red."),
    ("it's a 3-year-old's ball", "it's a 3-year-old's ball"),
    ("the dog (brown) runs!", "the dog (brown) runs!"),
    ("a rock-climbing man , a woman ; and a dog : running ...", "a rock-climbing man, a woman; and a dog: running..."),
    ("they're sure we've seen i'm", "they're sure we've seen i'm"),
    ('he said "hi" to the "big dog"', 'he said "hi" to the "big dog"'),
    ("the dogs' toys at 5 o'clock", "the dogs' toys at 5 o'clock"),
]


@pytest.mark.parametrize("text, expected", EXAMPLES)
def test_decoding_gives_back_the_text(text, expected):
    processor = tiny_processor()
    assert processor.decode(processor.tokenizer(text)["input_ids"]) == expected


def test_ids_past_the_tokenizers_vocabulary_decode_as_unknown_words():
    """A model's vocabulary may be larger than its tokenizer's (padded to a round size); an untrained or fine-tuned
    model can emit those ids."""
    processor = tiny_processor()
    ids = processor.tokenizer("a dog runs")["input_ids"]
    past = len(processor.tokenizer) + 7
    assert processor.batch_decode([ids[:2] + [past] + ids[2:]]) == ["a [UNK] dog runs"]


def test_detokenize_joins_what_wordpiece_split():
    assert detokenize_wordpieces("a t - shirt , 3 . 5 and 10 , 000 - - ok") == "a t-shirt, 3.5 and 10,000 -- ok"
    assert detokenize_wordpieces("the dog ' s ball isn ' t here") == "the dog's ball isn't here"
    assert detokenize_wordpieces("a man - a woman") == "a man-a woman"  # WordPiece cannot tell; hyphenated words are the rule


WORDS = ["a", "dog", "man's", "isn't", "t-shirt", "3.5", "10,000", "1990s", "rock-climbing", "they're", "(brown)",
         "runs!", "green,", "red.", "o'clock", "we'll", "two-year-old", "5", "x-ray", "well-dressed", "4.25", "1,500"]


def test_decoded_captions_tokenise_as_their_text_for_the_coco_scorer():
    rng = random.Random(0)
    processor = tiny_processor()
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(300)]
    decoded = [processor.decode(processor.tokenizer(text)["input_ids"]) for text in texts]
    assert ptb_tokenize(decoded) == ptb_tokenize(texts)
