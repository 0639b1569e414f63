# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""Write a Gradio Space for a captioner: `app.py`, `requirements.txt`, a README.md with the Space's metadata and a few
example images from the model's own test set. Needs no gradio (the Space installs it); `hf-imgcap space` runs this."""

import io
import json
import logging
import re
import shutil
from importlib import metadata
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData
from PIL import Image

from hf_imgcap import __version__
from hf_imgcap.models.show_attend_tell.image_loading import verify_image

logger = logging.getLogger(__name__)

APP_FILE, REQUIREMENTS_FILE, README_FILE, EXAMPLES_FOLDER = "app.py", "requirements.txt", "README.md", "examples"
TEST_CAPTIONS_FILE, TRAINING_ARGS_FILE = "test_captions.json", "training_args.json"
DEFAULT_NUM_EXAMPLES = 3
# Pinned to what the Space was written and tested with when that is installed here; else the major version.
PINNED_PACKAGES = {"gradio": "gradio>=6,<7", "torch": "torch>=2.4", "transformers": "transformers>=5.0,<6"}
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")

APP_TEMPLATE = '''\
"""Caption an image, see where the model looked for each word, compare the top beams (hf-imgcap's Space page).

Runs as a Hugging Face Space, or locally: `python app.py` serves the page on http://127.0.0.1:7860 (offline: no
analytics, no share link). `python app.py --model path/or/repo --port 8000` serves another model or port.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from hf_imgcap.space.captioning import SpaceCaptioner
from hf_imgcap.space.page import build_page, serve

MODEL = {model_literal}
TITLE = {title_literal}
DESCRIPTION = {description_literal}
EXAMPLES = sorted(str(path) for path in (Path(__file__).resolve().parent / "examples").glob("*") if path.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help="saved model folder or Hub repo id (default: %(default)s)")
    parser.add_argument("--port", type=int, help="default: $GRADIO_SERVER_PORT, else 7860")
    args = parser.parse_args()
    serve(build_page(SpaceCaptioner.load(args.model), TITLE, EXAMPLES, DESCRIPTION), port=args.port)


if __name__ == "__main__":
    main()
'''


