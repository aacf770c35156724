"""Atomic file writes: a temp file in the target's directory, renamed over the target on success.

A crash or kill mid-write leaves at most a `.tmp-*` file beside the target, never a half-written
target; readers therefore only ever see complete files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path to write; on clean exit it replaces `target` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX + target.name + ".")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        os.chmod(temp, 0o644)  # mkstemp makes files private; artifacts are meant to be shared
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_json_atomic(target: Path, data: Any) -> None:
    """Write `data` as indented JSON to `target`, atomically."""
    with atomic_path(target) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a killed writer left in `directory`; returns how many."""
    stale = list(directory.glob(TEMP_PREFIX + "*")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def remove_stale_temps_under(root: Path) -> int:
    """Delete every temp file under `root` (symlinked directories are not followed out of it); for a
    writer that holds the run's lock, where any temp file is a killed writer's. Returns how many."""
    removed = 0
    for directory, _, files in os.walk(root, followlinks=False):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                (Path(directory) / name).unlink(missing_ok=True)
                removed += 1
    return removed


# ------------------------------------------------------------------------------------ envelopes
ENVELOPE_FORMAT_VERSION = 1
# Where a result is computed, or what it was allowed to use, not what it is: never compared.
PLACEMENT_FIELDS = frozenset({"device", "allow_other_model"})


def result_settings(config: Any) -> dict[str, Any]:
    """The settings that decide a result: a pydantic config as JSON, without its placement (`device`).

    What an envelope's `config`, a trained SAE's record and a database's arguments hold, so a run may
    resume or be re-checked on another device.
    """
    return config.model_dump(mode="json", exclude=PLACEMENT_FIELDS & set(type(config).model_fields))


def without_placement(recorded: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings (which may predate this rule and hold `device`) without their placement."""
    return {key: value for key, value in recorded.items() if key not in PLACEMENT_FIELDS}


def write_envelope(target: Path, inputs: dict[str, Any], config: dict[str, Any], result: Any) -> None:
    """Write a derived artifact as {format_version, inputs, config, result}, atomically.

    `inputs` names what the result was computed from (hashes of the input artifacts), `config` the
    settings; together they are what `fresh_result` compares.
    """
    write_json_atomic(Path(target), {"format_version": ENVELOPE_FORMAT_VERSION, "inputs": _plain(inputs),
                                     "config": _plain(config), "result": result})


def fresh_result(target: Path, inputs: dict[str, Any], config: dict[str, Any],
                 companions: tuple[Path, ...] | list[Path] = ()) -> Any | None:
    """The one freshness rule: the stored result when `target` was made from these inputs and this config.

    None (so: compute it again) when the file or one of its `companions` (a plot, a page) is missing,
    unreadable, or records other inputs or another config.
    """
    target = Path(target)
    if not target.is_file() or not all(Path(path).is_file() for path in companions):
        return None
    try:
        document = json.loads(target.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    same = document.get("inputs") == _plain(inputs) and document.get("config") == _plain(config)
    return document.get("result") if same else None


def _plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples become lists, paths strings), so comparisons are fair."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
