"""The feature cache and the training examples built on it."""

import json
import logging
import os
import re
import socket

import numpy as np
import pytest
import torch

from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.data.encoder_inference import image_features_for_inference
from hf_imgcap.data.feature_cache import FeatureCache, build_feature_cache
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.data.training_data import CaptionPairs, collate_captions, tokenize_captions

from conftest import launch_two_processes, REPO_ROOT, tiny_model, tiny_processor


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_synthetic_flickr8k(tmp_path_factory.mktemp("data") / "ds", num_train=10, num_val=2, num_test=2, image_size=48)
    return load_caption_dataset(str(root))


def build(model, processor, split, cache_dir, **kwargs):
    kwargs = {"batch_size": 4, "num_workers": 0, "show_progress": False, **kwargs}
    return build_feature_cache(model, processor, split, cache_dir, **kwargs)


def test_cache_equals_a_direct_encoder_run_and_is_fp16_memory_mapped(dataset, tmp_path):
    model, processor = tiny_model(), tiny_processor()
    weights_before = {name: (p.detach().clone(), p.stride()) for name, p in model.encoder.named_parameters()}
    cache = build(model, processor, dataset["train"], tmp_path)
    assert isinstance(cache.features, np.memmap) and cache.features.dtype == np.float16
    assert cache.features.shape == (10, model.config.num_regions, model.config.encoder_hidden_size)
    with torch.no_grad():
        direct = model.get_image_features(processor(images=dataset["train"]["image"]).pixel_values)
    # The cache is encoded with channels_last convolutions on CPU: equal up to one fp16 rounding step.
    torch.testing.assert_close(cache.batch(range(10)).float(), direct.half().float(), rtol=2**-10, atol=1e-4)
    assert cache.valid.all()
    for name, p in model.encoder.named_parameters():  # the encoder is left as it was: values and layout
        assert torch.equal(p, weights_before[name][0]) and p.stride() == weights_before[name][1], name


def test_second_run_reads_instead_of_recomputing(dataset, tmp_path):
    model, processor = tiny_model(), tiny_processor()
    first = build(model, processor, dataset["train"], tmp_path)
    calls = []
    hook = model.encoder.register_forward_hook(lambda *args: calls.append(1))
    second = build(model, processor, dataset["train"], tmp_path)
    hook.remove()
    assert calls == [] and second.folder == first.folder


def test_a_different_encoder_or_preprocessing_gets_a_different_cache(dataset, tmp_path):
    processor = tiny_processor()
    first = build(tiny_model(seed=0), processor, dataset["train"], tmp_path)
    other_weights = build(tiny_model(seed=1), processor, dataset["train"], tmp_path)
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    other_preprocessing = build(tiny_model(seed=0), processor, dataset["train"], tmp_path)
    folders = {first.folder, other_weights.folder, other_preprocessing.folder}
    assert len(folders) == 3
    assert not torch.equal(first[0], other_weights[0])


def test_a_bf16_encoder_pass_is_autocast_close_to_fp32_and_kept_apart(dataset, tmp_path):
    """`encoder_dtype` (train.py's --mixed_precision bf16) runs the encoder under autocast: the features are the
    autocast forward's, close to fp32, in a cache of their own that a second bf16 run reuses."""
    model, processor = tiny_model(), tiny_processor()
    full = build(model, processor, dataset["train"], tmp_path)
    mixed = build(model, processor, dataset["train"], tmp_path, encoder_dtype=torch.bfloat16)
    assert mixed.folder != full.folder
    pixels = processor(images=dataset["train"]["image"]).pixel_values
    with torch.no_grad(), image_features_for_inference(model) as image_features, torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = image_features(pixels).float()  # the encoder as the cache runs it (BatchNorm folded, channels_last)
    torch.testing.assert_close(mixed.batch(range(10)).float(), autocast.half().float(), rtol=2**-7, atol=1e-3)
    exact = full.batch(range(10)).float()
    assert 0 < (mixed.batch(range(10)).float() - exact).norm() < 0.05 * exact.norm()
    calls = []
    hook = model.encoder.register_forward_hook(lambda *args: calls.append(1))
    again = build(model, processor, dataset["train"], tmp_path, encoder_dtype=torch.bfloat16)
    hook.remove()
    assert calls == [] and again.folder == mixed.folder


