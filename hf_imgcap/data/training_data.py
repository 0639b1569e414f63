# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Training examples: every (image, caption) pair, tokenised once, with labels that ignore padding.

The image side comes either from a `FeatureCache` (the default: the frozen encoder never runs during
training) or from the image files through the processor (to fine-tune the encoder).
"""

import logging

import torch
from datasets import Dataset

from hf_imgcap.data.tokenizer_training import MAX_NAMED_CAPTIONS, warn_about_unknown_tokens

logger = logging.getLogger(__name__)


def tokenize_captions(split: Dataset, tokenizer, max_length: int, valid_images=None) -> tuple[Dataset, dict]:
    """One row per (image, caption): `image_index` and `input_ids` ([CLS] caption [SEP]), and counts.

    Captions longer than `max_length` tokens are cut (keeping the final [SEP]) and counted in the log.
    Pairs whose image is marked invalid (e.g. it failed to decode while caching) are left out, counted.
    Captions the tokenizer reduces to no tokens at all (only combining marks, control or zero-width characters,
    whatever its normaliser drops) would train as [CLS][SEP] alone: they are left out, counted and named.
    Captions the tokenizer can only write with [UNK] are kept, counted and named in a warning.
    """
    image_indices, captions = [], []
    skipped = 0
    image_ids = split["image_id"] if "image_id" in split.column_names else [f"image #{i}" for i in range(len(split))]
    for index, image_captions in enumerate(split["captions"]):
        if valid_images is not None and not valid_images[index]:
            skipped += len(image_captions)
            continue
        image_indices.extend([index] * len(image_captions))
        captions.extend(image_captions)
    if skipped:
        logger.warning("left out %d captions of images that could not be used", skipped)
    if not captions:
        raise ValueError("no (image, caption) pairs left to train on")
    encoded = tokenizer(captions, add_special_tokens=True, truncation=False, return_attention_mask=False,
                        return_special_tokens_mask=True)
    image_indices, captions, encoded, empty = _drop_captions_without_tokens(
        image_indices, captions, encoded["input_ids"], encoded["special_tokens_mask"], image_ids)
    with_unknown = warn_about_unknown_tokens(tokenizer, captions, encoded, [image_ids[i] for i in image_indices])
    truncated = 0
    for row, ids in enumerate(encoded):
        if len(ids) > max_length:
            encoded[row] = ids[: max_length - 1] + [ids[-1]]
            truncated += 1
    if truncated:
        logger.warning("%d of %d captions were longer than %d tokens and were truncated", truncated, len(encoded), max_length)
    pairs = Dataset.from_dict({"image_index": image_indices, "input_ids": encoded})
    return pairs, {"captions": len(encoded), "truncated": truncated, "left_out_invalid_image": skipped,
                   "empty_after_tokenization": empty, "with_unknown_tokens": with_unknown}


def _drop_captions_without_tokens(image_indices: list, captions: list, input_ids: list, special_tokens_mask: list,
                                  image_ids: list) -> tuple[list, list, list, int]:
    """Leave out the captions whose encoding holds only the special tokens the tokenizer added ([CLS] [SEP]):
    decided on the tokenizer's own output, so whatever its normaliser drops counts, and [UNK] (a real position in
    the caption) does not. Returns the kept image indices, captions and ids, and how many were left out."""
    empty = [row for row, mask in enumerate(special_tokens_mask) if all(mask)]
    if not empty:
        return image_indices, captions, input_ids, 0
    examples = "; ".join(f"{image_ids[image_indices[row]]}: {captions[row]!r}" for row in empty[:MAX_NAMED_CAPTIONS])
    logger.warning("left out %d of %d captions that the tokenizer reduces to no tokens at all (e.g. only combining "
                   "marks, control or zero-width characters), e.g. %s%s", len(empty), len(captions), examples,
                   " ..." if len(empty) > MAX_NAMED_CAPTIONS else "")
    if len(empty) == len(captions):
        raise ValueError(f"no (image, caption) pairs left to train on: all {len(captions)} captions have no real "
                         f"tokens after tokenization (e.g. {examples})")
    left_out = set(empty)
    kept = [row for row in range(len(captions)) if row not in left_out]
    return ([image_indices[row] for row in kept], [captions[row] for row in kept], [input_ids[row] for row in kept],
            len(empty))


class CaptionPairs(torch.utils.data.Dataset):
    """(image, caption) pairs for a DataLoader. Give `features` (a `FeatureCache`) to read cached encoder
    output, or `images` (the split's `Dataset`) with the model's `processor` to return `pixel_values`. A
    `StandardizedFeatureCache` gives the decoder's input itself, as `image_embeds` (its `model_input`)."""

    def __init__(self, pairs: Dataset, features=None, images: Dataset | None = None, processor=None):
        if (features is None) == (images is None):
            raise ValueError("give exactly one of features= (a FeatureCache) or images= (a Dataset)")
        self.image_index = list(pairs["image_index"])
        self.input_ids = list(pairs["input_ids"])
        self.features = features
        self.images = images
        self.processor = processor

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, index):
        image_index = self.image_index[index]
        item = {"input_ids": self.input_ids[index], "image_index": image_index}
        if self.features is not None:
            item[getattr(self.features, "model_input", "encoder_hidden_states")] = self.features[image_index]
        else:
            item["pixel_values"] = self.processor.image_pixel_values(self.images[image_index]["image"])[0]
        return item


def collate_captions(items: list, pad_token_id: int = 0) -> dict:
    """Pad to the longest caption of this batch (not a global maximum); labels are -100 on padding."""
    longest = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        ids = torch.as_tensor(item["input_ids"], dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": input_ids.masked_fill(attention_mask == 0, -100),
        "image_index": torch.tensor([item["image_index"] for item in items]),
    }
    for key in ("encoder_hidden_states", "image_embeds", "pixel_values"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch
