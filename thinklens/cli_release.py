"""`thinklens publish`: the CLI of thinklens.release (parses, calls the library, prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thinklens.cli_errors import user_errors
from thinklens.cli_output import print_facts
from thinklens.release.config import ImportR1Config, PublishConfig


def describe(field: str) -> str:
    return PublishConfig.model_fields[field].description or ""


IMPORT_HELP = {name: info.description or "" for name, info in ImportR1Config.model_fields.items()}


def register_release(app: typer.Typer) -> None:
    """Add `publish` and `import r1` to the app."""
    _register_publish(app)
    _register_import(app)


def _register_publish(app: typer.Typer) -> None:

    @app.command("publish")
    @user_errors
    def publish_command(
        run: Annotated[Path, typer.Argument(help="Run directory with a trained SAE and features.db.")],
        out: Annotated[Path, typer.Argument(help="New directory to write the release into (never overwritten; "
                                                 "an existing complete one is pushed with --push).")],
        name: Annotated[str | None, typer.Option(help=describe("name"))] = None,
        push: Annotated[str | None, typer.Option(help=describe("push"))] = None,
        private: Annotated[bool, typer.Option(help=describe("private"))] = False,
        traces: Annotated[bool, typer.Option("--traces/--no-traces", help=describe("traces"))] = True,
    ) -> None:
        """Package RUN for others: SAELens SAE folders, a model card, the traces as a dataset, the feature
        database in Goodfire's R1 layout (.ddb + autointerp) and thinklens' own, and a manifest of hashes."""
        from thinklens.pipeline import RunDir
        from thinklens.release.publish import publish

        result = publish(PublishConfig(name=name, push=push, private=private, traces=traces), RunDir(run), out,
                         show_progress=True)
        facts = {"SAEs": ", ".join(result.saes), "files / bytes": f"{result.files} / {result.bytes:,}"}
        if result.resumed_steps:
            facts["resumed"] = f"{result.resumed_steps} steps were already done"
        if result.pushed:
            facts["pushed"] = "\n".join(result.pushed)
        print_facts(f"publish → {result.out}", facts)


def _register_import(app: typer.Typer) -> None:
    import_app = typer.Typer(help="Make a run directory from others' releases: `thinklens import r1 …`.",
                             no_args_is_help=True)
    app.add_typer(import_app, name="import")

    @import_app.command("r1")
    @user_errors
    def import_r1_command(
        sae: Annotated[Path, typer.Option(help=IMPORT_HELP["sae"])],
        out: Annotated[Path, typer.Option("--out", "-o", help="New run directory to make.")],
        k: Annotated[int | None, typer.Option(help=IMPORT_HELP["k"])] = None,
        db: Annotated[Path | None, typer.Option(help=IMPORT_HELP["db"])] = None,
        autointerp: Annotated[Path | None, typer.Option(help=IMPORT_HELP["autointerp"])] = None,
        layer: Annotated[int | None, typer.Option(help=IMPORT_HELP["layer"])] = None,
        memory_limit: Annotated[str | None, typer.Option(help=IMPORT_HELP["memory_limit"])] = None,
        checkpoint_seconds: Annotated[float | None, typer.Option(help=IMPORT_HELP["checkpoint_seconds"])] = None,
    ) -> None:
        """A run from Goodfire's DeepSeek-R1 release: the SAE in our layout, the feature database summarised
        (the .ddb attached, not copied); `features`, `serve` and the map then work on it."""
        from thinklens.pipeline import RunDir
        from thinklens.pipeline.lock import run_lock
        from thinklens.release.importer import import_r1

        config = ImportR1Config(sae=sae, db=db, autointerp=autointerp, memory_limit=memory_limit, **{
            key: value for key, value in {"k": k, "layer": layer, "checkpoint_seconds": checkpoint_seconds}.items()
            if value is not None})
        with run_lock(out, "import r1"):
            result = import_r1(config, RunDir(out))
        print_facts(f"import r1 → {result.run}", {
            "SAE": f"{result.d_in:,} → {result.d_sae:,}, k {config.k}",
            "features with examples": "—" if result.features is None else f"{result.features:,}"})
