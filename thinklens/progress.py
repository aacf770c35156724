"""Progress display for long stages (Rich), usable from the library without the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressHandle:
    """Advance a progress bar by items, and count tokens to show a tokens/s rate."""

    def __init__(self, progress: Progress | None, task_id: int | None, unit: str = "tok") -> None:
        self._progress = progress
        self._task_id = task_id
        self._unit = unit
        self._started = time.perf_counter()
        self.tokens = 0

    def advance(self, items: int = 1, tokens: int = 0, status: str | None = None) -> None:
        """Count `items` done and `tokens` processed; `status` replaces the live status text (e.g. loss)."""
        self.tokens += tokens
        if self._progress is None or self._task_id is None:
            return
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        fields = {"rate": f"{self.tokens / elapsed:,.0f} {self._unit}/s" if self.tokens else ""}
        if status is not None:
            fields["status"] = status
        self._progress.update(self._task_id, advance=items, **fields)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, unit: str = "tok") -> Iterator[ProgressHandle]:
    """A Rich progress bar with items done/total, a rate (`unit`s counted per second, once any are), elapsed
    and remaining time."""
    if not enabled:
        yield ProgressHandle(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task_id = progress.add_task(description, total=total, rate="", status="")
        yield ProgressHandle(progress, task_id, unit)
