"""Feature-cache build rate (JPEG decode + preprocessing + ResNet-152 + fp16 write) against the bare encoder
forward on already-prepared tensors, both in batches of 32 at 224×224.

The images are 500×375 JPEGs like Flickr8k's; the ResNet-152 has random weights (the cost is the same).

    python bench/bench_cache.py [--images 128] [--repeats 2]
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, table  # noqa: E402

from datasets import Dataset, Image as ImageFeature  # noqa: E402
from hf_imgcap import ShowAttendTellConfig, ShowAttendTellForConditionalGeneration  # noqa: E402
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)  # enough that start-up (worker, weight hash) is amortised
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="hf_imgcap_bench_"))
    try:
        paths = write_jpegs(work, args.images)
        dataset = Dataset.from_dict({"image": paths}).cast_column("image", ImageFeature())
        torch.manual_seed(0)
        model = ShowAttendTellForConditionalGeneration(ShowAttendTellConfig()).eval()  # ResNet-152
        processor = ShowAttendTellProcessor(image_processor=default_image_processor())
        prepared = processor.image_pixel_values(paths)
        runs = iter(range(10**6))

        def build():
            build_feature_cache(model, processor, dataset, work / f"cache{next(runs)}", batch_size=BATCH, show_progress=False)

        def bare():
            with torch.inference_mode():
                for start in range(0, args.images, BATCH):
                    model.get_image_features(prepared[start : start + BATCH])

        times = interleaved({"cache build": build, "bare encoder": bare}, repeats=args.repeats, warmup=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [[name, f"{args.images / seconds:.2f}", f"{times['bare encoder'] / seconds:.0%}"] for name, seconds in times.items()]
    print(table(["", "images/s", "of bare encoder rate"], rows))
    print(f"summary: building the feature cache runs at {times['bare encoder'] / times['cache build']:.0%} of the bare "
          f"ResNet-152 forward rate ({args.images / times['cache build']:.2f} vs {args.images / times['bare encoder']:.2f} images/s; goal 90%)")
    return times


if __name__ == "__main__":
    main()
