"""End to end: the real MaesterBot, the real engine and a tiny trained model, against the fake Discord.

Each test drives the bot the way Discord users would (slash commands, autocomplete, buttons) and checks
what they would see: messages, their edit history, private answers, and Discord's limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.__main__ import NO_MODEL_HINT, connection_error, run_bot, serve
from bot.__main__ import main as bot_main
from bot.client import MaesterBot
from bot.formatting import CONTENT_LIMIT, DESCRIPTION_LIMIT, EMBED_TOTAL_LIMIT
from bot.settings import Secret, Settings
from tests.bot_harness import (
    LoopLagMonitor,
    checkpoint_dir_for,
    make_settings,
    publish_trained_tiny_run,
    running_bot,
    scene_finished,
    start_engine,
)
from tests.fakediscord import FakeDiscord, Interaction, Message, patch_discord
from tests.fakediscord import fake_discord as fake_discord  # the fixture
from trainer.errors import UserError

SECRET_TOKEN = "MTEyMzU4MTMyMTM0NTU4OTE0NA.Gx9Q2w.e2e-secret-token-never-in-logs-0123456789"
MENTION_RE = re.compile(r"@(everyone|here)|<@[!&]?\d+>")
SCENE_TIMEOUT = 60.0  # generous: two shared CPU cores


async def scene(fake: FakeDiscord, user: Any, **options: Any) -> Interaction:
    """Invoke /scene and wait until it is answered for good."""
    inter = await fake.invoke("scene", {"characters": "Jon Snow, Arya Stark", **options}, user=user)
    return await inter.wait_done(scene_finished, timeout=SCENE_TIMEOUT)


def final_embed(inter: Interaction) -> dict[str, Any]:
    assert inter.original is not None and inter.original.embeds, inter.describe()
    return inter.original.embeds[0]


def private_answer(inter: Interaction) -> str:
    """The text of an ephemeral answer (initial response or follow-up)."""
    messages = [m for m in [inter.original, *inter.followups] if m is not None and m.ephemeral]
    assert messages, f"no private answer: {inter.describe()}"
    return messages[-1].content


def assert_within_limits(message: Message) -> None:
    for snapshot in message.history:
        assert len(snapshot.content) <= CONTENT_LIMIT
        total = 0
        for embed in snapshot.embeds:
            assert len(embed.get("description", "")) <= DESCRIPTION_LIMIT
            total += len(embed.get("title", "")) + len(embed.get("description", ""))
            total += len(embed.get("footer", {}).get("text", ""))
        assert total <= EMBED_TOTAL_LIMIT


@pytest.fixture
async def secret_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=SECRET_TOKEN) as fake:
        yield fake
    assert not fake.spec_violations, fake.spec_violations


async def test_scene_is_deferred_streamed_and_finished_within_limits(
    tmp_path: Path, secret_fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole /scene path, with the token kept out of every log line and the loop never blocked."""
    caplog.set_level(logging.DEBUG)
    fake = secret_fake
    interval = 0.01  # short, so even a fast machine streams a tiny model's lines in several edits
    async with running_bot(tmp_path, fake, stream_edit_interval=interval) as bot:
        alice = fake.make_user("alice")
        inter = await scene(fake, alice, setting="The courtyard of Winterfell", length="long", seed=7)
        assert inter.errors == []
        assert inter.deferred_at is not None and inter.deferred_at - inter.created_at < 2.0
        original = inter.original
        assert original is not None and not original.ephemeral
        progress = [s for s in original.edits if not s.embeds]
        streamed = [s for s in progress if s.content.endswith("▌")]
        assert len(streamed) >= 2, [s.content for s in original.edits]  # text appeared in several steps
        assert all(len(a.content) <= len(b.content) for a, b in itertools.pairwise(streamed))
        gaps = [b.at - a.at for a, b in itertools.pairwise(progress)]
        assert min(gaps) >= interval * 0.8  # throttled to one edit per interval
        embed = final_embed(inter)
        assert "**Jon Snow:**" in embed["description"] or "**Arya Stark:**" in embed["description"]
        assert embed["title"] == "The courtyard of Winterfell"
        assert embed["footer"]["text"].startswith("model tiny-run · seed 7 · ")
        assert [cid.split(":")[1] for cid in original.custom_ids()] == ["regen", "more"]
        assert_within_limits(original)
        assert bot.metrics.requests["ok"] == 1 and bot.metrics.tokens_generated > 0
        # The loop is shared with the fake, whose first spec checks compile schemas (slow, once); with
        # those warm, a second scene measures the bot: its loop must never stall during generation.
        async with LoopLagMonitor() as lag:
            final_embed(await scene(fake, alice, length="long"))
    assert lag.ticks > 0 and lag.max_lag < 0.25, f"event loop blocked for {lag.max_lag:.3f}s"
    assert SECRET_TOKEN not in caplog.text
    assert any("synced" in r.getMessage() for r in caplog.records)


