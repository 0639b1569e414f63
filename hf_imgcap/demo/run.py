# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""`python train.py --demo`: synthetic Flickr8k -> `train()` with images and image-blind -> what the folders hold,
scored for content.

The demo trains like any user (the `train` function it is given, with the demo's presets), then reads back what the
runs wrote (test_captions.json, the saved model, the feature cache) and scores it against the scenes the generator
drew: content accuracy, a linear probe of the same features, and where the decoder looked when it named a colour.
It writes `demo_report.json` next to the model and prints the tables.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from accelerate import PartialState

from hf_imgcap.data.caption_datasets import load_caption_dataset
from hf_imgcap.data.feature_cache import build_feature_cache
from hf_imgcap.demo.attention_grounding import attention_grounding
from hf_imgcap.demo.content_accuracy import SCENES_FILE, find_scenes_file, load_scenes, split_content_accuracy
from hf_imgcap.demo.feature_probe import probe_cached_features
from hf_imgcap.demo.presets import DEMO_DATASET_SIZES, DEMO_REPORT_FILE
from hf_imgcap.demo.report import print_demo_tables
from hf_imgcap.demo.scenes import write_synthetic_flickr8k
from hf_imgcap.models.show_attend_tell.modeling_show_attend_tell import ShowAttendTellForConditionalGeneration
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import ShowAttendTellProcessor
from hf_imgcap.training.output_folder import RunFiles, replace_text_file
from hf_imgcap.training.run_arguments import BLIND_BASELINE_FOLDER, LATEST_CHECKPOINT

logger = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = "~/.cache/hf_imgcap/features"


def run_demo(train, model_args, data_args, args) -> dict:
    """Train with images and image-blind (`train(model_args, data_args, args)`, as train.py runs it), then score both
    folders for content. Returns {"with_images", "blind", "report"}, or what `train` returned if a run stopped early."""
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    if data_args.dataset is None:
        data_args.dataset = str(output_dir / "synthetic_flickr8k")
        if not (Path(data_args.dataset) / SCENES_FILE).is_file():
            write_synthetic_flickr8k(data_args.dataset, seed=args.seed, **DEMO_DATASET_SIZES)
    if data_args.cache_dir == DEFAULT_CACHE_DIR:
        data_args.cache_dir = str(output_dir / "feature_cache")
    print(f"demo: synthetic Flickr8k-layout dataset in {data_args.dataset}; encoder {model_args.encoder}")

    with_images = train(model_args, data_args, args)
    if "test" not in with_images:
        return with_images
    # The blind baseline is the cross-entropy recipe without images (no SCST stage: it is compared with that). Its
    # folder is recorded as part of the demo's run, so that a re-run of the demo replaces it too.
    blind_dir = output_dir / BLIND_BASELINE_FOLDER
    if PartialState().is_main_process:
        RunFiles.read(output_dir).record(BLIND_BASELINE_FOLDER)
    blind_args = dataclasses.replace(args, blind=True, output_dir=str(blind_dir), scst_epochs=0,
                                     resume_from_checkpoint=LATEST_CHECKPOINT if args.resume else None)
    blind = train(model_args, data_args, blind_args)
    if "test" not in blind:
        return blind

    report = None
    if PartialState().is_main_process:
        report = score_demo_runs(output_dir, blind_dir, data_args, args)
        replace_text_file(output_dir / DEMO_REPORT_FILE, json.dumps(report, indent=1))
        RunFiles.read(output_dir).record(DEMO_REPORT_FILE)
        print_demo_tables(with_images, blind, report, args.eval_num_beams)
        print(f"\nHub-ready folder: {output_dir}   (demo wall time {time.perf_counter() - started:.0f} s)")
    return {"with_images": with_images, "blind": blind, "report": report}


def score_demo_runs(output_dir: Path, blind_dir: Path, data_args, args) -> dict:
    """Content accuracy of both runs' test captions, and for the run with images the linear probe of its features and
    its attention when it names a colour."""
    scenes_file = find_scenes_file(data_args.dataset)
    if scenes_file is None:
        logger.warning("demo: %s has no %s; no content scores", data_args.dataset, SCENES_FILE)
        return {}
    scenes = load_scenes(scenes_file)
    return {"scenes": str(scenes_file), "with_images": score_run(output_dir, data_args, args, scenes),
            "blind": score_run(blind_dir, data_args, args, scenes, features=False)}


def score_run(folder: Path, data_args, args, scenes: dict, features: bool = True) -> dict:
    """One finished run folder scored against the scenes: content accuracy of its test captions and, with `features`,
    the probe and attention grounding of its saved model. A part that fails is logged and left out: the run is
    already saved."""
    examples = json.loads((Path(folder) / "test_captions.json").read_text())
    result = {"content_accuracy": split_content_accuracy([e["image_id"] for e in examples],
                                                         [e["caption"] for e in examples], scenes)}
    if features:
        try:
            result |= _what_the_features_hold(Path(folder), data_args, args, scenes)
        except (OSError, ValueError, RuntimeError) as error:
            logger.warning("demo: the feature probe and attention grounding failed and are left out: %s", error)
    return result


def _what_the_features_hold(output_dir: Path, data_args, args, scenes: dict) -> dict:
    """The linear probe of the saved model's cached features, standardised as its decoder sees them, and where the
    decoder looked when it named an object's colour (test split, two-object images)."""
    model = ShowAttendTellForConditionalGeneration.from_pretrained(output_dir).eval()
    processor = ShowAttendTellProcessor.from_pretrained(output_dir)
    splits = _splits_as_trained(data_args, args)
    cache_dir = Path(data_args.cache_dir).expanduser()
    caches = {name: build_feature_cache(model, processor, split, cache_dir, show_progress=False)  # built by the run: read
              for name, split in splits.items()}

    def standardize(features):
        with torch.no_grad():
            return model.standardize_features(features)

    test_examples = json.loads((output_dir / "test_captions.json").read_text())
    return {
        "feature_probe": probe_cached_features(caches, splits, scenes, standardize),
        "attention_grounding": attention_grounding(model, processor.tokenizer, caches["test"], splits["test"]["image_id"],
                                                   [e["caption"] for e in test_examples], scenes),
    }


def _splits_as_trained(data_args, args) -> dict:
    """The splits the runs used: the same loading and the same limits as train.py."""
    dataset = load_caption_dataset(data_args.dataset, seed=args.seed, verify_images=data_args.verify_images,
                                   allow_split_overlap=data_args.allow_split_overlap)
    limits = {"train": data_args.max_train_images, "validation": data_args.max_eval_images, "test": data_args.max_eval_images}
    return {name: split if limits[name] is None or limits[name] >= len(split) else split.select(range(limits[name]))
            for name, split in ((name, dataset[name]) for name in limits)}
