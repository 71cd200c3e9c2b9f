"""``/status``: which model is served, how good it was, and how the queue is doing (admins only).

Who counts as an admin is decided the same way as for the admin cog (MAESTER_ADMIN_USER_IDS /
MAESTER_ADMIN_ROLE_IDS; with neither set, nobody), and the command is hidden from non-administrators
in Discord's UI by default.
"""

from __future__ import annotations

import time
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import MaesterBot
from bot.cogs.admin import NotAdmin, is_admin


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def status_embed(bot: MaesterBot) -> discord.Embed:
    """The /status embed: model run and metrics, queue and latency figures."""
    engine = bot.engine
    embed = discord.Embed(title="maester status", colour=discord.Colour.dark_gold())
    if engine is None:
        embed.description = "No model is loaded."
        return embed
    manifest = getattr(engine, "manifest", None)
    try:
        stats = engine.stats()
        stats = stats if isinstance(stats, dict) else vars(stats)
    except Exception:
        stats = {}
    run_id = stats.get("run_id") or getattr(manifest, "run_id", "?")
    embed.add_field(name="Model run", value=f"`{discord.utils.escape_markdown(str(run_id))}`", inline=False)
    if manifest is not None:
        embed.add_field(
            name="Validation perplexity",
            value=f"{_fmt(manifest.val_ppl_before)} → {_fmt(manifest.val_ppl_after)}",
        )
        embed.add_field(name="Training steps", value=f"{manifest.steps:,}")
        embed.add_field(name="Base model", value=discord.utils.escape_markdown(manifest.base_model))
    embed.add_field(
        name="Queue", value=f"{stats.get('queue_depth', 0)} waiting, {stats.get('active', 0)} writing"
    )
    embed.add_field(
        name="Latency p50 / p95",
        value=f"{_fmt(stats.get('p50_latency_s'), '.1f')} s / {_fmt(stats.get('p95_latency_s'), '.1f')} s",
    )
    embed.add_field(name="Speed", value=f"{_fmt(stats.get('tokens_per_s'), '.1f')} tokens/s")
    embed.add_field(name="Scenes written", value=str(stats.get("completed", bot.metrics.requests["ok"])))
    uptime = stats.get("uptime_s") or (time.monotonic() - bot.metrics.started_at)
    embed.add_field(name="Uptime", value=_duration(float(uptime)))
    watcher = getattr(bot, "model_watcher", None)
    if watcher is not None and hasattr(watcher, "status_lines"):
        lines = "\n".join(discord.utils.escape_markdown(line) for line in watcher.status_lines())
        embed.add_field(name="Model updates", value=_truncate(lines, 1024) or "n/a", inline=False)
    return embed


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StatusCog(commands.Cog, name="Status"):
    """/status."""

    def __init__(self, bot: MaesterBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Configured admins only; with none configured, nobody."""
        if is_admin(self.bot.settings, interaction.user):
            return True
        if not (self.bot.settings.admin_user_ids or self.bot.settings.admin_role_ids):
            raise NotAdmin(
                "No admins are configured for this bot (MAESTER_ADMIN_USER_IDS or "
                "MAESTER_ADMIN_ROLE_IDS), so /status is off."
            )
        raise NotAdmin("Only the bot's admins can use /status.")

    @app_commands.command(name="status")
    @app_commands.default_permissions(administrator=True)
    @app_commands.guild_only()
    async def status(self, interaction: discord.Interaction) -> None:
        """Show the served model, its quality and the generation queue."""
        await interaction.response.send_message(embed=status_embed(self.bot), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    """discord.py extension entry point."""
    await bot.add_cog(StatusCog(bot))  # type: ignore[arg-type]
