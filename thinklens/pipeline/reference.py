"""Render `configs/reference.yaml` from `RunConfig`: every field of every stage, its default, its description.

`scripts/config_reference.py --write` writes it; a test fails when a library default changes and
the file was not regenerated.
"""

from __future__ import annotations

import textwrap
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from thinklens.pipeline.config import RunConfig
from thinklens.pipeline.registry import STAGES

HEADER = """\
# Every setting of every stage, with its default: the run config `thinklens run --config FILE` follows,
# and that each stage command accepts with `--config FILE` (options given on the command line win).
# Copy the sections you change; a missing key keeps its default. A section may also use its command's
# flat option names (e.g. `max_new_tokens: 192` in collect). Generated from RunConfig by
# scripts/config_reference.py: do not edit by hand.
"""


def render_reference() -> str:
    """The reference config as YAML text with a comment above every key."""
    lines = [HEADER]
    lines += _field_lines("out", RunConfig.model_fields["out"], "runs/my-run", 0)
    for stage in STAGES:
        lines.append("")
        lines += [f"# {line}" for line in textwrap.wrap(" ".join(stage.help.split()), 100)]
        lines.append(f"{stage.name}:" if stage.config.model_fields else f"{stage.name}: {{}}")
        lines += _model_lines(stage.config, 1)
    lines.append("")
    lines += _comment(RunConfig.model_fields["plan"], 0)
    lines.append("plan:")
    lines += _model_lines(RunConfig.model_fields["plan"].annotation, 1)
    return "\n".join(lines) + "\n"


def _model_lines(model: type[BaseModel], depth: int) -> list[str]:
    lines = []
    for name, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is not None and not info.is_required() and _default(info) is not None:
            lines += _comment(info, depth)
            lines.append(f"{'  ' * depth}{name}:")
            lines += _model_lines(nested, depth + 1)
        else:
            lines += _field_lines(name, info, _default(info), depth)
    return lines


def _field_lines(name: str, info: FieldInfo, value: Any, depth: int) -> list[str]:
    lines = _comment(info, depth)
    if info.is_required():
        lines.append(f"{'  ' * depth}# REQUIRED (no default)")
        value = [15] if "layer" in name else None
    lines.append(f"{'  ' * depth}{name}: {_yaml(value)}")
    return lines


def _comment(info: FieldInfo, depth: int) -> list[str]:
    text = " ".join((info.description or "").split())
    return [f"{'  ' * depth}# {line}" for line in textwrap.wrap(text, 100 - 2 * depth)]


def _default(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return list(value) if isinstance(value, tuple) else value


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The config class of a nested section (`generation:`), also inside `X | None`."""
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000, allow_unicode=True).strip() \
        .removesuffix("...").strip()
