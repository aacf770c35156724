"""`thinklens`: one command, a sub-command per pipeline stage.

The CLI parses options, builds the library's typed configs, calls the library and formats the
result. User errors (`ThinklensError`, invalid settings) print one line and exit with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from thinklens import __version__
from thinklens.errors import ThinklensError
from thinklens.files import write_json_atomic

app = typer.Typer(
    name="thinklens",
    help="Open up reasoning language models with sparse autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def describe(model: type[BaseModel], field: str) -> str:
    """The one description of a config field, reused as the option's help."""
    return model.model_fields[field].description or ""


def _stage_defaults(ctx: typer.Context, _param: Any, value: Path | None) -> Path | None:
    """`--config FILE`: the stage's section of a run config becomes its defaults; command-line options win."""
    if value is None:
        return value
    from thinklens.pipeline import load_run_config, stage_section

    known = {param.name for param in ctx.command.params} - {"config_file"}
    try:
        document = load_run_config(value)
        section = stage_section(document, ctx.info_name, known, value)
    except ThinklensError as exc:
        raise typer.BadParameter(str(exc)) from None
    if document.get("out") is not None:  # the run directory: `--out` of collect, RUN of the others
        section.setdefault("out" if "out" in known else "run", document["out"])
    ctx.default_map = {**(ctx.default_map or {}), **section}
    return value


ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", is_eager=True, callback=_stage_defaults,
                 help="Run config (YAML): this stage's section gives the defaults; options given here win."),
]


