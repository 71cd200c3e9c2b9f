"""The Discord stand-in, exercised by a stock discord.py bot with toy commands (not the maester bot)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakediscord import (
    FakeDiscord,
    check_message_body,
    fake_discord,  # noqa: F401 (a pytest fixture, used by name)
    load_spec,
    payloads,
    running_bot,
)
from tests.fakediscord.server import DiscordError

TOKEN = "test-token"


class ToyBot(commands.Bot):
    """A minimal bot: a few slash commands that exercise each stand-in feature."""

    def __init__(self, *, intents: discord.Intents | None = None) -> None:
        super().__init__(
            command_prefix="!",
            intents=intents or discord.Intents.default(),
            guild_ready_timeout=0.05,
            chunk_guilds_at_startup=False,
        )
        self.errors: list[BaseException] = []
        self.release = asyncio.Event()
        self.defer_delay = 0.0

    async def setup_hook(self) -> None:
        tree = self.tree

        @tree.command()
        async def echo(interaction: discord.Interaction, text: str) -> None:
            """Defer, then edit the original response with the text."""
            await asyncio.sleep(self.defer_delay)
            try:
                await interaction.response.defer(thinking=True)
                await interaction.edit_original_response(content=text)
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command()
        async def wait(interaction: discord.Interaction) -> None:
            """Defer, wait until the test releases it, then edit."""
            await interaction.response.defer()
            await self.release.wait()
            try:
                await interaction.edit_original_response(content="finally")
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command()
        async def twice(interaction: discord.Interaction) -> None:
            """Acknowledge twice (a bug Discord refuses)."""
            await interaction.response.send_message("once")
            try:
                await interaction.followup.send("follow-up")
                await interaction.response.defer()
            except discord.InteractionResponded as exc:  # discord.py guards its own state...
                self.errors.append(exc)
            # ...so bypass it the way a second process holding the token would.
            route = discord.http.Route(
                "POST", "/interactions/{iid}/{token}/callback", iid=interaction.id, token=interaction.token
            )
            try:
                await self.http.request(route, json={"type": 5})
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command()
        async def count(interaction: discord.Interaction, upto: int) -> None:
            """Send 1, then edit it to 2, 3, ... as fast as possible."""
            await interaction.response.send_message("1")
            for n in range(2, upto + 1):
                await interaction.edit_original_response(content=str(n))

        @tree.command()
        async def buttons(interaction: discord.Interaction) -> None:
            """Send a message with a button that edits it."""
            view = discord.ui.View(timeout=30)
            button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
                label="Ping", emoji="🔔", custom_id="ping"
            )

            async def pressed(click: discord.Interaction) -> None:
                await click.response.edit_message(content=f"pong by {click.user.name}", view=None)

            button.callback = pressed  # type: ignore[method-assign]
            view.add_item(button)
            await interaction.response.send_message("press it", view=view)

        @tree.command()
        @app_commands.describe(character="Who speaks")
        async def pick(interaction: discord.Interaction, character: str) -> None:
            """Autocomplete a character."""
            await interaction.response.send_message(f"picked {character}", ephemeral=True)

        @pick.autocomplete("character")
        async def pick_complete(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            names = ["Jon Snow", "Jorah Mormont", "Arya Stark"]
            wanted = [n for n in names if n.lower().startswith(current.lower())]
            return [app_commands.Choice(name=n, value=n) for n in wanted]

        @tree.command()
        async def upload(interaction: discord.Interaction) -> None:
            """Defer, then send a text file as a follow-up and a channel message."""
            await interaction.response.defer()
            scene = discord.File(io.BytesIO(b"JON: Winter."), "scene.txt")
            await interaction.followup.send("scene attached", file=scene)
            assert interaction.channel is not None
            sent = await interaction.channel.send("long job started")  # type: ignore[union-attr]
            await sent.edit(content="long job finished")
            full = discord.File(io.BytesIO(b"JON: Winter.\nARYA: No."), "full.txt")
            await interaction.edit_original_response(content="full scene attached", attachments=[full])

        @tree.command()
        async def embed(interaction: discord.Interaction, size: int) -> None:
            """Answer with an embed whose description has `size` characters."""
            try:
                await interaction.response.send_message(embed=discord.Embed(description="x" * size))
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command()
        async def form(interaction: discord.Interaction) -> None:
            """Open a modal and echo what was typed."""
            modal = discord.ui.Modal(title="Feedback", custom_id="feedback")
            field: discord.ui.TextInput[discord.ui.Modal] = discord.ui.TextInput(
                label="Text", custom_id="body"
            )
            modal.add_item(field)

            async def submitted(submit: discord.Interaction) -> None:
                await submit.response.send_message(f"got {field.value}")

            modal.on_submit = submitted  # type: ignore[method-assign]
            await interaction.response.send_modal(modal)

        job = app_commands.Group(
            name="job", description="Admin jobs", default_permissions=discord.Permissions(administrator=True)
        )

        @job.command(name="cancel")
        async def job_cancel(interaction: discord.Interaction, force: bool = False) -> None:
            """Cancel the job."""
            await interaction.response.send_message(f"cancelled force={force}")

        tree.add_command(job)
        await tree.sync()


@contextlib.asynccontextmanager
async def toy(**fake_options: Any) -> AsyncIterator[tuple[FakeDiscord, ToyBot]]:
    """A fake and a running ToyBot; the stand-in's own answers must satisfy the spec."""
    async with FakeDiscord(token=TOKEN, **fake_options) as fake, running_bot(fake, ToyBot()) as bot:
        yield fake, bot
        assert fake.response_violations == [], [str(v) for v in fake.response_violations]
        assert fake.spec_violations == [], [str(v) for v in fake.spec_violations]


