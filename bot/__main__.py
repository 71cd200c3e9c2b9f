"""``python -m bot``: run the Discord bot, check its configuration, or try the model in a console.

- ``python -m bot`` (or ``python -m bot run``): load the published model and serve Discord until
  SIGTERM/SIGINT, then shut down gracefully.
- ``python -m bot check-config``: validate the settings and the published run; print a summary.
- ``python -m bot console ...``: generate scenes in the terminal, without Discord.

Every problem a user can fix (a missing or bad setting, no trained model, a rejected token, Discord
unreachable) is one ``error: ...`` line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.errors import UserError, run_reporting_user_errors

log = logging.getLogger("bot")

NO_MODEL_HINT = (
    "train one with `python -m trainer train` (or point MAESTER_CHECKPOINT_DIR at the directory that "
    "holds CURRENT and runs/)"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bot`` parser."""
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Serve Game of Thrones scenes from the published model on Discord. Settings come from "
        "the environment and .env (DISCORD_TOKEN, MAESTER_*); see .env.example.",
    )
    parser.add_argument(
        "--env-file", default=".env", help="a .env file to read settings from [default: .env]"
    )
    parser.set_defaults(func=_cmd_run)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the bot (the default)", description="Run the Discord bot.")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser(
        "check-config",
        help="validate settings and the published model, print a summary",
        description="Validate settings and the published run without connecting to Discord.",
    )
    check.add_argument(
        "--allow-missing-token",
        action="store_true",
        help="don't require DISCORD_TOKEN (to check a model before setting up Discord)",
    )
    check.set_defaults(func=_cmd_check_config)
    # The console's own flags (and their MAESTER_* defaults) are parsed only when it runs, so a bad
    # console setting can't stop `run` or `check-config`; `console --help` lists them.
    console = sub.add_parser(
        "console",
        add_help=False,
        help="generate scenes in the terminal, without Discord (see `console --help`)",
        description="Generate scenes from the published model in the terminal.",
    )
    console.set_defaults(func=_cmd_console)
    return parser


def console_parser() -> argparse.ArgumentParser:
    """The ``python -m bot console`` parser."""
    from bot.console import add_console_arguments

    parser = argparse.ArgumentParser(
        prog="python -m bot console",
        description="Generate scenes from the published model in the terminal, without Discord.",
    )
    add_console_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the command; user errors become one ``error:`` line and exit 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.func is _cmd_console:
        args = console_parser().parse_args(extra)
        args.func = _cmd_console
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_reporting_user_errors(args.func, args)


def _cmd_console(args: argparse.Namespace) -> int:
    from bot.console import main as console_main

    return int(console_main(args) or 0)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from bot.settings import Settings

    settings = Settings.from_env(dotenv=args.env_file, require_token=not args.allow_missing_token)
    run = find_run(settings.checkpoint_dir)
    width = max(len(name) for name, _ in settings.summary())
    for name, value in settings.summary():
        print(f"{name:<{width}}  {value}")
    manifest = run.manifest
    print(f"\nmodel run {run.run_id} at {run.path}")
    print(
        f"  base {manifest.base_model}, {manifest.steps} steps, validation perplexity "
        f"{_fmt(manifest.val_ppl_before)} -> {_fmt(manifest.val_ppl_after)}, "
        f"{len(manifest.speakers)} speakers"
    )
    print("configuration OK")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from bot.logging_setup import setup_logging
    from bot.settings import Settings

    settings = Settings.from_env(dotenv=args.env_file)
    setup_logging(settings.log_level, settings.secrets())
    return asyncio.run(run_bot(settings))


def find_run(checkpoint_dir: Path) -> Any:
    """The published run to serve, or a UserError saying how to get one."""
    from trainer.runs import InvalidRunError, current_run

    try:
        run = current_run(Path(checkpoint_dir))
    except InvalidRunError as exc:
        raise UserError(f"The published model in {checkpoint_dir} is unusable: {exc}") from None
    if run is None:
        raise UserError(f"No trained model in {checkpoint_dir}; {NO_MODEL_HINT}.")
    return run


async def run_bot(settings: Any) -> int:
    """Load the model, start the engine, serve Discord until a signal, then shut everything down."""
    from bot.client import MaesterBot
    from bot.engine import Engine
    from bot.model_loader import load_run_model
    from trainer.runs import InvalidRunError

    run = find_run(settings.checkpoint_dir)
    log.info("loading model run %s on %s", run.run_id, settings.device)
    try:
        loaded = await asyncio.to_thread(load_run_model, run, settings.device, settings.quantize)
    except InvalidRunError as exc:
        raise UserError(str(exc)) from None
    engine = Engine(
        loaded,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.queue_size,
        request_timeout_s=settings.request_timeout,
        max_new_tokens_cap=settings.max_new_tokens,
        threads=settings.threads or None,
    )
    await engine.start()
    bot = MaesterBot(settings, engine)
    try:
        await serve(bot, settings.discord_token.get())
    finally:
        await bot.engine.stop()
    return 0


async def serve(bot: Any, token: str, stop: asyncio.Event | None = None) -> None:
    """Run ``bot`` until it closes or ``stop`` is set (SIGTERM/SIGINT set it); errors become UserError."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not main thread
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await _serve(bot, token, stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    log.info("bye")


async def _serve(bot: Any, token: str, stop: asyncio.Event) -> None:
    async with bot:
        runner = asyncio.create_task(bot.start(token))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper.done():
            log.info("stop requested: finishing in-flight scenes and closing")
            await bot.shutdown()
        else:
            stopper.cancel()
        try:
            await runner
        except Exception as exc:
            clear = connection_error(exc)
            if clear is exc:
                raise
            raise clear from None


def connection_error(exc: BaseException) -> BaseException:
    """A start-up failure as one clear UserError (other exceptions are returned unchanged)."""
    import aiohttp
    import discord

    # A bad token fails at REST login (401) or, rarely, at the gateway's IDENTIFY (close code 4004).
    if isinstance(exc, discord.LoginFailure) or (
        isinstance(exc, discord.ConnectionClosed) and exc.code == 4004
    ):
        return UserError(
            "Discord rejected the token; check DISCORD_TOKEN (Developer Portal → your app → Bot → "
            "Reset Token) and try again."
        )
    if isinstance(exc, discord.ConnectionClosed):
        return UserError(
            f"Discord closed the gateway connection (code {exc.code}); check the bot's settings in "
            "the Developer Portal and try again later."
        )
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return UserError(
            "Discord refused the requested gateway intents; this bot needs no privileged ones, "
            "so check that you are running an unmodified version."
        )
    if isinstance(exc, aiohttp.ClientConnectionError | discord.GatewayNotFound | OSError | TimeoutError):
        return UserError(
            f"Could not reach Discord ({type(exc).__name__}); check the network connection and try again."
        )
    if isinstance(exc, discord.HTTPException):
        return UserError(f"Discord answered with an error while starting ({exc.status}); try again later.")
    return exc


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
