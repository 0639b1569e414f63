"""Feature-cache build rate (JPEG decode + preprocessing + ResNet-152 + fp16 write; the build runs a copy of the
encoder with its BatchNorms folded into the convolutions, on CPU in channels_last) against the bare encoder forward
on already-prepared tensors, in batches of 32 at 224×224: as it is in the default (NCHW) layout, in channels_last,
and as the build runs it, interleaved.

The images are 500×375 JPEGs like Flickr8k's; the ResNet-152 has random weights (the cost is the same).
`--bf16` (opt-in: slow where the CPU has no bf16 matmul units) adds the cache build with the encoder under bf16
autocast (what `train.py --mixed_precision bf16` builds), the same three bare encoders under bf16 autocast, and the
error of the bf16 features (the encoder as the build runs it) against fp32, measured on a trained encoder given with `--encoder FOLDER` (a `ResNetModel`
folder: a converted pretrained ResNet, or the stand-in `bench/standin_encoder.py train` makes in minutes). A random
ResNet is the wrong test of a precision: even with its BatchNorm statistics calibrated on the images it amplifies
any perturbation from layer to layer. Without `--encoder` the error is measured on such a calibrated random
ResNet-152 anyway, next to the error from rounding only its input to bf16 (fp32 arithmetic), which shows how much
of it is the network's amplification rather than bf16 arithmetic.

    python bench/bench_cache.py [--quick] [--images 192] [--repeats 2] [--bf16 [--encoder FOLDER]]
"""

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_arguments, interleaved, load, machine, require_device, table  # noqa: E402

from datasets import Dataset, Image as ImageFeature  # noqa: E402
from transformers import ResNetModel  # noqa: E402

from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402
from hf_imgcap.data.encoder_inference import batch_norm_folded, image_features_for_inference  # noqa: E402
from hf_imgcap.data.feature_cache import build_feature_cache  # noqa: E402
from hf_imgcap.models.show_attend_tell.processing_show_attend_tell import ShowAttendTellProcessor, default_image_processor  # noqa: E402

BATCH = 32


def write_jpegs(folder: Path, count: int) -> list:
    generator = np.random.default_rng(0)
    paths = []
    for index in range(count):
        # Smooth random colour fields compress like photos (pure noise would make unusually large JPEGs).
        small = generator.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        paths.append(str(folder / f"{index:05d}.jpg"))
        image.save(paths[-1], quality=90)
    return paths


