"""``python -m trainer``: one entry point with a subcommand per job.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; that function adds
its parser and sets ``func`` to a callable taking the parsed arguments and returning an exit status.
Heavy imports (torch, transformers) stay inside those callables so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence

from trainer.errors import run_reporting_user_errors

# Modules providing subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "trainer.download",
    "trainer.prepare",
    "trainer.train",
    "trainer.service",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Prepare the Game of Thrones corpus, fine-tune GPT-2 on it, and publish runs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the subcommand; user errors become one line on stderr and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_reporting_user_errors(args.func, args)