def test_an_interrupted_build_resumes_and_an_incomplete_cache_is_refused(dataset, tmp_path):
    model, processor = tiny_model(), tiny_processor()
    complete = build(model, processor, dataset["train"], tmp_path / "a")
    meta_file = complete.folder / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta.update(complete=False, done=4)  # as if killed after the first batch
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="incomplete"):
        FeatureCache(complete.folder)
    encoded = []
    hook = model.encoder.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))
    resumed = build(model, processor, dataset["train"], tmp_path / "a")
    hook.remove()
    assert sum(encoded) == 6  # only the images after the interruption
    torch.testing.assert_close(resumed.batch(range(10)), build(model, processor, dataset["train"], tmp_path / "b").batch(range(10)))


def test_bad_images_are_reported_by_path_and_counted_the_rest_go_on(tmp_path, caplog):
    root = write_synthetic_flickr8k(tmp_path / "ds", num_train=6, num_val=1, num_test=1, image_size=48)
    dataset = load_caption_dataset(str(root), verify_images=False)
    broken = dataset["train"][2]["image"].filename
    with open(broken, "wb") as handle:
        handle.write(b"not an image at all")
    cache = build(tiny_model(), tiny_processor(), dataset["train"], tmp_path / "cache")
    assert cache.valid.tolist() == [True, True, False, True, True, True]
    assert len(cache.invalid_images) == 1 and broken in cache.invalid_images[0]["reason"]
    assert broken in caplog.text
    pairs, counts = tokenize_captions(dataset["train"], tiny_processor().tokenizer, 40, valid_images=cache.valid)
    assert counts["left_out_invalid_image"] == 5 and len(pairs) == 25
    assert 2 not in pairs["image_index"]


def test_statistics_are_the_mean_and_per_channel_spread_of_valid_images(dataset, tmp_path):
    cache = build(tiny_model(), tiny_processor(), dataset["train"], tmp_path)
    mean, std = cache.statistics()
    features = cache.batch(range(10)).double()
    torch.testing.assert_close(mean.double(), features.mean(0), rtol=0, atol=1e-5)
    residual = features - features.mean(0)
    overall = residual.pow(2).mean().sqrt()
    per_channel = residual.pow(2).mean(dim=(0, 1)).sqrt().clamp(min=0.1 * overall)  # floored at 10% of the overall
    assert std.shape == mean.shape
    torch.testing.assert_close(std.double(), per_channel.expand_as(std), rtol=1e-4, atol=0)
    assert (per_channel == 0.1 * overall).any()  # the floor is exercised: this encoder has near-constant channels
    again_mean, again_std = cache.statistics()  # kept with the cache
    assert torch.equal(again_std, std) and torch.equal(again_mean, mean)
    _, per_value = cache.statistics(per="region_channel")
    torch.testing.assert_close(per_value.double(), residual.pow(2).mean(0).sqrt().clamp(min=0.1 * overall), rtol=1e-4, atol=0)
    _, single = cache.statistics(per="global")  # the one scale of earlier versions
    torch.testing.assert_close(single.double(), overall.expand_as(single), rtol=1e-5, atol=0)


