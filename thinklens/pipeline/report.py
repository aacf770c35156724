"""report.html: one self-contained page a researcher reads after a run (works offline).

Sections: the findings (each claim of the R1 study with its number, interval and verdict), run summary (model, layer, tokens, SAE metrics), prefix statistics, massive activations and
attention sinks, segment shift, the most segment-specific features with their top examples, the
feature map (static image embedded, interactive map.html linked), the steering sweep (plots and
regime table), and the commands that reproduce each part. Images are embedded as data URIs. The page
is rebuilt only when one of the files it is made from changed (their sha256 are kept in
RUN/analysis/report.json, the same envelope every derived artifact has).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from thinklens.data.traces import summarize_traces
from thinklens.errors import ThinklensError
from thinklens.files import atomic_path, fresh_result, write_envelope
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult
from thinklens.sae.formats import read_sae_card

SECTIONS = ("findings", "summary", "prefix", "sinks", "shift", "features", "labels", "map", "steering", "reproduce")

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.5rem 2rem 4rem; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #e5e5ea; padding-bottom: .3rem; margin-top: 2.4rem; }
nav a { margin-right: .9rem; } table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border-bottom: 1px solid #e5e5ea; padding: .25rem .6rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; } img { max-width: 100%; border: 1px solid #eee; }
code, pre { background: #f5f5f7; border-radius: 4px; } pre { padding: .7rem; overflow-x: auto; font-size: .85rem; }
.example { font-family: ui-monospace, monospace; font-size: .8rem; white-space: pre-wrap; text-align: left; }
.example mark { background: #ffd54f; } .muted { color: #6e6e73; font-size: .9rem; }
.regime-unchanged { background: #eee; } .regime-steered { background: #c8eec8; }
.regime-reverted { background: #f8e1b0; } .regime-broken { background: #f4c1c1; }
.verdict-reproduced { background: #dcf2dc; } .verdict-not-reproduced { background: #f8dada; }
.verdict-inconclusive { background: #eee; }
"""

# Marks the body with how many images decoded, so a headless browser's DOM dump can check them.
IMAGE_CHECK = """
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesBroken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
});
"""


def write_report(rundir: RunDir) -> tuple[Path, bool]:
    """Write RUN/report.html from the run's artifacts; returns (path, skipped because nothing changed).

    The page's inputs are the files it is made from; their sha256 go into the envelope
    RUN/analysis/report.json, so an unchanged run keeps its page.
    """
    inputs = {str(path.relative_to(rundir.root)): hashlib.sha256(path.read_bytes()).hexdigest()
              for path in _input_files(rundir)}
    # the labels section shows a summary of features.db, not the file: the summary is the input
    inputs["features.db:labels"] = hashlib.sha256(json.dumps(_stored_labels(rundir), default=str).encode()).hexdigest()
    if fresh_result(rundir.report_json, inputs, {}, [rundir.report_html]) is not None:
        return rundir.report_html, True
    page = render_report(rundir)
    with atomic_path(rundir.report_html) as temp:
        temp.write_text(page, encoding="utf-8")
    write_envelope(rundir.report_json, inputs, {}, {"bytes": len(page.encode())})
    return rundir.report_html, False


def render_report(rundir: RunDir) -> str:
    """The report page as a string."""
    run = rundir.root
    if not rundir.traces.is_dir():
        raise ThinklensError(f"{run} holds no traces: run `thinklens run --out {run}` first")
    facts = _load(rundir)
    body = [
        f"<h1>thinklens report · {html.escape(str(facts['title']))}</h1>",
        f"<p class=muted>run directory <code>{html.escape(str(run.resolve()))}</code></p>",
        "<nav>" + "".join(f"<a href='#{name}'>{name}</a>" for name in SECTIONS) + "</nav>",
        _findings(rundir, facts), _summary(facts), _prefix(rundir, facts), _sinks(rundir, facts), _shift(rundir, facts), _features(facts),
        _labels(rundir, facts), _map(rundir, facts), _steering(rundir, facts), _reproduce(rundir, facts),
    ]
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>thinklens report · {html.escape(str(facts['title']))}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}<script>{IMAGE_CHECK}</script></body></html>\n"
    )


