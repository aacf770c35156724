"""The one exception type for bad user input.

A `ThinklensError` message is a single line that says what is wrong and how to fix it. The CLI
prints it without a traceback and exits with code 2; library callers catch it like any exception.
"""


class ThinklensError(Exception):
    """Bad input from the user: the message names the fix."""