async def test_text_from_users_and_the_model_cannot_ping(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake):
        bob = fake.make_user("bob")
        opening = "@everyone <@123456789012345678> <@&55> @here ```fence``` [x](https://e.example)"
        inter = await scene(fake, bob, opening=opening, setting="@here **Dragonstone**")
        embed = final_embed(inter)
        shown = embed["description"] + embed["title"]
        assert "everyone" in shown  # the text is kept, only defused
        assert not MENTION_RE.search(shown)
        assert "```" not in shown and "[x](" not in shown
        # Every message the bot sent or edited disallows all mentions.
        bodies = [r.body for r in fake.requests if isinstance(r.body, dict) and r.method in ("PATCH", "POST")]
        mentions = [b["allowed_mentions"] for b in bodies if "allowed_mentions" in b]
        assert mentions and all(m == {"parse": []} for m in mentions)


async def test_bad_options_are_refused_privately(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake) as bot:
        carol = fake.make_user("carol")
        unknown = await scene(fake, carol, characters="Jon Snow, Tyrian Lanister")
        assert "did you mean Tyrion Lannister" in private_answer(unknown)
        too_many = await scene(fake, carol, characters="Jon Snow, Arya Stark, Sansa Stark, Cersei Lannister")
        assert "at most 3" in private_answer(too_many)
        blank = await scene(fake, carol, characters=" , \t")
        assert "at least one character" in private_answer(blank)
        assert bot.engine.stats().completed == 0  # nothing reached the model
        assert bot.metrics.requests["invalid"] == 3
        # Discord itself bounds the inputs: the synced command carries the ranges and choices.
        options = {o["name"]: o for o in fake.synced_command("scene")["options"]}
        assert (options["temperature"]["min_value"], options["temperature"]["max_value"]) == (0.1, 1.5)
        assert options["setting"]["max_length"] == 200 and options["opening"]["max_length"] == 300
        assert [c["value"] for c in options["length"]["choices"]] == ["short", "medium", "long"]
        assert options["characters"]["autocomplete"] is True


