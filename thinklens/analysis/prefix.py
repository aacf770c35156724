"""Prefix statistics: how traces open, per prompt set. Needs only the traces.

R1's English traces open with "Okay," more than 95 % of the time; this measures the same for any
run: the share opening with "Okay,", the most common opening words and phrases, how often the
prefix pattern matched (and was cut at its token cap), and the prefix length in tokens.
A forced opening (the `think` format's default) makes the "Okay," share 100 % by construction;
the result says so, so nobody mistakes it for the model's habit.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.figures import pyplot, save_figure
from thinklens.models.formats import make_format

OKAY_OPENING = "Okay,"
TOP_OPENINGS = 10
OPENING_WORDS = 4
THINK_TAG = re.compile(r"^\s*(?:<think>)?\s*")
WORD = re.compile(r"\S+")


@dataclass
class OpeningStats:
    """How the traces of one prompt set (or of all) open."""

    source: str
    traces: int
    okay_share: float  # share whose reasoning starts with "Okay,"
    prefix_match_rate: float  # share where the prefix pattern matched
    prefix_truncated_rate: float  # share of matched prefixes cut at the token cap
    prefix_tokens: dict[str, float]  # mean, min, p10, median, p90, max over matched prefixes
    prefix_length_counts: dict[int, int]  # prefix length in tokens -> traces
    top_first_words: list[tuple[str, int]]
    top_openings: list[tuple[str, int]]  # first OPENING_WORDS words
    top_prefixes: list[tuple[str, int]] = field(default_factory=list)  # whole matched prefix texts


@dataclass
class PrefixReport:
    """Prefix statistics of a run: all traces, then one entry per prompt set."""

    forced_opening: str | None
    overall: OpeningStats
    by_source: list[OpeningStats]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reasoning_opening(completion: str) -> str:
    """The completion with a leading `<think>` tag and whitespace removed: where the reasoning starts."""
    return THINK_TAG.sub("", completion, count=1)


def prefix_statistics(traces_dir: Path) -> PrefixReport:
    """Measure the openings of every trace in `traces_dir`, overall and per prompt set (`source`)."""
    store = TraceStore(traces_dir)
    meta = store.meta()
    if meta is None or len(store) == 0:
        raise ThinklensError(f"no traces in {traces_dir}: run `thinklens collect` first")
    columns = ["source", "format", "completion", "prefix_start", "prefix_end", "prefix_matched", "prefix_truncated", "prefix_text"]
    table = store.read(columns).to_pydict()
    sources = table["source"]
    # A forced opening is rendered into the prompt, so the completion starts after it.
    forced = make_format(table["format"][0], forced_opening=meta["identity"].get("forced_opening")).forced_opening
    openings = [reasoning_opening(forced + completion) for completion in table["completion"]]
    overall = _opening_stats("all", table, openings, range(len(sources)))
    by_source = [
        _opening_stats(source, table, openings, [i for i, s in enumerate(sources) if s == source])
        for source in sorted(set(sources))
    ]
    return PrefixReport(forced_opening=forced or None, overall=overall, by_source=by_source)


def _opening_stats(source: str, table: dict[str, list], all_openings: list[str], rows: Any) -> OpeningStats:
    rows = list(rows)
    openings = [all_openings[i] for i in rows]
    words = [WORD.findall(text) for text in openings]
    matched = [i for i in rows if table["prefix_matched"][i]]
    lengths = np.array([table["prefix_end"][i] - table["prefix_start"][i] for i in matched], dtype=np.int64)
    return OpeningStats(
        source=source,
        traces=len(rows),
        okay_share=_share(text.startswith(OKAY_OPENING) for text in openings),
        prefix_match_rate=len(matched) / max(len(rows), 1),
        prefix_truncated_rate=_share(table["prefix_truncated"][i] for i in matched),
        prefix_tokens=_distribution(lengths),
        prefix_length_counts={int(k): int(v) for k, v in sorted(Counter(lengths.tolist()).items())},
        top_first_words=Counter(w[0] for w in words if w).most_common(TOP_OPENINGS),
        top_openings=Counter(" ".join(w[:OPENING_WORDS]) for w in words if w).most_common(TOP_OPENINGS),
        top_prefixes=Counter(table["prefix_text"][i].strip() for i in matched).most_common(TOP_OPENINGS),
    )


def _share(flags: Any) -> float:
    values = [bool(flag) for flag in flags]
    return sum(values) / len(values) if values else 0.0


def _distribution(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    quantiles = np.quantile(values, [0.1, 0.5, 0.9])
    return {"mean": float(values.mean()), "min": float(values.min()), "p10": float(quantiles[0]),
            "median": float(quantiles[1]), "p90": float(quantiles[2]), "max": float(values.max())}


def plot_prefix(report: PrefixReport, path: Path) -> Path:
    """Two panels: prefix length histogram per prompt set, and the most common openings."""
    plt = pyplot()
    figure, (lengths, openings) = plt.subplots(1, 2, figsize=(11, 3.8))
    for stats in report.by_source:
        if stats.prefix_length_counts:
            xs = list(stats.prefix_length_counts)
            lengths.bar(xs, [stats.prefix_length_counts[x] for x in xs], alpha=0.6, label=stats.source)
    lengths.set_xlabel("prefix length (tokens)")
    lengths.set_ylabel("traces")
    lengths.set_title("prefix length per prompt set", fontsize=10)
    if report.by_source:
        lengths.legend(fontsize=8)
    top = report.overall.top_openings[::-1]
    openings.barh([text for text, _ in top], [count / report.overall.traces for _, count in top], color="#4c72b0")
    openings.set_xlabel("share of traces")
    forced = f" (forced: {report.forced_opening!r})" if report.forced_opening else ""
    openings.set_title(f"top openings; 'Okay,' share {report.overall.okay_share:.0%}{forced}", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)
