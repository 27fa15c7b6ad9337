"""The one error contract of every task: bad input -> one line, exit code != 0, nothing lost.

A `UserError` is a problem the user must fix (a missing or corrupt file, a bad setting, an
unusable dataset); its message names the problem and the file or config key. Tasks raise it
(or a subclass) before doing work or between committed units of work, and every writer in the
project is atomic, so an error never leaves a half-written output. `python -m ganinv_jax.main`
turns it into `<task>: error: <message>` on stderr and exit status 1, without a traceback.
"""

from __future__ import annotations

import contextlib


class UserError(Exception):
    """A problem with the user's input or settings; the message is the whole report."""


@contextlib.contextmanager
def exit_on_user_error(task: str):
    """`with exit_on_user_error('invert'): ...` -> a UserError becomes one line and exit 1."""
    try:
        yield
    except UserError as e:
        raise SystemExit(f"{task}: error: {e}") from None