async def test_login_sync_and_deferred_edit() -> None:
    """The bot logs in, syncs its commands once, and a deferred /echo is edited with the text."""
    async with toy() as (fake, _bot):
        assert fake.sync_count == 1 and fake.syncs[0].changed
        assert {"echo", "wait", "pick", "job"} <= set(fake.commands)
        assert not fake.identify_payloads[0]["intents"] & payloads.PRIVILEGED_INTENTS
        inter = await fake.invoke("echo", {"text": "Winter is coming"}, user=fake.make_user("alice"))
        await inter.wait_done(timeout=3)
        assert inter.response_type == 5 and inter.deferred_at is not None
        assert inter.original is not None and inter.original.content == "Winter is coming"
        assert [s.content for s in inter.original.history] == ["", "Winter is coming"]
        assert not inter.original.loading and not inter.ephemeral


async def test_resync_of_unchanged_commands_is_not_a_change() -> None:
    """A second identical sync is counted but marked unchanged; command ids survive it."""
    async with toy() as (fake, bot):
        before = {name: c["id"] for name, c in fake.commands.items()}
        await bot.tree.sync()
        assert fake.sync_count == 2 and not fake.syncs[1].changed
        assert {name: c["id"] for name, c in fake.commands.items()} == before


async def test_wrong_token_is_refused_by_rest_and_gateway() -> None:
    """A wrong token fails login with 401, and IDENTIFY with it gets close code 4004."""
    async with FakeDiscord(token=TOKEN) as fake:
        with pytest.raises(discord.LoginFailure):
            async with running_bot(fake, ToyBot(), token="wrong"):
                pass
        async with aiohttp.ClientSession() as session, session.ws_connect(fake.gateway_url) as ws:
            hello = await ws.receive_json()
            assert hello["op"] == 10
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0, "properties": {}}})
            closing = await ws.receive()
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4004


async def test_privileged_intents_not_enabled_close_4014() -> None:
    """Asking for the members intent when the app lacks it ends the client with PrivilegedIntentsRequired."""
    intents = discord.Intents.default()
    intents.members = True
    async with FakeDiscord(token=TOKEN, allowed_privileged_intents=0) as fake:
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with running_bot(fake, ToyBot(intents=intents)):
                pass
        assert 4014 in fake.close_codes


