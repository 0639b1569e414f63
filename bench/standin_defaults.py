"""Evidence for two defaults from a trained encoder, not the demo's random one: feature whitening, and the SCST recipe.

Every run is `python train.py` (a subprocess, as users run it) with the demo's preset (`DEMO_PRESET`: model
sizes, caption tokenizer, learning rate, selection on CIDEr-D, ...) but the stand-in encoder of
`bench/standin_encoder.py` instead of the random ResNet-152, on held-out synthetic scenes of a seed the stand-in
never saw. Each finished run is then scored for content as the demo scores its runs (`hf_imgcap.demo.run.score_run`)
and appends one JSON line to --results, so an interrupted sweep keeps what it measured.

    python bench/standin_encoder.py train --output /tmp/standin/encoder
    python bench/standin_defaults.py data                                   # 300 / 50 / 50 held-out scenes
    python bench/standin_defaults.py whitening --seeds 1 2 3 --epochs 6     # whitening on vs off, per seed
    python bench/standin_defaults.py scst --seed 1 --sampling_seeds 1 2     # SCST variants from one CE model
    python bench/standin_defaults.py table                                  # the tables of docs/standin_encoder.md

`whitening` trains the cross-entropy stage only (no SCST), so the comparison is of the features' treatment alone.
`scst` takes the cross-entropy model of `whitening`'s run with whitening on and the same seed (or trains it), copies
the run folder for each variant and continues it with `--resume_from_checkpoint latest --scst_epochs N`: every
variant starts from the same model. A resumed run restores the random state saved in the checkpoint, so its `--seed`
changes nothing in the SCST stage (measured: the same rewards to 4 decimals). A sampling seed other than the
cross-entropy seed therefore replaces the random states in the copied checkpoint by those of `set_seed(sampling seed)`
(`reseed_checkpoint`); the sampling seed equal to the cross-entropy seed continues from the checkpoint's own state.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hf_imgcap.demo.presets import DEMO_PRESET
from hf_imgcap.demo.scenes import SCENES_FILE

REPO = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO / "train.py"
EVAL_SEED = 7  # the held-out scenes; bench/standin_encoder.py trains on STANDIN_SEED (20261)
EVAL_SIZES = dict(num_train=300, num_val=50, num_test=50)
# Options the sweep sets itself (per run) instead of taking the demo's value.
NOT_FROM_THE_DEMO = {"dataset", "encoder", "output_dir", "overwrite_output_dir", "report_to", "scst_epochs",
                     "scst_baseline", "scst_learning_rate"}
SCST_VARIANTS = {  # name -> (baseline, learning rate)
    "greedy_5e-5": ("greedy", 5e-5),  # the users' defaults
    "mean_5e-5": ("mean", 5e-5),
    "mean_5e-4": ("mean", 5e-4),  # the demo's preset
}


def parsed_arguments(argv: list[str]):
    """`train.py`'s (model_args, data_args, args) for `argv`: what the demo's scoring reads (dataset, limits, cache)."""
    spec = importlib.util.spec_from_file_location("train_script", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args(argv)


def content_scores(output_dir: Path, argv: list[str]) -> dict:
    """The demo's content scores of a finished run: content accuracy, the feature probe, attention grounding."""
    from hf_imgcap.demo.content_accuracy import load_scenes
    from hf_imgcap.demo.run import score_run

    _, data_args, args = parsed_arguments(argv)
    scenes = load_scenes(Path(data_args.dataset) / SCENES_FILE)
    return score_run(output_dir, data_args, args, scenes)


def recipe_argv(dataset: Path, encoder: Path, cache_dir: Path, extra_epochs: int | None) -> list[str]:
    """The demo's preset as train.py arguments, with the stand-in encoder and the held-out scenes."""
    argv = ["--dataset", str(dataset), "--encoder", str(encoder), "--cache_dir", str(cache_dir), "--report_to", "none"]
    for name, value in DEMO_PRESET.items():
        if name not in NOT_FROM_THE_DEMO:
            argv += [f"--{name}", str(value)]
    if extra_epochs is not None:
        argv += ["--num_train_epochs", str(extra_epochs)]
    return argv


def run_train(argv: list[str], log_file: Path, nice: int, threads: int) -> float:
    """train.py in a subprocess (niced: the machine is shared); its output goes to `log_file`. Returns seconds.
    `threads` > 0 caps torch's threads (OMP_NUM_THREADS): on a machine with more runnable threads than cores, two
    torch threads that wait for each other at every operation run a third as fast as one (measured here)."""
    command = [sys.executable, str(TRAIN_SCRIPT), *argv]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)) if threads else None
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_file, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"train.py failed (exit {completed.returncode}); see {log_file}")
    return time.perf_counter() - started


