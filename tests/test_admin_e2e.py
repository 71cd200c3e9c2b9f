"""Admin commands end to end: the real bot on the fake Discord, a real trainer service on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

import bot.cogs.admin as admin_cog
from tests.bot_harness import checkpoint_dir_for, publish_trained_tiny_run, running_bot, scene_finished
from tests.fakediscord import FakeDiscord, Message
from tests.fakediscord import fake_discord as fake_discord  # the fixture
from tests.test_jobs import tiny_env, tiny_train_args, write_tiny_corpus
from trainer import runs
from trainer.jobs import Job, JobManager, JobParams
from trainer.service import build_app

TOKEN = "e2e-trainer-token"


@pytest.fixture
async def trainer_url(tmp_path: Path) -> AsyncIterator[str]:
    """The trainer service on a free 127.0.0.1 port, sharing the bot's checkpoint directory."""
    corpus = write_tiny_corpus(tmp_path / "corpus.csv")
    manager = JobManager(
        checkpoint_dir_for(tmp_path),
        extra_train_args=[*tiny_train_args(checkpoint_every=50, eval_every=10), "--corpus", str(corpus)],
        env=tiny_env(),
        poll_interval_s=0.05,
        cancel_grace_s=5.0,
    )
    runner = web.AppRunner(build_app(manager, TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


def _messages_containing(fake: FakeDiscord, text: str) -> list[Message]:
    return [m for m in fake.channel_messages() if text in m.content]


async def _channel_message(fake: FakeDiscord, text: str, timeout: float = 60.0) -> Message:
    await fake.wait_for(lambda: bool(_messages_containing(fake, text)), timeout=timeout)
    return _messages_containing(fake, text)[0]


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "maester.audit"]


def _reply(inter) -> str:
    """What the user saw privately: the edited deferral, a follow-up, or an immediate answer."""
    texts = [m.text for m in inter.followups]
    if inter.original is not None:
        texts.append(inter.original.text)
    if inter.response_data:
        texts.append(str(inter.response_data.get("content", "")))
    return "\n".join(texts)


def test_progress_and_summary_texts() -> None:
    """The progress message shows bar, step, loss, speed and ETA; long errors stay within Discord's limit."""
    job = Job(id="j1", params=JobParams(steps=200), run_id="run-x", state="running", step=50, total_steps=200,
              loss=2.3456, tokens_per_s=12345.6, eta_s=125, val_ppl=10.5)
    text = admin_cog.progress_text(job)
    assert "`[█████░░░░░░░░░░░░░░░]`  25%" in text and "step 50/200" in text
    assert "loss 2.346" in text and "12,346 tokens/s" in text
    assert "ETA 2m 05s" in text and "val ppl 10.50" in text
    failed = Job(id="j1", params=JobParams(), run_id="run-x", state="failed", error="x" * 5000)
    assert len(admin_cog.progress_text(failed)) < 2000 and len(admin_cog.summary_text(failed, "")) < 2000
    done = Job(id="j1", params=JobParams(), run_id="run-x", state="succeeded", step=200,
               published_run_id="run-x", val_ppl_before=30.0, val_ppl_after=12.25)
    summary = admin_cog.summary_text(done, "The bot now serves `run-x`.")
    assert "new run `run-x`" in summary and "30.00 → 12.25" in summary


async def test_non_admins_are_refused_and_audited(
    tmp_path: Path, fake_discord: FakeDiscord, trainer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only configured admins may retrain; Discord's admin permission alone is not enough."""
    caplog.set_level(logging.INFO, logger="maester.audit")
    admin = fake_discord.make_user("ned", admin=True)
    guild_admin = fake_discord.make_user("petyr", admin=True)  # a server admin, not a bot admin
    member = fake_discord.make_user("hodor")
    maesters = fake_discord.make_role("Maesters", 0)
    maester = fake_discord.make_user("pycelle", roles=[maesters])  # a bot admin through the role
    async with running_bot(tmp_path, fake_discord, admin_user_ids=frozenset({int(admin.id)}),
                           admin_role_ids=frozenset({int(maesters)}),
                           trainer_url=trainer_url, trainer_token=TOKEN):
        assert fake_discord.synced_command("retrain")["default_member_permissions"] is not None
        for user in (guild_admin, member):
            for command in ("retrain start", "retrain cancel", "reload", "rollback"):
                options = {"steps": 5} if command == "retrain start" else {}
                inter = await fake_discord.invoke(command, options, user=user, enforce_permissions=False)
                await inter.wait_done(timeout=10)
                assert "Only the bot's admins" in _reply(inter) and inter.ephemeral
        for user in (admin, maester):
            status = await fake_discord.invoke("retrain status", user=user, enforce_permissions=False)
            await status.wait_done(timeout=10)
            assert "No retraining job has run yet" in _reply(status)
    refusals = [line for line in _audit_lines(caplog) if "refused" in line]
    assert len(refusals) == 8 and any("petyr" in line and "/retrain start" in line for line in refusals)


async def test_with_no_admins_configured_admin_commands_are_off(
    tmp_path: Path, fake_discord: FakeDiscord, trainer_url: str
) -> None:
    """No admin ids configured: even a server admin is refused (fail closed)."""
    owner = fake_discord.make_user("owner", admin=True)
    async with running_bot(tmp_path, fake_discord, trainer_url=trainer_url, trainer_token=TOKEN):
        inter = await fake_discord.invoke("retrain start", {"steps": 5}, user=owner)
        await inter.wait_done(timeout=10)
        assert "No admins are configured" in _reply(inter)


@pytest.mark.slow
async def test_admin_retrains_sees_progress_and_the_new_run_is_served(
    tmp_path: Path, fake_discord: FakeDiscord, trainer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """/retrain start: a channel message follows the job, the summary reports perplexities and the
    new run, and the bot serves that run afterwards."""
    caplog.set_level(logging.INFO, logger="maester.audit")
    admin = fake_discord.make_user("ned", admin=True)
    async with running_bot(tmp_path, fake_discord, admin_user_ids=frozenset({int(admin.id)}),
                           trainer_url=trainer_url, trainer_token=TOKEN) as bot:
        # Enough steps that the job is seen mid-run even on a fast, idle machine (a tiny step is ~5 ms).
        inter = await fake_discord.invoke("retrain start", {"steps": 400, "learning_rate": 0.001}, user=admin)
        await inter.wait_done(timeout=20)
        assert "Started job" in _reply(inter)
        summary = await _channel_message(fake_discord, "Retraining done", timeout=90)
        progress = _messages_containing(fake_discord, "Retraining")[0]
        assert progress.id != summary.id
        shown = [snap.content for snap in progress.history]
        assert any("step" in text and "tokens/s" in text and "ETA" in text for text in shown[1:-1]), shown
        assert "Retraining finished" in progress.content and "step 400/400" in progress.content
        assert "█" * admin_cog.BAR_WIDTH in progress.content
        new_run = runs.current_run_id(checkpoint_dir_for(tmp_path))
        assert new_run != "tiny-run" and f"`{new_run}`" in summary.content
        assert "Validation perplexity:" in summary.content and "→" in summary.content
        assert "The bot now serves" in summary.content
        assert bot.engine.run_id == new_run

        scene = await fake_discord.invoke("scene", {"characters": "Jon Snow"}, user=admin)
        await scene.wait_done(scene_finished, timeout=30)
        assert f"model {new_run}" in scene.original.embeds[0]["footer"]["text"]
    started = [line for line in _audit_lines(caplog) if "started job" in line]
    assert len(started) == 1 and "ned" in started[0] and "/retrain start" in started[0]


@pytest.mark.slow
async def test_admin_cancels_a_running_retrain(
    tmp_path: Path, fake_discord: FakeDiscord, trainer_url: str
) -> None:
    """/retrain cancel stops the job; the progress message and summary say so; the model is unchanged."""
    admin = fake_discord.make_user("ned", admin=True)
    async with running_bot(tmp_path, fake_discord, admin_user_ids=frozenset({int(admin.id)}),
                           trainer_url=trainer_url, trainer_token=TOKEN) as bot:
        start = await fake_discord.invoke("retrain start", {"steps": 100_000}, user=admin)
        await start.wait_done(timeout=20)
        await fake_discord.wait_for(
            lambda: any("step" in m.content and "tokens/s" in m.content and "Retraining**" in m.content
                        and "step 0/" not in m.content for m in fake_discord.channel_messages()),
            timeout=60,
        )
        busy = await fake_discord.invoke("retrain start", {"steps": 5}, user=admin)
        await busy.wait_done(timeout=20)
        assert "already running" in _reply(busy)

        cancel = await fake_discord.invoke("retrain cancel", user=admin)
        await cancel.wait_done(timeout=30)
        assert "is cancelled" in _reply(cancel)
        summary = await _channel_message(fake_discord, "Retraining cancelled at step", timeout=30)
        assert "model is unchanged" in summary.content
        assert "Retraining cancelled" in _messages_containing(fake_discord, "run `")[0].content
        assert bot.engine.run_id == "tiny-run"


async def test_hot_swap_while_scenes_are_being_written(
    tmp_path: Path, fake_discord: FakeDiscord, trainer_url: str
) -> None:
    """Scenes in flight during a swap are all answered; scenes asked for afterwards use the new run."""
    admin = fake_discord.make_user("ned", admin=True)
    readers = [fake_discord.make_user(f"reader{i}") for i in range(6)]
    async with running_bot(tmp_path, fake_discord, admin_user_ids=frozenset({int(admin.id)}),
                           trainer_url=trainer_url, trainer_token=TOKEN) as bot:
        before = [await fake_discord.invoke("scene", {"characters": "Jon Snow", "length": "long"}, user=user)
                  for user in readers]
        await asyncio.to_thread(publish_trained_tiny_run, checkpoint_dir_for(tmp_path), "tiny-run-2")
        reload = await fake_discord.invoke("reload", user=admin)
        await reload.wait_done(timeout=30)
        assert "Now serving run tiny-run-2" in _reply(reload)
        for inter in before:
            await inter.wait_done(scene_finished, timeout=60)
            assert inter.original.embeds, inter.describe()  # a scene, not an error
        after = await fake_discord.invoke("scene", {"characters": "Arya Stark"}, user=readers[0])
        await after.wait_done(scene_finished, timeout=30)
        assert "model tiny-run-2" in after.original.embeds[0]["footer"]["text"]
        assert bot.engine.run_id == "tiny-run-2"

        rollback = await fake_discord.invoke("rollback", user=admin)
        await rollback.wait_done(timeout=30)
        assert "Rolled back to run tiny-run" in _reply(rollback)
        assert bot.engine.run_id == "tiny-run" == runs.current_run_id(checkpoint_dir_for(tmp_path))
