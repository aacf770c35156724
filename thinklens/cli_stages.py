"""The stage commands of the CLI, built from the stage registry: one click command per `Stage`.

Each option comes from `Stage.options` (option name → config field); its help is the field's
description and its value is None unless given, so the config's own default applies: the CLI
restates no default. `--config FILE` makes the file's section of that stage the starting point and
options given on the command line win.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from thinklens.errors import ThinklensError
from thinklens.pipeline.config import read_run_document, set_path
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.runner import run_stage
from thinklens.pipeline.stage import Stage, StageResult

CONFIG_HELP = "Run config (YAML): this stage's section gives the settings; options given here win."


def field_at(config: type[BaseModel], dotted: str) -> FieldInfo:
    """The field a dotted path names (`generation.max_new_tokens`), through nested configs."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        config = next(arg for arg in _members(config.model_fields[part].annotation)
                      if isinstance(arg, type) and issubclass(arg, BaseModel))
    return config.model_fields[leaf]


def stage_command(stage: Stage, show: typing.Callable[[StageResult], None]) -> typing.Callable[..., None]:
    """The function behind `thinklens STAGE`: RUN (collect: --out), --config, one option per config field.

    Typer reads its parameters from the signature built here, so the options follow the declaration.
    """
    if stage.name == "collect":
        target = Annotated[Path | None, typer.Option("--out", "-o", help="Run directory; traces go to OUT/traces.")]
    else:
        target = Annotated[Path | None, typer.Argument(help="Run directory (default: `out:` of --config FILE).")]
    parameters = [_parameter("run", target), _parameter("config_file", Annotated[
        Path | None, typer.Option("--config", help=CONFIG_HELP)])]
    parameters += [_parameter(name, _option(stage, name, path)) for name, path in stage.options.items()]

    def command(run: Path | None, config_file: Path | None, **values: Any) -> None:
        section: dict[str, Any] = {}
        if config_file is not None:
            document = read_run_document(config_file)
            section = document.get(stage.name, {})
            run = run or document.get("out")
        for name, value in values.items():
            if value is not None and value != [] and value != ():
                set_path(section, stage.options[name], value)
        if run is None:
            where = "--out RUN" if stage.name == "collect" else "RUN"
            raise ThinklensError(f"no run directory: pass {where} or set `out:` in the file given to --config")
        show(run_stage(stage.name, stage.config.model_validate(section), RunDir(run)))

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__name__ = f"{stage.name}_command"
    command.__doc__ = stage.help
    return command


def _parameter(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _option(stage: Stage, name: str, path: str) -> Any:
    """`Annotated[type | None, typer.Option(...)]` for one config field; its help is the field's description."""
    info = field_at(stage.config, path)
    kind, multiple = _option_type(info.annotation)
    names = [f"--{name.replace('_', '-')}", *([stage.short[name]] if name in stage.short else [])]
    help_text = (info.description or "") + (" Repeat for several." if multiple else "")
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default  # the config's, shown only
    return Annotated[(list[kind] if multiple else kind) | None, typer.Option(
        *names, help=help_text, show_default=False if shown is None or shown is False else str(shown))]


def _option_type(annotation: Any) -> tuple[type, bool]:
    """(type, repeatable) for a field: ints, floats, flags and paths typed; lists of ints repeat; the rest text.

    Choices and ranges are left to the config, so a bad value gets the config's one-line error.
    """
    members = [arg for arg in _members(annotation) if arg is not type(None)]
    if len(members) == 1 and typing.get_origin(members[0]) is tuple:
        item = typing.get_args(members[0])[0]
        item = typing.get_args(item)[0] if typing.get_origin(item) is Annotated else item
        return (int, True) if item is int else (str, False)  # other lists: comma-separated text
    if len(members) == 1 and members[0] in (bool, int, float, Path):
        return members[0], False
    return str, False


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)
