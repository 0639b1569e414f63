"""Self-critical sequence training: the CIDEr-D reward, the baselines, the sampled captions'
log-probabilities, that SCST steps raise the expected reward, and `train.py --scst_epochs` end to end."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from pycocoevalcap.cider.cider import Cider
from safetensors.torch import load_file
from transformers import BertTokenizerFast

from hf_imgcap import ShowAttendTellForConditionalGeneration, ShowAttendTellProcessor
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.evaluation.caption_metrics import normalize_for_scoring
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import default_image_processor
from hf_imgcap.training.run_metrics import load_run_metrics
from hf_imgcap.training.scst import CiderDReward, ScstSettings, baseline_rewards, sampled_log_probs, scst_step

from conftest import REPO_ROOT, TINY_IMAGE_SIZE, tiny_config

REFERENCES = [
    ["A red circle on the left.", "a red circle", "a small red round shape"],
    ["a blue square", "A blue square on the right", "one blue box"],
    ["a green triangle above a red circle", "a green triangle", "a triangle, green"],
    ["a yellow star", "a yellow star on the left", "a small yellow star"],
]


# ---------------------------------------------------------------------------------------------- the reward
def pycocoevalcap_cider(captions, references):
    gts = {i: [normalize_for_scoring(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [normalize_for_scoring(c)] for i, c in enumerate(captions)}
    return Cider().compute_score(gts, res)[1]


@pytest.mark.slow
def test_the_reward_is_pycocoevalcap_cider_d_when_the_document_frequencies_come_from_the_scored_images():
    captions = ["a red circle", "a blue square on the left", "a green circle", "a star"]
    rewards = CiderDReward(REFERENCES)(captions, [0, 1, 2, 3])
    np.testing.assert_allclose(rewards, pycocoevalcap_cider(captions, REFERENCES), rtol=1e-12, atol=0)
    assert rewards[0] > 0 and rewards.shape == (4,)


def test_the_reward_normalises_text_as_the_evaluation_does():
    reward = CiderDReward(REFERENCES)
    assert reward(["A Red circle, on the LEFT."], [0]) == pytest.approx(reward(["a red circle on the left"], [0]), abs=0)


def test_a_caption_equal_to_its_references_scores_higher_than_a_wrong_one():
    reward = CiderDReward(REFERENCES)
    right, wrong, empty = reward(["a red circle", "a blue square", ""], [0, 0, 0])
    assert right > 1.0 > wrong and empty == 0.0


@pytest.mark.slow
def test_document_frequencies_come_from_the_training_references_not_the_batch():
    reward = CiderDReward(REFERENCES)
    frequencies = len(reward.document_frequency)
    first = reward(["a red circle", "a blue square"], [0, 1])
    second = reward(["a red circle", "a purple hexagon twirls"], [0, 2])
    alone = reward(["a red circle"], [0])
    assert first[0] == second[0] == alone[0]
    assert len(reward.document_frequency) == frequencies  # scoring unseen n-grams does not add them to the corpus
    # The batch-df CIDEr of the evaluation would give the same caption another score in another batch.
    batch_df = [pycocoevalcap_cider(["a red circle", other], [REFERENCES[0], REFERENCES[i]])[0]
                for other, i in (("a blue square", 1), ("a yellow star", 3))]
    assert batch_df[0] != pytest.approx(first[0]) or batch_df[1] != pytest.approx(first[0])


def test_an_image_without_references_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"references\[1\]"):
        CiderDReward([["a cat"], []])


# ---------------------------------------------------------------------------------------------- the baselines
def test_the_greedy_and_the_mean_baselines_on_a_hand_made_case():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    greedy = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(rewards - baseline_rewards(rewards, "greedy", greedy),
                               torch.tensor([[-1.0, 0.0, 1.0], [-1.0, -1.0, 5.0]]))
    # Each sample against the mean of the image's OTHER samples: (2+3)/2, (1+3)/2, (1+2)/2; (0+6)/2, (0+6)/2, 0.
    torch.testing.assert_close(baseline_rewards(rewards, "mean"), torch.tensor([[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        baseline_rewards(rewards[:, :1], "mean")
    with pytest.raises(ValueError, match="greedy captions"):
        baseline_rewards(rewards, "greedy")


# ---------------------------------------------------------------------------------------------- a tiny captioner
WORDS = "a red blue green yellow circle square triangle star on the left right above small one box round shape".split()


@pytest.fixture
def tiny(tmp_path):
    """A word-level tokenizer over the captions' words, its processor and a tiny model over that vocabulary."""
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path)
    processor = ShowAttendTellProcessor(image_processor=default_image_processor(TINY_IMAGE_SIZE), tokenizer=tokenizer)
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    model = ShowAttendTellForConditionalGeneration(config)
    features = torch.randn(len(REFERENCES), config.num_regions, config.encoder_hidden_size)
    return model, processor, features