def write_space(model: str, output, *, repo_id: str | None = None, title: str | None = None, license: str = "apache-2.0",
                examples: list | None = None, num_examples: int = DEFAULT_NUM_EXAMPLES, hf_imgcap_requirement: str | None = None) -> Path:
    """Write the Space for `model` (a saved model folder or a Hub repo id) into the folder `output` and return it.

    The app loads `repo_id` when given (the Space on the Hub), else `model`. Examples: the images given, else up to
    `num_examples` images named by the model folder's test_captions.json, found in the dataset its training_args.json
    names (none, with a warning, when that dataset cannot be read here).
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: exists and is not a folder (the Space is written into a folder)")
    model_folder = Path(model).expanduser() if Path(model).expanduser().is_dir() else None
    load_from = repo_id or (str(model_folder.resolve()) if model_folder else model)
    title = title or f"{default_name(model, model_folder, repo_id)} captioner"
    output.mkdir(parents=True, exist_ok=True)
    if examples is None:
        examples = test_set_examples(model_folder, num_examples) if model_folder else []
    copied = copy_examples(examples, output / EXAMPLES_FOLDER)
    # The page names a local model by its folder's name only: the path of the machine that wrote the Space is no one's business.
    description = (f"Captions by [{repo_id}](https://huggingface.co/{repo_id}) " if repo_id else f"Captions by the model `{default_name(model, model_folder, None)}` ") + (
        "(Show, Attend and Tell). Under the caption, the attention behind each word: red where the model looked most, "
        "on one colour scale for the whole caption.")
    # JSON string literals are Python string literals: any name, quote or backslash is safe in the code.
    (output / APP_FILE).write_text(APP_TEMPLATE.format(
        model_literal=json.dumps(load_from), title_literal=json.dumps(title), description_literal=json.dumps(description)))
    (output / REQUIREMENTS_FILE).write_text(requirements(hf_imgcap_requirement))
    space_card(title, repo_id, license).save(output / README_FILE)
    logger.info("wrote the Space for %s to %s (%d example images)", load_from, output, len(copied))
    return output


def default_name(model: str, model_folder: Path | None, repo_id: str | None) -> str:
    """The repository's name, else the model folder's."""
    if repo_id:
        return repo_id.split("/")[-1]
    return model_folder.resolve().name if model_folder else model.rstrip("/").split("/")[-1]


def requirements(hf_imgcap_requirement: str | None = None) -> str:
    """requirements.txt: hf-imgcap (the app uses its page and the model through it) and gradio, torch, transformers
    pinned to the versions installed here."""
    lines = [hf_imgcap_requirement or installed_hf_imgcap_requirement()]
    for name, fallback in PINNED_PACKAGES.items():
        version = installed_version(name)
        lines.append(f"{name}=={version}" if version else fallback)
    return "\n".join(lines) + "\n"


def installed_hf_imgcap_requirement() -> str:
    """The requirements.txt line that installs, on another machine, the hf-imgcap installed here: its version when it
    came from a package index, else the VCS commit or archive URL pip recorded (`direct_url.json`, PEP 610). An
    install from this machine's files (an editable checkout, a local wheel) has no such line: the version is pinned
    and a warning says how to point the Space at the code."""
    # Installs only (an INSTALLER file): a checkout's setuptools egg-info, found first when Python runs from the
    # checkout, records nothing about where the code can be fetched.
    installs = [dist for dist in metadata.distributions(name="hf-imgcap") if dist.read_text("INSTALLER")]
    version = installs[0].version if installs else (installed_version("hf-imgcap") or __version__)
    pinned = f"hf-imgcap=={version}"
    origin = _direct_url(installs[0]) if installs else {"url": "a source checkout"}
    if origin is None:  # from a package index
        return pinned
    url, subdirectory = str(origin.get("url", "")), origin.get("subdirectory")
    fragment = f"#subdirectory={subdirectory}" if subdirectory else ""
    remote = url.startswith(("https://", "http://", "ssh://", "git://"))
    vcs = origin.get("vcs_info")
    if remote and isinstance(vcs, dict) and vcs.get("vcs"):
        revision = vcs.get("commit_id") or vcs.get("requested_revision")
        return f"hf-imgcap @ {vcs['vcs']}+{url}{'@' + revision if revision else ''}{fragment}"
    if remote and url.startswith(("https://", "http://")):
        return f"hf-imgcap @ {url}{fragment}"
    logger.warning("hf-imgcap here comes from %s, which the Space cannot install: its requirements.txt pins %s, which "
                   "pip finds only once that version is on PyPI. Pass --hf-imgcap-requirement (write_space's "
                   "hf_imgcap_requirement=) with a line that installs your copy, e.g. 'hf-imgcap @ git+https://...'",
                   url, pinned)
    return pinned


def _direct_url(dist) -> dict | None:
    """The install's `direct_url.json` (None: installed from a package index); an unreadable one as an unknown origin."""
    text = dist.read_text("direct_url.json")
    if text is None:
        return None
    try:
        origin = json.loads(text)
    except ValueError:
        origin = None
    return origin if isinstance(origin, dict) else {"url": "an unreadable direct_url.json"}


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def space_card(title: str, repo_id: str | None, license: str) -> SpaceCard:
    """README.md of the Space: the metadata the Hub reads (sdk, app file, the model it shows) and a short text."""
    data = SpaceCardData(
        title=title, sdk="gradio", sdk_version=installed_version("gradio") or "6.0.0", app_file=APP_FILE,
        license=license, models=[repo_id] if repo_id else None, short_description="Image captioning with attention maps",
        emoji="🖼️", colorFrom="blue", colorTo="red", pinned=False,
    )
    model = f"[{repo_id}](https://huggingface.co/{repo_id})" if repo_id else "the model"
    body = (f"# {title}\n\nUpload a photo (or pick an example from the model's test set) to read the caption {model} "
            "writes, where it looked for each word, and the top beams of the beam search with their scores.\n\n"
            "Run it locally: `pip install -r requirements.txt && python app.py` (serves on http://127.0.0.1:7860).\n")
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def test_set_examples(model_folder: Path, count: int) -> list:
    """Up to `count` test images of the run in `model_folder` (test_captions.json names them by image_id), taken from
    the dataset its training_args.json names: each a path or a datasets image dict. [] with a warning if unavailable."""
    named = model_folder / TEST_CAPTIONS_FILE
    if count < 1 or not named.is_file():
        return []
    try:
        wanted = [str(example["image_id"]) for example in json.loads(named.read_text())][:count]
        data_args = json.loads((model_folder / TRAINING_ARGS_FILE).read_text()).get("data", {})
        dataset = data_args["dataset"]
    except (OSError, ValueError, TypeError, KeyError) as error:
        logger.warning("no example images: %s or %s cannot be read (%s)", named, model_folder / TRAINING_ARGS_FILE, error)
        return []
    try:
        test_split = load_test_split(dataset, data_args)
    except (OSError, ValueError) as error:  # not here, not downloadable offline, moved
        logger.warning("no example images: the test set of %s cannot be loaded here (%s); pass --examples", dataset, error)
        return []
    rows = {image_id: row for image_id, row in zip(test_split["image_id"], range(len(test_split)))}
    found = [test_split[rows[image_id]]["image"] for image_id in wanted if image_id in rows]
    if len(found) < len(wanted):
        logger.warning("%d of the %d example images named in %s are not in the test set of %s", len(wanted) - len(found),
                       len(wanted), named, dataset)
    return found


