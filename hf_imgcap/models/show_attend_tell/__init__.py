"""The Show, Attend and Tell model as a remote-code bundle: every module of this folder is copied next to the weights
when a model and its processor are saved (the modeling and processing files and everything they import relatively),
so a saved folder loads with `trust_remote_code=True` without hf_imgcap. This file itself is not part of the bundle."""

from pathlib import Path


def bundle_code_files() -> tuple[str, ...]:
    """The names of the bundle's code files, as a saved model folder holds them."""
    return tuple(sorted(path.name for path in Path(__file__).parent.glob("*.py") if path.name != "__init__.py"))
