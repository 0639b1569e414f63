"""Which training recipe pays on the demo: train the demo's model several ways on the SAME data and feature cache.

Each variant is the demo's preset (hf_imgcap/demo/presets.py, applied by --demo) plus a few options; it reports the test BLEU-4 and
CIDEr-D of the kept model, the epoch it was kept at, and the wall time. Evaluation-only settings (beam size, length
penalty) are measured by captioning the test split again with the kept model of one variant (`--rescore`).

    python train.py --demo --output_dir /tmp/demo-r        # once: writes the data and the feature cache
    python bench/recipe_demo.py --demo_dir /tmp/demo-r --variants global_scale per_channel ... [--seeds 42 43]
    python bench/recipe_demo.py --demo_dir /tmp/demo-r --rescore /tmp/recipe/per_channel-42

Lines of JSON are appended to --results (one per run) so that an interrupted sweep keeps what it measured.
"""

import argparse
import functools
import importlib.util
import json
import time
from pathlib import Path

from hf_imgcap.data import feature_cache
from hf_imgcap.demo.content_accuracy import load_scenes
from hf_imgcap.demo.run import score_run
from hf_imgcap.demo.scenes import SCENES_FILE
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import STD_FLOOR

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)

# The base recipe every variant starts from: no whitening, selection on BLEU-4, plateau decay. Every option a variant
# may change is stated here, so that the comparison stays the same when the demo's preset changes.
BASE_RECIPE = ["--whiten_features", "false", "--metric_for_best_model", "bleu_4", "--lr_scheduler_type", "reduce_lr_on_plateau", "--num_train_epochs", "12",
         "--dropout", "0.2", "--learning_rate", "2e-3", "--lr_decay_patience", "3", "--early_stopping_patience", "5",
         "--eval_num_beams", "3", "--eval_length_penalty", "1.0"]
# name -> (standardisation of the features, train.py arguments after BASE_RECIPE's[, floor of the per-channel std])
VARIANTS = {
    "global_scale": ("global", []),  # one global scale for all channels, selection on BLEU-4, plateau decay
    "per_channel": ("channel", []),
    "whitened": ("channel", ["--whiten_features", "true"]),  # ZCA after the per-channel standardisation (as in the demo's preset)
    "whitened_dropout_0.5": ("channel", ["--whiten_features", "true", "--dropout", "0.5"]),
    "whitened_cider": ("channel", ["--whiten_features", "true", "--metric_for_best_model", "cider"]),
    "per_region_channel": ("region_channel", []),
    "per_channel_floor_0.01": ("channel", [], 0.01),
    "per_channel_floor_0.3": ("channel", [], 0.3),
    "cider": ("channel", ["--metric_for_best_model", "cider"]),
    "loss": ("channel", ["--metric_for_best_model", "loss"]),
    "cider_patient": ("channel", ["--metric_for_best_model", "cider", "--early_stopping_patience", "8"]),
    "cosine": ("channel", ["--metric_for_best_model", "cider", "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05"]),
    "cosine_20": ("channel", ["--metric_for_best_model", "cider", "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05",
                              "--num_train_epochs", "20", "--early_stopping_patience", "20"]),
    "epochs_20": ("channel", ["--metric_for_best_model", "cider", "--num_train_epochs", "20"]),
    "dropout_0": ("channel", ["--metric_for_best_model", "cider", "--dropout", "0"]),
    "dropout_0.5": ("channel", ["--metric_for_best_model", "cider", "--dropout", "0.5"]),
    "lr_1e-3": ("channel", ["--metric_for_best_model", "cider", "--learning_rate", "1e-3"]),
    "lr_4e-3": ("channel", ["--metric_for_best_model", "cider", "--learning_rate", "4e-3"]),
}


