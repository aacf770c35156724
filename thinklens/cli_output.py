"""What the CLI prints: a stage's result (facts, tables, notes) and `thinklens run`'s progress."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from thinklens.pipeline import RunObserver
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