async def test_too_long_content_is_refused_with_50035() -> None:
    """A 2500-character edit gets Discord's Invalid Form Body error, and the original stays unedited."""
    async with toy() as (fake, bot):
        inter = await fake.invoke("echo", {"text": "x" * 2500}, user=fake.make_user("alice"))
        await fake.wait_for(lambda: bool(bot.errors), timeout=3)
        error = bot.errors[0]
        assert isinstance(error, discord.HTTPException) and error.status == 400 and error.code == 50035
        assert "In content: Must be 2000 or fewer in length." in str(error)
        assert inter.original is not None and inter.original.loading and not inter.original.edits
        assert [e.code for e in inter.errors] == [50035]
        # The same body also breaks the spec; that is expected here, not a fake bug.
        if fake.spec_skip_reason is None:
            assert any("content" in str(v) for v in fake.spec_violations)
        fake.spec_violations.clear()


async def test_embed_limits() -> None:
    """A 4096-character embed description passes; 5000 gets 50035 naming the field."""
    async with toy() as (fake, bot):
        alice = fake.make_user("alice")
        ok = await fake.invoke("embed", {"size": 4096}, user=alice)
        await ok.wait_done(timeout=3)
        assert ok.original is not None and len(ok.original.embeds[0]["description"]) == 4096
        await fake.invoke("embed", {"size": 5000}, user=alice)
        await fake.wait_for(lambda: bool(bot.errors), timeout=3)
        assert "In data.embeds.0.description: Must be 4096 or fewer in length." in str(bot.errors[0])
        fake.spec_violations.clear()


async def test_missing_spec_is_skipped_with_a_reason(tmp_path: Path) -> None:
    """Without the spec file the fake still runs, validates nothing, and says why."""
    async with FakeDiscord(token=TOKEN, spec_path=tmp_path / "absent.json") as fake:
        assert fake.spec_skip_reason is not None and "not found" in fake.spec_skip_reason
        async with aiohttp.ClientSession() as http:
            url = f"{fake.api_url}/channels/{fake.default_channel_id}/messages"
            bad = {"content": "hi", "allowed_mentions": {"parse": ["nobody"]}}
            async with http.post(url, json=bad, headers={"Authorization": f"Bot {TOKEN}"}) as resp:
                assert resp.status == 200
        assert fake.spec_violations == []


def test_message_limits_without_a_bot() -> None:
    """Total embed text over 6000, more than 10 embeds and long field values are all refused."""
    check_message_body({"content": "x" * 2000, "embeds": [{"description": "y" * 4096}]})
    cases = [
        ({"embeds": [{"description": "y" * 4000}, {"description": "z" * 2001}]}, "MAX_EMBED_SIZE_EXCEEDED"),
        ({"embeds": [{"title": "t"}] * 11}, "embeds"),
        ({"embeds": [{"fields": [{"name": "n", "value": "v" * 1025}]}]}, "value"),
        ({"embeds": [{"footer": {"text": "f" * 2049}}]}, "footer"),
        ({"content": 7}, "BASE_TYPE_STRING"),
    ]
    for body, expected in cases:
        with pytest.raises(DiscordError) as caught:
            check_message_body(body)
        assert caught.value.code == 50035 and expected in str(caught.value.errors)


async def test_late_defer_is_unknown_interaction() -> None:
    """Deferring after the (shortened) 3 s deadline gets 404 / 10062 Unknown interaction."""
    async with toy(ack_deadline=0.2) as (fake, bot):
        bot.defer_delay = 0.4
        inter = await fake.invoke("echo", {"text": "too late"}, user=fake.make_user("alice"))
        await fake.wait_for(lambda: bool(bot.errors), timeout=3)
        error = bot.errors[0]
        assert isinstance(error, discord.NotFound) and error.code == 10062
        assert inter.response_type is None and inter.original is None


async def test_second_acknowledgement_is_refused() -> None:
    """A second initial response gets 400 / 40060."""
    async with toy() as (fake, bot):
        inter = await fake.invoke("twice", user=fake.make_user("alice"))
        await fake.wait_for(lambda: len(bot.errors) == 2, timeout=3)
        assert isinstance(bot.errors[0], discord.InteractionResponded)
        assert isinstance(bot.errors[1], discord.HTTPException) and bot.errors[1].code == 40060
        assert inter.response_type == 4 and [m.content for m in inter.followups] == ["follow-up"]