# ----------------------------------------------------------------------------------------- inputs
def _input_files(rundir: RunDir) -> list[Path]:
    """Every file the page shows something of (the traces, the SAE, eval, analyses, map, sweeps)."""
    named = [rundir.run_yaml, rundir.eval_json, rundir.sae_cfg, rundir.map_png, rundir.trace_store.meta_path,
             rundir.findings_json, rundir.findings_png]
    named += [rundir.analysis_json(name) for name in ("prefix", "sinks", "shift", "map")]
    named += [rundir.analysis_png(name) for name in ("prefix", "sinks", "shift", "swap")]
    files = [path for path in named if path.is_file()]
    files += rundir.trace_store.parts()
    files += sorted(p for p in rundir.sweeps.glob("*/*") if p.suffix in (".json", ".png") and p.name != "sweep.json")
    return files


def _load(rundir: RunDir) -> dict[str, Any]:
    def result(name: str) -> dict[str, Any] | None:
        path = rundir.analysis_json(name)
        return json.loads(path.read_text())["result"] if path.is_file() else None

    run_yaml = rundir.record().model_dump(mode="json")
    card = read_sae_card(rundir.sae) if rundir.sae_cfg.is_file() else None
    sweeps = []
    for summary in sorted(rundir.sweeps.glob("*/summary.json")):
        sweeps.append({"directory": summary.parent, **json.loads(summary.read_text())})
    store = rundir.trace_store
    model = store.model_config().model if store.meta() else "?"
    layer = "?" if card is None or card.config.layer is None else card.config.layer
    return {
        "title": f"{model} · layer {layer}",
        "model": model,
        "layer": layer,
        "run_yaml": run_yaml or {},
        "sae": card,
        "eval": _eval_result(rundir.eval_json),
        "traces": summarize_traces(store) if store.meta() else {},
        "prefix": result("prefix"), "sinks": result("sinks"), "shift": result("shift"), "map": result("map"),
        "sweeps": sweeps,
        "findings": json.loads(rundir.findings_json.read_text())["result"] if rundir.findings_json.is_file() else None,
        "labels": _stored_labels(rundir),
    }


def _stored_labels(rundir: RunDir) -> dict[str, Any] | None:
    """The LLM labels' scores in features.db (by model, prompt, scorer and method) and the best-scored labels."""
    if not rundir.features_db.is_file():
        return None
    from thinklens.features.autointerp.run import stored_summary
    from thinklens.features.db import open_read_only
    from thinklens.features.labels import HEURISTIC_MODEL

    connection = open_read_only(rundir.features_db)
    try:
        best = connection.execute("SELECT feature_id, label, quality, model_name FROM autointerp WHERE model_name != ? "
                                  "AND quality IS NOT NULL ORDER BY quality DESC, feature_id LIMIT 10",
                                  (HEURISTIC_MODEL,)).fetchall()
        return {"groups": stored_summary(connection), "best": [list(row) for row in best]}
    finally:
        connection.close()


def _eval_result(path: Path) -> dict[str, Any] | None:
    """eval.json's report: the envelope's result (the first layout kept the report at the top level)."""
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    return document["result"] if "result" in document else document


# ----------------------------------------------------------------------------------------- pieces
def _section(name: str, title: str, *parts: str) -> str:
    return f"<section id='{name}'><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def _table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f" class='{row_classes[i]}'" if row_classes else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p class=muted>({html.escape(alt)}: not made yet)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


def _missing(command: str) -> str:
    return f"<p class=muted>Not computed yet: run <code>{html.escape(command)}</code>.</p>"


def _pct(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:.1%}"


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}g}"


def _findings(rundir: RunDir, facts: dict[str, Any]) -> str:
    findings = facts["findings"]
    if findings is None:
        return _section("findings", "Findings", _missing(f"thinklens findings {rundir.root}"))
    rows = [[str(f["claim"]), html.escape(f["statement"]), html.escape(f["metric"]), _num(f["value"]),
             f"[{_num(f['low'])}, {_num(f['high'])}]", _num(f["bar"]),
             f"<b>{html.escape(f['verdict'])}</b><br><span class=muted>{html.escape(f['reason'])}</span>",
             f"<code>{html.escape(f['command'])}</code>"] for f in findings["findings"]]
    return _section(
        "findings", "Findings: the R1 study's claims on this run",
        "<p class=muted>Verdict rule: <b>reproduced</b> when the whole 95 % interval lies on the claim's side of the "
        "bar, <b>not reproduced</b> when it lies on the other side, <b>inconclusive</b> when it contains the bar or "
        "the number cannot be measured here. A claim this run does not show is a result.</p>",
        _table(["claim", "the study says", "measured", "value", "95 % interval", "bar", "verdict", "command"], rows,
               [f"verdict-{f['verdict'].replace(' ', '-')}" for f in findings["findings"]]),
        _image(rundir.findings_png, "each claim's number and interval against its bar"),
        *(_image(rundir.analysis_png(name), caption) for name, caption in (
            ("swap", "operator swap: swapped and correct answers against strength"),
            ("brevity", "thinking length: mean thinking tokens and correct answers against strength"))
          if rundir.analysis_png(name).is_file()),
    )


