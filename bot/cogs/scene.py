"""``/scene``: write a new scene with the served model, streamed into the reply as it is generated.

A request is checked (characters the model knows, cleaned text, per-user cooldown, queue space) before
it is acknowledged, so every refusal is a private one-sentence answer; an accepted request is deferred at
once (well inside Discord's 3 s), shows its queue position, streams into the message at most once per
``stream_edit_interval``, and ends as a screenplay embed with Regenerate and Continue buttons.

The buttons carry the scene id in their ``custom_id`` (``maester:regen:<id>``/``maester:more:<id>``);
the scene itself lives in a bounded in-memory store, so after a restart or once it has been evicted the
button answers that the scene expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import InFlight, MaesterBot, send_ephemeral
from bot.engine import EngineClosedError, QueueFullError, SamplingParams
from bot.formatting import (
    CONTENT_LIMIT,
    DESCRIPTION_LIMIT,
    autocomplete_characters,
    clean_text,
    footer_text,
    neutralize,
    parse_characters,
    render_screenplay,
    scene_title,
    split_at_lines,
    tail_lines,
    truncate,
)
from bot.settings import LENGTHS
from trainer.scene_format import build_prompt, cut_at_scene_end, format_header, parse_turns

log = logging.getLogger(__name__)

SETTING_LIMIT = 200
OPENING_LIMIT = 300
CHARACTERS_LIMIT = 130  # three names and their commas
SEED_MAX = 2**31 - 1
CONTINUE_CONTEXT_CHARS = 1500  # scene tail fed back for Continue: ~400 GPT-2 tokens leaves room to write
MAX_MESSAGES = 3  # a longer scene goes out as a .txt attachment instead of more follow-ups
PREVIEW_LIMIT = CONTENT_LIMIT - 100  # room for the title line and the cursor
CURSOR = " ▌"
EMBED_COLOUR = discord.Colour.dark_gold()


@dataclass(frozen=True)
class SceneRequest:
    """What to write: the validated /scene options, plus the scene so far when continuing."""

    characters: tuple[str, ...]
    setting: str
    opening: str
    length: str
    temperature: float
    seed: int
    previous: str = ""  # the scene body so far (Continue)

    def prompt(self) -> tuple[str, str]:
        """The model prompt, and the part of it that belongs to the shown scene."""
        header = format_header(setting=self.setting or None, characters=self.characters)
        if self.previous:
            tail = tail_lines(self.previous, CONTINUE_CONTEXT_CHARS)
            return header + (tail if tail.endswith("\n") else tail + "\n"), ""
        prompt = build_prompt(self.characters, self.setting or None, self.opening or None)
        return prompt, prompt[len(header) :]


@dataclass(frozen=True)
class SceneRecord:
    """A finished scene, kept so its buttons can regenerate or continue it."""

    request: SceneRequest
    body: str
    run_id: str


class SceneStore:
    """The last ``capacity`` scenes by id (least recently used evicted first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._scenes: OrderedDict[str, SceneRecord] = OrderedDict()

    def add(self, record: SceneRecord) -> str:
        """Store a scene; returns its id."""
        scene_id = secrets.token_hex(6)
        self._scenes[scene_id] = record
        while len(self._scenes) > self.capacity:
            self._scenes.popitem(last=False)
        return scene_id

    def get(self, scene_id: str) -> SceneRecord | None:
        """A stored scene, or None when it expired."""
        record = self._scenes.get(scene_id)
        if record is not None:
            self._scenes.move_to_end(scene_id)
        return record

    def __len__(self) -> int:
        return len(self._scenes)


class Cooldowns:
    """Per-user cooldown between accepted requests."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[int, float] = {}

    def remaining(self, user_id: int) -> float:
        """Seconds until ``user_id`` may ask again (0 when they may)."""
        last = self._last.get(user_id)
        return 0.0 if last is None else max(0.0, self.seconds - (time.monotonic() - last))

    def mark(self, user_id: int) -> None:
        """Start the user's cooldown now."""
        now = time.monotonic()
        self._last[user_id] = now
        if len(self._last) > 10_000:  # forget users whose cooldown is long over
            self._last = {u: t for u, t in self._last.items() if now - t < self.seconds}


class SceneButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"maester:(?P<action>regen|more):(?P<id>[0-9a-f]{12})"
):
    """Regenerate or Continue a scene; works on any message as long as the scene is remembered."""

    def __init__(self, action: str, scene_id: str) -> None:
        label, emoji = ("Regenerate", "🎲") if action == "regen" else ("Continue", "➡️")
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=discord.ButtonStyle.secondary,
                custom_id=f"maester:{action}:{scene_id}",
            )
        )
        self.action, self.scene_id = action, scene_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> SceneButton:
        return cls(match["action"], match["id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog(SceneCog.__cog_name__)
        if not isinstance(cog, SceneCog):
            await send_ephemeral(interaction, "Scenes are unavailable right now.")
            return
        await cog.on_button(interaction, self.action, self.scene_id)


class SceneCog(commands.Cog, name="Scene"):
    """/scene and its buttons."""

    def __init__(self, bot: MaesterBot) -> None:
        self.bot = bot
        self.store = SceneStore(bot.settings.scene_memory)
        self.cooldowns = Cooldowns(bot.settings.cooldown_seconds)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(SceneButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(SceneButton)

    @app_commands.command(name="scene")
    @app_commands.describe(
        characters="1 to 3 characters, comma-separated (suggestions appear as you type)",
        setting="Where and when the scene happens",
        opening="The first line, spoken by the first character",
        length="How long the scene should be",
        temperature="Randomness: 0.1 is careful and repetitive, 1.5 is wild",
        seed="Repeat a scene exactly by giving its seed",
    )
    @app_commands.choices(
        length=[
            app_commands.Choice(name="short", value="short"),
            app_commands.Choice(name="medium", value="medium"),
            app_commands.Choice(name="long", value="long"),
        ]
    )
    async def scene(
        self,
        interaction: discord.Interaction,
        characters: app_commands.Range[str, 1, CHARACTERS_LIMIT],
        setting: app_commands.Range[str, 1, SETTING_LIMIT] | None = None,
        opening: app_commands.Range[str, 1, OPENING_LIMIT] | None = None,
        length: app_commands.Choice[str] | None = None,
        temperature: app_commands.Range[float, 0.1, 1.5] | None = None,
        seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
    ) -> None:
        """Write a new Game of Thrones scene with the characters you choose."""
        # Discord enforces the ranges above in its own client, but a modified client can send anything,
        # so every option is checked again here.
        known = self._speakers()
        choice = parse_characters(characters, known)
        problem = choice.error
        if problem is None and seed is not None and not 0 <= seed <= SEED_MAX:
            problem = f"This scene can't be written: the seed must be a whole number from 0 to {SEED_MAX}."
        if problem is not None:
            self.bot.metrics.record("invalid")
            await send_ephemeral(interaction, problem)
            return
        settings = self.bot.settings
        request = SceneRequest(
            characters=choice.names,
            setting=clean_text(setting, SETTING_LIMIT),
            opening=clean_text(opening, OPENING_LIMIT),
            length=length.value if length and length.value in LENGTHS else "medium",
            temperature=_clamp(temperature if temperature is not None else settings.default_temperature),
            seed=seed if seed is not None else secrets.randbelow(SEED_MAX + 1),
        )
        await self.serve(interaction, request)

    @scene.autocomplete("characters")
    async def characters_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Suggest names for the last comma-separated item."""
        return [
            app_commands.Choice(name=value, value=value)
            for value in autocomplete_characters(current, self._speakers())
        ]

    async def on_button(self, interaction: discord.Interaction, action: str, scene_id: str) -> None:
        """Regenerate (same options, new seed) or Continue (extend the scene) a remembered scene."""
        record = self.store.get(scene_id)
        if record is None:
            self.bot.metrics.record("invalid")
            await send_ephemeral(
                interaction,
                "This scene expired (I only remember recent scenes); start a new one with /scene.",
            )
            return
        new_seed = secrets.randbelow(SEED_MAX + 1)
        if action == "regen":
            request = replace(record.request, seed=new_seed, previous="")
        else:
            request = replace(record.request, seed=new_seed, previous=record.body)
        await self.serve(interaction, request)

    # -- serving a request ------------------------------------------------------------------------

    def _speakers(self) -> tuple[str, ...]:
        manifest = getattr(self.bot.engine, "manifest", None)
        return tuple(getattr(manifest, "speakers", ()) or ())

    def _refusal(self, interaction: discord.Interaction) -> tuple[str, str] | None:
        """(outcome, message) when the request can't be taken now."""
        if not self.bot.accepting:
            return "shutting_down", "I'm shutting down and not taking new scenes; try again in a minute."
        if self.bot.engine is None:
            return "busy", "No model is loaded right now; try again in a minute."
        wait = self.cooldowns.remaining(interaction.user.id)
        if wait > 0:
            return "cooldown", f"You're on cooldown: you can ask for another scene in {math.ceil(wait)} s."
        return None

    async def serve(self, interaction: discord.Interaction, request: SceneRequest) -> None:
        """Check, queue, defer, stream and finish one request; every path answers the user."""
        started = time.monotonic()
        refusal = self._refusal(interaction)
        if refusal:
            self.bot.metrics.record(refusal[0])
            await send_ephemeral(interaction, refusal[1])
            return
        engine = self.bot.engine
        settings = self.bot.settings
        prompt, prefix = request.prompt()
        params = SamplingParams(
            max_new_tokens=settings.length_tokens(request.length),
            temperature=request.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repetition_penalty=settings.repetition_penalty,
            seed=request.seed,
        )
        # Submitting only enqueues, so a full queue is refused privately before anything is public.
        try:
            handle = engine.submit(prompt, params)
        except QueueFullError as exc:
            self.bot.metrics.record("busy")
            await send_ephemeral(
                interaction,
                f"I'm busy writing other scenes; try again in ~{max(1, math.ceil(exc.retry_after_s))} s.",
            )
            return
        except ValueError as exc:  # e.g. a Continue whose scene no longer fits the model's context
            self.bot.metrics.record("invalid")
            await send_ephemeral(interaction, f"I can't write that scene: {exc}")
            return
        except EngineClosedError:
            self.bot.metrics.record("shutting_down")
            await send_ephemeral(
                interaction, "The model is being swapped or shut down; try again in a moment."
            )
            return
        self.cooldowns.mark(interaction.user.id)
        job = InFlight(handle=handle, task=asyncio.current_task())
        self.bot.inflight.add(job)
        try:
            try:
                await interaction.response.defer(thinking=True)
            except discord.HTTPException as exc:
                handle.cancel()
                self.bot.metrics.record("error")
                log.warning("could not acknowledge a scene request in time: %s", exc)
                return
            await self._stream_and_finish(interaction, request, prefix, handle, job, started)
        finally:
            if not job.done.is_set():
                with contextlib.suppress(Exception):
                    handle.cancel()
            self.bot.inflight.discard(job)
            job.done.set()

    async def _stream_and_finish(
        self,
        interaction: discord.Interaction,
        request: SceneRequest,
        prefix: str,
        handle: Any,
        job: InFlight,
        started: float,
    ) -> None:
        title = scene_title(request.characters, request.setting)
        progress = _Progress()
        renderer = asyncio.create_task(self._render_progress(interaction, handle, title, prefix, progress))
        result = None
        failure: BaseException | None = None
        try:
            async for delta in handle.stream():
                progress.text += delta
            result = await handle.result()
        except Exception as exc:  # the engine reports timeouts and failures by raising
            failure = exc
        finally:
            progress.stop.set()
            await renderer
        seconds = time.monotonic() - started
        finish = getattr(result, "finish_reason", None)
        if failure is not None or finish in ("timeout", "cancelled", "error"):
            await self._finish_failed(interaction, job, failure, finish, progress.text, prefix)
            return
        body = _scene_body(request, prefix, result.text)
        record = SceneRecord(request=replace(request, seed=result.seed), body=body, run_id=result.run_id)
        scene_id = self.store.add(record)
        # Counted once written, before the (network) delivery, so /metrics never lags what users see.
        self.bot.metrics.record("ok", seconds=seconds, tokens=int(result.new_tokens))
        await self._send_final(interaction, record, scene_id, title, seconds)

    async def _render_progress(
        self, interaction: discord.Interaction, handle: Any, title: str, prefix: str, progress: _Progress
    ) -> None:
        """Edit the reply with the queue position or the scene so far, at most once per interval."""
        interval = self.bot.settings.stream_edit_interval
        last = None
        while not progress.stop.is_set():
            content = self._progress_content(handle, title, prefix, progress.text)
            if content != last:
                try:
                    await interaction.edit_original_response(content=content)
                except discord.HTTPException as exc:
                    if token_gone(exc):
                        return  # the finished scene goes to the channel instead
                    log.warning("could not update a scene in progress: %s", exc)
                last = content
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.stop.wait(), interval)

    def _progress_content(self, handle: Any, title: str, prefix: str, text: str) -> str:
        if not text:
            position = handle.position()
            if position > 0:
                wait = _estimated_wait(self.bot.engine)
                about = f" (about {math.ceil(wait)} s)" if wait else ""
                return f"Queued: position {position}{about}"
            return "Writing the scene…"
        preview = tail_lines(render_screenplay(prefix + text), PREVIEW_LIMIT - len(title))
        return f"**{neutralize(title)}**\n{preview}{CURSOR}"

    async def _finish_failed(
        self,
        interaction: discord.Interaction,
        job: InFlight,
        failure: BaseException | None,
        finish: str | None,
        text: str,
        prefix: str,
    ) -> None:
        if job.cancel_reason or finish == "cancelled":
            outcome = "cancelled"
            message = (
                f"This scene was cancelled: {job.cancel_reason or 'it was stopped'}. Please try again later."
            )
        elif finish == "timeout" or isinstance(failure, TimeoutError):
            outcome = "timeout"
            message = "This scene took too long and was stopped; try a shorter length."
        elif isinstance(failure, ValueError):  # the engine's one-sentence refusal (prompt can't fit)
            outcome = "invalid"
            message = f"This scene can't be written: {failure}"
        else:
            outcome = "error"
            log.error("scene generation failed", exc_info=failure)
            message = "Something went wrong while writing this scene; it has been logged. Please try again."
        self.bot.metrics.record(outcome)
        partial = render_screenplay(prefix + text) if text else ""
        content = (
            message
            if not partial
            else f"{message}\n\n{tail_lines(partial, CONTENT_LIMIT - len(message) - 10)}"
        )
        try:
            await self._deliver(interaction, [_Part(content=truncate(content, CONTENT_LIMIT - 30))])
        except discord.HTTPException as exc:
            log.warning("could not report a failed scene: %s", exc)

    async def _send_final(
        self, interaction: discord.Interaction, record: SceneRecord, scene_id: str, title: str, seconds: float
    ) -> None:
        """The finished scene: one embed per message, split at lines; a .txt when it's very long."""
        rendered = render_screenplay(record.body) if parse_turns(record.body) else ""
        rendered = rendered or "*The model wrote nothing this time; try Regenerate.*"
        parts = split_at_lines(rendered, DESCRIPTION_LIMIT)
        footer = footer_text(
            record.run_id, record.request.seed, seconds, "continued" if record.request.previous else ""
        )
        view = discord.ui.View(timeout=None)
        view.add_item(SceneButton("regen", scene_id))
        view.add_item(SceneButton("more", scene_id))
        attachment = None
        if len(parts) > MAX_MESSAGES:
            attachment = discord.File(io.BytesIO(_plain_scene(record).encode()), filename="scene.txt")
            parts = [parts[0], "*The whole scene is attached as scene.txt.*"]
        embeds = []
        for index, part in enumerate(parts):
            embed = discord.Embed(description=part, colour=EMBED_COLOUR)
            if index == 0:
                embed.title = neutralize(title)
            if index == len(parts) - 1:
                embed.set_footer(text=footer)
            embeds.append(embed)
        parts_out = [_Part(embed) for embed in embeds]
        parts_out[-1].view = view
        parts_out[-1].file = attachment
        await self._deliver(interaction, parts_out)

    async def _deliver(self, interaction: discord.Interaction, parts: list[_Part]) -> None:
        """The first part replaces the reply, the rest follow it; through the channel once the token is gone.

        An interaction token lives 15 minutes: a scene that waited and generated longer than that can no
        longer be delivered through it, so it is posted as a plain channel message instead.
        """
        via_channel = interaction.is_expired()
        for index, part in enumerate(parts):
            if not via_channel:
                try:
                    if index == 0:
                        await interaction.edit_original_response(
                            content=part.content,
                            embed=part.embed,
                            view=part.view,
                            attachments=[part.file] if part.file else discord.utils.MISSING,
                        )
                    else:
                        await interaction.followup.send(**part.send_kwargs())
                    continue
                except discord.HTTPException as exc:
                    if not token_gone(exc):
                        raise
                    via_channel = True
                    log.info("the interaction token expired; posting the rest in the channel")
            if part.file is not None:
                part.file.reset()
            kwargs = part.send_kwargs()
            if index == 0:  # say who it is for; AllowedMentions.none() keeps it from pinging
                kwargs["content"] = f"{interaction.user.mention}: {part.content or 'your scene'}"
            channel = interaction.channel
            if channel is None or not hasattr(channel, "send"):
                log.warning("a scene outlived its interaction and has no channel to go to; dropped")
                return
            await channel.send(**kwargs)


@dataclass
class _Part:
    """One message of a reply."""

    embed: discord.Embed | None = None
    content: str | None = None
    view: discord.ui.View | None = None
    file: discord.File | None = None

    def send_kwargs(self) -> dict[str, Any]:
        """Arguments for a follow-up or channel message."""
        kwargs: dict[str, Any] = {}
        for name in ("embed", "content", "view", "file"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


def token_gone(exc: discord.HTTPException) -> bool:
    """Whether Discord refused a call because the interaction's token expired (or never was)."""
    return exc.status == 401 or exc.code in (50027, 10015)  # Invalid Webhook Token, Unknown Webhook


class _Progress:
    """Text streamed so far, and the signal that streaming ended."""

    def __init__(self) -> None:
        self.text = ""
        self.stop = asyncio.Event()


def _scene_body(request: SceneRequest, prefix: str, generated: str) -> str:
    """The scene as shown: the prompt's own lines, then the generated text up to the scene's end."""
    # The engine already cuts at the scene's end and drops an unfinished last line; cutting again is
    # cheap insurance for an engine that doesn't.
    text, _ = cut_at_scene_end(generated)
    body = prefix + text.replace("<|endoftext|>", "")
    if request.previous:
        joiner = "" if request.previous.endswith("\n") else "\n"
        body = request.previous + joiner + body
    return body.strip("\n") + "\n"


def _plain_scene(record: SceneRecord) -> str:
    request = record.request
    return format_header(setting=request.setting or None, characters=request.characters) + record.body


def _estimated_wait(engine: Any) -> float:
    try:
        return float(engine.estimated_wait_s())
    except Exception:
        return 0.0


def _clamp(temperature: float) -> float:
    return min(1.5, max(0.1, float(temperature)))


async def setup(bot: commands.Bot) -> None:
    """discord.py extension entry point."""
    await bot.add_cog(SceneCog(bot))  # type: ignore[arg-type]
