"""`thinklens publish`: the CLI of thinklens.release (parses, calls the library, prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from thinklens.cli_errors import user_errors
from thinklens.cli_output import print_facts
from thinklens.release.config import PublishConfig


def describe(field: str) -> str:
    return PublishConfig.model_fields[field].description or ""


def register_release(app: typer.Typer) -> None:
    """Add `publish` to the app."""

    @app.command("publish")
    @user_errors
    def publish_command(
        run: Annotated[Path, typer.Argument(help="Run directory with a trained SAE and features.db.")],
        out: Annotated[Path, typer.Argument(help="New directory to write the release into (never overwritten).")],
        name: Annotated[str | None, typer.Option(help=describe("name"))] = None,
        push: Annotated[str | None, typer.Option(help=describe("push"))] = None,
        private: Annotated[bool, typer.Option(help=describe("private"))] = False,
        traces: Annotated[bool, typer.Option("--traces/--no-traces", help=describe("traces"))] = True,
    ) -> None:
        """Package RUN for others: SAELens SAE folders, a model card, the traces as a dataset, the feature
        database in Goodfire's R1 layout (.ddb + autointerp) and thinklens' own, and a manifest of hashes."""
        from thinklens.pipeline import RunDir
        from thinklens.release.publish import publish

        result = publish(PublishConfig(name=name, push=push, private=private, traces=traces), RunDir(run), out)
        facts = {"SAEs": ", ".join(result.saes), "files / bytes": f"{result.files} / {result.bytes:,}"}
        if result.pushed:
            facts["pushed"] = result.pushed
        print_facts(f"publish → {result.out}", facts)