def _summary(facts: dict[str, Any]) -> str:
    traces, stages = facts["traces"], facts["run_yaml"].get("stages", {})
    harvested = stages.get("harvest", {}).get("resolved", {}).get("tokens")
    sae = facts["sae"].config if facts["sae"] is not None else None
    rows = [
        ["model", html.escape(str(facts["model"]))],
        ["layer (SAE hook)", html.escape(str(sae.hook_name if sae is not None and sae.hook_name else facts["layer"]))],
        ["traces", f"{traces.get('traces', 0):,}"],
        ["generated tokens", f"{int(traces.get('generated_tokens', 0)):,}" if traces else "–"],
        ["harvested tokens", f"{harvested:,}" if harvested else "–"],
        ["SAE", html.escape(f"{sae.arch}, {sae.d_in} → {sae.d_sae}, k {sae.k or '–'}" if sae is not None else "–")],
    ]
    evaluation = facts["eval"]
    if evaluation:
        overall, lm = evaluation["overall"], evaluation.get("lm") or {}
        rows += [
            ["held-out FVU", _num(overall["fvu"])], ["L0", f"{overall['l0']:.1f}"],
            ["dead / dense features (held-out)", f"{_pct(overall.get('dead_fraction'))} / "
             f"{_pct(overall.get('dense_fraction'))} on {overall.get('tokens', 0):,} tokens"],
        ]
        if evaluation.get("dead_fraction_training") is not None:
            rows.append(["dead over the training window", f"{_pct(evaluation['dead_fraction_training'])} (no firing in "
                         f"the last {evaluation['dead_window_tokens']:,} training tokens)"])
        if lm:
            rows.append(["next-token loss clean → spliced (recovered)",
                         f"{lm['clean']:.3f} → {lm['spliced']:.3f} ({_pct(lm['loss_recovered'])})"])
    return _section("summary", "Run summary", _table(["", ""], rows))


def _prefix(rundir: RunDir, facts: dict[str, Any]) -> str:
    run = rundir.root
    prefix = facts["prefix"]
    if not prefix:
        return _section("prefix", "Prefix statistics", _missing(f"thinklens analyze {run}"))
    forced = prefix["forced_opening"]
    note = (f"<p class=muted>The opening {html.escape(repr(forced))} was forced (the think format's default), so the "
            "'Okay,' share is 100 % by construction; what follows it is the model's.</p>") if forced else ""
    rows = [[html.escape(s["source"]), f"{s['traces']:,}", _pct(s["okay_share"]), _pct(s["prefix_match_rate"]),
             _num(s["prefix_tokens"].get("median")), _num(s["prefix_tokens"].get("p90")),
             "<br>".join(html.escape(f"{t} ({c})") for t, c in s["top_openings"][:3])]
            for s in [prefix["overall"], *prefix["by_source"]]]
    table = _table(["prompt set", "traces", "opens with 'Okay,'", "prefix matched", "prefix tokens (median)",
                    "p90", "top openings"], rows)
    return _section("prefix", "Prefix statistics", note, table, _image(rundir.analysis_png("prefix"), "prefix"))


def _sinks(rundir: RunDir, facts: dict[str, Any]) -> str:
    run = rundir.root
    sinks = facts["sinks"]
    if not sinks:
        return _section("sinks", "Massive activations and attention sinks", _missing(f"thinklens analyze {run}"))
    rows = [[html.escape(p["place"]), f"{p['positions']:,}", f"{p['norm_ratio_peak']:.1f}",
             f"{p['attention_mass']:.3f}", _pct(p["sink_share"]), _pct(p["share_of_sinks"]),
             _pct(p["share_of_sinks_after_first"])] for p in sinks["places"]]
    intro = (f"<p>{sinks['traces']} traces, {sinks['layers']} layers × {sinks['heads']} heads, eager attention. "
             f"A head treats a position as a sink when later queries give it more than {sinks['sink_threshold']} "
             "of their attention on average. The plots align traces on the end of the opening prefix.</p>")
    table = _table(["place", "positions", "norm / median (peak layer)", "attention received", "sink share of heads",
                    "share of all sinks", "share of sinks after the first token"], rows)
    return _section("sinks", "Massive activations and attention sinks", intro, table,
                    _image(rundir.analysis_png("sinks"), "sinks"))