def run_variant(name: str, seed: int, demo_dir: Path, out_root: Path, extra: list) -> dict:
    per, options, floor = (*VARIANTS[name], STD_FLOOR)[:3]
    output_dir = out_root / f"{name}-{seed}"
    argv = ["--demo", "--dataset", str(demo_dir / "synthetic_flickr8k"), "--cache_dir", str(demo_dir / "feature_cache"),
            "--output_dir", str(output_dir), "--seed", str(seed), *BASE_RECIPE, *options, *extra]
    statistics, std = feature_cache.FeatureCache.statistics, feature_cache.standard_deviation
    feature_cache.FeatureCache.statistics = functools.partialmethod(statistics, per=per)
    feature_cache.standard_deviation = functools.partial(std, floor=floor)
    started = time.perf_counter()
    model_args, data_args, args = train_script.parse_args(argv)
    try:
        results = train_script.train(model_args, data_args, args)
        seconds = time.perf_counter() - started
        scenes = load_scenes(Path(data_args.dataset) / SCENES_FILE)
        scores = score_run(output_dir, data_args, args, scenes)  # as the demo scores its runs
    finally:
        feature_cache.FeatureCache.statistics, feature_cache.standard_deviation = statistics, std
    history = results["history"]
    return {"variant": name, "seed": seed, "options": options + extra, "standardize_per": per, "std_floor": floor,
            "test_bleu_4": round(results["test"]["bleu_4"], 4), "test_cider": round(results["test"]["cider"], 4),
            "content_accuracy": _content_summary(scores.get("content_accuracy")),
            "feature_probe": {task: probe["accuracy"] for task, probe in (scores.get("feature_probe") or {}).items()},
            "kept_epoch": (results.get("best_model_selection") or {}).get("epoch"), "epochs": len(history),
            "val_cider_by_epoch": [entry["cider"] for entry in history],
            "val_bleu_4_by_epoch": [entry["bleu_4"] for entry in history],
            "val_loss_by_epoch": [entry.get("loss") for entry in history],
            "train_loss_by_epoch": [entry["train_loss"] for entry in history], "seconds": round(seconds, 1)}


def _content_summary(content: dict | None) -> dict | None:
    """What the demo's content table prints: colour and shape of the one-object images, relation of the others."""
    if content is None:
        return None
    return {"color": content["one_object"]["color"]["accuracy"], "shape": content["one_object"]["shape"]["accuracy"],
            "relation": content["relation"]["accuracy"]}


def rescore(model_dir: Path, demo_dir: Path, beams: list, penalties: list) -> list:
    """The kept model of a run, captioning the test split with other beam sizes and length penalties."""
    from hf_imgcap import ShowAttendTellForConditionalGeneration, ShowAttendTellProcessor
    from hf_imgcap.data.caption_datasets import load_caption_dataset
    from hf_imgcap.evaluation.generation import evaluate_captioner

    model = ShowAttendTellForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = ShowAttendTellProcessor.from_pretrained(model_dir)
    test = load_caption_dataset(str(demo_dir / "synthetic_flickr8k"), seed=42)["test"]
    features = feature_cache.build_feature_cache(model, processor, test, demo_dir / "feature_cache", show_progress=False)
    rows = []
    for beams_ in beams:
        for penalty in penalties if beams_ > 1 else [1.0]:
            started = time.perf_counter()
            metrics, _ = evaluate_captioner(model, processor, test, features=features, meteor=False, num_beams=beams_,
                                            length_penalty=penalty, max_new_tokens=20, show_progress=False)
            rows.append({"model": str(model_dir), "num_beams": beams_, "length_penalty": penalty,
                         "test_bleu_4": round(metrics["bleu_4"], 4), "test_cider": round(metrics["cider"], 4),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", type=Path, required=True)
    parser.add_argument("--out_root", type=Path, default=Path("/tmp/recipe"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[42])
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py arguments for every variant")
    parser.add_argument("--rescore", type=Path, help="a run folder: rescore its kept model with other beams / penalties")
    parser.add_argument("--results", type=Path, default=Path("/tmp/recipe/results.jsonl"))
    args = parser.parse_args()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if args.rescore:
        rows = rescore(args.rescore, args.demo_dir, beams=[1, 3, 5], penalties=[0.6, 1.0, 1.5, 2.0])
        with open(args.results, "a") as handle:
            handle.writelines(json.dumps({"rescore": True, **row}) + "\n" for row in rows)
        return
    for seed in args.seeds:
        for name in args.variants:
            row = run_variant(name, seed, args.demo_dir, args.out_root, args.extra)
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