def test_statistics_kept_by_an_earlier_version_are_recomputed_not_misread(dataset, tmp_path, caplog):
    """An earlier version kept the mean and one global scale in statistics.npz: such a file cannot give a
    per-channel spread, so it is recomputed (and rewritten) instead of being used as one."""
    cache = build(tiny_model(), tiny_processor(), dataset["train"], tmp_path)
    expected_mean, expected_std = cache.statistics()
    stats_file = cache.folder / "statistics.npz"
    np.savez(stats_file, mean=np.full(expected_mean.shape, 7.0, dtype=np.float32), scale=np.float64(3.0))
    with caplog.at_level(logging.INFO, logger="hf_imgcap.data.feature_cache"):
        mean, std = FeatureCache(cache.folder).statistics()
    assert torch.equal(mean, expected_mean) and torch.equal(std, expected_std)
    assert "earlier version" in caplog.text and str(stats_file) in caplog.text
    with np.load(stats_file) as rewritten:
        assert {"mean", "variance", "format"} <= set(rewritten.files) and "scale" not in rewritten.files


def test_whitening_decorrelates_the_standardised_features_and_is_kept_with_the_cache(dataset, tmp_path, monkeypatch):
    """`cache.whitening(std)` is the ZCA matrix of the standardised features: after it the train features' channel
    covariance is the identity on the directions they span (ε shrinks it slightly); it is computed once."""
    from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import whitening_matrix

    cache = build(tiny_model(), tiny_processor(), dataset["train"], tmp_path)
    mean, std = cache.statistics()
    whitening = cache.whitening(std, epsilon=1e-6)
    standardized = ((cache.batch(range(10)).double() - mean.double()) / std.double()).flatten(0, 1)
    whitened = standardized @ whitening.double()
    covariance = whitened.T @ whitened / len(whitened)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    spanned = eigenvalues > 0.5
    assert spanned.sum() >= 8  # the tiny encoder's 64 channels, 10 images x 4 regions: many directions spanned
    # λ / (λ + ε·mean λ): 1 up to ε's shrinkage of the weakest spanned directions
    torch.testing.assert_close(eigenvalues[spanned], torch.ones(int(spanned.sum()), dtype=torch.float64), rtol=1e-2, atol=0)
    assert (eigenvalues[~spanned] < 1e-3).all()  # directions the data has no variance in stay at (near) zero
    torch.testing.assert_close(whitening, whitening.T)
    # Kept in covariance.npz: a second cache object reads it instead of the features.
    assert (cache.folder / "covariance.npz").is_file()
    reopened = FeatureCache(cache.folder)
    monkeypatch.setattr(FeatureCache, "batch", lambda *a, **k: pytest.fail("recomputed the covariance"))
    torch.testing.assert_close(reopened.whitening(std, epsilon=1e-6), whitening)
    # Features that do not vary at all (a blind baseline's zeros): nothing to decorrelate.
    channels = whitening.shape[0]
    assert torch.equal(whitening_matrix(torch.zeros(channels, channels), torch.ones(channels)), torch.eye(channels))


def test_a_damaged_covariance_file_is_recomputed(dataset, tmp_path, caplog):
    cache = build(tiny_model(), tiny_processor(), dataset["train"], tmp_path)
    _, std = cache.statistics()
    expected = cache.whitening(std)
    (cache.folder / "covariance.npz").write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="hf_imgcap.data.feature_cache"):
        again = FeatureCache(cache.folder).whitening(std)
    torch.testing.assert_close(again, expected)
    assert "covariance.npz is damaged" in caplog.text


