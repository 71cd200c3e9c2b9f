"""Run the real MaesterBot, with a real engine and a tiny published model, against the fake Discord.

    from tests.bot_harness import running_bot
    from tests.fakediscord import fake_discord  # the fixture

    async def test_something(tmp_path, fake_discord):
        async with running_bot(tmp_path, fake_discord, cooldown_seconds=5) as bot:
            user = fake_discord.make_user("alice")
            inter = await fake_discord.invoke("scene", {"characters": "Jon Snow"}, user=user)
            await inter.wait_done(scene_finished, timeout=20)

Keyword arguments override :class:`bot.settings.Settings` fields (``admin_user_ids=...``,
``trainer_url=...``); the defaults suit tests: no cooldown, fast streamed edits, guild-scoped command
sync, the health server on a free port, short generations. ``engine_options`` overrides Engine
arguments. The checkpoint directory is ``tmp_path / "checkpoints"``; a tiny run is published there
unless one already is (so a second ``running_bot`` on the same ``tmp_path`` is a restart). The tiny
model is trained for a few seconds (once per test process) so that it writes real dialogue lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from bot.client import DEFAULT_EXTENSIONS, MaesterBot
from bot.engine import Engine
from bot.model_loader import load_run_model
from bot.settings import Secret, Settings
from tests.fakediscord import FakeDiscord, Interaction
from tests.fakediscord import running_bot as _fake_running_bot
from tests.tiny import (
    TINY_SPEAKERS,
    make_tiny_model,
    make_tiny_tokenizer,
    save_model_files,
)
from trainer.model import EOS_TOKEN, tokenizer_hash
from trainer.runs import Manifest, RunInfo, current_run, publish_run
from trainer.scene_format import SCENE_FORMAT_VERSION, Scene, Turn, format_scene

TRAIN_STEPS = 100  # a few seconds on one CPU thread; enough for the model to learn the line format

TEST_DEFAULTS: dict[str, Any] = {
    "cooldown_seconds": 0.0,
    "stream_edit_interval": 0.05,  # many edits in a short generation, so throttling is observable
    "progress_edit_interval": 0.05,  # likewise for /retrain progress in a few-second tiny job
    "model_poll_interval": 0.2,  # notice a newly published run quickly
    "guild_ready_timeout": 0.05,
    "health_host": "127.0.0.1",
    "health_port": 0,
    "max_new_tokens": 96,  # long = 96 tokens, medium = 48, short = 24
    "shutdown_grace": 5.0,
    "request_timeout": 30.0,
    "threads": 1,
}


def checkpoint_dir_for(tmp_path: Path) -> Path:
    """Where the harness keeps published runs for this test."""
    return Path(tmp_path) / "checkpoints"


def make_settings(checkpoint_dir: Path, fake: FakeDiscord, **overrides: Any) -> Settings:
    """Test settings for a bot talking to ``fake``; ``overrides`` replace any field."""
    values = {**TEST_DEFAULTS, "guild_ids": (int(fake.guild_id),), **overrides}
    if isinstance(values.get("discord_token"), str):
        values["discord_token"] = Secret(values["discord_token"])
    if isinstance(values.get("trainer_token"), str):
        values["trainer_token"] = Secret(values["trainer_token"])
    base = Settings(discord_token=Secret(fake.token), checkpoint_dir=Path(checkpoint_dir))
    return dataclasses.replace(base, **values)


async def start_engine(settings: Settings, **engine_options: Any) -> Engine:
    """Load the published run and start an engine for it, as ``python -m bot`` does."""
    run = current_run(settings.checkpoint_dir)
    if run is None:
        raise RuntimeError(f"no published run in {settings.checkpoint_dir}")
    loaded = await asyncio.to_thread(load_run_model, run, "cpu")
    options = {
        "max_batch_size": settings.max_batch_size,
        "max_queue": settings.queue_size,
        "request_timeout_s": settings.request_timeout,
        "max_new_tokens_cap": settings.max_new_tokens,
        "threads": settings.threads or None,
        **engine_options,
    }
    engine = Engine(loaded, **options)
    await engine.start()
    return engine


_TRAINED_LINES = (
    "Winter is coming.",
    "Where are you going?",
    "To the Wall.",
    "The north remembers.",
    "Nothing is ever easy.",
    "I drink and I know things.",
    "A girl has no name.",
    "We do not sow.",
)


def make_long_scenes(count: int, seed: int = 1) -> list[str]:
    """Made-up scenes of 8-14 turns, so the model writes scenes long enough to stream."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        speakers = rng.sample(TINY_SPEAKERS, 3)
        turns = tuple(
            Turn(rng.choice(speakers), rng.choice(_TRAINED_LINES)) for _ in range(rng.randint(8, 14))
        )
        documents.append(format_scene(Scene(turns=turns, setting="Winterfell.", characters=tuple(speakers))))
    return documents