async def test_rate_limits_are_retried_by_discord_py() -> None:
    """A 429 on the callback and a global 429 on the edit are both waited out and retried."""
    async with toy() as (fake, _bot):
        callback = fake.inject_failure("POST", r"^/interactions/\d+/[^/]+/callback$", retry_after=0.1)
        edit = fake.inject_failure("PATCH", r"/messages/@original$", retry_after=0.1, global_=True)
        inter = await fake.invoke("echo", {"text": "patience"}, user=fake.make_user("alice"))
        await inter.wait_done(timeout=3)
        assert callback.hits == 1 and edit.hits == 1
        assert inter.original is not None and inter.original.content == "patience"
        statuses = [r.status for r in fake.requests if "/callback" in r.path or "@original" in r.path]
        assert statuses == [429, 200, 429, 200]


async def test_dropped_gateway_resumes_and_replays() -> None:
    """After a drop the client RESUMEs (no new IDENTIFY); an event sent meanwhile is replayed and answered."""
    async with toy() as (fake, _bot):
        alice = fake.make_user("alice")
        await fake.drop_gateway()
        missed = await fake.invoke("echo", {"text": "sent while away"}, user=alice)
        await fake.wait_resumed(timeout=5)
        await missed.wait_done(timeout=3)
        later = await fake.invoke("echo", {"text": "after resume"}, user=alice)
        await later.wait_done(timeout=3)
        assert len(fake.identify_payloads) == 1 and fake.resumes == 1 and fake.gateway_connections == 2
        assert later.original is not None and later.original.content == "after resume"


async def test_button_click_is_routed_to_the_view() -> None:
    """Clicking the button on the bot's message runs its callback, which updates the message (type 7)."""
    async with toy() as (fake, _bot):
        alice, bob = fake.make_user("alice"), fake.make_user("bob")
        inter = await fake.invoke("buttons", user=alice)
        await inter.wait_done(timeout=3)
        assert inter.original is not None and inter.original.custom_ids() == ["ping"]
        click = await fake.click(inter.original, "ping", user=bob)
        await click.wait_done(timeout=3)
        assert click.response_type == 7
        assert inter.original.content == "pong by bob" and inter.original.components == []
        with pytest.raises(LookupError):
            await fake.click(inter.original, "ping", user=bob)


async def test_autocomplete_is_answered() -> None:
    """Typing 'jo' into the character option returns the bot's filtered choices."""
    async with toy() as (fake, _bot):
        alice = fake.make_user("alice")
        choices = await fake.autocomplete("pick", "character", "jo", user=alice)
        assert [c["value"] for c in choices] == ["Jon Snow", "Jorah Mormont"]
        inter = await fake.invoke("pick", {"character": "Jon Snow"}, user=alice)
        await inter.wait_done(timeout=3)
        assert inter.ephemeral and inter.original is not None and inter.original.content == "picked Jon Snow"
        assert fake.channel_messages() == []  # ephemeral messages are not in the channel


async def test_file_upload_followup_and_channel_messages() -> None:
    """A multipart follow-up keeps the .txt bytes; plain channel messages are created and edited."""
    async with toy() as (fake, _bot):
        inter = await fake.invoke("upload", user=fake.make_user("alice"))
        await inter.wait_done(timeout=3)
        await fake.wait_for(lambda: any(m.edits for m in fake.channel_messages() if m.webhook_id is None))
        [followup] = inter.followups
        assert followup.content == "scene attached"
        assert [(a.filename, a.text) for a in followup.attachments] == [("scene.txt", "JON: Winter.")]
        plain = [m for m in fake.channel_messages() if m.webhook_id is None]
        assert [m.content for m in plain] == ["long job finished"]
        assert [s.content for s in plain[0].history] == ["long job started", "long job finished"]
        await inter.wait_done(lambda i: i.original is not None and bool(i.original.attachments))
        assert inter.original is not None and inter.original.content == "full scene attached"
        assert [a.text for a in inter.original.attachments] == ["JON: Winter.\nARYA: No."]


