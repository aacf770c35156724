"""`thinklens`: one command, a sub-command per pipeline stage, plus queries and steering.

The CLI parses options, builds the library's typed configs, calls the library and formats the
result. The stage commands are built from the stage registry (`cli_stages`); no option here has a
default of its own: an option not given is None and the library's default applies. User errors
(`ThinklensError`, invalid settings) print one line and exit with code 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Table
from rich.text import Text

from thinklens import __version__
from thinklens.cli_errors import OneLineUsageErrors, debug_state, user_errors
from thinklens.cli_output import RunPrinter, console, print_facts, print_plan, print_result, print_run_outputs


def describe(model: type[BaseModel], field: str) -> str:
    """The one description of a config field, reused as the option's help."""
    return model.model_fields[field].description or ""


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None): the library's defaults apply to the rest."""
    return {name: value for name, value in options.items() if value is not None}


# ----------------------------------------------------------------------------------- the app
app = typer.Typer(
    name="thinklens",
    help="Open up reasoning language models with sparse autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineUsageErrors,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"thinklens {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Open up reasoning language models with sparse autoencoders."""
    debug_state["debug"] = debug


# The stage modules import only light dependencies at module level and pull in torch/transformers
# when they run, so `thinklens --help` stays fast.
from thinklens.cli_release import register_release  # noqa: E402
from thinklens.cli_stages import stage_command  # noqa: E402
from thinklens.distill.recipe import DistillConfig  # noqa: E402
from thinklens.features.autointerp.run import ExplainConfig  # noqa: E402
from thinklens.features.contrast import ContrastConfig  # noqa: E402
from thinklens.pipeline import STAGES, RunConfig, RunDir, load_run_config  # noqa: E402
from thinklens.pipeline import run as run_pipeline  # noqa: E402
from thinklens.pipeline.estimate import plan_run  # noqa: E402
from thinklens.server.config import ServeConfig  # noqa: E402
from thinklens.steering.compare import SteerConfig  # noqa: E402

for _stage in STAGES:  # one command per stage, built from its declaration
    app.command(_stage.name, help=_stage.help)(user_errors(stage_command(_stage, print_result)))


@app.command("run")
@user_errors
def run_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config (YAML); see configs/.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default: the config's `out`).")] = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Force this stage and every later one (their outputs are replaced).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print each stage's plan (where, tokens, bytes, time) "
                                                            "and run nothing.")] = False,
) -> None:
    """Run every stage: collect → harvest → train → eval → index → label → analyze → findings → map → sweep → report.

    Each stage skips work already done, so a re-run after a crash resumes where it stopped.
    """
    run_config = load_run_config(config) if config else RunConfig()
    if dry_run:
        return print_plan(plan_run(run_config), run_config.plan.throughput_source)
    run_pipeline(run_config, out=out, from_stage=from_stage, observer=RunPrinter(from_stage))
    print_run_outputs(RunDir(out or run_config.out))


# ----------------------------------------------------------------------------------- queries
NEGATIVE_IDS = {"ignore_unknown_options": True}  # "-1" is a (bad) feature id to refuse in words, not an option
features_app = typer.Typer(help="Query RUN/features.db: show, search, explain-text, neighbors.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.callback()
def features_run(
    context: typer.Context,
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run directory holding features.db (and sae/ for neighbors, explain-text).")],
) -> None:
    """Query RUN/features.db: `thinklens features RUN show F`."""
    context.obj = RunDir(run)


@features_app.command("show", context_settings=NEGATIVE_IDS)
@user_errors
def features_show(
    context: typer.Context,
    feature: Annotated[int, typer.Argument(help="Feature id.")],
    top: Annotated[int | None, typer.Option(help="Examples to show.")] = None,
    window: Annotated[int | None, typer.Option(help="Context tokens around each example (half on each side).")] = None,
) -> None:
    """Label, statistics, top logits and top examples of FEATURE (activating token highlighted)."""
    from thinklens.features.db import FeatureDB

    view = FeatureDB(context.obj.features_db).show(feature, **given(top=top, window=window))
    console.print(f"[bold]feature {view.feature_id}[/bold]  {view.label or '(no label)'}", highlight=False)
    rates = "  ".join(f"{name} {rate:.2%}" for name, rate in view.segment_rates.items()) or "not recorded"
    console.print(f"fires on {view.density:.3%} of tokens ({view.firing_count:,}); max {view.max_activation:.3g}, "
                  f"mean {view.mean_activation:.3g}; by segment: {rates}", highlight=False)
    console.print("top logits:    " + "  ".join(repr(token) for token, _ in view.top_logits), highlight=False)
    console.print("bottom logits: " + "  ".join(repr(token) for token, _ in view.bottom_logits), highlight=False)
    for example in view.examples:
        before, at, after = (part.replace("\n", "⏎") for part in example.parts())
        line = Text(f"{example.strength:7.3f}  seq {example.sequence_id:<5} ")
        line.append(before)
        line.append(at, style="bold black on yellow")
        line.append(after)
        console.print(line)


@features_app.command("search")
@user_errors
def features_search(
    context: typer.Context,
    text: Annotated[str, typer.Argument(help="Text to find in labels and top logit tokens.")],
    limit: Annotated[int | None, typer.Option(help="Most results.")] = None,
) -> None:
    """Features whose label or top tokens contain TEXT."""
    from thinklens.features.db import FeatureDB

    results = FeatureDB(context.obj.features_db).search(text, **given(limit=limit))
    if not results:
        console.print(f"no feature matches {text!r}")
    for feature_id, label, firing in results:
        console.print(f"{feature_id:>6}  {firing:>8,}  {label}", highlight=False)


@features_app.command("neighbors", context_settings=NEGATIVE_IDS)
@user_errors
def features_neighbors(
    context: typer.Context,
    feature: Annotated[int, typer.Argument(help="Feature id.")],
    n: Annotated[int | None, typer.Option("-n", help="How many neighbours.")] = None,
) -> None:
    """Nearest features of FEATURE by decoder-direction cosine."""
    from thinklens.features.db import FeatureDB, neighbors
    from thinklens.sae.formats import load_sae

    rundir = context.obj
    close = neighbors(load_sae(rundir.sae), feature, **given(n=n))
    labels = FeatureDB(rundir.features_db).labels([f for f, _ in close])
    for feature_id, cosine in close:
        console.print(f"{feature_id:>6}  cos {cosine:+.3f}  {labels.get(feature_id, '')}", highlight=False)


@features_app.command("explain-text")
@user_errors
def features_explain_text(
    context: typer.Context,
    text: Annotated[str, typer.Argument(help="Text to run through the model and the SAE.")],
    top: Annotated[int | None, typer.Option(help="Features listed per token.")] = None,
    allow_other_model: Annotated[bool, typer.Option(help="Use an SAE trained on another model (a transfer).")] = False,
) -> None:
    """Run the model and the SAE on TEXT and list the features firing on each token."""
    from thinklens.features.db import FeatureDB
    from thinklens.features.explain import explain_run_text

    rundir = context.obj
    tokens = explain_run_text(rundir.traces, rundir.sae, rundir.features_db, text, allow_other_model=allow_other_model,
                              **given(top=top))
    labels = FeatureDB(rundir.features_db).labels(sorted({f for token in tokens for f, _ in token.features}))
    for token in tokens:
        described = ", ".join(f"{f} {value:.2f} {labels.get(f, '')}" for f, value in token.features)
        flag = " (massive)" if token.massive else ""
        console.print(f"{token.token!r:>14}{flag}  {described}", highlight=False)


# ----------------------------------------------------------------------------------- distill
@app.command("distill")
@user_errors
def distill_command(
    base: Annotated[str | None, typer.Option(help="The model fine-tuned: smollm2, a hub id or a directory.")] = None,
    prompts: Annotated[str | None, typer.Option("--prompts", "-p", help=describe(DistillConfig, "prompts"))] = None,
    traces: Annotated[int | None, typer.Option(help=describe(DistillConfig, "traces"))] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Model directory to write (default: the "
                                             "smollm2-r1 cache, for the default recipe only).")] = None,
    epochs: Annotated[int | None, typer.Option(help=describe(DistillConfig, "epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=describe(DistillConfig, "batch_size"))] = None,
    learning_rate: Annotated[float | None, typer.Option(help=describe(DistillConfig, "learning_rate"))] = None,
    seed: Annotated[int | None, typer.Option(help=describe(DistillConfig, "seed"))] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
) -> None:
    """Fine-tune a base model on R1-style teacher traces into a reasoning model (default: smollm2-r1)."""
    from thinklens.distill.organism import distill_model

    base_model = given(model=base, device=device)
    config = DistillConfig(**given(prompts=prompts, traces=traces, epochs=epochs, batch_size=batch_size,
                                   learning_rate=learning_rate, seed=seed), **({"base": base_model} if base_model else {}))
    result = distill_model(config, out)
    record = result.record
    print_facts(f"distill → {result.directory}" + ("" if result.made else " (already made)"), {
        "traces / steps": f"{record.examples} / {record.steps}",
        "trained tokens": f"{record.trained_tokens:,} at {result.tokens_per_second:,.0f} tok/s ({record.precision})",
        "training time": f"{record.seconds / 60:.1f} min",
        "loss": f"{record.first_loss:.3f} → {record.final_loss:.3f}",
    })


# ----------------------------------------------------------------------------------- contrasts
@app.command("contrast")
@user_errors
def contrast_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding traces/, activations/, sae/ and features.db.")],
    a: Annotated[str, typer.Option("--a", help=describe(ContrastConfig, "a"))],
    b: Annotated[str, typer.Option("--b", help=describe(ContrastConfig, "b"))],
    segment: Annotated[str | None, typer.Option(help=describe(ContrastConfig, "segment"))] = None,
    name: Annotated[str | None, typer.Option(help=describe(ContrastConfig, "name"))] = None,
    unit: Annotated[str | None, typer.Option(help=describe(ContrastConfig, "unit"))] = None,
    top: Annotated[int | None, typer.Option(help=describe(ContrastConfig, "top"))] = None,
    bootstrap: Annotated[int | None, typer.Option(help=describe(ContrastConfig, "bootstrap"))] = None,
    device: Annotated[str | None, typer.Option(help="Where the SAE encodes: auto, cpu, cuda, cuda:N.")] = None,
) -> None:
    """Rank the features that separate token set A from B (AUROC, firing-rate ratio, bootstrap intervals);
    rows into features.db's `contrasts`, a difference-of-means direction into RUN/contrasts/NAME/."""
    from thinklens.pipeline.contrasts import contrast_in_run

    config = ContrastConfig(a=a, b=b, **given(segment=segment, name=name, unit=unit, top=top, bootstrap=bootstrap))
    print_result(contrast_in_run(config, RunDir(run), **given(device=device))[1])


# ----------------------------------------------------------------------------------- steering
@app.command("steer")
@user_errors
def steer_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding traces/, sae/ and features.db.")],
    feature: Annotated[int, typer.Option(help=describe(SteerConfig, "feature"))],
    strength: Annotated[float, typer.Option(help=describe(SteerConfig, "strength"))],
    prompt: Annotated[str, typer.Option(help=describe(SteerConfig, "prompt"))],
    policy: Annotated[str | None, typer.Option(help=describe(SteerConfig, "policy"))] = None,
    mode: Annotated[str | None, typer.Option(help=describe(SteerConfig, "mode"))] = None,
    absolute: Annotated[bool | None, typer.Option("--absolute", help=describe(SteerConfig, "absolute"))] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help=describe(SteerConfig, "max_new_tokens"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=describe(SteerConfig, "seed"))] = None,
    greedy: Annotated[bool | None, typer.Option("--greedy", help=describe(SteerConfig, "greedy"))] = None,
    device: Annotated[str | None, typer.Option(help=describe(SteerConfig, "device"))] = None,
) -> None:
    """Print the baseline and the steered output for one prompt, side by side."""
    from thinklens.steering.compare import steer_side_by_side

    config = SteerConfig(feature=feature, strength=strength, prompt=prompt, **given(
        policy=policy, mode=mode, absolute=absolute, max_new_tokens=max_new_tokens, seed=seed, greedy=greedy,
        device=device))
    rundir = RunDir(run)
    outcome = steer_side_by_side(config, rundir.traces, rundir.sae, rundir.features_db)
    start = "never" if outcome.start is None else f"token {outcome.start}"
    table = Table(title=f"feature {feature} × {strength:g} ({config.mode}, {config.policy}; steering from {start} "
                        "of the response)")
    table.add_column("baseline", ratio=1)
    table.add_column("steered", ratio=1)
    table.add_row(outcome.baseline, outcome.steered)
    console.print(table)