def test_training_pairs_pad_per_batch_with_labels_ignoring_padding(dataset, tmp_path):
    model, processor = tiny_model(), tiny_processor()
    cache = build(model, processor, dataset["train"], tmp_path)
    pairs, counts = tokenize_captions(dataset["train"], processor.tokenizer, max_length=8)
    assert counts["captions"] == len(pairs) == 50  # every (image, caption) pair
    assert counts["truncated"] > 0 and max(len(ids) for ids in pairs["input_ids"]) == 8
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in pairs["input_ids"])
    examples = CaptionPairs(pairs, features=cache)
    batch = collate_captions([examples[i] for i in (0, 1, 2)])
    lengths = [len(pairs["input_ids"][i]) for i in (0, 1, 2)]
    assert batch["input_ids"].shape == (3, max(lengths))  # per-batch padding
    assert (batch["labels"] == -100).sum() == sum(max(lengths) - n for n in lengths)
    assert torch.equal(batch["labels"][batch["attention_mask"] == 1], batch["input_ids"][batch["attention_mask"] == 1])
    assert batch["encoder_hidden_states"].shape == (3, model.config.num_regions, model.config.encoder_hidden_size)
    loss = model(**{k: v for k, v in batch.items() if k != "image_index"}).loss
    assert torch.isfinite(loss)
    # From images instead of the cache: the same model input, as pixel_values.
    from_images = CaptionPairs(pairs, images=dataset["train"], processor=processor)
    pixel_batch = collate_captions([from_images[i] for i in (0, 1, 2)])
    with torch.no_grad():
        features = model.get_image_features(pixel_batch["pixel_values"])
    torch.testing.assert_close(features.half().float(), batch["encoder_hidden_states"].float(), rtol=2**-10, atol=1e-4)  # one fp16 step


def test_builders_running_at_the_same_time_on_one_cache_folder_all_succeed_with_identical_features(dataset, tmp_path):
    # Several training processes (or a training run and an `evaluate`) pointed at one --cache_dir. Each builder has
    # its own model object; the weights are equal, so they share one cache entry: one builds, the others wait and
    # reuse it. Small batches: many progress writes, where the builders used to collide.
    from concurrent.futures import ThreadPoolExecutor

    processor = tiny_processor()
    models = [tiny_model(seed=0) for _ in range(4)]
    with ThreadPoolExecutor(len(models)) as pool:
        futures = [pool.submit(build_feature_cache, model, processor, dataset["train"], tmp_path,
                               batch_size=1, num_workers=0, show_progress=False) for model in models]
        caches = [future.result() for future in futures]  # re-raises a builder's exception
    assert len({cache.folder for cache in caches}) == 1
    reference = build(tiny_model(seed=0), processor, dataset["train"], tmp_path / "alone", batch_size=1).batch(range(10))
    for cache in caches:
        assert cache.valid.all()
        torch.testing.assert_close(cache.batch(range(10)), reference, rtol=0, atol=0)
    leftovers = [p.name for p in caches[0].folder.iterdir() if "tmp" in p.name]
    assert leftovers == []


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damaged", ["features.npy", "valid.npy", "meta.json"])
def test_a_damaged_complete_cache_is_refused_naming_its_folder_and_how_to_rebuild(dataset, tmp_path, damaged):
    model, processor = tiny_model(), tiny_processor()
    folder = build(model, processor, dataset["train"], tmp_path).folder
    _truncate(folder / damaged)
    for attempt in (lambda: FeatureCache(folder), lambda: build(model, processor, dataset["train"], tmp_path)):
        with pytest.raises(ValueError) as error:
            attempt()
        message = str(error.value)
        assert str(folder) in message and damaged in message and "delete" in message


def test_a_cache_whose_arrays_do_not_match_its_meta_is_refused(dataset, tmp_path):
    model, processor = tiny_model(), tiny_processor()
    folder = build(model, processor, dataset["train"], tmp_path).folder
    np.save(folder / "valid.npy", np.ones(3, dtype=np.uint8))  # a whole, readable file of the wrong size
    with pytest.raises(ValueError, match="delete") as error:
        FeatureCache(folder)
    assert str(folder) in str(error.value) and "valid.npy" in str(error.value)


