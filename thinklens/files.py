"""Atomic file writes: a temp file in the target's directory, renamed over the target on success.

A crash or kill mid-write leaves at most a `.tmp-*` file beside the target, never a half-written
target; readers therefore only ever see complete files.

While a stage holds its run's lock (`confine_writes`), every write made through this module must
land inside the run directory: a symlink in the run that leads out of it (`RUN/sae -> ../other/sae`)
is read through, never written through. The check runs before anything is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thinklens.errors import ThinklensError

TEMP_PREFIX = ".tmp-"
_write_roots: list[Path] = []  # the resolved run directories whose lock this process holds, innermost last


@contextmanager
def confine_writes(root: Path) -> Iterator[None]:
    """Refuse, while the block runs, writes made through this module that would land outside `root`.

    Process-wide rather than per thread: harvest writes its shards from a worker thread.
    """
    _write_roots.append(Path(root).resolve())
    try:
        yield
    finally:
        _write_roots.pop()


def check_inside_run(path: Path, follow: bool = False) -> Path:
    """`path` as a write will reach it (its directory resolved; itself too with `follow`, for a file
    written in place or a directory written into); a one-line error when that lies outside the run
    whose writes are confined."""
    path = Path(path)
    where = path.resolve() if follow else path.parent.resolve() / path.name
    if _write_roots:
        root = _write_roots[-1]
        if where != root and root not in where.parents:
            raise ThinklensError(
                f"refusing to write {path}: it leads to {where}, outside the run directory {root} (a symlink in the "
                "run points out of it); replace the link with a copy of what it points to, or run in that directory")
    return where


def ensure_dir(directory: Path) -> Path:
    """`directory`, created (with its parents) when missing; confined like every write."""
    check_inside_run(directory, follow=True)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextmanager
def atomic_path(target: Path, confined: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on clean exit it replaces `target` atomically.

    `confined=False` is for caches that live outside any run (DataMapPlot's assets).
    """
    if confined:
        check_inside_run(target.parent, follow=True)
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


def write_json_atomic(target: Path, data: Any, confined: bool = True) -> None:
    """Write `data` as indented JSON to `target`, atomically."""
    with atomic_path(target, confined) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a killed writer left in `directory`; returns how many."""
    check_inside_run(directory, follow=True)
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
PLACEMENT_FIELDS = frozenset({"device", "allow_other_model", "workers", "ray_address", "nproc",
                              "checkpoint_seconds", "distribute_layers"})


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
    unreadable, or records other inputs or another config. Then the caller will write them, so they are
    checked to land inside the run first (`check_inside_run`): a refusal comes before the work.
    """
    target = Path(target)
    document = _stored_result(target, companions)
    if isinstance(document, dict) and document.get("inputs") == _plain(inputs) and document.get("config") == _plain(
            config):
        return document.get("result")
    for path in (target, *companions):
        check_inside_run(Path(path))
    return None


def _stored_result(target: Path, companions: tuple[Path, ...] | list[Path]) -> Any:
    if not target.is_file() or not all(Path(path).is_file() for path in companions):
        return None
    try:
        return json.loads(target.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples become lists, paths strings), so comparisons are fair."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
