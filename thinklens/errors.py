"""The one exception type for bad user input.

A `ThinklensError` message is a single line that says what is wrong and how to fix it. The CLI
prints it without a traceback and exits with code 2; library callers catch it like any exception.
"""


class ThinklensError(Exception):
    """Bad input from the user: the message names the fix."""


def refuse_other_identity(directory: object, theirs: dict, asked: dict, what: str, fix: str) -> None:
    """Raise when an artifact in `directory` was made with other settings than those asked now.

    The message names the first differing setting, both values, and the fix.
    """
    differing = [key for key in sorted(set(theirs) | set(asked)) if theirs.get(key) != asked.get(key)]
    if differing:
        key = differing[0]
        raise ThinklensError(f"{directory} holds {what} ({key}: {theirs.get(key)!r}, asked {asked.get(key)!r}): {fix}")


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: what is wrong and where (PyYAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unreadable"])[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
