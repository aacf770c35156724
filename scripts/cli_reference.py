"""Generate the README's CLI reference from the Typer app (and check it is current).

    python scripts/cli_reference.py          # print the reference
    python scripts/cli_reference.py --write  # replace the block between the markers in README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer.main

from thinklens.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _option_rows(command) -> list[str]:  # a (Typer-vendored) click Command
    rows = []
    for param in command.params:
        if param.param_type_name not in ("option", "argument") or getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            required = "required" if param.required else ""
            rows.append(f"| `{param.name.upper()}` (argument) | {_cell(getattr(param, 'help', '') or '')} | {required} |")
            continue
        names = ", ".join(f"`{name}`" for name in param.opts)
        if param.is_flag:
            default = ""
        elif param.required:
            default = "required"
        elif isinstance(param.show_default, str):  # options default to None; the config's default is shown
            default = f"`{_cell(param.show_default)}`"
        elif param.default is None or param.default == "":
            default = ""
        else:
            default = f"`{param.default}`"
        rows.append(f"| {names} | {_cell(param.help or '')} | {default} |")
    return rows


def render() -> str:
    """The CLI reference as Markdown: global options, then one section per sub-command."""
    group = typer.main.get_command(app)
    lines = ["Global options (before the sub-command):", "", "| option | description | default |", "|---|---|---|"]
    lines += _option_rows(group)
    for name in sorted(group.commands):
        lines += _command_section(f"thinklens {name}", group.commands[name])
    return "\n".join(lines) + "\n"


def _command_section(title: str, command) -> list[str]:
    """A command's section; a group (`features`) lists its own arguments, then each sub-command."""
    lines = ["", f"### `{title}`", "", _cell(command.help or ""), ""]
    lines += ["| option | description | default |", "|---|---|---|", *_option_rows(command)]
    arguments = " ".join(p.name.upper() for p in command.params if p.param_type_name == "argument")
    for name in sorted(getattr(command, "commands", {})):
        lines += _command_section(f"{title} {arguments} {name}".replace("  ", " "), command.commands[name])
    return lines


def current_block(readme: str) -> str:
    """The reference as it stands in the README, between the markers."""
    start, end = readme.index(START) + len(START), readme.index(END)
    return readme[start:end].strip("\n") + "\n"


def write() -> None:
    readme = README.read_text()
    start, end = readme.index(START) + len(START), readme.index(END)
    README.write_text(readme[:start] + "\n" + render() + readme[end:])


if __name__ == "__main__":
    write() if "--write" in sys.argv[1:] else print(render(), end="")