@app.command("explain")
@user_errors
def explain_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding features.db.")],
    base_url: Annotated[str, typer.Option("--base-url", help=describe(ExplainConfig, "base_url"))],
    model: Annotated[str, typer.Option(help=describe(ExplainConfig, "model"))],
    scorer_model: Annotated[str | None, typer.Option("--scorer-model", help=describe(ExplainConfig, "scorer_model"))]
    = None,
    feature: Annotated[list[int] | None, typer.Option(help="A feature to explain (repeat for several).")] = None,
    limit: Annotated[int | None, typer.Option(help=describe(ExplainConfig, "limit"))] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help=describe(ExplainConfig, "api_key_env"))]
    = None,
    concurrency: Annotated[int | None, typer.Option(help=describe(ExplainConfig, "concurrency"))] = None,
    force: Annotated[bool | None, typer.Option("--force", help=describe(ExplainConfig, "force"))] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help=describe(ExplainConfig, "max_tokens"))] = None,
    prompt: Annotated[str | None, typer.Option(help=describe(ExplainConfig, "prompt"))] = None,
    scoring: Annotated[str | None, typer.Option(help=describe(ExplainConfig, "scoring"))] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the first explainer prompt; send nothing.")] = False,
) -> None:
    """Label features with an LLM (any OpenAI-compatible endpoint) and score each label on held-out examples."""
    from thinklens.pipeline.explain import explain_in_run

    config = ExplainConfig(base_url=base_url, model=model, **given(
        scorer_model=scorer_model, features=tuple(feature) if feature else None, limit=limit, api_key_env=api_key_env,
        concurrency=concurrency, force=force, max_tokens=max_tokens, prompt=prompt, scoring=scoring))
    outcome = explain_in_run(config, RunDir(run), dry_run=dry_run)
    console.print(outcome, highlight=False, markup=False, soft_wrap=True) if isinstance(outcome, str) else \
        print_result(outcome)


