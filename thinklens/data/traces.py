"""The trace store: `RUN/traces/`, Parquet parts written atomically, one per collected batch.

    traces/meta.json            format version + the identity of the run that wrote the traces
    traces/part-000000.parquet  one batch of traces (named by its first sequence id)

A part appears only when its batch is complete, so a killed collection loses at most the batch in
flight, and a re-run finds the finished sequence ids and skips them. Traces of another run (other
model, prompts, format or sampling) are refused rather than mixed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from thinklens.errors import ThinklensError, refuse_other_identity
from thinklens.files import atomic_path, remove_stale_temps, write_json_atomic
from thinklens.models.loader import ModelConfig

TRACES_FORMAT_VERSION = 1
META_FILE = "_meta.json"  # leading underscore: Parquet dataset readers skip it

TRACE_SCHEMA = pa.schema(
    [
        ("sequence_id", pa.int64()),
        ("prompt_id", pa.string()),
        ("source", pa.string()),
        ("prompt", pa.string()),
        ("reference_answer", pa.string()),
        ("metadata", pa.string()),  # JSON object: set-specific facts such as the operator
        ("token_ids", pa.list_(pa.int32())),
        ("text", pa.string()),  # decoded token_ids, the text segment boundaries refer to
        ("completion", pa.string()),  # the part the model wrote (from generation_start)
        ("n_tokens", pa.int32()),
        ("generation_start", pa.int32()),
        ("prompt_end", pa.int32()),
        ("prefix_start", pa.int32()),
        ("prefix_end", pa.int32()),
        ("thinking_end", pa.int32()),
        ("has_thinking", pa.bool_()),
        ("thinking_closed", pa.bool_()),
        ("prefix_matched", pa.bool_()),
        ("prefix_truncated", pa.bool_()),
        ("prefix_text", pa.string()),
        ("answer_text", pa.string()),
        ("answer", pa.string()),  # extracted final answer
        ("correct", pa.bool_()),  # null when the prompt has no reference answer
        ("finish_reason", pa.string()),  # eos | length | imported
        ("format", pa.string()),
    ]
)


class TraceStore:
    """Read and append the traces of one run directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def meta_path(self) -> Path:
        return self.directory / META_FILE

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def meta(self) -> dict[str, Any] | None:
        if not self.meta_path.is_file():
            return None
        return json.loads(self.meta_path.read_text())

    def model_config(self, **overrides: Any) -> ModelConfig:
        """The ModelConfig of the model that wrote these traces, with `overrides` (e.g. device) applied."""
        meta = self.meta()
        if meta is None:
            raise ThinklensError(f"no traces in {self.directory}: run `thinklens collect` first")
        return ModelConfig(**{**meta["identity"]["model"], **overrides})

    def check_claim(self, identity: dict[str, Any]) -> bool:
        """Refuse if the store holds another run's traces (writing nothing); True when it is new."""
        existing = self.meta()
        if existing is None:
            if self.parts():
                raise ThinklensError(
                    f"{self.directory} holds trace parts without {META_FILE}: use another --out or remove that directory"
                )
            return True
        if existing.get("format_version", 0) > TRACES_FORMAT_VERSION:
            raise ThinklensError(f"{self.directory} was written by a newer thinklens: upgrade thinklens to read it")
        refuse_other_identity(self.directory, existing.get("identity", {}), identity, "traces of another run",
                              f"use another --out or remove {self.directory}")
        return False

    def claim(self, identity: dict[str, Any]) -> None:
        """Make the store ours for `identity`, or refuse if it holds another run's traces. Call it once the
        inputs are known good (the model loaded): a claimed store refuses any other identity."""
        if self.check_claim(identity):
            write_json_atomic(self.meta_path, {"format_version": TRACES_FORMAT_VERSION, "identity": identity})
            return
        remove_stale_temps(self.directory)

    def done_sequence_ids(self) -> set[int]:
        """Sequence ids already written (reads only that column)."""
        done: set[int] = set()
        for part in self.parts():
            done.update(_read_part(part, ["sequence_id"]).column(0).to_pylist())
        return done

    def write_part(self, rows: list[dict[str, Any]]) -> Path:
        """Write one batch of traces atomically; returns the part's path."""
        if not rows:
            raise ValueError("write_part needs at least one row")
        table = pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)
        target = self.directory / f"part-{min(row['sequence_id'] for row in rows):06d}.parquet"
        with atomic_path(target) as temp:
            pq.write_table(table, temp, compression="zstd", write_page_checksum=True)
        return target

    def read(self, columns: Iterable[str] | None = None, where: Any = None) -> pa.Table:
        """All traces (those matching `where`, a `pyarrow.dataset` expression, when given), sorted by sequence
        id. Every read of the traces comes here, where each page's checksum is verified."""
        parts = self.parts()
        if not parts:
            raise ThinklensError(f"no traces in {self.directory}: run `thinklens collect --out {self.directory.parent}` first")
        names = list(columns) if columns is not None else None
        tables = [_read_part(part, names, where=where) for part in parts]
        table = pa.concat_tables(tables)
        return table.sort_by("sequence_id") if "sequence_id" in table.column_names else table

    def verify(self, columns: Iterable[str]) -> None:
        """Read `columns` of every part once, keeping nothing (so: checksums checked, one part in memory): a
        stage that will read them refuses a corrupt part before it writes anything."""
        for part in self.parts():
            _read_part(part, list(columns))

    def __len__(self) -> int:
        return sum(_read_part(part, None, rows_only=True) for part in self.parts())


def summarize_traces(store: TraceStore) -> dict[str, float]:
    """Counts and shares over all traces: tokens, closed thinking, matched prefix, correct answers."""
    table = store.read(
        ["n_tokens", "generation_start", "thinking_closed", "prefix_matched", "correct", "finish_reason"]
    ).to_pydict()
    count = len(table["n_tokens"])
    graded = [value for value in table["correct"] if value is not None]
    return {
        "traces": count,
        "tokens": sum(table["n_tokens"]),
        "generated_tokens": sum(n - g for n, g in zip(table["n_tokens"], table["generation_start"], strict=True)),
        "thinking_closed": sum(table["thinking_closed"]) / count,
        "prefix_matched": sum(table["prefix_matched"]) / count,
        "hit_token_cap": table["finish_reason"].count("length") / count,
        "accuracy": sum(graded) / len(graded) if graded else float("nan"),
    }


def _read_part(part: Path, columns: list[str] | None, rows_only: bool = False, where: Any = None) -> Any:
    """One trace part (or, `rows_only`, its row count from the footer alone); a corrupt or truncated part
    is named with the fix (collect regenerates what is missing)."""
    try:
        if rows_only:
            return pq.read_metadata(part).num_rows
        # Page checksums: a page zstd stored raw (token ids often are) would otherwise read back damaged bytes
        return pq.read_table(part, columns=columns, filters=where, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise ThinklensError(f"{part} is corrupt ({str(exc).splitlines()[0][:100]}): delete it and run `thinklens "
                             f"collect --out {part.parent.parent}` again to regenerate its traces") from None