_TRAINED: dict[str, Any] = {}  # the trained tiny model's tokenizer and weights, built once per process


def _trained_tiny_model() -> tuple[Any, Any]:
    """A tiny GPT-2 trained for a few seconds on made-up scenes, so it writes whole dialogue lines."""
    import torch

    if not _TRAINED:
        documents = make_long_scenes(120)
        tokenizer = make_tiny_tokenizer(documents, vocab_size=1000)  # whole words: learns lines fast
        model = make_tiny_model(tokenizer, seed=0, n_positions=256)
        text = EOS_TOKEN.join(documents) + EOS_TOKEN
        ids = tokenizer(text)["input_ids"]
        block = 64
        data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(TRAIN_STEPS):
            batch = data[torch.randint(0, data.shape[0], (16,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        _TRAINED.update(tokenizer=tokenizer, model=model, loss=float(loss.detach()))
    return _TRAINED["tokenizer"], _TRAINED["model"]


def publish_trained_tiny_run(checkpoint_dir: Path, run_id: str = "tiny-run") -> RunInfo:
    """Publish the trained tiny model as ``run_id`` and point CURRENT at it."""
    tokenizer, model = _trained_tiny_model()
    loss = _TRAINED["loss"]
    manifest = Manifest(
        run_id=run_id,
        base_model="tiny-test-model",
        corpus_sha256="0" * 64,
        tokenizer_hash=tokenizer_hash(tokenizer),
        scene_format_version=SCENE_FORMAT_VERSION,
        steps=TRAIN_STEPS,
        tokens_seen=TRAIN_STEPS * 16 * 64,
        val_loss_before=5.7,
        val_ppl_before=math.exp(5.7),
        val_loss_after=loss,
        val_ppl_after=math.exp(loss),
        speakers=TINY_SPEAKERS,
    )
    return publish_run(
        Path(checkpoint_dir), manifest, lambda staging: save_model_files(model, tokenizer, staging)
    )


@contextlib.asynccontextmanager
async def running_bot(
    tmp_path: Path,
    fake: FakeDiscord,
    *,
    run_id: str = "tiny-run",
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    engine_options: dict[str, Any] | None = None,
    ready_timeout: float = 20.0,
    **settings_overrides: Any,
) -> AsyncIterator[MaesterBot]:
    """A ready MaesterBot on ``fake``; closes the bot and stops its engine afterwards."""
    checkpoint_dir = checkpoint_dir_for(tmp_path)
    if current_run(checkpoint_dir) is None:
        await asyncio.to_thread(publish_trained_tiny_run, checkpoint_dir, run_id)
    settings = make_settings(checkpoint_dir, fake, **settings_overrides)
    engine = await start_engine(settings, **(engine_options or {}))
    bot = MaesterBot(settings, engine, extensions=extensions)
    try:
        async with _fake_running_bot(
            fake, bot, token=settings.discord_token.get(), ready_timeout=ready_timeout
        ):
            await _wait_until(lambda: bot.gateway_connected, ready_timeout)
            yield bot
    finally:
        await bot.engine.stop(drain_timeout_s=1.0)


def scene_finished(inter: Interaction) -> bool:
    """The reply shows a finished scene (an embed) or a final error sentence."""
    if inter.response_type == 4:  # answered with a message straight away (a refusal)
        return True
    original = inter.original
    if original is None:
        return False
    if original.embeds:
        return True
    content = original.content
    return bool(inter.errors) or content.startswith(("This scene", "Something went wrong"))


async def _wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the bot did not connect in time")
        await asyncio.sleep(0.01)


class LoopLagMonitor:
    """Measures how late a periodic tick on the event loop fires: the loop's worst blocking stretch.

    Every sample is kept, so load runs can report percentiles; tests read ``max_lag`` and ``ticks``.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def max_lag(self) -> float:
        """The latest a tick has fired, in seconds."""
        return max(self.samples, default=0.0)

    @property
    def ticks(self) -> int:
        """How many ticks have fired."""
        return len(self.samples)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, loop.time() - expected))

    def start(self) -> None:
        """Start ticking on the running loop."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop ticking (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> LoopLagMonitor:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
