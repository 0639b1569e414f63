"""Feature whitening (with the standardisation before it) runs once per image in training, not once per caption.

With `whiten_features`, the decoder's input of every cached image is computed once and kept next to the feature cache
(keyed by the model's statistics); the training and validation batches read it as `image_embeds`, and the results are
those of standardising each caption's features, up to the rounding of the cache's fp16 format.
"""

import concurrent.futures
import importlib.util

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import BertTokenizerFast

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration, ShowAttendTellProcessor
from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.data.feature_cache import FeatureCache, build_feature_cache
from hf_imgcap.data.standardized_features import StandardizedFeatureCache, standardized_feature_cache
from hf_imgcap.data.training_data import CaptionPairs, collate_captions, tokenize_captions
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import default_image_processor
from hf_imgcap.training.scst import CiderDReward, ScstSettings, scst_step

from conftest import REPO_ROOT, TINY_IMAGE_SIZE, tiny_config, tiny_model, tiny_processor

# The decoder's input is kept in the cache's fp16 format: equal to the per-caption path up to fp16 rounding.
FP16_TOLERANCE = dict(rtol=2e-3, atol=2e-3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_synthetic_flickr8k(tmp_path_factory.mktemp("data") / "ds", num_train=6, num_val=2, num_test=2, image_size=48)
    return load_caption_dataset(str(root))


@pytest.fixture
def whitened(dataset, tmp_path):
    """A tiny whitening model, its processor and the feature cache of the training images."""
    model, processor = tiny_model(whiten_features=True), tiny_processor()
    cache = build_feature_cache(model, processor, dataset["train"], tmp_path / "cache", batch_size=4, num_workers=0,
                                show_progress=False)
    return model, processor, cache


def count_standardized_images(model, monkeypatch) -> list:
    """Record how many images go through the model's standardisation (and whitening) from now on."""
    counted, standardize = [], model._standardize
    monkeypatch.setattr(model, "_standardize", lambda features: counted.append(len(features)) or standardize(features))
    return counted


def test_the_kept_decoder_input_of_each_image_is_its_standardised_whitened_features(whitened):
    model, _, cache = whitened
    kept = standardized_feature_cache(cache, model)
    assert isinstance(kept, StandardizedFeatureCache) and kept.model_input == "image_embeds"
    assert kept.features.dtype == np.float16 and kept.features.shape == cache.features.shape
    assert np.array_equal(kept.valid, cache.valid)
    with torch.no_grad():
        expected = model.standardize_features(cache.batch(range(len(cache))).float())
    torch.testing.assert_close(kept.batch(range(len(cache))).float(), expected, **FP16_TOLERANCE)
    torch.testing.assert_close(kept[3].float(), expected[3], **FP16_TOLERANCE)


def test_the_decoder_input_is_computed_once_and_never_reused_for_other_statistics(whitened, monkeypatch):
    model, _, cache = whitened
    first = standardized_feature_cache(cache, model)
    counted = count_standardized_images(model, monkeypatch)
    again = standardized_feature_cache(cache, model)
    assert counted == [] and again.folder == first.folder  # read, not computed again
    # Other statistics (another whitening matrix): another folder, holding the new model's input.
    channels = model.config.encoder_hidden_size
    model.set_feature_statistics(model.feature_mean, model.feature_std, torch.eye(channels) * 0.5)
    other = standardized_feature_cache(cache, model)
    assert other.folder != first.folder and sum(counted) == len(cache)
    with torch.no_grad():
        expected = model.standardize_features(cache.batch(range(len(cache))).float())
    torch.testing.assert_close(other.batch(range(len(cache))).float(), expected, **FP16_TOLERANCE)


def test_an_unfinished_decoder_input_folder_is_built_again(whitened):
    model, _, cache = whitened
    kept = standardized_feature_cache(cache, model)
    (kept.folder / "meta.json").unlink()  # as a build killed before it marked the folder complete leaves it
    rebuilt = standardized_feature_cache(cache, model)
    assert rebuilt.folder == kept.folder and rebuilt.meta["complete"]
    assert rebuilt.batch(range(len(cache))).abs().sum() > 0


def test_processes_sharing_a_cache_compute_the_decoder_input_once(whitened, monkeypatch):
    """The processes of a run (played by threads) all call for the kept input: one computes it, the others read it."""
    model, _, cache = whitened
    counted = count_standardized_images(model, monkeypatch)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        kept = list(pool.map(lambda _: standardized_feature_cache(cache, model, chunk_size=2), range(3)))
    assert sum(counted) == len(cache) and len({result.folder for result in kept}) == 1
    for result in kept:
        torch.testing.assert_close(result.batch(range(len(cache))), kept[0].batch(range(len(cache))), rtol=0, atol=0)


def training_losses(model, pairs, features, steps=3):
    """The losses of `steps` Adam steps on the pairs in order, reading the images from `features`."""
    loader = torch.utils.data.DataLoader(CaptionPairs(pairs, features=features), batch_size=8, collate_fn=collate_captions)
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses, batches = [], []
    for batch, _ in zip(loader, range(steps)):
        batch.pop("image_index")
        batches.append(batch)
        loss = model(**batch, return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, batches


def test_training_on_the_kept_decoder_input_gives_the_per_caption_results(dataset, whitened):
    model, processor, cache = whitened
    pairs, _ = tokenize_captions(dataset["train"], processor.tokenizer, max_length=16)
    per_caption = tiny_model(whiten_features=True)  # the same weights and statistics as `model`
    expected, per_caption_batches = training_losses(per_caption, pairs, cache)
    losses, batches = training_losses(model, pairs, standardized_feature_cache(cache, model))
    assert "image_embeds" in batches[0] and "encoder_hidden_states" not in batches[0]
    assert "encoder_hidden_states" in per_caption_batches[0]
    with torch.no_grad():  # the batch the decoder sees: the per-caption path's standardisation of the same images
        torch.testing.assert_close(batches[0]["image_embeds"].float(),
                                   model.standardize_features(per_caption_batches[0]["encoder_hidden_states"].float()),
                                   **FP16_TOLERANCE)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-3, atol=1e-4)
    assert losses[-1] != losses[0]  # the steps trained


# ---------------------------------------------------------------------------------------------- train.py
spec = importlib.util.spec_from_file_location("train_script", REPO_ROOT / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)


def whitening_run(data, out, cache, *extra):
    """train.py's arguments for a tiny whitening run."""
    return train_script.parse_args([
        "--dataset", str(data), "--output_dir", str(out), "--cache_dir", str(cache),
        "--encoder", "random", "--image_size", "64", "--tokenizer", "captions", "--caption_vocab_size", "60",
        "--embedding_size", "16", "--attention_size", "16", "--hidden_size", "16", "--dropout", "0",
        "--batch_size", "8", "--eval_num_beams", "1", "--eval_max_new_tokens", "5", "--report_to", "none",
        "--seed", "7", "--whiten_features", *extra,
    ])


@pytest.fixture
def small_runs(tmp_path, monkeypatch):
    """Synthetic data, and train.py's model with the tiny encoder of the other tests (the ResNet-152 architecture
    changes nothing here). Records the models the kept decoder inputs are built for."""
    data = write_synthetic_flickr8k(tmp_path / "flickr8k", num_train=8, num_val=3, num_test=3, image_size=64, seed=3)
    tiny_encoder = tiny_config().encoder_config
    monkeypatch.setattr(train_script, "ShowAttendTellConfig", lambda **kwargs: ShowAttendTellConfig(encoder_config=tiny_encoder, **kwargs))
    built = []

    def recording_build(cache, model):
        built.append({"cache": cache.folder, "whitening": model.feature_whitening.detach().clone()})
        return standardized_feature_cache(cache, model)

    monkeypatch.setattr(train_script, "standardized_feature_cache", recording_build, raising=False)
    return data, built


def test_train_with_whitening_feeds_the_decoder_each_image_standardised_once(small_runs, tmp_path, monkeypatch):
    """The training steps and the validation loss of a whitening run read the decoder's input (`image_embeds`) from
    the kept arrays; no forward of the run (generation included) gets features to standardise and whiten again."""
    data, built = small_runs
    calls, forward = [], ShowAttendTellForConditionalGeneration.forward

    def recording_forward(self, *args, **kwargs):
        calls.append({"training": self.training, "features": kwargs.get("encoder_hidden_states") is not None,
                      "image_embeds": kwargs.get("image_embeds") is not None, "labels": kwargs.get("labels") is not None})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ShowAttendTellForConditionalGeneration, "forward", recording_forward)
    train_script.train(*whitening_run(data, tmp_path / "out", tmp_path / "cache", "--num_epochs", "1"))
    training_steps = [call for call in calls if call["training"] and call["labels"]]
    validation_loss = [call for call in calls if not call["training"] and call["labels"]]
    assert len(training_steps) == 5 and validation_loss  # 8 images × 5 captions in batches of 8; then validation
    assert all(call["image_embeds"] for call in training_steps + validation_loss)
    assert not any(call["features"] for call in calls)  # generation too: its later steps decode from the cache
    assert len(built) == 2  # the training and the validation images


