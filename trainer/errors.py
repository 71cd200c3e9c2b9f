"""The error type for mistakes a user can make, and the one place that reports them.

A :class:`UserError` is printed as one ``error: ...`` line with exit status 2, never a traceback; both
command lines (``python -m trainer`` and ``python -m bot``) run their commands through
:func:`run_reporting_user_errors`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """A problem the user can fix (bad path, bad setting, bad file). Its message is one clear sentence."""


def run_reporting_user_errors(command: Callable[[Any], int | None], args: Any) -> int:
    """Run ``command(args)``; a UserError is one ``error:`` line and exit 2, Ctrl-C is exit 130."""
    try:
        return int(command(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