# ----------------------------------------------------------------------------------- serving
@app.command("serve")
@user_errors
def serve_command(
    runs: Annotated[list[Path] | None, typer.Argument(help=describe(ServeConfig, "runs"))] = None,
    host: Annotated[str | None, typer.Option(help=describe(ServeConfig, "host"))] = None,
    port: Annotated[int | None, typer.Option(help=describe(ServeConfig, "port"))] = None,
    model: Annotated[str | None, typer.Option(help=describe(ServeConfig, "model"))] = None,
    no_model: Annotated[bool | None, typer.Option("--no-model", help=describe(ServeConfig, "no_model"))] = None,
    device: Annotated[str | None, typer.Option(help=describe(ServeConfig, "device"))] = None,
    capacity: Annotated[int | None, typer.Option(help=describe(ServeConfig, "capacity"))] = None,
    timeout: Annotated[float | None, typer.Option(help=describe(ServeConfig, "timeout_s"))] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help=describe(ServeConfig, "max_tokens"))] = None,
    ddb: Annotated[Path | None, typer.Option(help=describe(ServeConfig, "ddb"))] = None,
    autointerp: Annotated[Path | None, typer.Option(help=describe(ServeConfig, "autointerp"))] = None,
) -> None:
    """Browse features, steer in a playground, and serve the (steered) model to OpenAI clients."""
    from thinklens.server import serve

    config = ServeConfig(runs=tuple(runs or ()), **given(
        host=host, port=port, model=model, no_model=no_model, device=device, capacity=capacity, timeout_s=timeout,
        max_tokens=max_tokens, ddb=ddb, autointerp=autointerp))
    serve(config, on_ready=lambda url: console.print(f"thinklens serve: {url}  (OpenAI base_url {url}/v1; "
                                                     "Ctrl-C stops)", highlight=False))


register_release(app)
main = app  # the console entry point


if __name__ == "__main__":
    main()