def load_test_split(dataset: str, data_args: dict):
    import datasets

    from hf_imgcap.data.caption_datasets import load_caption_dataset

    test = load_caption_dataset(dataset, dataset_config=data_args.get("dataset_config"), revision=data_args.get("revision"),
                                verify_images=False)["test"]
    return test.cast_column("image", datasets.Image(decode=False))  # {"bytes", "path"}: copied as they are


def copy_examples(examples: list, folder: Path) -> list[Path]:
    """Copy each image (a path or a datasets image dict) into `folder` as it is, after checking that the processor
    would accept it; one that would not is logged and left out. Examples an earlier run wrote there are replaced."""
    for earlier in folder.glob("[0-9][0-9]_*") if folder.is_dir() else []:
        if earlier.is_file() or earlier.is_symlink():
            earlier.unlink()
    if not examples:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for index, example in enumerate(examples):
        try:
            verify_image(example)
            target = folder / example_name(example, index)
            data = example.get("bytes") if isinstance(example, dict) else None
            if data is not None:
                target.write_bytes(data)
            else:
                shutil.copyfile(example["path"] if isinstance(example, dict) else example, target)
        except (OSError, ValueError) as error:
            logger.warning("example image %d left out: %s", index, error)
            continue
        copied.append(target)
    return copied


def example_name(example, index: int) -> str:
    """`<index>_<original name>`: the examples keep their order and never collide; no path separators or odd characters."""
    path = example.get("path") if isinstance(example, dict) else example
    name = SAFE_NAME.sub("_", Path(str(path)).name) if path else "image"
    if not Path(name).suffix:  # embedded bytes without a file name: the format Pillow reads from the header
        name += "." + image_format(example)
    return f"{index:02d}_{name}"


def image_format(example) -> str:
    data = example.get("bytes") if isinstance(example, dict) else None
    with Image.open(io.BytesIO(data) if data is not None else (example["path"] if isinstance(example, dict) else example)) as opened:
        return (opened.format or "png").lower()
