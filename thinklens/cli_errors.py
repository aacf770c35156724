"""How the CLI fails: one line on stderr and an exit code that says whose fault it was.

- 2, the user's: a `ThinklensError` or an invalid setting (its fix in the message), a full disk, and
  Click's usage errors (an unknown option, a value of the wrong type, an extra argument), which
  name the `--help` to read;
- 1, a bug: any other exception, as one line that says to re-run with `--debug` for the traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape
from typer.core import TyperGroup

from thinklens.cli_output import err_console
from thinklens.errors import ThinklensError

debug_state = {"debug": False}  # set by the app's --debug

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Turn user errors into one red line and exit code 2, and any other exception into one line and exit
    code 1 (a bug), unless --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ThinklensError, ValidationError) as exc:
            if debug_state["debug"]:
                raise
            _print_error(one_line(exc))
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):  # Click's own, below
            raise
        except Exception as exc:  # a full disk (exit 2), else a bug: one line, exit 1, the traceback behind --debug
            if debug_state["debug"]:
                raise
            if _disk_full(exc):
                where = getattr(exc, "filename", None)
                _print_error(f"the disk is full{f' (writing {where})' if where else ''}: free space and run the same "
                             "command again; what it finished is kept and it resumes")
                raise typer.Exit(2) from None
            first = str(exc).splitlines()[0] if str(exc) else ""
            _print_error(f"{type(exc).__name__}: {first} (a bug in thinklens: re-run with --debug for the traceback "
                         "and report it)", kind="internal error")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class OneLineUsageErrors(TyperGroup):
    """The app's group: Click's usage errors as one line naming the command's `--help` (exit 2), in place
    of Typer's boxed panel."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            outcome = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # Typer's Click: a usage error, a bad parameter, no arguments
            context = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as Click would
                exc.show()
            else:
                # Typer shows an argument of a group as {RUN} in a command path; the user types RUN
                command = context.command_path.replace("{", "").replace("}", "") if context else "thinklens"
                _print_error(f"{exc.format_message()} (see `{command} --help`)")
            sys.exit(exc.exit_code)
        except typer.Abort:
            _print_error("aborted")
            sys.exit(1)
        sys.exit(outcome if isinstance(outcome, int) else 0)  # standalone_mode=False returns an Exit's code


def one_line(exc: Exception) -> str:
    """A user error as the one line the CLI prints."""
    if isinstance(exc, ValidationError):
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        return f"invalid setting {where}: {problem['msg']}"
    return str(exc)


def _disk_full(exc: Exception) -> bool:
    """ENOSPC, or SQLite's own words for it."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "disk is full" in str(exc)


def _print_error(message: str, kind: str = "error") -> None:
    # The message is text, not markup: `pip install 'thinklens[ray]'` must keep its brackets.
    err_console.print(f"[red]{kind}:[/red] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