def test_log_probabilities_of_sampled_captions_stop_at_the_end_token(tiny):
    model, _, features = tiny
    model.eval()
    # Two captions of image 0, one of image 1: [CLS] w w [SEP] then padding, or junk after the end token.
    sequences = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 3, 9, 9, 9], [2, 8, 8, 8, 8, 8]])
    per_image = features[:2].repeat_interleave(torch.tensor([2, 1]), dim=0)
    summed = sampled_log_probs(model, per_image, sequences, eos_token_id=3, pad_token_id=0)
    assert summed.requires_grad
    # The same sums token by token through the stepwise decoder (the generate() path, not the fused kernel).
    with torch.no_grad():
        logits = model(input_ids=sequences, encoder_hidden_states=per_image, use_cache=True).logits.log_softmax(-1)
    lengths = [3, 2, 5]  # generated tokens up to and including the first [SEP] (the last row never ends)
    expected = torch.stack([sum(logits[row, t, sequences[row, t + 1]] for t in range(n)) for row, n in enumerate(lengths)])
    torch.testing.assert_close(summed.detach(), expected, rtol=1e-5, atol=1e-5)
    changed_after_end = sequences.clone()
    changed_after_end[1, 3:] = 4
    torch.testing.assert_close(sampled_log_probs(model, per_image, changed_after_end, 3, 0), summed)


def expected_reward(model, processor, reward, features, samples=64):
    """The mean reward of many sampled captions per image: an estimate of the policy's expected reward."""
    torch.manual_seed(123)
    sequences = model.generate(encoder_hidden_states=features, do_sample=True, top_k=0, num_beams=1, max_new_tokens=6,
                               num_return_sequences=samples)
    indices = np.repeat(np.arange(len(features)), samples)
    return float(reward(processor.batch_decode(sequences), indices).mean())


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_scst_steps_raise_the_expected_reward_on_a_tiny_case(tiny, baseline):
    model, processor, features = tiny
    reward = CiderDReward(REFERENCES)
    before = expected_reward(model, processor, reward, features)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("encoder.")], lr=3e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    settings = ScstSettings(num_samples=8, baseline=baseline, max_new_tokens=6)
    torch.manual_seed(1)
    steps = [scst_step(accelerator, model, optimizer, processor, reward, features, np.arange(4), settings) for _ in range(8)]
    after = expected_reward(accelerator.unwrap_model(model), processor, reward, features)
    assert after > before + 0.3 and after > 1.5 * before, (before, after, [round(s["reward"], 3) for s in steps])
    assert (steps[0]["greedy_reward"] is None) == (baseline == "mean")


# ---------------------------------------------------------------------------------------------- train.py end to end
spec = importlib.util.spec_from_file_location("train_script", REPO_ROOT / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)


def train_with_scst(tmp_path, tiny_encoder, *options):
    """train.py on 12/4/4 synthetic images with a tiny model into tmp_path / "out"; `options` set the recipe."""
    data = write_synthetic_flickr8k(tmp_path / "flickr8k", num_train=12, num_val=4, num_test=4, image_size=64, seed=3)
    argv = [
        "--dataset", str(data), "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
        "--encoder", str(tiny_encoder), "--image_size", "64", "--tokenizer", "captions", "--caption_vocab_size", "80",
        "--embedding_size", "24", "--attention_size", "24", "--hidden_size", "24", "--dropout", "0",
        "--batch_size", "8", "--eval_max_new_tokens", "12", "--report_to", "none", "--seed", "7", *options,
    ]
    return train_script.train(*train_script.parse_args(argv))