def test_a_resumed_whitening_run_reads_the_input_of_the_statistics_its_checkpoint_holds(small_runs, tmp_path):
    """Resuming restores the model's statistics from the checkpoint: the kept input is the one of those statistics,
    even when the cache's statistics would now give others (e.g. computed by another version)."""
    data, built = small_runs
    out, cache = tmp_path / "out", tmp_path / "cache"
    train_script.train(*whitening_run(data, out, cache, "--max_steps", "2", "--checkpoint_every_steps", "2"))
    saved = load_file(out / "checkpoints" / "step_00000002" / "model.safetensors")["feature_whitening"]
    (covariance_file,) = cache.rglob("covariance.npz")  # the training cache's: the statistics now differ
    with np.load(covariance_file) as stored:
        np.savez(covariance_file, covariance=stored["covariance"] * 4, format=stored["format"])
    train_cache = FeatureCache(covariance_file.parent)
    _, std = train_cache.statistics()
    assert not torch.allclose(train_cache.whitening(std), saved)  # built before resuming, the input would be another
    built.clear()
    train_script.train(*whitening_run(data, out, cache, "--max_steps", "4", "--resume"))
    assert built and all(torch.equal(entry["whitening"], saved) for entry in built)


# ---------------------------------------------------------------------------------------------- SCST
def test_an_scst_step_standardises_each_image_once(tmp_path, monkeypatch):
    """The greedy captions, the sampled captions and their log-probabilities share one standardisation per image."""
    words = ["a", "red", "blue", "circle", "square"]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path)
    processor = ShowAttendTellProcessor(image_processor=default_image_processor(TINY_IMAGE_SIZE), tokenizer=tokenizer)
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=2, eos_token_id=3,
                         decoder_start_token_id=2, whiten_features=True)
    model = ShowAttendTellForConditionalGeneration(config)
    model.set_feature_statistics(torch.zeros_like(model.feature_mean), 1.0, torch.eye(config.encoder_hidden_size))
    features = torch.randn(2, config.num_regions, config.encoder_hidden_size)
    reward = CiderDReward([["a red circle"], ["a blue square"]], tokenizer="python")
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if p.requires_grad], lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    counted = count_standardized_images(accelerator.unwrap_model(model), monkeypatch)
    scst_step(accelerator, model, optimizer, processor, reward, features, np.arange(2),
              ScstSettings(num_samples=3, baseline="greedy", max_new_tokens=4))
    assert counted == [2]