def user_errors(command: F) -> F:
    """Turn user errors into one red line and exit code 2 (unless --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ThinklensError, ValidationError) as exc:
            if _state["debug"]:
                raise
            err_console.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_facts(title: str, facts: dict[str, str]) -> None:
    """A two-column table of what a stage did."""
    table = Table(title=title, show_header=False)
    for name, value in facts.items():
        table.add_row(name, value)
    console.print(table)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        return f"invalid setting {where}: {problem['msg']}"
    return str(exc)


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
    _state["debug"] = debug


# Imported here, after the app exists, so `thinklens --help` stays fast: the stage modules import
# only light dependencies at module level and pull in torch/transformers when they run.
from thinklens.activations.harvest import HarvestConfig, harvest  # noqa: E402
from thinklens.activations.store import ActivationStore  # noqa: E402
from thinklens.analysis.featuremap import MapConfig  # noqa: E402
from thinklens.analysis.outputs import AnalyzeConfig, run_analyses, write_feature_map  # noqa: E402
from thinklens.analysis.shift import ShiftConfig  # noqa: E402
from thinklens.analysis.sinks import SinkConfig  # noqa: E402
from thinklens.data.collect import CollectConfig, GenerationConfig, collect  # noqa: E402
from thinklens.data.segments import PrefixConfig  # noqa: E402
from thinklens.data.traces import TraceStore, summarize_traces  # noqa: E402
from thinklens.features.build import IndexConfig, build_index  # noqa: E402
from thinklens.features.db import FeatureDB, neighbors  # noqa: E402
from thinklens.models.loader import ModelConfig, file_sha256  # noqa: E402
from thinklens.rundir import (  # noqa: E402
    activations_dir,
    analysis_dir,
    features_db,
    record_config,
    record_stage,
    sae_dir,
    traces_dir,
)
from thinklens.sae.evaluate import EvalConfig, evaluate  # noqa: E402
from thinklens.sae.train import TrainConfig, train  # noqa: E402
from thinklens.steering.engine import FeatureEdit, SteeringSpec  # noqa: E402
from thinklens.steering.sweep import SweepConfig  # noqa: E402


@app.command("collect")
@user_errors
def collect_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; traces go to OUT/traces.")],
    model: Annotated[str, typer.Option("--model", "-m", help=describe(ModelConfig, "model"))] = "smollm2",
    prompts: Annotated[str, typer.Option("--prompts", "-p", help=describe(CollectConfig, "prompts"))] = "arithmetic",
    limit: Annotated[int | None, typer.Option("--limit", "-n", help=describe(CollectConfig, "limit"))] = None,
    format: Annotated[str, typer.Option("--format", help=describe(CollectConfig, "format"))] = "auto",
    forced_opening: Annotated[
        str | None, typer.Option("--forced-opening", help=describe(CollectConfig, "forced_opening"))
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help=describe(GenerationConfig, "max_new_tokens"))
    ] = 512,
    greedy: Annotated[bool, typer.Option("--greedy", help=describe(GenerationConfig, "greedy"))] = False,
    temperature: Annotated[float, typer.Option(help=describe(GenerationConfig, "temperature"))] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", help=describe(GenerationConfig, "top_p"))] = 0.95,
    seed: Annotated[int, typer.Option(help=describe(GenerationConfig, "seed"))] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help=describe(GenerationConfig, "batch_size"))] = 32,
    prompt_seed: Annotated[int, typer.Option("--prompt-seed", help=describe(CollectConfig, "prompt_seed"))] = 0,
    split: Annotated[str, typer.Option(help=describe(CollectConfig, "split"))] = "train",
    import_traces: Annotated[
        bool, typer.Option("--import-traces", help=describe(CollectConfig, "import_traces"))
    ] = False,
    prefix_pattern: Annotated[
        str | None, typer.Option("--prefix-pattern", help=describe(PrefixConfig, "pattern"))
    ] = None,
    prefix_max_tokens: Annotated[
        int, typer.Option("--prefix-max-tokens", help=describe(PrefixConfig, "max_tokens"))
    ] = 48,
    device: Annotated[str, typer.Option(help=describe(ModelConfig, "device"))] = "auto",
    dtype: Annotated[str, typer.Option(help=describe(ModelConfig, "dtype"))] = "auto",
    device_map: Annotated[str | None, typer.Option("--device-map", help=describe(ModelConfig, "device_map"))] = None,
    revision: Annotated[str | None, typer.Option(help=describe(ModelConfig, "revision"))] = None,
    config_file: ConfigFile = None,
) -> None:
    """Generate reasoning traces for a prompt set into OUT/traces (resumes; finished prompts are skipped)."""
    prefix = PrefixConfig(max_tokens=prefix_max_tokens, **({"pattern": prefix_pattern} if prefix_pattern else {}))
    config = CollectConfig(
        model=ModelConfig(model=model, revision=revision, device=device, dtype=dtype, device_map=device_map),
        prompts=prompts,
        limit=limit,
        prompt_seed=prompt_seed,
        split=split,
        format=format,
        forced_opening=forced_opening,
        prefix=prefix,
        generation=GenerationConfig(
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
        ),
        import_traces=import_traces,
    )
    result = collect(config, traces_dir(out))
    if result.n_written == 0:  # run.yaml keeps what the run that wrote them resolved
        console.print(f"nothing to do: all {result.n_prompts} traces are already in {result.traces_dir}")
        return
    record_stage(out, "collect", config.model_dump(mode="json"), {"format": result.format})
    summary = summarize_traces(TraceStore(result.traces_dir))
    print_facts(f"collect → {result.traces_dir}", {
        "traces written / skipped": f"{result.n_written} / {result.n_skipped}",
        "format": str(result.format),
        "generated tokens": f"{result.generated_tokens:,}",
        "tokens/s": f"{result.tokens_per_second:,.1f}",
        "traces in store": f"{summary['traces']:.0f}",
        "prefix matched": f"{summary['prefix_matched']:.0%}",
        "thinking closed": f"{summary['thinking_closed']:.0%}",
        "hit the token cap": f"{summary['hit_token_cap']:.0%}",
        "answers correct": f"{summary['accuracy']:.0%}",
    })


@app.command("harvest")
@user_errors
def harvest_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding traces/ (from `thinklens collect`).")],
    layer: Annotated[list[int], typer.Option("--layer", "-l", help=describe(HarvestConfig, "layers") + " Repeat for several.")],
    dtype: Annotated[str, typer.Option(help=describe(HarvestConfig, "dtype"))] = "auto",
    shard_tokens: Annotated[int, typer.Option("--shard-tokens", help=describe(HarvestConfig, "shard_tokens"))] = 32768,
    batch_tokens: Annotated[int, typer.Option("--batch-tokens", help=describe(HarvestConfig, "batch_tokens"))] = 8192,
    massive_ratio: Annotated[float, typer.Option("--massive-ratio", help=describe(HarvestConfig, "massive_ratio"))] = 5.0,
    device: Annotated[str, typer.Option(help=describe(ModelConfig, "device"))] = "auto",
    config_file: ConfigFile = None,
) -> None:
    """Capture the residual stream of LAYER(s) over RUN/traces into RUN/activations (resumes)."""
    collected = TraceStore(traces_dir(run)).meta()
    model = None
    if collected is not None and device != "auto":
        model = TraceStore(traces_dir(run)).model_config(device=device)
    config = HarvestConfig(
        layers=tuple(layer), dtype=dtype, shard_tokens=shard_tokens, batch_tokens=batch_tokens,
        massive_ratio=massive_ratio, model=model,
    )
    result = harvest(config, traces_dir(run), activations_dir(run))
    if result.shards_written == 0:
        console.print(f"nothing to do: {result.activations_dir} already holds all {result.token_count:,} tokens")
        return
    record_stage(run, "harvest", config.model_dump(mode="json"), {"tokens": result.token_count})
    index = ActivationStore(result.activations_dir).index(["special", "massive"]).to_pydict()
    print_facts(f"harvest → {result.activations_dir}", {
        "shards written / skipped": f"{result.shards_written} / {result.shards_skipped}",
        "tokens in store": f"{result.token_count:,}",
        "tokens/s": f"{result.tokens_per_second:,.0f}",
        "special / template tokens": f"{sum(index['special']):,}",
        "massive-activation tokens": f"{sum(index['massive']):,} (excluded from training by default)",
    })


@app.command("train")
@user_errors
def train_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding activations/ (from `thinklens harvest`).")],
    arch: Annotated[str, typer.Option(help=describe(TrainConfig, "arch"))] = "batchtopk_tied",
    expansion: Annotated[int, typer.Option(help=describe(TrainConfig, "expansion"))] = 8,
    k: Annotated[int, typer.Option("--k", help=describe(TrainConfig, "k"))] = 32,
    l1_coefficient: Annotated[float, typer.Option("--l1-coefficient", help=describe(TrainConfig, "l1_coefficient"))] = 5.0,
    layer: Annotated[int | None, typer.Option(help=describe(TrainConfig, "layer"))] = None,
    tokens: Annotated[int | None, typer.Option(help=describe(TrainConfig, "tokens"))] = None,
    epochs: Annotated[int, typer.Option(help=describe(TrainConfig, "epochs"))] = 4,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help=describe(TrainConfig, "batch_size"))] = None,
    min_steps: Annotated[int, typer.Option("--min-steps", help=describe(TrainConfig, "min_steps"))] = 200,
    lr: Annotated[float, typer.Option(help=describe(TrainConfig, "lr"))] = 4e-4,
    seed: Annotated[int, typer.Option(help=describe(TrainConfig, "seed"))] = 0,
    holdout_fraction: Annotated[
        float, typer.Option("--holdout-fraction", help=describe(TrainConfig, "holdout_fraction"))
    ] = 0.05,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help=describe(TrainConfig, "checkpoint_every"))] = 200,
    wandb_project: Annotated[str | None, typer.Option("--wandb-project", help=describe(TrainConfig, "wandb_project"))] = None,
    config_file: ConfigFile = None,
) -> None:
    """Train an SAE on RUN/activations into RUN/sae (resumes from its checkpoint)."""
    config = TrainConfig(
        arch=arch, expansion=expansion, k=k, l1_coefficient=l1_coefficient, layer=layer, tokens=tokens,
        epochs=epochs, batch_size=batch_size, min_steps=min_steps, lr=lr, seed=seed, holdout_fraction=holdout_fraction,
        checkpoint_every=checkpoint_every,
        wandb_project=wandb_project,
    )
    result = train(config, activations_dir(run), sae_dir(run))
    if result.skipped:
        console.print(f"nothing to do: {result.sae_dir} already holds an SAE trained with these settings")
        return
    record_stage(run, "train", config.model_dump(mode="json"),
                 {"steps": result.steps, "batch_size": result.batch_size, **result.final})
    final = result.final
    print_facts(f"train → {result.sae_dir}", {
        "steps / tokens": f"{result.steps:,} / {result.tokens:,}",
        "tokens/s": f"{result.tokens_per_second:,.0f}",
        "last batch FVU / L0 / dead": f"{final['fvu']:.3f} / {final['l0']:.1f} / {final['dead_fraction']:.1%}",
    })


@app.command("eval")
@user_errors
def eval_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding sae/, activations/ and traces/.")],
    lm_sequences: Annotated[int, typer.Option("--lm-sequences", help=describe(EvalConfig, "lm_sequences"))] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", help=describe(EvalConfig, "batch_size"))] = 4096,
    config_file: ConfigFile = None,
) -> None:
    """Held-out FVU, L0, dead and dense fractions (overall and per segment) and the LM loss cost of RUN/sae."""
    config = EvalConfig(lm_sequences=lm_sequences, batch_size=batch_size)
    weights = sae_dir(run) / "sae_weights.safetensors"
    identity = {"config": config.model_dump(mode="json"),
                "sae_sha256": file_sha256(weights) if weights.is_file() else None}
    existing = sae_dir(run) / "eval.json"
    if existing.is_file() and {k: json.loads(existing.read_text()).get(k) for k in identity} == identity:
        console.print(f"nothing to do: {existing} already evaluates this SAE with these settings")
        return
    report = evaluate(sae_dir(run), activations_dir(run), traces_dir(run), config)
    write_json_atomic(existing, {**report.as_dict(), **identity})
    record_stage(run, "eval", config.model_dump(mode="json"), {"fvu": report.overall.fvu, **report.lm})
    table = Table(title=f"eval of {sae_dir(run)} on held-out sequences")
    for column in ("segment", "tokens", "FVU", "L0", "dead", "dense"):
        table.add_column(column, justify="right" if column != "segment" else "left")
    for name, metrics in [("all", report.overall), *report.segments.items()]:
        table.add_row(name, f"{metrics.tokens:,}", f"{metrics.fvu:.3f}", f"{metrics.l0:.1f}",
                      f"{metrics.dead_fraction:.1%}", f"{metrics.dense_fraction:.1%}")
    console.print(table)
    if report.lm:
        lm = report.lm
        console.print(
            f"next-token loss: clean {lm['clean']:.3f}, spliced {lm['spliced']:.3f} (Δ {lm['delta']:+.3f}), "
            f"zero-ablated {lm['zero_ablated']:.3f}; loss recovered {lm['loss_recovered']:.1%}"
        )


@app.command("index")
@user_errors
def index_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding sae/, activations/ and traces/.")],
    top: Annotated[int, typer.Option(help=describe(IndexConfig, "top"))] = 64,
    quantile_samples: Annotated[int, typer.Option("--quantile-samples", help=describe(IndexConfig, "quantile_samples"))] = 16,
    store_all: Annotated[bool, typer.Option("--all", help=describe(IndexConfig, "store_all"))] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help=describe(IndexConfig, "batch_size"))] = 4096,
    config_file: ConfigFile = None,
) -> None:
    """Encode RUN/activations with RUN/sae into RUN/features.db (public R1 schema + our own tables)."""
    config = IndexConfig(top=top, quantile_samples=quantile_samples, store_all=store_all, batch_size=batch_size)
    result = build_index(config, sae_dir(run), activations_dir(run), traces_dir(run), features_db(run))
    if result.skipped:
        console.print(f"nothing to do: {result.db_path} already indexes this SAE with these settings")
        return
    record_stage(run, "index", config.model_dump(mode="json"), {"db_bytes": result.db_bytes})
    print_facts(f"index → {result.db_path}", {
        "tokens / indexed": f"{result.tokens:,} / {result.indexed_tokens:,}",
        "tokens/s": f"{result.tokens_per_second:,.0f}",
        "size": f"{result.db_bytes / 2**20:,.1f} MiB ({result.db_bytes / result.tokens:,.0f} bytes/token)",
    })


features_app = typer.Typer(help="Query RUN/features.db: show, search, explain-text, neighbors.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.callback()
def features_run(
    context: typer.Context,
    run: Annotated[Path, typer.Argument(help="Run directory holding features.db (and sae/ for neighbors, explain-text).")],
) -> None:
    """Query RUN/features.db: `thinklens features RUN show F`."""
    context.obj = run


@features_app.command("show")
@user_errors
def features_show(
    context: typer.Context,
    feature: Annotated[int, typer.Argument(help="Feature id.")],
    top: Annotated[int, typer.Option(help="Examples to show.")] = 10,
    window: Annotated[int, typer.Option(help="Context tokens around each example (half on each side).")] = 10,
) -> None:
    """Label, statistics, top logits and top examples of FEATURE (activating token highlighted)."""
    db = FeatureDB(features_db(context.obj))
    view = db.show(feature, top=top, window=window)
    console.print(f"[bold]feature {view.feature_id}[/bold]  {view.label or '(no label)'}", highlight=False)
    rates = "  ".join(f"{name} {rate:.2%}" for name, rate in view.segment_rates.items())
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
    limit: Annotated[int, typer.Option(help="Most results.")] = 20,
) -> None:
    """Features whose label or top tokens contain TEXT."""
    results = FeatureDB(features_db(context.obj)).search(text, limit)
    if not results:
        console.print(f"no feature matches {text!r}")
    for feature_id, label, firing in results:
        console.print(f"{feature_id:>6}  {firing:>8,}  {label}", highlight=False)


@features_app.command("neighbors")
@user_errors
def features_neighbors(
    context: typer.Context,
    feature: Annotated[int, typer.Argument(help="Feature id.")],
    n: Annotated[int, typer.Option("-n", help="How many neighbours.")] = 10,
) -> None:
    """Nearest features of FEATURE by decoder-direction cosine."""
    from thinklens.sae.formats import load_sae

    run = context.obj
    close = neighbors(load_sae(sae_dir(run)), feature, n)
    labels = FeatureDB(features_db(run)).labels([f for f, _ in close])
    for feature_id, cosine in close:
        console.print(f"{feature_id:>6}  cos {cosine:+.3f}  {labels.get(feature_id, '')}", highlight=False)


@features_app.command("explain-text")
@user_errors
def features_explain_text(
    context: typer.Context,
    text: Annotated[str, typer.Argument(help="Text to run through the model and the SAE.")],
    top: Annotated[int, typer.Option(help="Features listed per token.")] = 3,
) -> None:
    """Run the model and the SAE on TEXT and list the features firing on each token."""
    from thinklens.features.explain import explain_text
    from thinklens.models.loader import load_model
    from thinklens.sae.formats import load_sae

    run = context.obj
    sae = load_sae(sae_dir(run))
    traces = TraceStore(traces_dir(run))
    model = traces.model_config() if traces.meta() else ModelConfig(model=sae.config.model or "smollm2")
    tokens = explain_text(load_model(model), sae, text, top=top)
    labels = FeatureDB(features_db(run)).labels(sorted({f for token in tokens for f, _ in token.features}))
    for token in tokens:
        described = ", ".join(f"{f} {value:.2f} {labels.get(f, '')}" for f, value in token.features)
        flag = " (massive)" if token.massive else ""
        console.print(f"{token.token!r:>14}{flag}  {described}", highlight=False)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ThinklensError(f"strengths must be numbers separated by commas, e.g. 0,1,2,4 (got {text!r})") from None


@app.command("sweep")
@user_errors
def sweep_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding traces/, sae/ and features.db.")],
    feature: Annotated[
        str, typer.Option(help="Feature to steer, or 'auto': the feature most enriched in the thinking (from analyze).")
    ] = "auto",
    strengths: Annotated[str, typer.Option(help="Comma-separated strengths (0 = baseline is always included).")] = "0,1,2,4,8,16,32",
    policy: Annotated[str, typer.Option(help="Comma-separated position policies.")] = "first_token,after_prefix",
    mode: Annotated[str, typer.Option(help=describe(SweepConfig, "mode"))] = "add",
    absolute: Annotated[bool, typer.Option("--absolute", help=describe(SweepConfig, "absolute"))] = False,
    prompts: Annotated[int, typer.Option(help=describe(SweepConfig, "prompts"))] = 8,
    samples: Annotated[int, typer.Option(help=describe(SweepConfig, "samples"))] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help=describe(SweepConfig, "max_new_tokens"))] = 128,
    seed: Annotated[int, typer.Option(help=describe(SweepConfig, "seed"))] = 0,
    regex: Annotated[str | None, typer.Option(help=describe(SweepConfig, "regex"))] = None,
    name: Annotated[str | None, typer.Option(help="Sweep directory name under RUN/sweeps (default feature-F).")] = None,
    config_file: ConfigFile = None,
) -> None:
    """Steer one feature at several strengths and position policies; JSONL, regime table and plots in RUN/sweeps/."""
    from thinklens.steering.from_run import open_variant, run_prompts
    from thinklens.steering.sweep import run_sweep

    feature = _sweep_feature(run, feature)
    config = SweepConfig(
        feature=feature, strengths=_floats(strengths), policies=tuple(p.strip() for p in policy.split(",") if p.strip()),
        mode=mode, absolute=absolute, prompts=prompts, samples=samples, max_new_tokens=max_new_tokens, seed=seed,
        regex=regex,
    )
    for each in config.policies:
        SteeringSpec(edits=(FeatureEdit(feature=feature, strength=1.0),), policy=each)  # validates the policy name
    directory = Path(run) / "sweeps" / (name or f"feature-{feature}")
    summary = directory / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("config") == config.model_dump(mode="json"):
        console.print(f"nothing to do: {summary} already holds this sweep")
        return
    variant = open_variant(traces_dir(run), sae_dir(run), features_db(run), [feature])
    result = run_sweep(config, variant, run_prompts(traces_dir(run), prompts), directory)
    record_stage(run, f"sweep:{directory.name}", config.model_dump(mode="json"), {"oversteering": result.oversteering})
    table = Table(title=f"sweep of feature {feature} → {directory}")
    for column in ("policy", "strength", "regime", "shift", "ppl ×", "distinct-2 ×", "read back", "correct"):
        table.add_column(column)
    for point in result.points:
        table.add_row(point.policy, f"{point.strength:g}", point.regime, f"{point.shift:.2f}", f"{point.ppl_ratio:.2f}",
                      f"{point.distinct2_ratio:.2f}", f"{point.means['readback']:.3g}", f"{point.means['correct']:.0%}"
                      if point.means["correct"] == point.means["correct"] else "–")
    console.print(table)
    for each, seen in result.oversteering.items():
        console.print(f"{each}: {'oversteering pattern (steered → reverted → broken)' if seen else 'no oversteering pattern'}")
    console.print(f"samples: {directory / 'samples.jsonl'}  plots: {directory / 'behaviour.png'}, {directory / 'coherence.png'}")


def _sweep_feature(run: Path, feature: str) -> int:
    """A feature id, or for 'auto' the feature most enriched in the thinking (else the prefix) by `analyze`."""
    if feature != "auto":
        try:
            return int(feature)
        except ValueError:
            raise ThinklensError(f"--feature must be a feature id or 'auto', not {feature!r}") from None
    shift = analysis_dir(run) / "shift.json"
    if not shift.is_file():
        raise ThinklensError(f"--feature auto reads {shift}: run `thinklens analyze {run}` first, or name a feature")
    enriched = json.loads(shift.read_text())["result"]["enriched"]
    for segment in ("thinking", "prefix", "answer", "prompt"):
        if enriched.get(segment):
            return int(enriched[segment][0]["feature_id"])
    raise ThinklensError(f"{shift} lists no enriched feature: name one with --feature")


@app.command("label")
@user_errors
def label_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding features.db.")],
    force: Annotated[bool, typer.Option("--force", help="Relabel even when every feature has a label.")] = False,
) -> None:
    """Offline heuristic labels (dominant activating tokens + segment) into features.db's autointerp table."""
    from thinklens.features.labels import write_heuristic_labels

    written, skipped = write_heuristic_labels(features_db(run), force=force)
    if skipped:
        console.print(f"nothing to do: every feature in {features_db(run)} has a label")
        return
    record_stage(run, "label", {"force": force}, {"labelled": written})
    console.print(f"labelled {written:,} features in {features_db(run)} (model_name='heuristic')")


