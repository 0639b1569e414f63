# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Self-critical sequence training (Rennie et al., 2017): the second stage after cross-entropy training.

The model samples captions for each training image; each is rewarded with its CIDEr-D against the image's
references, minus a baseline (the reward of the model's own greedy caption, or the mean reward of the image's
other samples: the "new self-critical" variant of ruotianluo/self-critical.pytorch); the policy gradient
-advantage · Σ log p(sampled tokens) raises the probability of captions that beat the baseline.

- The reward is pycocoevalcap's CIDEr-D with the document frequencies of the training references, computed once
  (ruotianluo's "coco-train-idxs"), not of the batch being scored: a caption's reward never depends on the
  other captions of its batch. Text is tokenised exactly as the evaluation does (pycocoevalcap's PTB tokenizer on
  Java): the references once, the captions of a step in one Java call (starting Java is the cost), each distinct
  caption once per run.
- Sampling is `generate(do_sample=True, num_return_sequences=k, top_k=0)` on the cached features, without
  gradient; a teacher-forced forward in train mode over the sampled ids then gives their log-probabilities.
- After every SCST epoch the model captions the validation images; the epoch with the best validation CIDEr-D
  is kept (`checkpoints/scst_best`) and is the run's final model, if it beats the cross-entropy model it started
  from on the same validation images; otherwise the cross-entropy model stays the final model (a learning rate too
  high for the data can only make SCST worse, and the run must not ship that).
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs, cook_test
from tqdm.auto import tqdm

from hf_imgcap.evaluation.caption_metrics import PTB_TOKENIZER, approximate_ptb_tokenize, ptb_tokenize, tokenize_captions
from hf_imgcap.evaluation.generation import evaluate_captioner
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import ShowAttendTellForConditionalGeneration
from hf_imgcap.training.output_folder import save_pretrained_replacing

logger = logging.getLogger("train")

BASELINES = ("greedy", "mean")
_LINE_AFTER_THE_CAPTIONS = "a"
_MAX_REMEMBERED_CAPTIONS = 200_000  # tokenised captions kept by a reward (a few tens of MB)
SCST_BEST = "scst_best"  # folder under checkpoints/ holding the selected SCST model


# ---------------------------------------------------------------------------------------------- the reward
class _CorpusFrequencies(dict):
    """Document frequencies of a fixed corpus. An n-gram outside it counts 0 and is NOT added (pycocoevalcap's
    defaultdict would insert it), so scoring captions never changes the corpus."""

    def __missing__(self, ngram):
        return 0.0


class _FixedCorpusCiderScorer(CiderScorer):
    """pycocoevalcap's `CiderScorer` whose idf comes from a fixed corpus. Its `compute_cider` sets
    `ref_len = log(number of images being scored)`; here that stays log(corpus size), the idf's numerator."""

    def __init__(self, document_frequency, log_corpus_size, n, sigma):
        super().__init__(n=n, sigma=sigma)
        self.document_frequency = document_frequency
        self._log_corpus_size = log_corpus_size

    @property
    def ref_len(self):
        return self._log_corpus_size

    @ref_len.setter
    def ref_len(self, value):
        pass  # compute_cider's value from the scored batch is ignored


class CiderDReward:
    """CIDEr-D of captions against the references of their images, with the document frequencies of
    `references` (one list of reference captions per image; the training split's), computed once.

    `reward(captions, image_indices)` scores `captions[i]` against `references[image_indices[i]]` and returns one
    float per caption (pycocoevalcap's scale: a caption equal to all its references scores about 10 × its
    n-gram rarity, a caption sharing nothing scores 0). With the scored set equal to the corpus it is exactly
    pycocoevalcap's `Cider().compute_score` per image, on pycocoevalcap's PTB tokenisation.

    `tokenizer` is chosen once, here, as in `compute_caption_metrics` ("ptb", "python" or None: Java when it can
    run, else the approximation with a warning); `self.tokenizer` says which one every reward uses.
    """

    def __init__(self, references, n: int = 4, sigma: float = 6.0, tokenizer: str | None = None):
        self.n, self.sigma = n, sigma
        references = list(references)
        for index, refs in enumerate(references):
            if isinstance(refs, str) or len(refs) == 0:
                raise ValueError(f"references[{index}] must be a non-empty list of reference captions, got {refs!r}")
        if not references:
            raise ValueError("CiderDReward needs the references of at least one image")
        # Tokenised once, in one call; the tokenizer chosen here (Java, or the approximation without it) serves
        # every later reward, so rewards never mix two tokenisations.
        tokenized = tokenize_captions([ref for refs in references for ref in refs], tokenizer)
        self.tokenizer = tokenized.tokenizer
        tokens = iter(tokenized.texts)
        self.references = [cook_refs([next(tokens) for _ in refs], n) for refs in references]
        self._tokenized_captions: dict[str, str] = {}
        corpus = CiderScorer(n=n, sigma=sigma)
        corpus.crefs = self.references
        corpus.compute_doc_freq()
        self.document_frequency = _CorpusFrequencies(corpus.document_frequency)
        self.log_corpus_size = float(np.log(len(self.references)))

    def tokenize(self, captions) -> list[str]:
        """The scoring tokens of `captions`: the ones not seen before in one tokenizer call, the rest from memory."""
        new = [caption for caption in dict.fromkeys(captions) if caption not in self._tokenized_captions]
        if new:
            if len(self._tokenized_captions) + len(new) > _MAX_REMEMBERED_CAPTIONS:
                self._tokenized_captions.clear()
            if self.tokenizer == PTB_TOKENIZER:
                # PTB reads the last line of its input differently ("nice :)"): a line after the captions gives each
                # caption the same tokens wherever it falls in a step, so one text has one reward.
                tokenized = ptb_tokenize([*new, _LINE_AFTER_THE_CAPTIONS])[:-1]
            else:
                tokenized = [approximate_ptb_tokenize(caption) for caption in new]
            self._tokenized_captions.update(zip(new, tokenized))
        return [self._tokenized_captions[caption] for caption in captions]

    def __call__(self, captions, image_indices) -> np.ndarray:
        image_indices = [int(i) for i in image_indices]
        if len(captions) != len(image_indices):
            raise ValueError(f"got {len(captions)} captions for {len(image_indices)} image indices")
        if not captions:
            return np.zeros(0)
        scorer = _FixedCorpusCiderScorer(self.document_frequency, self.log_corpus_size, self.n, self.sigma)
        scorer.ctest = [cook_test(tokens, self.n) for tokens in self.tokenize(captions)]
        scorer.crefs = [self.references[i] for i in image_indices]
        return np.asarray(scorer.compute_cider(), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- the policy gradient
def baseline_rewards(rewards: torch.Tensor, baseline: str, greedy_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """The baseline of each sample, `(images, samples)` like `rewards`: the image's greedy caption's reward
    (`greedy`, needs `greedy_rewards` `(images,)`) or the mean reward of the image's other samples (`mean`)."""
    if baseline == "greedy":
        if greedy_rewards is None:
            raise ValueError("the greedy baseline needs the rewards of the greedy captions")
        return greedy_rewards.reshape(-1, 1).expand_as(rewards)
    if baseline == "mean":
        samples = rewards.shape[1]
        if samples < 2:
            raise ValueError("the mean baseline needs at least 2 samples per image (--scst_num_samples)")
        return (rewards.sum(dim=1, keepdim=True) - rewards) / (samples - 1)
    raise ValueError(f"unknown SCST baseline {baseline!r} (expected one of {', '.join(BASELINES)})")


def sampled_log_probs(model, features, sequences, eos_token_id: int, pad_token_id: int,
                      standardized: bool = False) -> torch.Tensor:
    """Σ log p(token | image, previous tokens) over each sequence's generated tokens up to and including its first
    end token (what follows is padding, not part of the caption), by one teacher-forced forward of `model` (with
    gradient, in whatever mode it is). `sequences` `(N, L)` start with the start token, as `generate` returns
    them; `features` hold N / images consecutive sequences per image: the cached features, or with `standardized`
    the decoder's input (`model.standardize_features` of them)."""
    generated = sequences[:, 1:]
    is_end = generated == eos_token_id
    real = (torch.cumsum(is_end.long(), dim=1) - is_end.long()) == 0  # up to and including the first end token
    outputs = model(
        input_ids=sequences[:, :-1].masked_fill(~real, pad_token_id),  # input position t predicts token t + 1
        attention_mask=real.long(),
        **{"image_embeds" if standardized else "encoder_hidden_states": features},
        return_logits=True,
    )
    log_probs = outputs.logits.float().log_softmax(dim=-1).gather(2, generated.unsqueeze(-1)).squeeze(-1)
    return (log_probs * real).sum(dim=1)


@dataclass
class ScstSettings:
    num_samples: int = 5
    baseline: str = "greedy"
    max_new_tokens: int = 20
    grad_clip: float = 0.0
    blind: bool = False


def scst_step(accelerator, model, optimizer, processor, reward: CiderDReward, features, image_indices,
              settings: ScstSettings) -> dict:
    """One optimizer step of self-critical training on a batch of images (`features` `(images, R, C)`, their
    indices into `reward`'s references). Returns the step's mean sampled reward, greedy reward (greedy baseline
    only) and loss."""
    unwrapped = accelerator.unwrap_model(model)  # generate() is not part of the DDP wrapper
    config = unwrapped.config
    if settings.blind:
        features = torch.zeros_like(features)
    k, images = settings.num_samples, features.shape[0]
    # Standardised (and whitened) once per image: the greedy captions, the samples and their log-probabilities share it.
    image_embeds = unwrapped.standardize_features(features)
    decoding = dict(image_embeds=image_embeds, num_beams=1, max_new_tokens=settings.max_new_tokens)
    greedy_captions, greedy_rewards = [], None
    if settings.baseline == "greedy":
        unwrapped.eval()
        greedy_captions = processor.batch_decode(unwrapped.generate(do_sample=False, **decoding))
    unwrapped.train()
    samples = unwrapped.generate(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, num_return_sequences=k, **decoding)
    sample_indices = np.repeat(np.asarray(image_indices), k)  # generate returns an image's samples consecutively
    # One reward call for the greedy and the sampled captions: one tokenizer run per step.
    all_rewards = reward(greedy_captions + processor.batch_decode(samples),
                         np.concatenate([np.asarray(image_indices)[: len(greedy_captions)], sample_indices]))
    all_rewards = torch.as_tensor(all_rewards, dtype=torch.float32)
    if greedy_captions:
        greedy_rewards = all_rewards[: len(greedy_captions)]
    rewards = all_rewards[len(greedy_captions):].view(images, k)
    advantage = (rewards - baseline_rewards(rewards, settings.baseline, greedy_rewards)).to(accelerator.device)

    log_probs = sampled_log_probs(model, image_embeds, samples, config.eos_token_id, config.pad_token_id, standardized=True)
    loss = -(advantage.flatten() * log_probs).mean()
    accelerator.backward(loss)
    if settings.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimizer.step()
    optimizer.zero_grad()
    return {"reward": rewards.mean().item(), "loss": loss.item(),
            "greedy_reward": None if greedy_rewards is None else greedy_rewards.mean().item()}


# ---------------------------------------------------------------------------------------------- the stage
@dataclass
class ScstResult:
    best_dir: Path  # the run's final model: the selected SCST epoch's, or the cross-entropy model if none beat it
    record: dict  # metrics.json's "scst" entry


def _mean_over_processes(accelerator, values: list[float]) -> float:
    totals = accelerator.reduce(torch.tensor([sum(values), len(values)], dtype=torch.float64, device=accelerator.device), "sum")
    return float(totals[0] / totals[1].clamp(min=1))


def self_critical_training(run, train_split, caches: dict, val_split, test_split, stop=None) -> ScstResult:
    """The SCST stage of train.py: start from the best cross-entropy model (`run.best_dir`), score it on the test
    split (the "before" row), train `--scst_epochs` epochs, select on validation CIDEr-D after each. A stop request
    (`preemption.StopRequest`: SIGTERM, Ctrl-C) ends the stage at the next step: the epoch it interrupts is not
    validated, and the best model so far is kept."""
    accelerator, args, processor = run.accelerator, run.args, run.processor
    started = time.perf_counter()
    unwrapped = accelerator.unwrap_model(run.model)
    if run.best_dir.is_dir():  # the selected cross-entropy model, not the last epoch's
        unwrapped.load_state_dict(ShowAttendTellForConditionalGeneration.from_pretrained(run.best_dir).state_dict())
    cross_entropy_test, _ = evaluate_captioner(unwrapped, processor, test_split, features=caches.get("test"), **run.evaluation)

    train_features = caches["train"]
    reward = CiderDReward([list(refs) for refs in train_split["captions"]])
    images = [int(i) for i in np.flatnonzero(train_features.valid)]
    loader = torch.utils.data.DataLoader(images, batch_size=args.per_device_train_batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    decoder_parameters = [p for n, p in unwrapped.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    optimizer = torch.optim.Adam(decoder_parameters, lr=args.scst_learning_rate, fused=True)
    optimizer, loader = accelerator.prepare(optimizer, loader)
    settings = ScstSettings(num_samples=args.scst_num_samples, baseline=args.scst_baseline,
                            max_new_tokens=args.eval_max_new_tokens, grad_clip=args.grad_clip, blind=args.blind)
    best_dir = run.best_dir.parent / SCST_BEST
    kept_dir, best_cider, history = best_dir, -1.0, []
    cross_entropy_validation_cider = None
    if run.best_dir.is_dir():  # the model to beat: SCST is kept only if an epoch of it does better on validation
        cross_entropy_validation, _ = evaluate_captioner(unwrapped, processor, val_split, features=caches.get("validation"),
                                                         meteor=False, **run.evaluation)
        cross_entropy_validation_cider = best_cider = cross_entropy_validation["cider"]
        kept_dir = run.best_dir
    run.log("SCST: %d epochs from the cross-entropy model (test CIDEr-D %.3f), CIDEr-D reward, %s baseline, %d samples per image",
            args.scst_epochs, cross_entropy_test["cider"], args.scst_baseline, args.scst_num_samples)
    stopped_by = None
    for epoch in range(args.scst_epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        stats = []
        for indices in tqdm(loader, desc=f"SCST epoch {epoch + 1}/{args.scst_epochs}", disable=not accelerator.is_main_process):
            indices = indices.cpu().numpy()
            features = train_features.batch(indices).to(accelerator.device)
            stats.append(scst_step(accelerator, run.model, optimizer, processor, reward, features, indices, settings))
            asked = float(stop is not None and stop.requested)
            if accelerator.reduce(torch.tensor(asked, device=accelerator.device), "max").item() > 0:  # every process stops together
                stopped_by = stop.signal_name or "signal"
                break
        if stopped_by:
            logger.warning("SCST stopped by %s in epoch %d (not validated): the run finishes with the best model so far",
                           stopped_by, epoch + 1)
            break
        metrics, _ = evaluate_captioner(run.model, processor, val_split, features=caches.get("validation"), meteor=False, **run.evaluation)
        entry = {"epoch": epoch + 1, "reward": round(_mean_over_processes(accelerator, [s["reward"] for s in stats]), 4)}
        if args.scst_baseline == "greedy":
            entry["greedy_reward"] = round(_mean_over_processes(accelerator, [s["greedy_reward"] for s in stats]), 4)
        entry |= {k: round(v, 4) for k, v in metrics.items()}
        history.append(entry)
        improved = metrics["cider"] > best_cider
        run.log("SCST epoch %d: mean sampled reward %.3f%s, validation CIDEr-D %.3f, BLEU-4 %.3f%s", epoch + 1, entry["reward"],
                f" (greedy {entry['greedy_reward']:.3f})" if "greedy_reward" in entry else "", metrics["cider"],
                metrics["bleu_4"], " (best so far)" if improved else "")
        accelerator.log({f"scst/{k}": v for k, v in entry.items() if k != "epoch"}, step=epoch + 1)
        if improved:
            best_cider, kept_dir = metrics["cider"], best_dir
            if accelerator.is_main_process:
                save_pretrained_replacing(unwrapped, best_dir)
                save_pretrained_replacing(processor, best_dir)
        accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started
    record = {"epochs": args.scst_epochs, "learning_rate": args.scst_learning_rate, "num_samples": args.scst_num_samples,
              "baseline": args.scst_baseline, "reward": "CIDEr-D, document frequencies of the training references",
              "history": history, "validation_best_cider": round(best_cider, 4), "stopped_by": stopped_by,
              "kept": "scst" if kept_dir == best_dir else "cross_entropy",
              "cross_entropy_test": cross_entropy_test, "seconds": round(seconds, 1)}
    if cross_entropy_validation_cider is not None:
        record["cross_entropy_validation_cider"] = round(cross_entropy_validation_cider, 4)
    if kept_dir == best_dir:
        run.log("SCST done in %.0f s: best validation CIDEr-D %.3f", seconds, best_cider)
    else:
        logger.warning("SCST done in %.0f s: no SCST epoch beat the cross-entropy model's validation CIDEr-D %.3f; the "
                       "cross-entropy model stays the final model (try a lower --scst_learning_rate)", seconds, best_cider)
    return ScstResult(best_dir=kept_dir, record=record)