def _shift(rundir: RunDir, facts: dict[str, Any]) -> str:
    run = rundir.root
    shift = facts["shift"]
    if not shift:
        return _section("shift", "Segment shift", _missing(f"thinklens analyze {run}"))
    tokens = ", ".join(f"{name} {count:,}" for name, count in shift["tokens"].items())
    rows = [[html.escape(f"{d['a']} – {d['b']}"), f"{d['jsd']:.3f}", f"[{d['low']:.3f}, {d['high']:.3f}]"]
            for d in shift["divergences"]]
    return _section(
        "shift", "Segment shift",
        f"<p>Tokens per segment: {html.escape(tokens)}. Jensen–Shannon divergence (bits) between the segments' "
        "feature distributions, 95 % bootstrap over sequences:</p>",
        _table(["segments", "JSD", "interval"], rows), _image(rundir.analysis_png("shift"), "shift"),
    )


def _features(facts: dict[str, Any]) -> str:
    shift = facts["shift"]
    if not shift:
        return _section("features", "Segment-specific features", _missing("thinklens analyze RUN"))
    parts = []
    for segment, features in shift["enriched"].items():
        rows = []
        for item in features[:5]:
            examples = "".join(
                f"<div class=example>{html.escape(e['before'])}<mark>{html.escape(e['token'])}</mark>"
                f"{html.escape(e['after'])}</div>" for e in item["examples"][:2]
            )
            rows.append([f"#{item['feature_id']}", html.escape(item["label"] or ""), f"{item['rate']:.2%}",
                         f"{item['rate_elsewhere']:.3%}", f"{item['log2_enrichment']:.1f}", examples])
        parts.append(f"<h3>{html.escape(segment)}</h3>" + _table(
            ["feature", "label", "rate here", "rate elsewhere", "log2 enrichment", "top examples"], rows))
    return _section("features", "Segment-specific features", *parts)


def _labels(rundir: RunDir, facts: dict[str, Any]) -> str:
    labels = facts["labels"]
    if not labels or not labels["groups"]:
        return _section("labels", "LLM labels, scored", "<p>Only heuristic labels (dominant token and segment).</p>",
                        _missing(f"thinklens explain {rundir.root} --base-url URL --model NAME"))
    from thinklens.features.autointerp.run import format_interval as interval

    rows = [[g["model"], g["prompt_version"], g["scorer"], g["method"], g["real_ba"]["n"], g["unparsable"],
             interval(g["real_ba"]), interval(g["shuffled_ba"]), interval(g["real_auroc"]), interval(g["shuffled_auroc"]),
             f"{g['separates'].split(':')[0]} / {g['separates_auroc'].split(':')[0]}"]
            for g in labels["groups"] if g["method"] != "explain"]
    unlabelled = "".join(f"<p>{g['unparsable']} features got no usable label from {html.escape(str(g['model']))} "
                         f"({html.escape(str(g['prompt_version']))}).</p>"
                         for g in labels["groups"] if g["method"] == "explain")
    intro = ("<p>Each label was scored on held-out examples it was not written from: <em>detection</em> (which texts "
             "does the feature fire in?) and <em>fuzzing</em> (are the marked tokens where it fires?). The control "
             "scores the same examples with another feature's label; real labels mean something only where they beat "
             "it. Means over features with bootstrap 95 % intervals.</p>")
    table = _table(["labels by", "prompt", "scorer", "method", "features", "unparsable", "balanced accuracy",
                    "shuffled", "AUROC", "shuffled", "beats control (BA / AUROC)"], rows)
    best = _table(["feature", "label", "detection balanced accuracy", "model"],
                  [[f, label, _num(quality), model] for f, label, quality, model in labels["best"]]) \
        if labels["best"] else ""
    return _section("labels", "LLM labels, scored", intro, table, unlabelled, best)