@app.command("report")
@user_errors
def report_command(
    run: Annotated[Path, typer.Argument(help="Run directory (any stages done so far are reported).")],
) -> None:
    """Write RUN/report.html: one self-contained page with every section of the run."""
    from thinklens.report import write_report

    path, skipped = write_report(run)
    console.print(f"{'nothing to do: up to date' if skipped else 'report'}: {path}")


@app.command("analyze")
@user_errors
def analyze_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding traces/ (and sae/, activations/, features.db).")],
    sink_traces: Annotated[int, typer.Option("--sink-traces", help=describe(SinkConfig, "traces"))] = 16,
    sink_max_tokens: Annotated[int, typer.Option("--sink-max-tokens", help=describe(SinkConfig, "max_tokens"))] = 512,
    sink_threshold: Annotated[
        float, typer.Option("--sink-threshold", help=describe(SinkConfig, "sink_threshold"))
    ] = 0.3,
    bootstrap: Annotated[int, typer.Option(help=describe(ShiftConfig, "bootstrap"))] = 200,
    top: Annotated[int, typer.Option(help=describe(ShiftConfig, "top"))] = 10,
    skip_sinks: Annotated[bool, typer.Option("--skip-sinks", help=describe(AnalyzeConfig, "skip_sinks"))] = False,
    skip_shift: Annotated[bool, typer.Option("--skip-shift", help=describe(AnalyzeConfig, "skip_shift"))] = False,
    config_file: ConfigFile = None,
) -> None:
    """Prefix statistics, massive activations and attention sinks, segment shift → RUN/analysis/*.json + *.png."""
    config = AnalyzeConfig(
        sinks=SinkConfig(traces=sink_traces, max_tokens=sink_max_tokens, sink_threshold=sink_threshold),
        shift=ShiftConfig(bootstrap=bootstrap, top=top),
        skip_sinks=skip_sinks, skip_shift=skip_shift,
    )
    outcome = run_analyses(config, traces_dir(run), activations_dir(run), sae_dir(run), features_db(run),
                           analysis_dir(run))
    if outcome.written:  # an all-up-to-date re-run leaves run.yaml (and so the report) alone
        record_stage(run, "analyze", config.model_dump(mode="json"), {"written": sorted(outcome.written),
                                                                      "up_to_date": outcome.skipped})
    print_analysis(outcome.results)
    for name in outcome.skipped:
        console.print(f"{name}: up to date ({analysis_dir(run) / name}.json)")
    for name, paths in outcome.written.items():
        console.print(f"{name}: " + "  ".join(str(path) for path in paths))


