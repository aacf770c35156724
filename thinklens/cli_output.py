"""What the CLI prints: a stage's result (facts, tables, notes) and `thinklens run`'s progress."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from thinklens.pipeline import RunDir, RunObserver
from thinklens.pipeline.estimate import StagePlan
from thinklens.pipeline.stage import Stage, StageResult

console = Console()
err_console = Console(stderr=True)


def print_facts(title: str, facts: dict[str, str]) -> None:
    """A two-column table of what a stage did."""
    table = Table(title=title, show_header=False)
    for name, value in facts.items():
        table.add_row(name, value)
    console.print(table)


def print_result(result: StageResult) -> None:
    """A stage's result: its facts (or its one line), its tables, its notes."""
    if result.facts:
        print_facts(result.headline, result.facts)
    elif result.skipped or not result.tables:
        console.print(result.headline, highlight=False, soft_wrap=True)
    for each in result.tables:
        table = Table(title=each.title)
        for number, column in enumerate(each.columns):
            table.add_column(column, justify="left" if number == 0 else "right")
        for row in each.rows:
            table.add_row(*row)
        console.print(table)
    for line in result.lines:
        console.print(line, highlight=False, soft_wrap=True)


class RunPrinter(RunObserver):
    """`thinklens run`'s output: a numbered rule per stage, what --from removed, each result."""

    def __init__(self, from_stage: str | None) -> None:
        self.from_stage = from_stage

    def stage_started(self, number: int, total: int, stage: Stage, removed: list[Path]) -> None:
        console.rule(f"[bold]{number}/{total} {stage.name}")
        for path in removed:
            console.print(f"--from {self.from_stage}: removed {path}", highlight=False)

    def stage_finished(self, stage: Stage, result: StageResult) -> None:
        print_result(result)


def print_run_outputs(root: RunDir) -> None:
    """Where a finished run's main outputs are."""
    console.rule("[bold]done")
    for path in (root.report_html, root.map_html, root.features_db):
        console.print(f"{path.name}: {path}", highlight=False, soft_wrap=True)


def print_plan(plans: list[StagePlan], source: str | None) -> None:
    """`thinklens run --dry-run`: one row per stage, the totals, and where the rates come from."""
    table = Table(title="plan (nothing run)")
    for number, column in enumerate(("stage", "where", "tokens", "writes", "time", "")):
        table.add_column(column, justify="right" if number in (2, 3, 4) else "left")
    for plan in plans:
        table.add_row(plan.stage, plan.where, "—" if plan.tokens is None else f"{plan.tokens:,}",
                      "—" if plan.bytes_written is None else _bytes(plan.bytes_written),
                      "—" if plan.seconds is None else _duration(plan.seconds), plan.note)
    known = [plan.bytes_written for plan in plans if plan.bytes_written is not None]
    timed = [plan.seconds for plan in plans if plan.seconds is not None]
    table.add_row("total", "", "", _bytes(sum(known)), _duration(sum(timed)) if timed else "—",
                  "of the stages with a figure")
    console.print(table)
    console.print(f"rates: {source or 'none given (set plan.throughput in the config to estimate times)'}",
                  highlight=False, soft_wrap=True)


def _bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} TB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