@pytest.mark.slow
def test_train_with_scst_epochs_records_the_scst_stage_and_saves_the_scst_model(tmp_path, tiny_encoder):
    out = tmp_path / "out"
    results = train_with_scst(tmp_path, tiny_encoder, "--learning_rate", "3e-3", "--eval_num_beams", "2", "--num_epochs", "1",
                              "--scst_epochs", "2", "--scst_num_samples", "3", "--scst_learning_rate", "1e-3", "--scst_baseline", "greedy")
    scst = results["scst"]
    assert [entry["epoch"] for entry in scst["history"]] == [1, 2]
    assert all(entry["reward"] >= 0 and "greedy_reward" in entry and "cider" in entry for entry in scst["history"])
    assert set(scst["cross_entropy_test"]) >= {"bleu_4", "cider"} and scst["baseline"] == "greedy"
    recorded = load_run_metrics(out)
    assert recorded.scst == json.loads((out / "metrics.json").read_text())["scst"]
    assert recorded.scst["history"] == scst["history"]
    # The final model is the selected SCST epoch's when it beat the cross-entropy model on validation, else that one.
    final = load_file(out / "model.safetensors")
    cross_entropy_best = load_file(out / "checkpoints" / "best" / "model.safetensors")
    best_scst_cider = max(entry["cider"] for entry in scst["history"])
    assert scst["kept"] == ("scst" if best_scst_cider > scst["cross_entropy_validation_cider"] else "cross_entropy")
    kept = load_file(out / "checkpoints" / "scst_best" / "model.safetensors") if scst["kept"] == "scst" else cross_entropy_best
    assert all(torch.equal(final[key], kept[key]) for key in final)
    assert torch.equal(final["lm_head.weight"], cross_entropy_best["lm_head.weight"]) == (scst["kept"] == "cross_entropy")


@pytest.mark.slow
def test_an_scst_stage_that_only_makes_the_model_worse_leaves_the_cross_entropy_model_final(tmp_path, tiny_encoder):
    """A learning rate far too high wrecks the policy in its first step: no SCST epoch can beat the cross-entropy
    model on validation, and the run's final model (and its test scores) must be that model."""
    out = tmp_path / "out"
    results = train_with_scst(tmp_path, tiny_encoder, "--learning_rate", "1e-2", "--eval_num_beams", "1", "--num_epochs", "6",
                              "--scst_epochs", "1", "--scst_num_samples", "2", "--scst_learning_rate", "10", "--grad_clip", "0")
    scst = results["scst"]
    assert scst["cross_entropy_validation_cider"] > scst["history"][0]["cider"], scst
    assert scst["kept"] == "cross_entropy"
    final = load_file(out / "model.safetensors")
    cross_entropy_best = load_file(out / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(final[key], cross_entropy_best[key]) for key in final)
    assert results["test"]["cider"] == pytest.approx(scst["cross_entropy_test"]["cider"])


@pytest.mark.slow
def test_sigterm_during_scst_ends_the_stage_at_the_next_step_and_the_run_finishes(tmp_path, tiny_encoder, monkeypatch):
    """A preempted SCST stage (SIGTERM) must not kill the run without a word: the interrupted epoch is not validated,
    the best model so far is kept, and the run writes its folder."""
    import signal

    from hf_imgcap.training import scst

    steps = []
    real_step = scst.scst_step

    def step_then_sigterm(*args, **kwargs):
        steps.append(1)
        result = real_step(*args, **kwargs)
        if len(steps) == 1:
            signal.raise_signal(signal.SIGTERM)  # as a cluster preempting the job sends it
        return result

    monkeypatch.setattr(scst, "scst_step", step_then_sigterm)
    results = train_with_scst(tmp_path, tiny_encoder, "--num_epochs", "1", "--scst_epochs", "2", "--scst_num_samples", "2",
                              "--eval_num_beams", "1")
    assert len(steps) == 1 and results["scst"]["stopped_by"] == "SIGTERM"
    assert results["scst"]["history"] == [] and results["scst"]["kept"] == "cross_entropy"
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "metrics.json").is_file()
