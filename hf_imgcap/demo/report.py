# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""What `python train.py --demo` prints at the end: the test metrics with images (cross-entropy, then SCST) beside an
image-blind baseline, content accuracy beside the linear probe of the same features, and a few captions with verdicts."""

from hf_imgcap.demo.content_accuracy import SceneVocabulary, load_scenes, scene_of, score_caption
from hf_imgcap.hub import METRIC_LABELS


def print_demo_tables(with_images: dict, blind: dict, report: dict, num_beams: int):
    """BLEU & co. with images vs blind (the runs' metrics.json); content accuracy (with images, blind, linear probe)
    and example captions with verdicts from the demo's `report` (`run.score_demo_runs`)."""
    names = [n for n in METRIC_LABELS if n in with_images["test"]]
    header = f"{'test split (' + str(with_images['test']['num_images']) + ' images)':<28}" + "".join(f"{METRIC_LABELS[n][1]:>9}" for n in names)
    print("\n" + header)
    rows = [("with images", with_images["test"]), ("image-blind baseline", blind["test"])]
    if "scst" in with_images:  # the cross-entropy model the SCST stage started from, then the SCST model
        rows[:1] = [("with images, cross-entropy", with_images["scst"]["cross_entropy_test"]), ("with images, + SCST", with_images["test"])]
    for label, test in rows:
        print(f"{label:<28}" + "".join(f"{test.get(n, float('nan')):>9.3f}" for n in names))
    if "scst" in with_images:
        scst = with_images["scst"]
        kept = ("" if scst.get("kept", "scst") == "scst" else
                " (no SCST epoch beat the cross-entropy model on validation: that model was kept)")
        print(f"\nSCST ({scst['epochs']} epochs, {scst['seconds']:.0f} s): test CIDEr-D {scst['cross_entropy_test']['cider']:.3f} -> "
              f"{with_images['test']['cider']:.3f}{kept}; mean sampled reward by epoch {[entry['reward'] for entry in scst['history']]}")
    print(f"\nBLEU-4 {with_images['test']['bleu_4']:.3f} with images vs {blind['test']['bleu_4']:.3f} blind "
          f"(COCO-caption BLEU, beam {num_beams})")
    scenes = vocabulary = None
    if "with_images" in report and "blind" in report:
        print_content_table(report["with_images"], report["blind"])
        scenes = load_scenes(report["scenes"])
        vocabulary = SceneVocabulary.from_scenes(scenes)
    print("\nA few test images:")
    for example, blind_example in demo_examples(with_images["test_examples"], blind["test_examples"], scenes):
        scene = scene_of(example["image_id"], scenes) if scenes is not None else None
        verdict = (f" [{score_caption(example['caption'], scene, vocabulary).summary()}]"
                   if scene is not None and example["caption"] is not None else "")
        print(f"  {example['image_id']}: {example['caption']!r}{verdict}\n      blind: {blind_example['caption']!r}; "
              f"a reference: {example['references'][0]!r}")


def print_content_table(with_images: dict, blind: dict):
    """Does the caption say what the image shows? Beside what a linear probe reads from the same features. Each
    argument is a run's part of the demo report: `content_accuracy`, and for the run with images `feature_probe` and
    `attention_grounding`."""
    def cell(score):
        return f"{score['accuracy']:>9.3f}" if score and score.get("accuracy") is not None else f"{'n/a':>9}"

    content, probe = with_images["content_accuracy"], with_images.get("feature_probe") or {}
    print(f"\n{'content accuracy (test split)':<28}{'colour':>9}{'shape':>9}{'relation':>9}")
    for label, result in (("with images", content), ("image-blind baseline", blind["content_accuracy"])):
        print(f"{label:<28}{cell(result['one_object']['color'])}{cell(result['one_object']['shape'])}{cell(result['relation'])}")
    print(f"{'linear probe (features)':<28}{cell(probe.get('color'))}{cell(probe.get('shape'))}{cell(probe.get('relation'))}")
    print(f"colour and shape: the {content['one_object']['color']['total']} one-object images; relation: the "
          f"{content['relation']['total']} two-object images. Over every object of every image, the captions name "
          f"the colour right {content['color']['correct']}/{content['color']['total']} and the shape "
          f"{content['shape']['correct']}/{content['shape']['total']}.")
    grounding = with_images.get("attention_grounding")
    if grounding:
        print(f"Attention when a caption names the colour of an object (two-object images, {grounding['colour_words']} "
              f"words): {grounding['on_named_object']:.2f} on that object's half of the regions, "
              f"{grounding['on_other_object']:.2f} on the other object's half ({grounding['half_share']:.2f} each if "
              f"uniform). Saying which object is where needs the first clearly above the second.")
    alone = probe.get("relation_alone")
    if alone and alone.get("accuracy") is not None:
        print(f"The probe's relation: its readings of each object's colour and shape by place, and of the axis, written "
              f"as a caption and scored like the captions. A classifier of the relation alone (4 classes, objects not "
              f"named) reads {alone['accuracy']:.3f}.")


def demo_examples(examples: list, blind_examples: list, scenes: dict | None, count: int = 4) -> list:
    """(with images, blind) example pairs: half one-object, half two-object images when the scenes are known."""
    pairs = list(zip(examples, blind_examples))
    if scenes is None:
        return pairs[:count]
    by_kind = {1: [], 2: []}
    for pair in pairs:
        scene = scene_of(pair[0]["image_id"], scenes)
        if scene is not None:
            by_kind[len(scene["objects"])].append(pair)
    chosen = by_kind[1][: count // 2] + by_kind[2][: count - count // 2]
    return chosen if len(chosen) == count else pairs[:count]
