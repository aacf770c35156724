"""Matplotlib without a display, and the one way every figure of the package is saved (atomically)."""

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


def save_figure(figure: Any, path: Path, dpi: int = 120, close: bool = True) -> Path:
    """Write `figure` to `path` atomically, in the format its suffix names (png, svg…), then close it.

    Pass `close=False` to save the same figure again in another format.
    """
    path = Path(path)
    with atomic_path(path) as temp:  # the temp name hides the suffix: say the format
        figure.savefig(temp, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    if close:
        pyplot().close(figure)
    return path
