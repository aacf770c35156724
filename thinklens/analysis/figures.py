"""Matplotlib without a display, and one way to save a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinklens.files import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, never a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, dpi: int = 120) -> Path:
    """Write `figure` to `path` (PNG, atomically) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    pyplot().close(figure)
    return path
