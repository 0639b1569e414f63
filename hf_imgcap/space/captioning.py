# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What the Space's page shows for one image, computed without gradio: the caption, the top beams with their
scores, and where the model looked for each word (the heat-map panels and the classic figure, on one colour scale)."""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from hf_imgcap.evaluation.attention_maps import attention_figure, attention_panels, model_view_crop_fraction

# Upper bounds of the page's controls: what a shared CPU answers within seconds, not a limit of the model.
MAX_BEAMS = 10
MAX_NEW_TOKENS = 60
PANEL_SIZE = 224


@dataclass
class Beam:
    caption: str
    score: float  # generate's `sequences_scores`: log-probability / generated length ** length_penalty


@dataclass
class CaptionResult:
    caption: str
    tokens: list[str]  # the word pieces of the caption, one per attention map
    attentions: np.ndarray  # (len(tokens), h, w)
    beams: list[Beam]
    word_panels: list[Image.Image] = field(default_factory=list)  # one heat map per word piece, on one colour scale
    figure: Image.Image | None = None  # the image, then every word's panel: the figure `hf-imgcap caption --attention-map` writes


class SpaceCaptioner:
    """A loaded model and processor, and the one call the page makes."""

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor
        self.crop_fraction = model_view_crop_fraction(processor.image_processor)

    @classmethod
    def load(cls, model: str, device: str | None = None) -> "SpaceCaptioner":
        """From a saved model folder or a Hub repo id, through the installed package (no remote code runs)."""
        from hf_imgcap.cli import load_model_and_processor, resolve_device

        return cls(*load_model_and_processor(model, resolve_device(device)))

    def caption(self, image, num_beams: int = 3, max_new_tokens: int = 30, num_return_sequences: int = 3,
                name: str | None = None) -> CaptionResult:
        """Caption one image (a path, bytes, a PIL image or an array) with beam search.

        The image goes through the processor's own loading first (`processor.load_images`: the pixel and aspect
        limits are checked from the file's header, before anything is decoded), so an image the processor refuses
        never reaches the model. Raises `ValueError` naming the problem (with `name` for the image).
        """
        num_beams, max_new_tokens, num_return_sequences = check_settings(num_beams, max_new_tokens, num_return_sequences)
        loaded = self.processor.load_images([image], names=[name] if name else None)
        pixel_values = self.processor(images=loaded).pixel_values.to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                pixel_values=pixel_values, num_beams=num_beams, num_return_sequences=num_return_sequences,
                max_new_tokens=max_new_tokens, output_scores=True, output_attentions=True, return_dict_in_generate=True,
            )
        captions = self.processor.batch_decode(out.sequences)
        beams = [Beam(caption, score) for caption, score in zip(captions, self._sequence_scores(out))]
        tokens, attentions = self._words_and_attention(out, row=0)
        return CaptionResult(
            caption=captions[0], tokens=tokens, attentions=attentions, beams=beams,
            word_panels=attention_panels(loaded[0], tokens, attentions, panel_size=PANEL_SIZE, crop_fraction=self.crop_fraction,
                                         labels=False)[1:],  # the gallery writes each word under its panel
            figure=attention_figure(loaded[0], tokens, attentions, panel_size=PANEL_SIZE, crop_fraction=self.crop_fraction),
        )

    def _sequence_scores(self, out) -> list[float]:
        if getattr(out, "sequences_scores", None) is not None:
            return [float(score) for score in out.sequences_scores]
        # Greedy decoding has no beam score: the same quantity computed from the token log-probabilities.
        steps = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        length_penalty = self.model.generation_config.length_penalty or 1.0
        return [float(row.sum()) / (row.numel() ** length_penalty) for row in steps]

    def _words_and_attention(self, out, row: int) -> tuple[list[str], np.ndarray]:
        """The caption's word pieces (special tokens left out) and the attention map behind each."""
        generated = out.sequences[row, 1:]
        special = set(self.processor.tokenizer.all_special_ids)
        keep = [i for i, token in enumerate(generated.tolist()) if token not in special]
        side = math.isqrt(self.model.config.num_regions)
        tokens = self.processor.tokenizer.convert_ids_to_tokens(generated[keep].tolist())
        return tokens, out.attentions[row, keep].reshape(len(keep), side, side).float().cpu().numpy()


def check_settings(num_beams, max_new_tokens, num_return_sequences) -> tuple[int, int, int]:
    """The page's settings as integers within their bounds, or a `ValueError` naming the one that is not."""
    values = {}
    for name, value, high in (("beam size", num_beams, MAX_BEAMS), ("max new tokens", max_new_tokens, MAX_NEW_TOKENS),
                              ("beams shown", num_return_sequences, MAX_BEAMS)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a whole number, got {value!r}") from None
        if not number.is_integer() or not 1 <= number <= high:
            raise ValueError(f"{name} must be a whole number from 1 to {high}, got {value!r}")
        values[name] = int(number)
    beams, shown = values["beam size"], values["beams shown"]
    return beams, values["max new tokens"], min(shown, beams)  # beam search returns at most one caption per beam
