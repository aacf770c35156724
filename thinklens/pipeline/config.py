"""`RunConfig`: one section per stage, each that stage's typed config. It *is* the YAML schema.

```yaml
out: runs/demo
collect: {model: smollm2, prompts: arithmetic+logic, limit: 672, generation: {max_new_tokens: 192}}
harvest: {layers: [15]}
sweep: {strengths: [0, 2, 8, 32, 128]}
```

A section may also use the flat option names of its command (`max_new_tokens: 192`,
`layer: [15]`, `strengths: "0,2,8"`), the form run.yaml format 1 recorded; they are translated to
the fields they set, here at the border, and nowhere else. `configs/reference.yaml` is rendered
from this model (`pipeline.reference`), every default and description included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

from thinklens.errors import ThinklensError, yaml_problem
from thinklens.pipeline.estimate import PlanConfig
from thinklens.pipeline.registry import STAGE_NAMES, STAGES, get_stage
from thinklens.pipeline.stage import Stage

TOP_LEVEL = {"out", "description", "plan"}


def _run_config_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        "out": (Path | None, Field(default=None, description="The run directory (`thinklens run --out` wins).")),
        "description": (str | None, Field(default=None, description="A note on what this run is for.")),
        "plan": (PlanConfig, Field(default_factory=PlanConfig, description="For `thinklens run --dry-run` only: "
                                   "the model's width and the rates its time estimates use.")),
    }
    for stage in STAGES:
        if stage.needs_section:  # required fields: no default section
            fields[stage.name] = (stage.config | None, Field(default=None, description=stage.help))
        else:
            fields[stage.name] = (stage.config, Field(default_factory=stage.config, description=stage.help))
    return create_model("RunConfig", __config__=ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False),
                        __doc__="The settings of every stage of a run.", **fields)


RunConfig = _run_config_model()


def load_run_config(path: Path) -> BaseModel:
    """The RunConfig in a YAML file (a run config, or a run's run.yaml: its `config` is followed)."""
    return RunConfig.model_validate(read_run_document(path))


def read_run_document(path: Path) -> dict[str, Any]:
    """The file's sections with flat option names translated; unknown sections or options are refused."""
    path = Path(path)
    if not path.is_file():
        raise ThinklensError(f"no run config at {path}: pass an existing YAML file (see configs/reference.yaml)")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ThinklensError(f"{path} is not valid YAML ({yaml_problem(exc)}); fix the file") from exc
    if not isinstance(document, dict):
        raise ThinklensError(f"{path} must be a mapping of stage names to settings, not {type(document).__name__}")
    if "stages" in document and "format_version" in document:  # a run's own run.yaml: follow its config
        document = document.get("config") or {}
    unknown = sorted(set(document) - set(STAGE_NAMES) - TOP_LEVEL)
    if unknown:
        raise ThinklensError(
            f"{path}: unknown section(s) {', '.join(unknown)}; sections are {', '.join(STAGE_NAMES)} (and out, description, plan)"
        )
    sections = {key: document[key] for key in TOP_LEVEL if document.get(key) is not None}
    for name in STAGE_NAMES:
        if document.get(name) is not None:
            sections[name] = stage_section(get_stage(name), document[name], path)
    return sections


def stage_section(stage: Stage, section: Any, source: Path | str) -> dict[str, Any]:
    """One section as the stage config's fields: flat option names are set at the field they name."""
    if not isinstance(section, dict):
        raise ThinklensError(f"{source}: section '{stage.name}' must be a mapping of option names to values")
    fields = set(stage.config.model_fields)
    translated: dict[str, Any] = {}
    unknown = []
    items = [(str(key).replace("-", "_"), value) for key, value in section.items()]
    for key, value in sorted(items, key=lambda item: item[0] not in fields):  # fields first: options extend them
        if key in fields:
            set_path(translated, key, value)
        elif key in stage.options:
            set_path(translated, stage.options[key], value)
        else:
            unknown.append(key)
    if unknown:
        known = sorted(fields | set(stage.options))
        raise ThinklensError(f"{source}: unknown option(s) {', '.join(sorted(unknown))} in section '{stage.name}'; "
                             f"its options are {', '.join(known)}")
    return translated


def set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    """target[a][b] = value for `dotted` 'a.b' (a mapping already there is merged into, not replaced)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = target.get(part)
        if isinstance(child, str):  # a shorthand (`model: smollm2`) that a nested option now extends
            child = {"model": child}
        target[part] = child = dict(child) if isinstance(child, dict) else {}
        target = child
    if isinstance(value, dict) and isinstance(target.get(leaf), dict):
        value = {**target[leaf], **value}
    target[leaf] = value


def missing_sections(config: BaseModel) -> list[str]:
    """One line per stage whose section must be set but is not (e.g. harvest's layers)."""
    problems = []
    for stage in STAGES:
        if stage.needs_section and getattr(config, stage.name) is None:
            required = [name for name, info in stage.config.model_fields.items() if info.is_required()]
            problems.append(f"stage '{stage.name}' needs {', '.join(required)}: set it in the config's "
                            f"'{stage.name}' section")
    return problems
