"""Generate configs/reference.yaml, the documented run config: every stage setting with its default.

    python scripts/config_reference.py          # print it
    python scripts/config_reference.py --write  # write configs/reference.yaml (a test checks it is current)
"""

from __future__ import annotations

import sys
from pathlib import Path

from thinklens.pipeline.reference import render_reference

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "reference.yaml"


def render() -> str:
    """The reference config as YAML text (rendered from RunConfig)."""
    return render_reference()


if __name__ == "__main__":
    text = render()
    if "--write" in sys.argv:
        REFERENCE.write_text(text)
        print(f"wrote {REFERENCE}")
    else:
        sys.stdout.write(text)