def main(argv=None):
    parser = bench_arguments(__doc__)
    parser.add_argument("--images", type=int, default=None, help="default 192 (enough to amortise a build's start-up: its loader workers and the encoder's folded copy, about a second); 32 with --quick")
    parser.add_argument("--repeats", type=int, default=None, help="default 2; 1 with --quick")
    parser.add_argument("--bf16", action="store_true", help="also the encoder under bf16 autocast, and its feature error")
    parser.add_argument("--encoder", type=Path, help="with --bf16: a trained ResNetModel folder to measure the bf16 feature "
                        "error on (e.g. bench/standin_encoder.py's stand-in)")
    args = parser.parse_args(argv)
    device = require_device(args.device)
    args.images = args.images or (32 if args.quick else 192)
    args.repeats = args.repeats or (1 if args.quick else 2)
    print(f"machine: {machine()}; {load()}\n")
    work = Path(tempfile.mkdtemp(prefix="hf_imgcap_bench_"))
    stack = contextlib.ExitStack()
    try:
        paths = write_jpegs(work, args.images)
        dataset = Dataset.from_dict({"image": paths}).cast_column("image", ImageFeature())
        processor = ShowAttendTellProcessor(image_processor=default_image_processor())
        prepared = processor.image_pixel_values(paths).to(device)
        models = {"fp32": resnet152(device), "fp32, channels_last": resnet152(device, channels_last=True)}
        as_cached = stack.enter_context(image_features_for_inference(models["fp32"]))  # the encoder as the cache build runs it
        runs = iter(range(10**6))

        def build(model, encoder_dtype=None):
            return lambda: build_feature_cache(model, processor, dataset, work / f"cache{next(runs)}", batch_size=BATCH, show_progress=False,
                                               encoder_dtype=encoder_dtype)

        def bare(image_features, autocast_dtype=None):
            def run():
                with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    for start in range(0, args.images, BATCH):
                        image_features(prepared[start : start + BATCH])
            return run

        bare_encoders = {"fp32": models["fp32"].get_image_features, "fp32, channels_last": models["fp32, channels_last"].get_image_features,
                         "fp32, channels_last, BatchNorm folded": as_cached}
        functions = {("fp32", "cache build (hf-imgcap)"): build(models["fp32"])}  # BatchNorm folded, channels_last on CPU
        for name, image_features in bare_encoders.items():
            functions[(name, "bare encoder")] = bare(image_features)
        errors = []
        if args.bf16:
            # random weights: the speed is the same as a trained encoder's
            functions[("bf16 autocast", "cache build (hf-imgcap)")] = build(models["fp32"], torch.bfloat16)  # train.py --mixed_precision bf16
            for name, image_features in bare_encoders.items():
                functions[(name.replace("fp32", "bf16 autocast"), "bare encoder")] = bare(image_features, torch.bfloat16)
            if args.encoder:
                trained = ResNetModel.from_pretrained(args.encoder).to(device).eval()
                errors.append([f"{args.encoder} (trained)", *bf16_feature_error(trained, prepared[:BATCH])])
            else:
                calibrated = resnet152(device)
                calibrate_batch_norm(calibrated, prepared)
                errors.append(["random ResNet-152, BatchNorm calibrated", *bf16_feature_error(calibrated.encoder, prepared[:BATCH])])
                errors.append(["the same, fp32 arithmetic, input rounded to bf16",
                               *bf16_feature_error(calibrated.encoder, prepared[:BATCH], round_input_only=True)])
        times = interleaved(functions, repeats=args.repeats, warmup=0, device=device)
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    fp32_bare = times[("fp32", "bare encoder")]
    rows = [[encoder, what, f"{args.images / seconds:.2f}", f"{fp32_bare / seconds:.2f}x"] for (encoder, what), seconds in times.items()]
    print(table(["encoder", "run", "images/s", "vs fp32 bare encoder"], rows))
    print(f"\n{args.images} images, median of {args.repeats} interleaved repeats; {load()}")
    if errors:
        print("\n" + table(["bf16 autocast features against fp32, on", "relative error", "cosine similarity"],
                            [[name, f"{relative:.2%}", f"{cosine:.5f}"] for name, relative, cosine in errors]))
        print(f"\nmedians over {min(BATCH, args.images)} images; last feature map, every region and channel")
    else:
        print("bf16: not run (opt-in: --bf16)")
    build = times[("fp32", "cache build (hf-imgcap)")]
    as_run = times[("fp32, channels_last, BatchNorm folded", "bare encoder")]
    print(f"summary: building the feature cache runs at {as_run / build:.0%} of the rate of the bare encoder it runs "
          f"(BatchNorm folded, channels_last: {args.images / build:.2f} vs {args.images / as_run:.2f} images/s) and "
          f"{fp32_bare / build:.2f}x the bare encoder as it is, in the default layout ({args.images / fp32_bare:.2f} images/s)")
    return times


def resnet152(device, channels_last=False):
    torch.manual_seed(0)
    model = ShowAttendTellForConditionalGeneration(ShowAttendTellConfig()).eval()  # ResNet-152, random weights
    if channels_last:
        model.encoder.to(memory_format=torch.channels_last)  # convolutions then run (and return) NHWC
    return model.to(device)


def calibrate_batch_norm(model, pixel_values):
    """BatchNorm running statistics set to the images' (cumulative average over one pass), as a trained network's
    are to its data: activations then stay well scaled through the stages."""
    batch_norms = [module for module in model.encoder.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    for module in batch_norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative moving average
    model.encoder.train()
    with torch.no_grad():
        for start in range(0, len(pixel_values), BATCH):
            model.encoder(pixel_values[start : start + BATCH])
    model.eval()


def bf16_feature_error(encoder, pixel_values, round_input_only=False) -> tuple[float, float]:
    """Median over images of the relative error and the cosine similarity of `encoder`'s last feature map under bf16
    autocast, run as the cache build runs it (BatchNorm folded, channels_last), against fp32 (as it is);
    `round_input_only`: fp32 arithmetic on the input rounded to bf16 instead."""
    as_cached = batch_norm_folded(encoder) or encoder
    as_cached.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = encoder(pixel_values).last_hidden_state.float().flatten(1)
        if round_input_only:
            low = encoder(pixel_values.bfloat16().float()).last_hidden_state.float().flatten(1)
        else:
            with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16):
                low = as_cached(pixel_values).last_hidden_state.float().flatten(1)
    relative = ((low - reference).norm(dim=1) / reference.norm(dim=1)).median().item()
    cosine = torch.nn.functional.cosine_similarity(low, reference, dim=1).median().item()
    return relative, cosine


if __name__ == "__main__":
    main()