def _map(rundir: RunDir, facts: dict[str, Any]) -> str:
    run = rundir.root
    layout = facts["map"]
    if not layout:
        return _section("map", "Feature map", _missing(f"thinklens map {run}"))
    link = "<p><a href='map.html'>Open the interactive map (map.html)</a>: hover for labels, search by text.</p>" \
        if rundir.map_html.is_file() else ""
    what = "where they fire (stored examples per trace, tf-idf)" if layout.get("layout", "decoder") == "coactivation" \
        else "their decoder directions"
    agreement = layout.get("agreement") or {}
    rows = [[key, f"{part['neighbours']:.3f} [{part['neighbours_low']:.3f}, {part['neighbours_high']:.3f}]",
             f"{part['random']:.3f}", f"{part['ratio']:.1f}× [{part['ratio_low']:.1f}, {part['ratio_high']:.1f}]"]
            for key, part in agreement.items() if "ratio" in part]
    meaning = ("<p>How much the layout means: the share of (feature, one of its "
               f"{next(iter(agreement.values()))['k']} nearest map neighbours) pairs that share a key, against random "
               "pairs.</p>" + _table(["key", "neighbours agree", "random pairs agree", "ratio"], rows)) if rows else ""
    regions = ", ".join(str(n) for n in layout.get("regions", []))
    if layout.get("named_by_model"):
        regions += f" (named by a model: {', '.join(str(n) for n in layout['named_by_model'])}; the rest by tokens)"
    return _section("map", "Feature map",
                    f"<p>{layout['live']:,} live features of {layout['features']:,} ({layout['dead']:,} dead, left "
                    f"out); UMAP under cosine distance of {what}. Named regions (HDBSCAN, fine to coarse): "
                    f"{regions or 'none'}; the static image is coloured by the segment where each fires most.</p>",
                    link, _image(rundir.map_png, "feature map"), meaning)


def _steering(rundir: RunDir, facts: dict[str, Any]) -> str:
    run = rundir.root
    if not facts["sweeps"]:
        experiments = ("<p>The study's steering experiments (operator swap, thinking length) are in the Findings "
                       "section above.</p>" if facts["findings"] is not None else "")
        return _section("steering", "Steering sweep", experiments, _missing(f"thinklens sweep {run} --feature F"))
    parts = []
    for sweep in facts["sweeps"]:
        config, points = sweep["config"], sweep["points"]
        patterns = ", ".join(f"{policy}: {'yes' if seen else 'no'}" for policy, seen in sweep["oversteering"].items())
        rows = [[html.escape(p["policy"]), f"{p['strength']:g}", html.escape(p["regime"]), f"{p['shift']:.2f}",
                 f"{p['ppl_ratio']:.2f}", f"{p['distinct2_ratio']:.2f}", _num(p["means"].get("readback"))]
                for p in points]
        parts.append(
            f"<h3>feature {config['feature']} ({html.escape(config['mode'])}, {len(config['policies'])} policies, "
            f"{config['prompts']} prompts × {config['samples']} samples)</h3>"
            f"<p>Oversteering pattern (steered → reverted → broken): {html.escape(patterns)}.</p>"
            + _table(["policy", "strength", "regime", "behaviour shift", "perplexity ×", "distinct-2 ×", "read back"],
                     rows, [f"regime-{p['regime']}" for p in points])
            + _image(sweep["directory"] / "behaviour.png", "behaviour vs strength")
            + _image(sweep["directory"] / "coherence.png", "coherence vs strength")
        )
    return _section("steering", "Steering sweep", *parts)


def _reproduce(rundir: RunDir, facts: dict[str, Any]) -> str:
    run = rundir.root
    commands = [
        f"thinklens run --config {run}/run.yaml --out {run}    # everything; finished stages are skipped",
        f"thinklens run --config {run}/run.yaml --out {run} --from analyze    # redo analyze and what follows",
        f"thinklens eval {run}", f"thinklens analyze {run}", f"thinklens map {run}",
        f"thinklens features {run} show FEATURE", f"thinklens features {run} search TEXT",
    ]
    commands += [f"thinklens sweep {run} --feature {s['config']['feature']} --strengths "
                 f"{','.join(f'{x:g}' for x in s['config']['strengths'])} --policy {','.join(s['config']['policies'])}"
                 for s in facts["sweeps"]]
    commands.append(f"thinklens report {run}")
    return _section("reproduce", "Reproduce",
                    "<p>Every setting that ran is in <code>run.yaml</code> (section <code>config</code>: the options "
                    "of each stage; <code>stages</code>: what each resolved to).</p>",
                    "<pre>" + html.escape("\n".join(commands)) + "</pre>")


def run(config: ReportConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Write report.html unless none of the files it shows changed."""
    path, skipped = write_report(rundir)
    if skipped:
        return StageResult.nothing_to_do(f"{path} is up to date")
    return StageResult(skipped=False, headline=f"report: {path}", written=[path])


class ReportConfig(BaseModel):
    """The report has no settings (yet): it shows what the run holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


STAGE = Stage(
    name="report",
    config=ReportConfig,
    run=run,
    help="Write RUN/report.html: one self-contained page with every section of the run.",
    reads=("run_yaml", "traces", "sae", "eval_json", "analysis", "map_png", "sweeps", "findings_json"),
    writes=("report_html", "report_json"),
    recorded=False,  # run.yaml is one of its inputs: recording itself there would make it stale at once
)