async def test_options_are_checked_again_in_the_bot(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    """A modified client can send values Discord's own client would refuse; the bot bounds them itself."""
    fake = fake_discord
    async with running_bot(tmp_path, fake) as bot:
        mallory = fake.make_user("mallory")
        command = fake.synced_command("scene")

        async def raw_scene(**options: Any) -> Interaction:
            data = {
                "id": command["id"],
                "name": "scene",
                "type": 1,
                "guild_id": fake.guild_id,
                "options": [{"name": k, "type": t, "value": v} for k, (t, v) in options.items()],
            }
            # The fake's public invoke() checks options like Discord's client; this skips that check.
            inter = await fake._dispatch_interaction(2, "scene", data, mallory, None)
            return await inter.wait_done(scene_finished, timeout=SCENE_TIMEOUT)

        bad_seed = await raw_scene(characters=(3, "Jon Snow"), seed=(4, -5))
        assert private_answer(bad_seed).endswith("the seed must be a whole number from 0 to 2147483647.")
        wild = await raw_scene(
            characters=(3, "Jon Snow"),
            setting=(3, "\x00" + "Winterfell " * 60),
            temperature=(10, 9.0),
        )
        embed = final_embed(wild)
        assert len(embed["title"]) <= 200 and "\x00" not in embed["title"]
        record = next(iter(bot.get_cog("Scene").store._scenes.values()))
        assert record.request.temperature == 1.5
        assert len(record.request.setting) <= 200
        endless = await raw_scene(characters=(3, "Jon Snow"), length=(3, "@everyone endless"))
        assert private_answer(endless) == "“@\u200beveryone endless” isn't valid for that option."


async def test_characters_autocomplete_from_the_model(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake):
        dave = fake.make_user("dave")
        choices = await fake.autocomplete("scene", "characters", "jon snow, lann", user=dave)
        assert [c["value"] for c in choices] == ["Jon Snow, Tyrion Lannister", "Jon Snow, Cersei Lannister"]
        everyone = await fake.autocomplete("scene", "characters", "", user=dave)
        assert {c["name"] for c in everyone} >= {"Jon Snow", "Arya Stark", "Sansa Stark"}


async def test_cooldown_answers_with_the_time_left(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake, cooldown_seconds=30) as bot:
        erin, frank = fake.make_user("erin"), fake.make_user("frank")
        first = await scene(fake, erin, length="short")
        final_embed(first)
        again = await scene(fake, erin, length="short")
        answer = private_answer(again)
        assert "cooldown" in answer and re.search(r"in (29|30) s", answer)
        other = await scene(fake, frank, length="short")  # cooldowns are per user
        final_embed(other)
        assert bot.metrics.requests["cooldown"] == 1


async def test_a_full_queue_answers_busy_and_no_request_is_dropped(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    async with running_bot(
        tmp_path, fake, queue_size=1, max_batch_size=1, engine_options={"max_queue": 1, "max_batch_size": 1}
    ) as bot:
        users = [fake.make_user(f"user{i}") for i in range(8)]
        pending = [
            await fake.invoke("scene", {"characters": "Jon Snow", "length": "long"}, user=u) for u in users
        ]
        done = await asyncio.gather(*(i.wait_done(scene_finished, timeout=SCENE_TIMEOUT) for i in pending))
        busy = [i for i in done if i.ephemeral]
        served = [i for i in done if not i.ephemeral]
        assert busy and served and len(busy) + len(served) == len(users)
        for inter in busy:
            assert re.fullmatch(
                r"I'm busy writing other scenes; try again in ~\d+ s\.", private_answer(inter)
            )
        for inter in served:
            final_embed(inter)
        assert bot.metrics.requests["busy"] == len(busy)


async def test_many_users_at_once_are_batched_and_each_gets_their_scene(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake, max_batch_size=8) as bot:
        final_embed(await scene(fake, fake.make_user("warm"), length="short"))  # the fake's schemas compiled
        most_active = 0

        async def watch() -> None:
            nonlocal most_active
            while True:
                most_active = max(most_active, bot.engine.stats().active)
                await asyncio.sleep(0.002)

        users = [fake.make_user(f"reader{i}") for i in range(6)]
        async with LoopLagMonitor() as lag:
            watcher = asyncio.create_task(watch())
            invoked = [
                await fake.invoke(
                    "scene", {"characters": "Tyrion Lannister", "length": "long", "seed": i}, user=u
                )
                for i, u in enumerate(users)
            ]
            done = await asyncio.gather(
                *(i.wait_done(scene_finished, timeout=SCENE_TIMEOUT) for i in invoked)
            )
            watcher.cancel()
        originals = {i.original.id for i in done if i.original}
        assert len(originals) == len(users)  # one message each
        seeds = [final_embed(i)["footer"]["text"].split(" · ")[1] for i in done]
        assert seeds == [f"seed {i}" for i in range(len(users))]  # each got their own request back
        assert most_active > 1, "requests were never generated in the same batch"
    assert lag.max_lag < 0.25, f"event loop blocked for {lag.max_lag:.3f}s"


async def test_queue_position_is_shown_while_waiting(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake, max_batch_size=1, engine_options={"max_batch_size": 1}):
        users = [fake.make_user(f"waiter{i}") for i in range(3)]
        invoked = [await fake.invoke("scene", {"characters": "Sansa Stark"}, user=u) for u in users]
        done = await asyncio.gather(*(i.wait_done(scene_finished, timeout=SCENE_TIMEOUT) for i in invoked))
        shown = [s.content for s in done[-1].original.history]
        # The last of three behind a batch of one waits, and is shown its place in line while it does
        # (which places it sees depends on how fast the two ahead finish between throttled edits);
        # scene_finished above has already checked that its scene then arrived.
        assert any(re.match(r"Queued: position [1-3]\b", c) for c in shown), shown


async def test_regenerate_and_continue_buttons(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake):
        gwen = fake.make_user("gwen")
        first = await scene(fake, gwen, seed=11, setting="The Wall")
        message = first.original
        regen_id, more_id = message.custom_ids()
        regen = await (await fake.click(message, regen_id, user=gwen)).wait_done(
            scene_finished, SCENE_TIMEOUT
        )
        again = final_embed(regen)
        assert again["title"] == "The Wall"  # same options...
        assert "seed 11 " not in again["footer"]["text"] + " "  # ...with a new seed
        assert regen.original.id != message.id
        more = await (await fake.click(message, more_id, user=gwen)).wait_done(scene_finished, SCENE_TIMEOUT)
        continued = final_embed(more)
        assert continued["description"].startswith(final_embed(first)["description"])
        assert continued["footer"]["text"].endswith("· continued")


async def test_a_scene_outliving_its_token_is_posted_in_the_channel(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    """Interaction tokens last 15 minutes; a scene finished after that still reaches its channel."""
    fake = fake_discord
    async with running_bot(tmp_path, fake, max_batch_size=1, engine_options={"max_batch_size": 1}) as bot:
        users = [fake.make_user(f"patient{i}") for i in range(3)]
        invoked = [
            await fake.invoke("scene", {"characters": "Arya Stark", "length": "long"}, user=u) for u in users
        ]
        await asyncio.gather(*(i.wait_acked() for i in invoked))
        fake.advance(15 * 60 + 1)  # every token is now past its lifetime
        await fake.wait_for(lambda: bot.engine.stats().completed >= 3, timeout=SCENE_TIMEOUT)
        await fake.wait_for(lambda: sum(bool(m.embeds) for m in fake.channel_messages()) >= 3, timeout=10)
        posted = [m for m in fake.channel_messages() if m.embeds and m.webhook_id is None]
        assert {m.content.split(":")[0] for m in posted} == {f"<@{u.id}>" for u in users}
        assert all(m.custom_ids() for m in posted)  # with working buttons
        await wait_for(lambda: bot.metrics.requests["ok"] == 3)


async def test_a_forgotten_scene_says_it_expired(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake, scene_memory=1):
        hana = fake.make_user("hana")
        old = await scene(fake, hana, length="short")
        await scene(fake, hana, length="short")  # evicts the first
        click = await fake.click(old.original, old.original.custom_ids()[0], user=hana)
        await click.wait_done(scene_finished, SCENE_TIMEOUT)
        assert "This scene expired" in private_answer(click)


async def test_a_long_scene_is_split_at_lines_or_attached(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake) as bot:
        ian = fake.make_user("ian")
        first = await scene(fake, ian, length="short")
        cog = bot.get_cog("Scene")
        scene_id = first.original.custom_ids()[1].split(":")[2]
        record = cog.store.get(scene_id)
        line = "Jon Snow: " + "Winter is coming, and the night is dark and full of terrors. " * 3 + "\n"
        for lines, expect_file in ((40, False), (120, True)):
            cog.store._scenes[scene_id] = dataclasses.replace(record, body=line * lines)
            click = await fake.click(first.original, f"maester:more:{scene_id}", user=ian)
            await click.wait_done(lambda i: scene_finished(i) and (not i.original.embeds or i.followups), 60)
            await asyncio.sleep(0.2)  # let the last follow-up land
            messages = [click.original, *click.followups]
            for message in messages:
                assert_within_limits(message)
            descriptions = [m.embeds[0]["description"] for m in messages if m.embeds]
            cut_parts = descriptions[:1] if expect_file else descriptions[:-1]
            for part in cut_parts:  # every cut falls between two lines
                assert part.startswith("**Jon Snow:**") and part.endswith("terrors.")
            files = [a for m in messages for a in m.attachments]
            if expect_file:
                assert len(messages) == 2 and files and files[0].filename == "scene.txt"
                assert files[0].text.count("Winter is coming") >= 3 * 120
            else:
                assert len(messages) > 1 and not files
            assert messages[-1].custom_ids()  # the buttons sit under the last part


async def test_status_shows_the_model_and_the_queue(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    jo, admin, stranger = (
        fake.make_user("jo"),
        fake.make_user("boss", admin=True),
        fake.make_user("x", admin=True),
    )
    async with running_bot(tmp_path, fake, admin_user_ids=frozenset({int(admin.id)})):
        await scene(fake, jo, length="short")
        hidden = fake.synced_command("status")
        assert hidden["default_member_permissions"] == "8"  # Discord hides it from non-administrators
        # A server administrator who is not one of the bot's admins is still refused.
        refused = await (await fake.invoke("status", user=stranger)).wait_done(timeout=10)
        assert private_answer(refused) == "Only the bot's admins can use /status."
        status = await (await fake.invoke("status", user=admin)).wait_done(timeout=10)
        assert status.ephemeral
        embed = status.original.embeds[0]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert fields["Model run"] == "`tiny-run`"
        assert re.fullmatch(r"\d+\.\d\d → \d+\.\d\d", fields["Validation perplexity"])
        assert fields["Training steps"] == "100"
        assert fields["Scenes written"] == "1"
        assert "waiting" in fields["Queue"] and "tokens/s" in fields["Speed"]
        assert fields["Model updates"].startswith("Serving run: tiny-run")


async def test_healthz_and_metrics_follow_the_bot(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake) as bot, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{bot.health.port}"
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["run_id"] == "tiny-run"
        await scene(fake, fake.make_user("kim"), length="short")
        await scene(fake, fake.make_user("kim2"), characters="Nobody Atall")
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        assert 'maester_scene_requests_total{outcome="ok"} 1' in text
        assert 'maester_scene_requests_total{outcome="invalid"} 1' in text
        assert "maester_gateway_connected 1" in text and 'maester_model_info{run_id="tiny-run"} 1' in text
        assert "maester_scene_latency_seconds_count 1" in text
        bot.gateway_connected = False  # as after on_disconnect
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 503
            assert "gateway" in (await response.json())["reason"]
    async with aiohttp.ClientSession() as http:  # the health server closes with the bot
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{base}/healthz")


async def test_commands_are_synced_once_and_again_only_when_changed(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake) as bot:
        assert fake.sync_count == 1 and fake.syncs[0].guild_id == fake.guild_id
        assert {"scene", "status"} <= set(fake.syncs[0].names)
        assert bot.last_sync_targets
    async with running_bot(tmp_path, fake) as bot:  # a restart with the same commands
        assert fake.sync_count == 1 and bot.last_sync_targets == []
    async with running_bot(tmp_path, fake, extensions=("bot.cogs.scene",)):  # the tree changed
        assert fake.sync_count == 2
    assert (checkpoint_dir_for(tmp_path) / ".discord-commands.json").is_file()


async def test_a_broken_cog_is_logged_and_the_rest_still_works(
    tmp_path: Path, fake_discord: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake, extensions=("bot.cogs.scene", "bot.cogs.no_such_cog")) as bot:
        assert "bot.cogs.no_such_cog" in bot.failed_extensions
        final_embed(await scene(fake, fake.make_user("lee"), length="short"))
    assert "could not load extension bot.cogs.no_such_cog" in caplog.text


async def test_an_unexpected_error_gets_a_sentence_and_a_log_line(
    tmp_path: Path,
    fake_discord: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake) as bot:

        def broken_submit(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the engine exploded")

        monkeypatch.setattr(bot.engine, "submit", broken_submit)
        inter = await scene(fake, fake.make_user("max"), length="short")
        assert private_answer(inter).startswith("Something went wrong on my side")
    assert "the engine exploded" in caplog.text and "error in /scene" in caplog.text


async def test_shutdown_refuses_new_scenes_and_cancels_waiting_ones_visibly(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake, max_batch_size=1, engine_options={"max_batch_size": 1}) as bot:
        users = [fake.make_user(f"late{i}") for i in range(4)]
        invoked = [
            await fake.invoke("scene", {"characters": "Jon Snow", "length": "long"}, user=u) for u in users
        ]
        await asyncio.gather(*(i.wait_acked() for i in invoked))
        stopping = asyncio.create_task(bot.shutdown(grace=0.0))
        await asyncio.sleep(0)
        refused = await fake.invoke("scene", {"characters": "Jon Snow"}, user=fake.make_user("newcomer"))
        await refused.wait_done(scene_finished, timeout=10)
        await stopping
        assert "shutting down" in private_answer(refused)
        outcomes = []
        for inter in invoked:
            assert scene_finished(inter), inter.describe()  # every request was answered
            outcomes.append("ok" if inter.original.embeds else inter.original.content)
        cancelled = [
            o for o in outcomes if o.startswith("This scene was cancelled: the bot is shutting down")
        ]
        assert cancelled, outcomes
        assert bot.metrics.requests["cancelled"] == len(cancelled)
        assert bot.is_closed()


# ----- start-up and shutdown of ``python -m bot`` ---------------------------------------------------


def bot_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> None:
    """A clean environment for ``bot.__main__.main`` (no .env picked up from the working directory)."""
    for name in list(os.environ):
        if name.startswith("MAESTER_") or name == "DISCORD_TOKEN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_check_config_names_a_missing_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bot_env(monkeypatch, tmp_path)
    assert bot_main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DISCORD_TOKEN is not set") and err.count("\n") == 1


def test_check_config_says_how_to_get_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    bot_env(monkeypatch, tmp_path, DISCORD_TOKEN=SECRET_TOKEN, MAESTER_CHECKPOINT_DIR=str(empty))
    assert bot_main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: No trained model in {empty}; {NO_MODEL_HINT}.\n"
    assert "python -m trainer train" in err


def test_check_config_summarises_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_trained_tiny_run(tmp_path / "ckpt")
    (tmp_path / ".env").write_text(
        f"DISCORD_TOKEN={SECRET_TOKEN}\nMAESTER_CHECKPOINT_DIR={tmp_path / 'ckpt'}\n"
    )
    bot_env(monkeypatch, tmp_path, MAESTER_GUILD_IDS="123456789012345678")
    assert bot_main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "model run tiny-run" in out and "configuration OK" in out
    assert "123456789012345678" in out and "set (hidden)" in out
    assert SECRET_TOKEN not in out


async def test_run_without_a_model_is_one_sentence(tmp_path: Path) -> None:
    settings = Settings(discord_token=Secret(SECRET_TOKEN), checkpoint_dir=tmp_path / "nothing")
    with pytest.raises(UserError, match=r"^No trained model in "):
        await run_bot(settings)


async def test_a_rejected_token_is_one_clear_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = SECRET_TOKEN.replace("e2e", "bad")
    async with FakeDiscord(token=SECRET_TOKEN) as fake:
        settings = make_settings(tmp_path, fake, discord_token=wrong)
        with patch_discord(fake), pytest.raises(UserError) as caught:
            await serve(MaesterBot(settings, None), wrong)
    assert str(caught.value).startswith("Discord rejected the token; check DISCORD_TOKEN")
    assert wrong not in caplog.text and wrong not in str(caught.value)


def test_gateway_close_codes_become_sentences() -> None:
    import discord

    class ClosedSocket:
        close_code = None

    rejected = connection_error(discord.ConnectionClosed(ClosedSocket(), shard_id=None, code=4004))
    assert isinstance(rejected, UserError) and str(rejected).startswith("Discord rejected the token")
    other = connection_error(discord.ConnectionClosed(ClosedSocket(), shard_id=None, code=4011))
    assert str(other).startswith("Discord closed the gateway connection (code 4011)")
    surprise = RuntimeError("a bug")
    assert connection_error(surprise) is surprise  # not a user error: left to show its traceback


async def test_discord_unreachable_is_one_clear_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import discord.http

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    async with FakeDiscord() as fake:
        settings = make_settings(tmp_path, fake)
    with pytest.raises(UserError, match=r"^Could not reach Discord \(\w+\); check the network connection"):
        await serve(MaesterBot(settings, None), SECRET_TOKEN)


async def test_a_busy_health_port_is_one_clear_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with FakeDiscord(token=SECRET_TOKEN) as fake:
            settings = make_settings(tmp_path, fake, health_port=port)
            with patch_discord(fake), pytest.raises(UserError) as caught:
                await serve(MaesterBot(settings, None, extensions=("bot.cogs.scene",)), SECRET_TOKEN)
    assert str(caught.value).startswith(f"Could not serve /healthz on 127.0.0.1:{port} (")
    assert "MAESTER_HEALTH_PORT" in str(caught.value)


async def test_sigterm_finishes_the_scene_in_flight_and_closes(tmp_path: Path) -> None:
    async with FakeDiscord(token=SECRET_TOKEN) as fake:
        publish_trained_tiny_run(checkpoint_dir_for(tmp_path))
        settings = make_settings(checkpoint_dir_for(tmp_path), fake)
        engine = await start_engine(settings)
        bot = MaesterBot(settings, engine)
        try:
            with patch_discord(fake):
                serving = asyncio.create_task(serve(bot, SECRET_TOKEN))
                await fake.wait_ready(20)
                await wait_for(lambda: bot.gateway_connected)
                inter = await fake.invoke(
                    "scene", {"characters": "Jon Snow", "length": "long"}, user=fake.make_user("z")
                )
                await inter.wait_acked()
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(serving, 30)
        finally:
            await engine.stop(drain_timeout_s=1)
        assert bot.is_closed() and bot.health.port is not None
        assert scene_finished(inter) and inter.original.embeds  # allowed to finish within the grace period
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone with the loop's


def test_the_entry_point_never_shows_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAESTER_") and k != "DISCORD_TOKEN"}
    helped = subprocess.run([sys.executable, "-m", "bot", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "check-config" in helped.stdout and "console" in helped.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "bot"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: DISCORD_TOKEN is not set") and "Traceback" not in failed.stderr


async def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_with_read_only_checkpoints_the_sync_record_lives_in_the_state_dir(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    """docker compose mounts checkpoints read-only: MAESTER_STATE_DIR keeps restarts from re-syncing."""
    state = tmp_path / "state"
    checkpoints = checkpoint_dir_for(tmp_path)
    async with running_bot(tmp_path, fake_discord, state_dir=state):
        pass
    async with running_bot(tmp_path, fake_discord, state_dir=state) as bot:  # a restart: no second sync
        assert fake_discord.sync_count == 1 and bot.last_sync_targets == []
    assert (state / ".discord-commands.json").is_file()
    assert not (checkpoints / ".discord-commands.json").exists()