def print_analysis(results: dict[str, dict[str, Any]]) -> None:
    """The headline numbers of each analysis as small tables."""
    if "prefix" in results:
        overall = results["prefix"]["overall"]
        forced = results["prefix"]["forced_opening"]
        print_facts("prefix statistics", {
            "traces": f"{overall['traces']:,}",
            "opening with 'Okay,'": f"{overall['okay_share']:.1%}" + (f" (forced: {forced!r})" if forced else ""),
            "prefix pattern matched": f"{overall['prefix_match_rate']:.1%}",
            "prefix tokens (median)": f"{overall['prefix_tokens'].get('median', float('nan')):.0f}",
        })
    if "sinks" in results:
        sinks = results["sinks"]
        table = Table(title=f"where attention sinks sit ({sinks['traces']} traces, head threshold {sinks['sink_threshold']})")
        for column in ("place", "positions", "norm ratio (peak)", "attention received", "share of sinks",
                       "share of sinks after first token"):
            table.add_column(column, justify="left" if column == "place" else "right")
        for place in sinks["places"]:
            table.add_row(place["place"], f"{place['positions']:,}", f"{place['norm_ratio_peak']:.1f}",
                          f"{place['attention_mass']:.3f}", f"{place['share_of_sinks']:.1%}",
                          f"{place['share_of_sinks_after_first']:.1%}")
        console.print(table)
    if "shift" in results:
        table = Table(title="segment shift: Jensen–Shannon divergence of feature distributions (95 % bootstrap)")
        for column in ("segments", "JSD (bits)", "interval"):
            table.add_column(column)
        for item in results["shift"]["divergences"]:
            table.add_row(f"{item['a']} – {item['b']}", f"{item['jsd']:.3f}", f"[{item['low']:.3f}, {item['high']:.3f}]")
        console.print(table)


