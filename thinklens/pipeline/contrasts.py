"""`thinklens contrast` on a run directory: check the artifacts, run the contrast, say what it found."""

from __future__ import annotations

from thinklens.features.contrast import ContrastConfig, ContrastFeature, ContrastReport, run_contrast
from thinklens.pipeline.lock import run_lock
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import StageResult, Table

COLUMNS = ("feature", "AUROC A vs B", "interval", "log2 rate A/B", "interval", "rate A", "rate B", "label", "top example")


def contrast_in_run(config: ContrastConfig, rundir: RunDir, progress: bool = True,
                    device: str = "auto") -> tuple[ContrastReport, StageResult]:
    """Run the contrast on RUN's traces, activations, SAE and features.db, into RUN/contrasts/NAME/."""
    for artifact, stage in (("traces", "collect"), ("activations", "harvest"), ("sae_weights", "train"),
                            ("features_db", "index")):
        rundir.require(artifact, stage)
    directory = rundir.contrast_dir(config.contrast_name())
    with run_lock(rundir.root, "contrast"):
        report = run_contrast(config, rundir.traces, rundir.activations, rundir.sae, rundir.features_db, directory,
                              show_progress=progress, device=device)
    sets = {side: f"{selector!r} ({report.tokens[side]:,} tokens, {report.traces[side]} traces)"
            for side, selector in (("a", report.a), ("b", report.b))}
    tables = [Table(f"features of {title}, by {report.unit}: AUROC and log2 firing-rate ratio A/B, 95 % bootstrap "
                    "over traces", COLUMNS, [_row(feature) for feature in features])
              for title, features in ((f"A = {sets['a']}", report.a_features), (f"B = {sets['b']}", report.b_features))]
    held = [f"held out, best feature of {side.upper()}: {pick['feature_id']} at AUROC {pick['auroc']:.3f} "
            f"[{pick['low']:.3f}, {pick['high']:.3f}]" for side, pick in report.held_out.items() if pick]
    return report, StageResult(
        skipped=False,
        headline=f"contrast {report.name}" + (f" (segment {report.segment})" if report.segment else ""),
        tables=tables,
        lines=held + [f"direction (mean A − mean B, norm {report.direction_norm:.3g}): {report.direction_path}",
                      f"every feature's row: features.db, table contrasts, name = '{report.name}'"],
        written=[directory, rundir.features_db],
    )


def _row(feature: ContrastFeature) -> tuple[str, ...]:
    example = feature.examples[0] if feature.examples else None
    shown = f"{example['before']}[{example['token']}]{example['after']}".replace("\n", "⏎") if example else ""
    return (str(feature.feature_id), f"{feature.auroc:.3f}", f"[{feature.auroc_low:.3f}, {feature.auroc_high:.3f}]",
            f"{feature.log2_rate_ratio:+.2f}", f"[{feature.ratio_low:+.2f}, {feature.ratio_high:+.2f}]",
            f"{feature.rate_a:.1%}", f"{feature.rate_b:.1%}", feature.label or "", shown[-48:])