@pytest.mark.parametrize("damaged", ["features.npy", "valid.npy"])
def test_an_interrupted_build_with_a_damaged_progress_file_is_rebuilt(dataset, tmp_path, damaged, caplog):
    # The kill that interrupted the build hit while a file was being written.
    model, processor = tiny_model(), tiny_processor()
    folder = build(model, processor, dataset["train"], tmp_path).folder
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(complete=False, done=4)
    (folder / "meta.json").write_text(json.dumps(meta))
    _truncate(folder / damaged)
    rebuilt = build(model, processor, dataset["train"], tmp_path)
    assert rebuilt.folder == folder and rebuilt.valid.all()
    torch.testing.assert_close(rebuilt.batch(range(10)), build(model, processor, dataset["train"], tmp_path / "b").batch(range(10)))
    assert damaged in caplog.text and "starting over" in caplog.text


# Run by each of the processes that `accelerate launch` starts: build the cache together, report what this rank encoded.
SHARDED_BUILD = """
import sys
sys.path.insert(0, {tests!r})
from accelerate import Accelerator
from conftest import tiny_model, tiny_processor
from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.data.feature_cache import build_feature_cache

accelerator = Accelerator()
model = tiny_model()
encoded = []
model.encoder.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))
dataset = load_caption_dataset({root!r}, verify_images=False)["train"]
cache = build_feature_cache(model, tiny_processor(), dataset, {cache_dir!r}, batch_size=3, num_workers=0,
                            show_progress=False, accelerator=accelerator)
assert cache.meta["complete"]
print(f"rank {{accelerator.process_index}} of {{accelerator.num_processes}} encoded {{sum(encoded)}} images")
"""


@pytest.mark.slow
def test_two_processes_each_encode_their_shard_and_the_cache_equals_one_process(tmp_path):
    """What a multi-process build guarantees: the same images, the same valid mask and skip records, and features
    equal to a one-process build's up to float rounding (the processes may run convolutions with other thread
    counts, which sum in another order, so the fp16 values may differ in their last bit)."""
    with socket.socket() as probe:  # a free port: not the default 29500, which another run on this machine may hold
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    root = write_synthetic_flickr8k(tmp_path / "ds", num_train=10, num_val=1, num_test=1, image_size=48)
    dataset = load_caption_dataset(str(root), verify_images=False)
    with open(dataset["train"][7]["image"].filename, "wb") as handle:  # a bad image in the second process's shard
        handle.write(b"not an image at all")
    one = build(tiny_model(), tiny_processor(), dataset["train"], tmp_path / "one", batch_size=3)
    script = tmp_path / "build.py"
    script.write_text(SHARDED_BUILD.format(tests=str(REPO_ROOT / "tests"), root=str(root), cache_dir=str(tmp_path / "two")))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    returncode, stdout, stderr = launch_two_processes([script], env, timeout=300, port=port)
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    # Both processes encoded: whole batches of 3, rank 0 images 0-5, rank 1 images 6-9 (one of them unreadable).
    assert sorted(re.findall(r"rank (\d) of 2 encoded (\d+) images", stdout)) == [("0", "6"), ("1", "3")], stdout
    two = FeatureCache(tmp_path / "two" / one.folder.relative_to(tmp_path / "one"))
    assert (two.folder / "valid.npy").read_bytes() == (one.folder / "valid.npy").read_bytes()
    assert two.valid.tolist() == [True] * 7 + [False] + [True] * 2
    assert [entry["index"] for entry in two.invalid_images] == [7] and two.invalid_images == one.invalid_images
    features_one, features_two = np.asarray(one.features, np.float32), np.asarray(two.features, np.float32)
    assert features_two.shape == features_one.shape
    assert not features_two[~two.valid].any()  # the unreadable image's row stays zero
    # fp16 keeps 11 significant bits: a different summation order moves a value by at most a few units in its last place.
    np.testing.assert_allclose(features_two, features_one, rtol=4e-3, atol=1e-4)
    assert sorted(p.name for p in two.folder.iterdir()) == sorted(p.name for p in one.folder.iterdir())  # no shard files left


