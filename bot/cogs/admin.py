"""Admin commands: ``/retrain start|status|cancel|resume``, ``/reload`` and ``/rollback``.

Only the admins named in the settings (``MAESTER_ADMIN_USER_IDS``, ``MAESTER_ADMIN_ROLE_IDS``) may use
them. The bot checks that itself in :meth:`AdminCog.interaction_check` and fails closed when no admin is
configured; ``default_permissions(administrator=True)`` only hides the commands from other members in
Discord's UI, which server owners can override.

``/retrain start`` starts a job on the trainer (the control service, or a local subprocess when no
trainer URL is configured, see :mod:`bot.trainer_client`) and keeps a plain channel message up to date
with its progress: a bar, step/total, loss, tokens/s and ETA, edited at most once per
``MAESTER_PROGRESS_EDIT_INTERVAL`` seconds. A channel message, unlike the interaction's reply, can still
be edited after the 15 minutes an interaction token lives. When the job ends, a summary (validation perplexity
before and after, the new run id, whether the bot now serves it) is posted in the same channel.

The cog also runs the :class:`bot.model_watcher.ModelWatcher` that hot-swaps newly published runs, and
tells the admins (in the channel an admin command was last used in) when a run is refused.

Every admin action, allowed or refused, leaves one line on the ``maester.audit`` logger.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import MaesterBot, send_ephemeral
from bot.model_loader import load_run_model, smoke_test
from bot.model_watcher import ModelWatcher, WatchResult
from bot.trainer_client import TrainerClient, TrainerError, latest_job, make_trainer_client
from trainer.jobs import MAX_STEPS, BadJobParams, Job, JobParams

log = logging.getLogger(__name__)
audit_log = logging.getLogger("maester.audit")

BAR_WIDTH = 20
ERROR_CHARS = 500  # of a trainer error shown in Discord (the full text is in the trainer's log)


class NotAdmin(app_commands.CheckFailure):
    """The user is not one of the configured admins (the message says so)."""


def is_admin(settings: Any, user: discord.abc.User) -> bool:
    """True when ``user`` is a configured admin by id or by role; False when no admin is configured."""
    if user.id in settings.admin_user_ids:
        return True
    roles = getattr(user, "roles", None) or ()
    return any(role.id in settings.admin_role_ids for role in roles)


def who(user: discord.abc.User) -> str:
    """How a Discord user is named to the trainer's job history."""
    return f"{user} ({user.id})"


def audit(user: discord.abc.User, action: str, result: str) -> None:
    """One audit line: who did what, when, and how it went."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    audit_log.info("at=%s user=%s id=%s action=%r result=%r", when, user, user.id, action, result)


# --- rendering ---------------------------------------------------------------------------------------


def progress_bar(step: int, total: int | None) -> str:
    """A text progress bar such as ``[██████░░░░░░░░░░░░░░]  30%``."""
    fraction = min(1.0, step / total) if total else 0.0
    filled = round(fraction * BAR_WIDTH)
    return f"`[{'█' * filled}{'░' * (BAR_WIDTH - filled)}]` {fraction:4.0%}"


def duration(seconds: float | None) -> str:
    """``4m 12s``-style durations; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def progress_text(job: Job) -> str:
    """The channel message for a job in progress (or just finished)."""
    header = {
        "queued": "⏳ **Retraining queued**",
        "running": "🏋️ **Retraining**",
        "succeeded": "✅ **Retraining finished**",
        "failed": "❌ **Retraining failed**",
        "cancelled": "🛑 **Retraining cancelled**",
        "interrupted": "⚠️ **Retraining interrupted**",
    }.get(job.state, f"**Retraining {job.state}**")
    lines = [f"{header} · run `{job.run_id}` · job `{job.id}`",
             f"{progress_bar(job.step, job.total_steps)} · step {job.step}/{job.total_steps or '?'}"]
    figures = [f"loss {_num(job.loss, '.3f')}", f"{_num(job.tokens_per_s, ',.0f')} tokens/s"]
    if job.state == "running":
        figures.append(f"ETA {duration(job.eta_s)}")
    if job.val_ppl is not None:
        figures.append(f"val ppl {job.val_ppl:.2f}")
    lines.append(" · ".join(figures))
    if job.error and job.state in ("failed", "interrupted"):
        lines.append(f"Reason: {discord.utils.escape_markdown(job.error[:ERROR_CHARS])}")
    if job.state == "interrupted":
        lines.append("Use `/retrain resume` to continue from the last checkpoint.")
    return "\n".join(lines)


