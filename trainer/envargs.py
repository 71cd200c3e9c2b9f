"""argparse flags whose defaults come from environment variables, shown in ``--help``.

Every setting is a flag; its environment variable (``MAESTER_...``) supplies the default, so the same
setting works from a shell, a ``.env`` file or docker compose. Values from the environment are parsed
with the flag's own ``type``, so a bad value gets the same clear error as a bad flag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def env_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *names: str,
    env: str,
    default: Any,
    help: str,
    type: Callable[[str], Any] | None = None,
    **kwargs: Any,
) -> None:
    """Add a flag whose default is ``$env`` when set, else ``default``."""
    raw = os.environ.get(env)
    if raw is not None and raw != "":
        value: Any = raw
        if type is not None:
            try:
                value = type(raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"environment variable {env}={raw!r} is invalid: {exc}")
        default = value
    parser.add_argument(
        *names, default=default, type=type, help=f"{help} [env {env}; default: %(default)s]", **kwargs
    )


def env_bool_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    *,
    env: str,
    default: bool,
    help: str,
) -> None:
    """Add ``--name/--no-name`` whose default comes from ``$env`` (1/0, true/false, yes/no, on/off)."""
    raw = os.environ.get(env)
    if raw:
        default = parse_bool(raw, env)
    parser.add_argument(
        name,
        action=argparse.BooleanOptionalAction,
        default=default,
        help=f"{help} [env {env}; default: %(default)s]",
    )


def parse_bool(raw: str, what: str) -> bool:
    """Parse a yes/no setting, naming ``what`` in the error."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"error: {what}={raw!r} is not a yes/no value (use 1/0, true/false, yes/no, on/off).")


# .env.example's secrets start with this, so a copied but unfilled .env is caught at start-up.
PLACEHOLDER_PREFIX = "replace-me"


def is_placeholder(secret: str) -> bool:
    """Whether ``secret`` is still .env.example's placeholder rather than a real value."""
    return secret.strip().lower().startswith(PLACEHOLDER_PREFIX)
