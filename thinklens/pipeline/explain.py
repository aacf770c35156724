"""`thinklens explain` on a run directory: labels from an LLM endpoint, scored, into RUN/features.db."""

from __future__ import annotations

import time

from thinklens.features.autointerp.examples import ExampleSource
from thinklens.features.autointerp.run import ExplainConfig, explain_run, format_interval
from thinklens.features.context import ContextEncoder
from thinklens.features.db import FeatureDB, open_read_only
from thinklens.pipeline.lock import run_lock
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import StageResult, Table
from thinklens.progress import progress_bar


def explain_in_run(config: ExplainConfig, rundir: RunDir, progress: bool = True, dry_run: bool = False
                   ) -> StageResult | str:
    """Explain and score RUN's features (a dry run returns the first explainer prompt, and sends nothing)."""
    db_path = rundir.require("features_db", "index")
    with FeatureDB(db_path) as db:
        layer = db.meta().get("layer")
    sae = None
    if rundir.sae_weights.is_file():
        from thinklens.sae.formats import load_sae

        sae = load_sae(rundir.sae).eval()
    context = ContextEncoder.for_store(rundir.activation_store, sae, layer) if sae is not None else None
    source = ExampleSource(open_read_only(db_path), config.window, sae, context, config.seed)
    if dry_run:
        return explain_run(config, db_path, source, dry_run=True)
    started = time.perf_counter()
    with run_lock(rundir.root, "explain"):
        total = len(config.features) if config.features is not None else config.limit
        with progress_bar("explain", total=total, enabled=progress) as bar:
            result = explain_run(config, db_path, source, progress=lambda _f: bar.advance(1))
    minutes = (time.perf_counter() - started) / 60
    summary = result.summary()
    rows = [(method, kind, str(parts["balanced_accuracy"][key]["n"]),
             *(format_interval(parts[metric][key]) for metric in ("balanced_accuracy", "auroc")))
            for method, parts in summary.items()
            for kind, key in (("real labels", "real"), ("shuffled (control)", "shuffled"))]
    usage = result.usage
    return StageResult(
        skipped=result.explained == 0,
        headline=f"explain → {db_path} (autointerp, label_scores)",
        tables=[Table("the scorer on held-out examples: means with 95 % bootstrap intervals over features",
                      ("method", "labels", "features", "balanced accuracy", "AUROC"), rows)],
        lines=[f"explained {result.explained} features ({result.skipped} already labelled were kept), "
               f"{result.unparsable_labels} answers without a label; {result.explained / max(minutes, 1e-9):.1f} "
               "features per minute",
               *(f"control ({method}, {metric.replace('_', ' ')}): do real labels beat shuffled ones? "
                 f"{part['separates']}" for method, parts in summary.items() for metric, part in parts.items()),
               f"{usage.requests} requests ({usage.retries} retried), {usage.prompt_tokens:,} prompt + "
               f"{usage.completion_tokens:,} completion tokens"],
        written=[db_path],
    )