def summary_text(job: Job, serving: str) -> str:
    """The message posted when a job ends."""
    if job.state == "succeeded" and job.published_run_id:
        return (f"✅ Retraining done: new run `{job.published_run_id}` after {job.step} steps.\n"
                f"Validation perplexity: {_num(job.val_ppl_before, '.2f')} → "
                f"{_num(job.val_ppl_after, '.2f')}.\n{serving}")
    if job.state == "succeeded":
        return f"✅ Retraining done after {job.step} steps, but no run was published.\n{serving}"
    if job.state == "cancelled":
        return f"🛑 Retraining cancelled at step {job.step}/{job.total_steps or '?'}; the model is unchanged."
    reason = discord.utils.escape_markdown((job.error or "no reason given")[:ERROR_CHARS])
    return f"❌ Retraining {job.state} at step {job.step}/{job.total_steps or '?'}: {reason}"


# --- the cog -----------------------------------------------------------------------------------------


class AdminCog(commands.Cog, name="Admin"):
    """Retraining, reloading and rolling back the served model; admins only."""

    retrain = app_commands.Group(
        name="retrain",
        description="Fine-tune the model again on the trainer (admins only).",
        default_permissions=discord.Permissions(administrator=True),
        guild_only=True,
    )

    def __init__(self, bot: MaesterBot, *, trainer: TrainerClient | None = None,
                 watcher: ModelWatcher | None = None) -> None:
        self.bot = bot
        self.settings = bot.settings
        self.trainer = trainer if trainer is not None else make_trainer_client(bot.settings)
        self.watcher = watcher if watcher is not None else ModelWatcher(
            bot.settings.checkpoint_dir,
            bot.engine,
            loader=functools.partial(
                load_run_model, device=bot.settings.device, quantize=bot.settings.quantize
            ),
            smoke_test=smoke_test,
            poll_interval_s=bot.settings.model_poll_interval,
            notify=self._announce,
        )
        self.announce_channel: discord.abc.Messageable | None = None
        self._followers: set[asyncio.Task[None]] = set()
        self._quiet = 0  # >0 while a command is checking: it answers itself, no channel announcement

    async def cog_load(self) -> None:
        """Start watching for new runs; /status reads ``bot.model_watcher``."""
        self.bot.model_watcher = self.watcher  # type: ignore[attr-defined]
        self.watcher.start()

    async def cog_unload(self) -> None:
        """Stop following progress and watching; a local trainer job is stopped (resumable)."""
        for task in list(self._followers):
            task.cancel()
        await self.watcher.stop()
        await self.trainer.close()

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Only configured admins; with none configured, nobody (fail closed)."""
        if is_admin(self.settings, interaction.user):
            return True
        action = f"/{interaction.command.qualified_name}" if interaction.command else "admin command"
        if not (self.settings.admin_user_ids or self.settings.admin_role_ids):
            audit(interaction.user, action, "refused: no admins configured")
            raise NotAdmin("No admins are configured for this bot (MAESTER_ADMIN_USER_IDS or "
                           "MAESTER_ADMIN_ROLE_IDS), so admin commands are off.")
        audit(interaction.user, action, "refused: not an admin")
        raise NotAdmin("Only the bot's admins can use this command.")

    # --- /retrain ----------------------------------------------------------------------------------

    @retrain.command(name="start")
    @app_commands.describe(
        steps="optimizer steps (default: the trainer's setting)",
        learning_rate="peak learning rate, e.g. 0.0001 (default: the trainer's setting)",
        init="continue the model being served, or start again from pretrained GPT-2",
    )
    async def retrain_start(
        self,
        interaction: discord.Interaction,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        learning_rate: app_commands.Range[float, 1e-7, 1.0] | None = None,
        init: Literal["current", "gpt2"] = "current",
    ) -> None:
        """Start a retraining job and post its progress in this channel."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        # Discord enforces the ranges in its client, but a forged interaction can carry any value; the
        # local trainer has no service in front of it to check them, so the bot checks them here.
        options = {"steps": steps, "learning_rate": learning_rate, "init": init}
        try:
            params = JobParams.from_json({key: value for key, value in options.items() if value is not None})
        except BadJobParams as exc:
            audit(interaction.user, f"/retrain start {options}", f"refused: {exc}")
            await send_ephemeral(interaction, str(exc))
            return
        action = f"/retrain start {params.to_json()}"
        try:
            job = await self.trainer.start(params, requested_by=who(interaction.user))
        except TrainerError as exc:
            audit(interaction.user, action, f"refused: {exc}")
            await send_ephemeral(interaction, str(exc))
            return
        audit(interaction.user, action, f"started job {job.id} (run {job.run_id})")
        self.announce_channel = interaction.channel  # type: ignore[assignment]
        message = await self._post(interaction.channel, progress_text(job))
        where = f" Progress: {message.jump_url}" if message is not None else ""
        await send_ephemeral(interaction, f"Started job `{job.id}` for run `{job.run_id}`.{where}")
        self._follow(job, interaction.channel, message)

    @retrain.command(name="status")
    async def retrain_status(self, interaction: discord.Interaction) -> None:
        """Show the latest retraining job."""
        await interaction.response.defer(ephemeral=True, thinking=True)  # the trainer may be slow to answer
        try:
            job = await latest_job(self.trainer)
        except TrainerError as exc:
            audit(interaction.user, "/retrain status", f"failed: {exc}")
            await send_ephemeral(interaction, str(exc))
            return
        audit(interaction.user, "/retrain status", job.state if job else "no jobs")
        await send_ephemeral(interaction, progress_text(job) if job else "No retraining job has run yet.")

    @retrain.command(name="cancel")
    async def retrain_cancel(self, interaction: discord.Interaction) -> None:
        """Stop the running retraining job."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            job = await latest_job(self.trainer)
            if job is None or job.finished:
                raise TrainerError("No retraining job is running.")
            job = await self.trainer.cancel(job.id, requested_by=who(interaction.user))
        except TrainerError as exc:
            audit(interaction.user, "/retrain cancel", f"refused: {exc}")
            await send_ephemeral(interaction, str(exc))
            return
        audit(interaction.user, "/retrain cancel", f"job {job.id} {job.state} at step {job.step}")
        total = job.total_steps or "?"
        await send_ephemeral(interaction, f"Job `{job.id}` is {job.state} (step {job.step}/{total}).")

    @retrain.command(name="resume")
    async def retrain_resume(self, interaction: discord.Interaction) -> None:
        """Continue the last interrupted, failed or cancelled job from its last checkpoint."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            job = await latest_job(self.trainer)
            if job is None:
                raise TrainerError("No retraining job has run yet.")
            job = await self.trainer.resume(job.id, requested_by=who(interaction.user))
        except TrainerError as exc:
            audit(interaction.user, "/retrain resume", f"refused: {exc}")
            await send_ephemeral(interaction, str(exc))
            return
        audit(interaction.user, "/retrain resume", f"resumed job {job.id} (run {job.run_id})")
        self.announce_channel = interaction.channel  # type: ignore[assignment]
        message = await self._post(interaction.channel, progress_text(job))
        await send_ephemeral(interaction, f"Resumed job `{job.id}` from its last checkpoint.")
        self._follow(job, interaction.channel, message)

    # --- /reload and /rollback -----------------------------------------------------------------------

    @app_commands.command(name="reload")
    @app_commands.default_permissions(administrator=True)
    @app_commands.guild_only()
    async def reload(self, interaction: discord.Interaction) -> None:
        """Load the published run now (retrying one that was refused)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        self.announce_channel = interaction.channel  # type: ignore[assignment]
        result = await self._quietly(self.watcher.check(force=True))
        audit(interaction.user, "/reload", f"{result.outcome}: {result.message}")
        await send_ephemeral(interaction, result.message)

    @app_commands.command(name="rollback")
    @app_commands.default_permissions(administrator=True)
    @app_commands.guild_only()
    async def rollback(self, interaction: discord.Interaction) -> None:
        """Go back to the run served before this one."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        self.announce_channel = interaction.channel  # type: ignore[assignment]
        result = await self._quietly(self.watcher.rollback())
        audit(interaction.user, "/rollback", f"{result.outcome}: {result.message}")
        await send_ephemeral(interaction, result.message)

    # --- progress ----------------------------------------------------------------------------------

    def _follow(self, job: Job, channel: Any, message: discord.Message | None) -> None:
        task = asyncio.get_running_loop().create_task(self._follow_job(job, channel, message),
                                                      name=f"retrain-{job.id}")
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _follow_job(self, job: Job, channel: Any, message: discord.Message | None) -> None:
        """Edit the progress message as the job advances (throttled), then post the summary."""
        shown = progress_text(job)
        last_edit = time.monotonic()
        pending: str | None = None
        try:
            async for update in self.trainer.follow(job.id):
                job = update
                text = progress_text(job)
                if text == shown:
                    continue
                pending = text
                if job.finished or time.monotonic() - last_edit >= self.settings.progress_edit_interval:
                    await self._edit(message, pending)
                    shown, pending, last_edit = pending, None, time.monotonic()
        except TrainerError as exc:
            log.warning("lost track of job %s: %s", job.id, exc)
            await self._post(channel, f"⚠️ Lost track of retraining job `{job.id}`: {exc} "
                                      "Use `/retrain status` to check on it.")
            return
        if pending is not None:
            await self._edit(message, pending)
        serving = ""
        if job.state == "succeeded" and job.published_run_id:
            serving = await self._serve_published(job.published_run_id)
        log.info("retraining job %s ended: %s", job.id, job.state)
        await self._post(channel, summary_text(job, serving))

    async def _serve_published(self, run_id: str) -> str:
        """Swap the new run in now rather than at the next poll; say what the bot serves."""
        result = await self._quietly(self.watcher.check())
        if self.watcher.served_run_id == run_id:
            return f"The bot now serves `{run_id}`."
        if run_id in self.watcher.refused:
            why = self.watcher.refused[run_id]
            return f"The bot refused it and keeps serving `{self.watcher.served_run_id}`: {why}"
        return f"The bot still serves `{self.watcher.served_run_id}` ({result.message})"

    async def _quietly(self, call: Any) -> WatchResult:
        self._quiet += 1
        try:
            return await call
        finally:
            self._quiet -= 1

    async def _announce(self, result: WatchResult) -> None:
        """Tell the admins about swaps and refusals the background poll found."""
        if self._quiet or self.announce_channel is None:
            return
        icon = "⚠️" if result.outcome == "refused" else "🔄"
        await self._post(self.announce_channel, f"{icon} {result.message}")

    async def _post(self, channel: Any, text: str) -> discord.Message | None:
        if channel is None:
            return None
        try:
            return await channel.send(text[:2000])
        except discord.HTTPException as exc:
            log.warning("could not post in channel %s: %s", getattr(channel, "id", "?"), exc)
            return None

    async def _edit(self, message: discord.Message | None, text: str) -> None:
        if message is None:
            return
        try:
            await message.edit(content=text[:2000])
        except discord.NotFound:
            pass  # someone deleted it: the summary still comes at the end
        except discord.HTTPException as exc:
            log.warning("could not update the progress message: %s", exc)


async def setup(bot: commands.Bot) -> None:
    """discord.py extension entry point."""
    await bot.add_cog(AdminCog(bot))  # type: ignore[arg-type]