def encoder_fingerprint(encoder: Path) -> str:
    """The first 12 hex digits of the encoder weights' sha256: which stand-in a result row was measured with."""
    digest = hashlib.sha256()
    with open(encoder / "model.safetensors", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def content_summary(scores: dict) -> dict | None:
    """What the demo's content table prints: colour and shape of the one-object images, relation of the others."""
    content = scores.get("content_accuracy")
    if content is None:
        return None
    grounding = scores.get("attention_grounding") or {}
    return {"color": content["one_object"]["color"]["accuracy"], "shape": content["one_object"]["shape"]["accuracy"],
            "relation": content["relation"]["accuracy"],
            # every object of every test image (one-object images alone saturate with a trained encoder)
            "all_objects_color": content["color"]["accuracy"], "all_objects_shape": content["shape"]["accuracy"],
            "attention_on_named_object": grounding.get("on_named_object"), "attention_on_other_object": grounding.get("on_other_object")}


def probe_summary(scores: dict) -> dict | None:
    probe = scores.get("feature_probe")
    return None if probe is None else {task: probe[task]["accuracy"] for task in ("color", "shape", "relation", "relation_alone")}


def prune_run(output_dir: Path):
    """Delete a measured run's checkpoints and weights (its metrics.json, captions and log stay): a run folder holds
    ~300 MB, and the shared disk fills up."""
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    for weights in output_dir.glob("*.safetensors"):
        weights.unlink()


def copy_for_resume(source: Path, destination: Path):
    """The files a resumed run needs (newest step checkpoint, best model, processor, arguments), not older checkpoints."""
    steps = sorted((source / "checkpoints").glob("step_*"))
    older = {path.name for path in steps[:-1]}
    shutil.copytree(source, destination, ignore=lambda folder, names: [n for n in names if n in older])


def reseed_checkpoint(run_dir: Path, seed: int):
    """Replace the Python / NumPy / torch random states that the newest step checkpoint of `run_dir` restores on resume
    by those right after `set_seed(seed)` (train.py cannot reseed a resumed run), and its manifest to match."""
    import random

    import numpy as np
    import torch
    from accelerate.utils import set_seed

    newest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    for states_file in newest.glob("random_states_*.pkl"):
        states = torch.load(states_file, weights_only=False)  # written by Accelerate's save_state in this sweep
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        set_seed(seed)
        states.update(random_state=random.getstate(), numpy_random_seed=np.random.get_state(), torch_manual_seed=torch.get_rng_state())
        random.setstate(saved[0]), np.random.set_state(saved[1]), torch.set_rng_state(saved[2])
        torch.save(states, states_file)
        record_in_manifest(states_file)


def record_in_manifest(path: Path):
    """Update the size and sha256 of a rewritten checkpoint file in its checkpoint's manifest.json, which train.py
    verifies before resuming."""
    manifest_file = path.parent / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    manifest_file.write_text(json.dumps(manifest, indent=1))


def append(results: Path, row: dict):
    print(json.dumps(row), flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as handle:
        handle.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------- data
def write_eval_data(args):
    from hf_imgcap.demo.scenes import write_synthetic_flickr8k

    if (args.dataset / SCENES_FILE).is_file():
        print(f"{args.dataset} exists; kept")
        return
    write_synthetic_flickr8k(args.dataset, seed=EVAL_SEED, **EVAL_SIZES)
    print(f"held-out scenes (seed {EVAL_SEED}, {EVAL_SIZES}) written to {args.dataset}")


# ---------------------------------------------------------------------------------------------- whitening
def whitening_run_dir(args, whiten: bool, seed: int) -> Path:
    return args.runs / f"whiten_{'on' if whiten else 'off'}-seed{seed}"


def train_cross_entropy(args, whiten: bool, seed: int) -> tuple[dict, float]:
    output_dir = whitening_run_dir(args, whiten, seed)
    argv = [*recipe_argv(args.dataset, args.encoder, args.cache_dir, args.epochs), "--output_dir", str(output_dir),
            "--overwrite_output_dir", "true", "--seed", str(seed), "--whiten_features", str(whiten).lower(), "--scst_epochs", "0"]
    seconds = run_train(argv, output_dir.parent / f"{output_dir.name}.log", args.nice, args.threads)
    return json.loads((output_dir / "metrics.json").read_text()), content_scores(output_dir, argv), seconds


def sweep_whitening(args):
    fingerprint = encoder_fingerprint(args.encoder)
    for seed in args.seeds:
        for whiten in (setting == "on" for setting in args.whiten):
            metrics, scores, seconds = train_cross_entropy(args, whiten, seed)
            if not (whiten and seed == args.seed):  # the cross-entropy model `scst` starts from is kept
                prune_run(whitening_run_dir(args, whiten, seed))
            history = metrics["history"]
            append(args.results, {
                "experiment": "whitening", "whiten_features": whiten, "seed": seed, "encoder": fingerprint,
                "test_bleu_4": round(metrics["test"]["bleu_4"], 4), "test_cider": round(metrics["test"]["cider"], 4),
                "content_accuracy": content_summary(scores), "feature_probe": probe_summary(scores),
                "kept_epoch": (metrics.get("best_model_selection") or {}).get("epoch"), "epochs": len(history),
                "val_cider_by_epoch": [entry["cider"] for entry in history], "seconds": round(seconds, 1)})


# ---------------------------------------------------------------------------------------------- SCST
def sweep_scst(args):
    fingerprint = encoder_fingerprint(args.encoder)
    cross_entropy_dir = whitening_run_dir(args, True, args.seed)
    if not (cross_entropy_dir / "metrics.json").is_file():
        train_cross_entropy(args, True, args.seed)
    cross_entropy = json.loads((cross_entropy_dir / "metrics.json").read_text())
    trained_epochs = len(cross_entropy["history"])  # resuming with this many epochs trains no further CE epoch
    for sampling_seed in args.sampling_seeds:
        for name in args.variants:
            baseline, learning_rate = SCST_VARIANTS[name]
            output_dir = args.runs / f"scst_{name}-ce{args.seed}-seed{sampling_seed}"
            if output_dir.exists():
                shutil.rmtree(output_dir)
            copy_for_resume(cross_entropy_dir, output_dir)
            if sampling_seed != args.seed:
                reseed_checkpoint(output_dir, sampling_seed)
            argv = [*recipe_argv(args.dataset, args.encoder, args.cache_dir, trained_epochs), "--output_dir", str(output_dir),
                    "--resume_from_checkpoint", "latest", "--seed", str(sampling_seed), "--whiten_features", "true",
                    "--scst_epochs", str(args.scst_epochs), "--scst_baseline", baseline, "--scst_learning_rate", str(learning_rate)]
            seconds = run_train(argv, args.runs / f"{output_dir.name}.log", args.nice, args.threads)
            metrics = json.loads((output_dir / "metrics.json").read_text())
            scores = content_scores(output_dir, argv)
            prune_run(output_dir)
            scst = metrics["scst"]
            before, after = scst["cross_entropy_test"], metrics["test"]
            append(args.results, {
                "experiment": "scst", "variant": name, "baseline": baseline, "scst_learning_rate": learning_rate,
                "cross_entropy_seed": args.seed, "sampling_seed": sampling_seed, "encoder": fingerprint,
                "scst_epochs": args.scst_epochs, "test_cider_before": round(before["cider"], 4), "test_cider_after": round(after["cider"], 4),
                "test_bleu_4_before": round(before["bleu_4"], 4), "test_bleu_4_after": round(after["bleu_4"], 4),
                "content_accuracy_after": content_summary(scores),
                "kept_scst_epoch": max(scst["history"], key=lambda e: e["cider"])["epoch"] if scst["history"] else None,
                "reward_by_epoch": [entry["reward"] for entry in scst["history"]],
                "greedy_reward_by_epoch": [entry.get("greedy_reward") for entry in scst["history"]],
                "val_cider_by_epoch": [entry["cider"] for entry in scst["history"]],
                "val_cider_before": cross_entropy["best_model_selection"]["value"] if cross_entropy.get("best_model_selection") else None,
                "scst_seconds": scst["seconds"], "seconds": round(seconds, 1)})


# ---------------------------------------------------------------------------------------------- tables
def mean_spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_tables(args):
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    stats = [r for r in rows if r.get("kind") == "feature_statistics"]
    if stats:
        print("| encoder | mean abs x | between-image share of energy (raw / after per-image RMS) | top-10 directions' share | participation ratio |")
        print("|---|---|---|---|---|")
        for r in stats:
            print(f"| {r['encoder']} | {r['mean_abs']:.3g} | {r['between_image_share']:.2%} / {r['between_image_share_after_rms']:.2%} "
                  f"| {r['top10_share']:.2f} | {r['participation_ratio']:.1f} |")
        print()
    whitening = [r for r in rows if r.get("experiment") == "whitening"]
    if whitening:
        print("| whitening | seed | test BLEU-4 | test CIDEr-D | colour (1 shape) | shape (1 shape) | colour (all objects) "
              "| shape (all objects) | relation | attention on named / other object | probe colour / shape / relation | kept epoch | s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        keys = ("color", "shape", "all_objects_color", "all_objects_shape", "relation")
        for whiten in (True, False):
            group = sorted((r for r in whitening if r["whiten_features"] is whiten), key=lambda r: r["seed"])
            for r in group:
                c, p = r["content_accuracy"] or {}, r["feature_probe"] or {}
                cells = " | ".join(_number(c.get(key)) for key in keys)
                attention = f"{_number(c.get('attention_on_named_object'), 2)} / {_number(c.get('attention_on_other_object'), 2)}"
                print(f"| {'on' if whiten else 'off'} | {r['seed']} | {r['test_bleu_4']:.3f} | {r['test_cider']:.3f} | {cells} | {attention} | "
                      f"{p.get('color', 0):.3f} / {p.get('shape', 0):.3f} / {p.get('relation', 0):.3f} | {r['kept_epoch']} | {r['seconds']:.0f} |")
            if group:
                cells = " | ".join(mean_spread([(r["content_accuracy"] or {}).get(key) for r in group]) for key in keys)
                print(f"| **{'on' if whiten else 'off'}: mean ± sd** | {len(group)} | {mean_spread([r['test_bleu_4'] for r in group])} | "
                      f"{mean_spread([r['test_cider'] for r in group])} | {cells} | | | | |")
        print()
    scst = [r for r in rows if r.get("experiment") == "scst"]
    if scst:
        print("| SCST variant | sampling seed | test CIDEr-D before → after | gain | test BLEU-4 before → after | validation CIDEr-D before → "
              "by SCST epoch | kept SCST epoch | mean sampled reward by epoch | relation after | s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in SCST_VARIANTS:
            group = [r for r in scst if r["variant"] == name]
            for r in sorted(group, key=lambda r: r["sampling_seed"]):
                gain = r["test_cider_after"] / r["test_cider_before"] - 1
                print(f"| {name} | {r['sampling_seed']} | {r['test_cider_before']:.3f} → {r['test_cider_after']:.3f} | {gain:+.1%} | "
                      f"{r['test_bleu_4_before']:.3f} → {r['test_bleu_4_after']:.3f} | {_number(r['val_cider_before'])} → "
                      f"{', '.join(f'{v:.3f}' for v in r['val_cider_by_epoch'])} | {r['kept_scst_epoch']} | "
                      f"{', '.join(f'{v:.2f}' for v in r['reward_by_epoch'])} | {_number((r['content_accuracy_after'] or {}).get('relation'), 2)} "
                      f"| {r['seconds']:.0f} |")
            if len(group) > 1:
                gains = [r["test_cider_after"] / r["test_cider_before"] - 1 for r in group]
                print(f"| **{name}: mean** | {len(group)} | {mean_spread([r['test_cider_after'] for r in group])} | "
                      f"{statistics.mean(gains):+.1%} | | | | | | |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("data", "whitening", "scst", "table"))
    parser.add_argument("--dataset", type=Path, default=Path("/tmp/standin/eval_scenes"))
    parser.add_argument("--encoder", type=Path, default=Path("/tmp/standin/encoder"))
    parser.add_argument("--cache_dir", type=Path, default=Path("/tmp/standin/feature_cache"), help="shared by every run of one encoder")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/standin/runs"))
    parser.add_argument("--results", type=Path, default=Path("/tmp/standin/results.jsonl"))
    parser.add_argument("--epochs", type=int, default=None, help="--num_train_epochs of the cross-entropy runs (default: the demo's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds of the whitening sweep")
    parser.add_argument("--whiten", nargs="+", default=["on", "off"], choices=["on", "off"], help="the whitening settings to run")
    parser.add_argument("--seed", type=int, default=1, help="training seed of the cross-entropy model SCST starts from "
                        "(`whitening` keeps that run's checkpoints and prunes the others)")
    parser.add_argument("--sampling_seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=list(SCST_VARIANTS), choices=list(SCST_VARIANTS))
    parser.add_argument("--scst_epochs", type=int, default=4)
    parser.add_argument("--nice", type=int, default=10, help="niceness of the train.py runs (0: not niced)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the train.py runs (0: torch's default)")
    args = parser.parse_args()
    {"data": write_eval_data, "whitening": sweep_whitening, "scst": sweep_scst, "table": print_tables}[args.command](args)


if __name__ == "__main__":
    main()
