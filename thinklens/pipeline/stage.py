"""What a stage is: its declaration (`Stage`) and what one run of it returns (`StageResult`).

A stage module defines `run(config, rundir, progress) -> StageResult` and one `STAGE = Stage(...)`;
`registry.py` lists the modules in pipeline order. The CLI builds each stage's command from its
declaration (options, help), and `thinklens run` / `pipeline.run` call `run` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Table:
    """A small table a stage reports (the CLI prints it; a server could render it)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass
class StageResult:
    """What one run of a stage did: skipped or not, the facts to print, the files written."""

    skipped: bool
    headline: str  # "train → RUN/sae", or "nothing to do: …" when skipped
    facts: dict[str, str] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # further one-line notes, printed after the tables
    written: list[Path] = field(default_factory=list)
    resolved: dict[str, Any] = field(default_factory=dict)  # recorded in run.yaml under stages.<stage>.resolved

    @classmethod
    def nothing_to_do(cls, reason: str, lines: list[str] | None = None) -> StageResult:
        """A skipped stage: its artifacts are complete and up to date."""
        return cls(skipped=True, headline=f"nothing to do: {reason}", lines=lines or [])


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once.

    `reads`/`writes` name `RunDir` artifacts (`RunDir.artifact`); `writes` is what `--from` removes.
    `options` maps each command-line option (and each flat key a run config may use, the form of
    run.yaml format 1) to the dotted path of the config field it sets; its help is that field's
    description.
    """

    name: str
    config: type[BaseModel]
    run: Callable[[Any, Any, bool], StageResult]
    help: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)  # option → its one-letter alias
    needs_section: bool = False  # the config has required fields: a run config must set them
    recorded: bool = True  # a run that did work is written to run.yaml's `stages`