async def test_modal_round_trip() -> None:
    """The bot opens a modal (type 9); submitting it reaches on_submit."""
    async with toy() as (fake, _bot):
        alice = fake.make_user("alice")
        opened = await fake.invoke("form", user=alice)
        await opened.wait_done(timeout=3)
        assert opened.response_type == 9 and opened.modal is not None
        submitted = await fake.submit_modal(opened, {"body": "more dragons"})
        await submitted.wait_done(timeout=3)
        assert submitted.original is not None and submitted.original.content == "got more dragons"


async def test_subcommands_and_permission_hiding() -> None:
    """'job cancel' is hidden from non-admins (default_member_permissions) and runs for admins."""
    async with toy() as (fake, _bot):
        with pytest.raises(PermissionError):
            await fake.invoke("job cancel", user=fake.make_user("alice"))
        inter = await fake.invoke("job cancel", {"force": True}, user=fake.make_user("root", admin=True))
        await inter.wait_done(timeout=3)
        assert inter.original is not None and inter.original.content == "cancelled force=True"
        with pytest.raises(ValueError, match="no option"):
            await fake.invoke("job cancel", {"bogus": 1}, user=fake.make_user("root2", admin=True))
        with pytest.raises(LookupError, match="not synced"):
            await fake.invoke("nope", user=fake.make_user("carol"))


async def test_expired_token_cannot_edit() -> None:
    """An edit more than 15 minutes after the interaction gets 401 / 50027 Invalid Webhook Token."""
    async with toy() as (fake, bot):
        inter = await fake.invoke("wait", user=fake.make_user("alice"))
        await inter.wait_acked(timeout=3)
        fake.advance(15 * 60 + 1)
        bot.release.set()
        await fake.wait_for(lambda: bool(bot.errors), timeout=3)
        error = bot.errors[0]
        assert isinstance(error, discord.HTTPException) and error.status == 401 and error.code == 50027
        assert inter.original is not None and inter.original.loading


async def test_spec_validation_catches_a_bad_body() -> None:
    """A body Discord's spec rejects is recorded as a violation; a good one is not."""
    if load_spec() is None:
        pytest.skip("Discord's OpenAPI spec is not available beside the repository")
    async with FakeDiscord(token=TOKEN) as fake, aiohttp.ClientSession() as http:
        url = f"{fake.api_url}/channels/{fake.default_channel_id}/messages"
        auth = {"Authorization": f"Bot {TOKEN}"}
        async with http.post(url, json={"content": "fine"}, headers=auth) as ok:
            assert ok.status == 200 and ok.headers["Content-Type"] == "application/json"
        assert fake.spec_violations == []
        bad = {"content": "hi", "allowed_mentions": {"parse": ["nobody"]}}
        async with http.post(url, json=bad, headers=auth) as resp:
            assert resp.status == 200  # the fake still answers; the violation is what fails a test
        [violation] = fake.spec_violations
        assert violation.template == "/channels/{channel_id}/messages"
        assert "allowed_mentions.parse.0" in str(violation)
        async with http.get(f"{fake.api_url}/users/@me", headers={"Authorization": "Bot nope"}) as denied:
            assert denied.status == 401
        assert fake.response_violations == []


async def test_server_errors_are_retried() -> None:
    """A 502 on a channel message is retried by discord.py (after its own 1 s back-off)."""
    async with toy() as (fake, _bot):
        failure = fake.inject_failure("POST", r"^/channels/\d+/messages$", status=502)
        inter = await fake.invoke("upload", user=fake.make_user("alice"))
        await inter.wait_done(lambda i: i.original is not None and bool(i.original.attachments), timeout=5)
        assert failure.hits == 1
        posts = [r.status for r in fake.requests if r.method == "POST" and r.path.startswith("/channels/")]
        assert posts == [502, 200]