class ThreadRank:
    """One process of a multi-process run, played by a thread: what build_feature_cache needs of an Accelerator."""

    def __init__(self, rank, barrier):
        self.process_index, self.num_processes, self.is_main_process = rank, barrier.parties, rank == 0
        self.barrier = barrier

    def wait_for_everyone(self):
        self.barrier.wait(timeout=120)


def build_by_ranks(dataset, cache_dir, shards=2):
    """Build with `shards` ranks (threads, each with its own model); returns the caches and the images each encoded."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(shards)
    models, encoded = [tiny_model() for _ in range(shards)], [[] for _ in range(shards)]
    for model, counts in zip(models, encoded):
        model.encoder.register_forward_hook(lambda module, args, output, counts=counts: counts.append(args[0].shape[0]))
    with ThreadPoolExecutor(shards) as pool:
        futures = [pool.submit(build, models[rank], tiny_processor(), dataset, cache_dir, batch_size=3,
                               accelerator=ThreadRank(rank, barrier)) for rank in range(shards)]
        caches = [future.result() for future in futures]
    return caches, [sum(counts) for counts in encoded]


def test_an_interrupted_multi_process_build_resumes_each_shard_where_it_stopped(dataset, tmp_path):
    caches, encoded = build_by_ranks(dataset["train"], tmp_path / "a")
    assert encoded == [6, 4] and caches[0].folder == caches[1].folder
    folder = caches[0].folder
    # As if killed: rank 0 had written its first batch (images 0-2), rank 1 nothing yet.
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["shards"], meta["shard_batch_size"]) == (2, 3)
    (folder / "meta.json").write_text(json.dumps({**meta, "complete": False, "done": 0, "invalid": []}))
    (folder / "shard-0-of-2.json").write_text(json.dumps({"done": 3, "invalid": [], "seconds": 1.0}))
    features = np.load(folder / "features.npy", mmap_mode="r+")
    features[3:] = 0  # not written yet
    features.flush()
    del features
    with pytest.raises(ValueError, match="incomplete"):
        FeatureCache(folder)
    resumed, encoded = build_by_ranks(dataset["train"], tmp_path / "a")
    assert encoded == [3, 4]  # only what was left of each shard
    reference = tiny_model()  # hooked as the ranks' encoders are, so it runs as they do (a hooked encoder is not folded)
    reference.encoder.register_forward_hook(lambda *args: None)
    one = build(reference, tiny_processor(), dataset["train"], tmp_path / "b", batch_size=3)
    for name in ("features.npy", "valid.npy"):
        assert (resumed[0].folder / name).read_bytes() == (one.folder / name).read_bytes(), name
    assert not list(folder.glob("shard-*"))


def _resident_file_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from Linux's /proc")
def test_shuffled_reads_keep_little_of_the_cache_mapped(tmp_path):
    """Training reads one image at a time in shuffled order. A page fault may map a whole page-cache folio (up to
    2 MB on recent kernels), far more than the image's 200 KB: the pages the cache releases must stay bounded by
    that worst case, not grow towards the file's size."""
    images, shape = 1500, (49, 2048)  # a 300 MB cache of ResNet-152-sized features
    features = np.lib.format.open_memmap(tmp_path / "features.npy", mode="w+", dtype=np.float16, shape=(images, *shape))
    for start in range(0, images, 250):
        features[start : start + 250] = np.float16(start)
    features.flush()
    del features
    np.save(tmp_path / "valid.npy", np.ones(images, dtype=np.uint8))
    (tmp_path / "meta.json").write_text(json.dumps({"complete": True, "done": images, "num_images": images,
                                                    "shape": [images, *shape], "invalid": []}))
    cache = FeatureCache(tmp_path)
    start, peak = _resident_file_mb(), 0.0
    for index in np.random.default_rng(0).permutation(images):
        assert float(cache[index][0, 0]) == index // 250 * 250
        peak = max(peak, _resident_file_mb() - start)
    assert peak < 100, f"{peak:.0f} MB of the 300 MB cache stayed mapped"