@app.command("map")
@user_errors
def map_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding sae/ and features.db.")],
    n_neighbors: Annotated[int, typer.Option("--n-neighbors", help=describe(MapConfig, "n_neighbors"))] = 15,
    min_dist: Annotated[float, typer.Option("--min-dist", help=describe(MapConfig, "min_dist"))] = 0.1,
    seed: Annotated[int, typer.Option(help=describe(MapConfig, "seed"))] = 0,
    config_file: ConfigFile = None,
) -> None:
    """UMAP of the SAE's decoder directions → RUN/map.html (DataMapPlot, works offline) and RUN/map.png."""
    config = MapConfig(n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    html, png = Path(run) / "map.html", Path(run) / "map.png"
    result, skipped = write_feature_map(config, sae_dir(run), features_db(run), html, png,
                                        analysis_dir(run) / "map.json")
    if skipped:
        console.print(f"nothing to do: {html} already maps this SAE with these settings")
        return
    record_stage(run, "map", config.model_dump(mode="json"), {"live": result["live"], "dead": result["dead"]})
    print_facts(f"map → {html}", {
        "features": f"{result['features']:,}", "live (mapped)": f"{result['live']:,}",
        "dead (left out)": f"{result['dead']:,}", "static": str(png),
    })


@app.command("steer")
@user_errors
def steer_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding traces/, sae/ and features.db.")],
    feature: Annotated[int, typer.Option(help="Feature to steer.")],
    strength: Annotated[float, typer.Option(help="Strength (× the feature's typical max unless --absolute).")],
    prompt: Annotated[str, typer.Option(help="The user prompt.")],
    policy: Annotated[str, typer.Option(help="Position policy.")] = "after_prefix",
    mode: Annotated[str, typer.Option(help="add, clamp or scale.")] = "add",
    absolute: Annotated[bool, typer.Option("--absolute", help="Strength is a raw activation.")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Generated tokens.")] = 128,
    seed: Annotated[int, typer.Option(help="Sampling seed (the same for both columns).")] = 0,
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy decoding.")] = False,
) -> None:
    """Print the baseline and the steered output for one prompt, side by side."""
    from thinklens.models.generate import Sampling
    from thinklens.steering.from_run import open_variant

    SteeringSpec(edits=(FeatureEdit(feature=feature, strength=strength, mode=mode),), policy=policy)
    variant = open_variant(traces_dir(run), sae_dir(run), features_db(run), [feature])
    sampling = Sampling(greedy=greedy)
    (baseline,) = variant.generate([prompt], max_new_tokens, sampling, seed=seed)
    variant.set(feature, strength, policy=policy, mode=mode)
    variant.absolute = absolute
    (steered,) = variant.generate([prompt], max_new_tokens, sampling, seed=seed)
    start = "never" if steered.start == float("inf") else f"token {int(steered.start) - steered.generation_start}"
    table = Table(title=f"feature {feature} × {strength:g} ({mode}, {policy}; steering from {start} of the response)")
    table.add_column("baseline", ratio=1)
    table.add_column("steered", ratio=1)
    table.add_row(baseline.completion, steered.completion)
    console.print(table)


@app.command("run")
@user_errors
def run_command(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config (YAML); see configs/.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default: the config's `out`).")] = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Force this stage and every later one (their outputs are replaced).")
    ] = None,
) -> None:
    """Run every stage: collect → harvest → train → eval → index → label → analyze → map → sweep → report.

    Each stage skips work already done, so a re-run after a crash resumes where it stopped.
    """
    from thinklens.pipeline import STAGES, load_run_config, remove_artifacts, stage_section, stages_from

    document = load_run_config(config) if config else {}
    run = out or (Path(document["out"]) if document.get("out") else None)
    if run is None:
        raise ThinklensError("no run directory: pass --out RUN or set `out:` in the config")
    forced = stages_from(from_stage)
    commands = {
        "collect": collect_command, "harvest": harvest_command, "train": train_command, "eval": eval_command,
        "index": index_command, "label": label_command, "analyze": analyze_command, "map": map_command,
        "sweep": sweep_command, "report": report_command,
    }
    settings = {}  # every section is checked before anything is written
    for stage in STAGES:
        parameters = inspect.signature(commands[stage]).parameters
        settings[stage] = stage_section(document, stage, set(parameters) - {"config_file", "run", "out"}, config or "")
        missing = [name for name, parameter in parameters.items()
                   if parameter.default is inspect.Parameter.empty and name not in {"run", "out"} | set(settings[stage])]
        if missing:
            raise ThinklensError(f"stage '{stage}' needs {', '.join(missing)}: set it in the config's '{stage}' section")
    record_config(run, {**document, "out": str(run)})
    for number, stage in enumerate(STAGES, start=1):
        console.rule(f"[bold]{number}/{len(STAGES)} {stage}")
        for removed in remove_artifacts(run, stage) if stage in forced else []:
            console.print(f"--from {from_stage}: removed {removed}")
        commands[stage](**{"out" if stage == "collect" else "run": run}, **settings[stage])
    console.rule("[bold]done")
    for name in ("report.html", "map.html", "features.db"):
        console.print(f"{name}: {Path(run) / name}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