async def test_gateway_protocol_by_hand() -> None:
    """HELLO, heartbeat ACK, READY and GUILD_CREATE in sequence, RESUME replay, stale session refused."""
    async with FakeDiscord(token=TOKEN) as fake, aiohttp.ClientSession() as http:
        async with http.ws_connect(fake.gateway_url + "?v=10&encoding=json&compress=zlib-stream") as ws:
            assert (await ws.receive_json())["op"] == 10
            await ws.send_json({"op": 1, "d": None})
            assert (await ws.receive_json())["op"] == 11
            await ws.send_json({"op": 2, "d": {"token": TOKEN, "intents": 513, "properties": {}}})
            ready, guild = await ws.receive_json(), await ws.receive_json()
            assert (ready["t"], ready["s"], guild["t"], guild["s"]) == ("READY", 1, "GUILD_CREATE", 2)
            assert ready["d"]["resume_gateway_url"] == fake.gateway_url
            assert all("flags" in m for m in guild["d"]["members"])
            session = ready["d"]["session_id"]
        await fake.dispatch("TYPING_START", {"channel_id": fake.default_channel_id})  # missed while away
        async with http.ws_connect(fake.gateway_url) as ws:
            await ws.receive_json()
            await ws.send_json({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": 2}})
            replayed, resumed = await ws.receive_json(), await ws.receive_json()
            got = (replayed["t"], replayed["s"], resumed["t"], resumed["s"])
            assert got == ("TYPING_START", 3, "RESUMED", 4)
        async with http.ws_connect(fake.gateway_url) as ws:
            await ws.receive_json()
            await ws.send_json({"op": 6, "d": {"token": TOKEN, "session_id": "stale", "seq": 1}})
            assert (await ws.receive_json()) == {"op": 9, "s": None, "t": None, "d": False}


async def test_rest_answers_match_the_spec(fake_discord: FakeDiscord) -> None:  # noqa: F811
    """Every REST route the stand-in serves answers in the shape Discord's spec declares."""
    if load_spec() is None:
        pytest.skip("Discord's OpenAPI spec is not available beside the repository")
    fake = fake_discord
    alice = fake.make_user("alice")
    auth = {"Authorization": f"Bot {fake.token}"}
    api = fake.api_url
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(f"{api}/users/@me/channels", json={"recipient_id": alice.id}) as resp:
            dm = await resp.json()
        async with http.post(f"{api}/channels/{dm['id']}/messages", json={"content": "retrain finished"}):
            pass
        for path in ("/users/@me", "/oauth2/applications/@me", "/gateway/bot", f"/users/{alice.id}",
                     f"/applications/{fake.app_id}/commands", f"/channels/{fake.default_channel_id}",
                     f"/guilds/{fake.guild_id}", f"/guilds/{fake.guild_id}/members/{alice.id}",
                     f"/channels/{dm['id']}/messages?limit=5"):
            async with http.get(api + path) as resp:
                assert resp.status == 200, path
                assert resp.headers["Content-Type"] == "application/json"
    assert [m.content for m in fake.dm_messages(alice)] == ["retrain finished"]
    assert fake.response_violations == [] and fake.unhandled == []


async def test_webhook_rate_limit_is_honoured() -> None:
    """With a 2-per-0.5 s bucket on the interaction token, discord.py spaces its edits and none is lost."""
    async with toy(webhook_rate_limit=(2, 0.5)) as (fake, _bot):
        inter = await fake.invoke("count", {"upto": 5}, user=fake.make_user("alice"))
        await inter.wait_done(lambda i: i.original is not None and i.original.content == "5", timeout=5)
        assert inter.original is not None
        times = [s.at for s in inter.original.edits]
        assert [s.content for s in inter.original.edits] == ["2", "3", "4", "5"]
        assert times[2] - times[0] >= 0.45  # the third edit had to wait for the bucket to refill
        edits = [r for r in fake.requests if "@original" in r.path]
        assert all(r.status == 200 for r in edits if r not in fake.rate_limited)


async def test_restarted_bot_waits_for_its_own_ready() -> None:
    """A second client on the same fake is ready only after its own IDENTIFY, and answers commands."""
    async with FakeDiscord(token=TOKEN) as fake:
        async with running_bot(fake, ToyBot()):
            pass
        async with running_bot(fake, ToyBot()):
            assert fake.ready_count == 2 and len(fake.identify_payloads) == 2
            inter = await fake.invoke("echo", {"text": "again"}, user=fake.make_user("alice"))
            await inter.wait_done(timeout=3)
        assert fake.sync_count == 2 and not fake.syncs[1].changed
