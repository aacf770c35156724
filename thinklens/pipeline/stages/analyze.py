"""analyze: prefix statistics, massive activations and attention sinks, segment shift → RUN/analysis/."""

from __future__ import annotations

from typing import Any

from thinklens.analysis.outputs import AnalyzeConfig, run_analyses
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult, Table


def run(config: AnalyzeConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Run each analysis whose inputs or settings changed; the others are kept."""
    outcome = run_analyses(config, rundir.traces, rundir.activations, rundir.sae, rundir.features_db,
                           rundir.analysis, show_progress=progress)
    lines = [f"{name}: up to date ({rundir.analysis_json(name)})" for name in outcome.skipped]
    lines += [f"{name}: " + "  ".join(str(path) for path in paths) for name, paths in outcome.written.items()]
    facts, tables = _headlines(outcome.results)
    return StageResult(
        skipped=not outcome.written,  # an all-up-to-date re-run leaves run.yaml (and so the report) alone
        headline="prefix statistics",
        facts=facts,
        tables=tables,
        lines=lines,
        written=[path for paths in outcome.written.values() for path in paths],
        resolved={"written": sorted(outcome.written), "up_to_date": outcome.skipped},
    )


def _headlines(results: dict[str, dict[str, Any]]) -> tuple[dict[str, str], list[Table]]:
    """The headline numbers of each analysis: the prefix facts, then the sinks and shift tables."""
    facts: dict[str, str] = {}
    tables: list[Table] = []
    if "prefix" in results:
        overall, forced = results["prefix"]["overall"], results["prefix"]["forced_opening"]
        facts = {
            "traces": f"{overall['traces']:,}",
            "opening with 'Okay,'": f"{overall['okay_share']:.1%}" + (f" (forced: {forced!r})" if forced else ""),
            "prefix pattern matched": f"{overall['prefix_match_rate']:.1%}",
            "prefix tokens (median)": f"{overall['prefix_tokens'].get('median', float('nan')):.0f}",
        }
    if "sinks" in results:
        sinks = results["sinks"]
        tables.append(Table(
            f"where attention sinks sit ({sinks['traces']} traces, head threshold {sinks['sink_threshold']})",
            ("place", "positions", "norm ratio (peak)", "attention received", "share of sinks",
             "share of sinks after first token"),
            [(p["place"], f"{p['positions']:,}", f"{p['norm_ratio_peak']:.1f}", f"{p['attention_mass']:.3f}",
              f"{p['share_of_sinks']:.1%}", f"{p['share_of_sinks_after_first']:.1%}") for p in sinks["places"]],
        ))
    if "shift" in results:
        tables.append(Table(
            "segment shift: Jensen–Shannon divergence of feature distributions (95 % bootstrap)",
            ("segments", "JSD (bits)", "interval"),
            [(f"{d['a']} – {d['b']}", f"{d['jsd']:.3f}", f"[{d['low']:.3f}, {d['high']:.3f}]")
             for d in results["shift"]["divergences"]],
        ))
    return facts, tables


STAGE = Stage(
    name="analyze",
    config=AnalyzeConfig,
    run=run,
    help="Prefix statistics, massive activations and attention sinks, segment shift → RUN/analysis/*.json + *.png.",
    reads=("traces", "activations", "sae", "features_db"),
    writes=tuple(f"analysis_{kind}:{name}" for name in ("prefix", "sinks", "shift") for kind in ("json", "png")),
    options={"sink_traces": "sinks.traces", "sink_max_tokens": "sinks.max_tokens",
             "sink_threshold": "sinks.sink_threshold", "bootstrap": "shift.bootstrap", "top": "shift.top",
             "skip_sinks": "skip_sinks", "skip_shift": "skip_shift", "layer": "shift.layer", "device": "device"},
)
