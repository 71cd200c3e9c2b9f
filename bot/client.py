"""``MaesterBot``: the discord.py client, its cogs, command sync, health endpoints and graceful shutdown.

Dependencies come in through the constructor (settings and a started generation engine), so tests run
the same class against a loopback Discord. Cogs load in ``setup_hook``; one that fails to load is
logged and skipped. Application commands are synced only when the command tree changed: a hash of the
tree's payload per target (each configured guild, or global) is kept in a small state file in the
checkpoint directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.formatting import neutralize, truncate
from bot.health import HealthServer, Metrics, Probe
from bot.settings import Settings
from trainer.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = ("bot.cogs.scene", "bot.cogs.status", "bot.cogs.admin")
SYNC_STATE_NAME = ".discord-commands.json"


@dataclass(eq=False)  # identity hashing: kept in a set
class InFlight:
    """A request the bot is working on, so shutdown can wait for it or cancel it."""

    handle: Any  # bot.engine handle
    task: asyncio.Task | None
    cancel_reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class MaesterBot(commands.Bot):
    """The Discord client: serves /scene from ``engine`` with the options in ``settings``."""

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        *,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        **client_options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # slash commands need nothing more; no privileged intents
        client_options.setdefault("guild_ready_timeout", settings.guild_ready_timeout)
        super().__init__(
            command_prefix=commands.when_mentioned,  # no message-content intent: prefix commands unused
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),  # generated text must never ping anyone
            help_command=None,
            chunk_guilds_at_startup=False,
            **client_options,
        )
        self.settings = settings
        self.engine = engine
        self.extensions_to_load = tuple(extensions)
        self.failed_extensions: dict[str, str] = {}
        self.metrics = Metrics()
        self.health = HealthServer(settings.health_host, settings.health_port, self.metrics, self.probe)
        self.gateway_connected = False
        self.accepting = True  # False once shutdown begins: new requests get "shutting down"
        self.inflight: set[InFlight] = set()
        self.last_sync_targets: list[str] = []  # targets synced by the last setup_hook (tests read it)
        self.tree.on_error = self.on_app_command_error

    # -- start-up ---------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        """Load cogs, start the health server, sync commands if they changed."""
        for name in self.extensions_to_load:
            try:
                await self.load_extension(name)
            except Exception as exc:  # a broken cog must not take the bot down
                self.failed_extensions[name] = f"{type(exc).__name__}: {exc}"
                log.exception("could not load extension %s; continuing without it", name)
        try:
            await self.health.start()
        except OSError as exc:
            host, port = self.settings.health_host, self.settings.health_port
            raise UserError(
                f"Could not serve /healthz on {host}:{port} ({exc.strerror or exc}); set MAESTER_HEALTH_PORT "
                "to a free port or MAESTER_HEALTH_HOST to an address of this machine."
            ) from None
        await self.sync_commands_if_changed()

    def sync_targets(self) -> list[discord.Object | None]:
        """Where commands go: each configured guild (instant), or global (None)."""
        return [discord.Object(id=gid) for gid in self.settings.guild_ids] or [None]

    def command_payload(self, guild: discord.abc.Snowflake | None) -> list[dict[str, Any]]:
        """The JSON a sync to ``guild`` would send."""
        return [cmd.to_dict(self.tree) for cmd in self.tree.get_commands(guild=guild)]

    async def sync_commands_if_changed(self) -> list[str]:
        """Sync each target whose command payload differs from the last one synced; returns them."""
        state_path = Path(self.settings.state_dir or self.settings.checkpoint_dir) / SYNC_STATE_NAME
        state = _read_state(state_path)
        synced = []
        for guild in self.sync_targets():
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            payload = self.command_payload(guild)
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            key = f"{self.application_id}:{guild.id if guild else 'global'}"
            if state.get(key) == digest:
                continue
            try:
                await self.tree.sync(guild=guild)
            except discord.HTTPException as exc:
                log.error("syncing commands to %s failed (%s); the old commands stay", key, exc)
                continue
            state[key] = digest
            synced.append(key)
            log.info(
                "synced %d commands to %s", len(payload), "guild " + str(guild.id) if guild else "all guilds"
            )
        if synced:
            _write_state(state_path, state)
        else:
            log.info("commands unchanged; not syncing")
        self.last_sync_targets = synced
        return synced

    # -- gateway state ----------------------------------------------------------------------------

    async def on_ready(self) -> None:
        self.gateway_connected = True
        log.info(
            "connected as %s (id %s) to %d guild(s)",
            self.user,
            self.user.id if self.user else "?",
            len(self.guilds),
        )

    async def on_resumed(self) -> None:
        self.gateway_connected = True

    async def on_disconnect(self) -> None:
        self.gateway_connected = False

    def probe(self) -> Probe:
        """The bot's health for /healthz and /metrics."""
        engine = self.engine
        stats = _stats(engine)
        run_id = stats.get("run_id") or getattr(getattr(engine, "manifest", None), "run_id", None)
        connected = self.gateway_connected and not self.is_closed()
        reason = ""
        if not self.accepting:
            reason = "the bot is shutting down"
        return Probe(
            gateway_connected=connected and self.accepting,
            model_loaded=engine is not None and bool(run_id),
            run_id=run_id,
            queue_depth=int(stats.get("queue_depth", 0)),
            active=int(stats.get("active", 0)),
            reason=reason,
        )

    # -- errors -----------------------------------------------------------------------------------

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Answer the user with one sentence and log the exception."""
        if isinstance(error, app_commands.CommandOnCooldown):
            message = f"Slow down: try again in {error.retry_after:.0f} s."
        elif isinstance(error, app_commands.CheckFailure):
            message = str(error) or "You can't use this command here."
        elif isinstance(error, app_commands.TransformerError):
            shown = neutralize(truncate(str(error.value), 100))
            message = f"“{shown}” isn't valid for that option."
        else:
            command = interaction.command.name if interaction.command else "a command"
            log.error("error in /%s", command, exc_info=error)
            message = "Something went wrong on my side; it has been logged. Please try again later."
        await send_ephemeral(interaction, message)

    # -- shutdown ---------------------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop taking requests, let in-flight ones finish (or cancel them after ``grace``), close."""
        if not self.accepting:
            return
        self.accepting = False
        grace = self.settings.shutdown_grace if grace is None else grace
        pending = list(self.inflight)
        if pending:
            log.info("shutting down: waiting up to %.0f s for %d scene(s)", grace, len(pending))
            await _wait_events([job.done for job in pending], grace)
            left = [job for job in pending if not job.done.is_set()]
            for job in left:
                job.cancel_reason = "the bot is shutting down"
                with contextlib.suppress(Exception):
                    job.handle.cancel()
            # A cancelled handle ends its stream quickly; the request then edits its message to say so.
            await _wait_events([job.done for job in left], 10.0)
            for job in left:
                if not job.done.is_set() and job.task is not None:
                    job.task.cancel()
        await self.close()

    async def close(self) -> None:
        """Close the gateway and the health server."""
        self.accepting = False
        self.gateway_connected = False
        await self.health.stop()
        await super().close()


async def send_ephemeral(interaction: discord.Interaction, message: str) -> None:
    """Answer privately, whether or not the interaction was already answered."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


def _stats(engine: Any) -> dict[str, Any]:
    if engine is None:
        return {}
    try:
        stats = engine.stats()
    except Exception:  # a closed or swapping engine: report it as empty
        return {}
    return stats if isinstance(stats, dict) else vars(stats)


async def _wait_events(events: list[asyncio.Event], timeout: float) -> None:
    if not events:
        return
    waiters = [asyncio.create_task(event.wait()) for event in events]
    _, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()


def _read_state(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(path: Path, state: dict[str, str]) -> None:
    """Write the sync state atomically; a read-only checkpoint dir only costs a re-sync next start."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning(
            "could not record synced commands in %s (%s); they will be re-synced next start", path, exc
        )
