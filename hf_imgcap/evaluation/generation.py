# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Score a captioner by real generation on held-out images (never by teacher-forced outputs).

Works in one process or many: each process captions its share of the images, the captions are gathered
(`gather_for_metrics` drops the duplicates that even sharding adds), and every image is counted once.
"""

import logging

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hf_imgcap.evaluation.caption_metrics import score_captions, tokenize_captions

logger = logging.getLogger(__name__)


class CaptionMetrics(dict):
    """Metric name -> value (and `num_images`), plus `tokenizer`: which tokenizer scored them, "ptb" (pycocoevalcap's
    own, on Java) or "python" (its approximation, when Java could not run: not comparable with published scores)."""

    def __init__(self, values=(), tokenizer: str | None = None):
        super().__init__(values)
        self.tokenizer = tokenizer


class _ImageInputs(torch.utils.data.Dataset):
    """Index i -> (i, model input for image i): cached features, or pixels from the image through the processor."""

    def __init__(self, num_images, features=None, images=None, processor=None, blind=False):
        self.num_images = num_images
        self.features, self.images, self.processor, self.blind = features, images, processor, blind

    def __len__(self):
        return self.num_images

    def __getitem__(self, index):
        if self.features is not None:
            features = self.features[index]
            return index, torch.zeros_like(features) if self.blind else features
        return index, self.processor.image_pixel_values(self.images[index]["image"])[0]


@torch.no_grad()
def generate_captions(
    model,
    processor,
    split,
    *,
    features=None,
    accelerator: Accelerator | None = None,
    batch_size: int = 32,
    blind: bool = False,
    show_progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Caption every image of `split` (in order) with `model.generate(**generate_kwargs)`.

    `processor` is the model's `ShowAttendTellProcessor`: images become pixels and ids become text through it
    alone. Image inputs come from `features` (a `FeatureCache` of this split) or from the split's images.
    `blind=True` replaces the features with zeros: the image-blind baseline.
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    inputs = _ImageInputs(len(split), features, None if features is not None else split, processor, blind)
    loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(inputs, batch_size=batch_size))
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    input_name = "encoder_hidden_states" if features is not None else "pixel_values"
    pad = unwrapped.config.pad_token_id
    collected_indices, collected_sequences = [], []
    for indices, image_inputs in tqdm(loader, desc="captioning", disable=not (show_progress and accelerator.is_main_process)):
        sequences = unwrapped.generate(**{input_name: image_inputs.to(accelerator.device)}, **generate_kwargs)
        per_image = sequences.shape[0] // len(indices)
        sequences = sequences[::per_image]  # the best sequence of each image
        sequences = accelerator.pad_across_processes(sequences, dim=1, pad_index=pad)
        indices, sequences = accelerator.gather_for_metrics((indices.to(accelerator.device), sequences))
        collected_indices.append(indices.cpu())
        collected_sequences.extend(sequences.cpu())
    unwrapped.train(was_training)
    order = torch.cat(collected_indices).tolist()
    if sorted(order) != list(range(len(split))):
        raise RuntimeError(f"evaluation gathered {len(order)} captions for {len(split)} images")
    captions = [None] * len(split)
    # Exactly the text caption(), the pipeline and the CLI print: scores are of what users see.
    for index, caption in zip(order, processor.batch_decode(collected_sequences)):
        captions[index] = caption
    return captions


def scoreable_references(split) -> list[list[str]]:
    """Each image's references, without those the scoring tokenizer leaves no word of (characters PTB deletes, such
    as emoji or mathematical letters, pass a dataset's loader but cannot be scored); logged with their images."""
    references = [list(captions) for captions in split["captions"]]
    tokens = iter(tokenize_captions([ref for refs in references for ref in refs]).texts)
    kept = [[ref for ref in refs if next(tokens)] for refs in references]
    dropped = [(image_id, ref) for image_id, refs, keep in zip(_image_ids(split), references, kept) for ref in refs if ref not in keep]
    if dropped:
        without = sum(1 for keep in kept if not keep)
        logger.warning("%d reference captions have no word the scoring tokenizer keeps and are left out of the metrics%s: %s",
                       len(dropped), f" ({without} images have no reference left and are not scored)" if without else "",
                       "; ".join(f"image {image_id!r}: {ref!r}" for image_id, ref in dropped[:5]))
    return kept


def _image_ids(split) -> list:
    return list(split["image_id"]) if "image_id" in split.column_names else list(range(len(split)))


def evaluate_captioner(model, processor, split, *, meteor=None, **kwargs) -> tuple[CaptionMetrics, list[str]]:
    """Generate captions for `split` (see `generate_captions`) and score them against its references. Returns the
    metrics (with the tokenizer that scored them) and the captions (None for an image left out of the metrics)."""
    references = scoreable_references(split)  # before captioning: a reference that cannot be scored costs no work
    predictions = generate_captions(model, processor, split, **kwargs)
    predictions = [caption if refs else None for caption, refs in zip(predictions, references)]
    # An image the feature cache could not encode (a broken file, with verify_images off) has all-zero features:
    # its caption says nothing about the model, so it is left out of the metrics (its prediction is None).
    valid = getattr(kwargs.get("features"), "valid", None)
    if valid is not None and not valid.all():
        reasons = [entry["reason"] for entry in getattr(kwargs["features"], "invalid_images", [])]
        logger.warning("%d images left out of the metrics (no features): %s", int((~valid).sum()), "; ".join(reasons[:5]))
        predictions = [caption if valid[index] else None for index, caption in enumerate(predictions)]
    scored = [index for index, caption in enumerate(predictions) if caption is not None]
    result = score_captions([predictions[i] for i in scored], [references[i] for i in scored], meteor=meteor)
    return CaptionMetrics({**result.scores, "num_images": len(scored)}, result.tokenizer), predictions
