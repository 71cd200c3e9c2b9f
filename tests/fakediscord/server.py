"""A loopback stand-in for Discord (gateway websocket + REST v10) that a stock discord.py client talks to.

It binds 127.0.0.1 only and never opens an outbound connection. It enforces the Discord rules a bot can
break (3 s initial response, 15 min interaction tokens, one acknowledgement, message and embed limits),
records every request, validates request bodies against Discord's OpenAPI spec when available, and lets
tests act as users (`invoke`, `autocomplete`, `click`, `submit_modal`) and inject failures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from . import payloads
from .spec import SPEC_PATH, SpecViolation, load_spec, skip_reason

log = logging.getLogger("fakediscord")

JsonBody = Any
Clock = Callable[[], float]

# Message limits Discord enforces server-side (message.mdx, "Embed Limits").
CONTENT_LIMIT = 2000
EMBED_LIMITS = {"title": 256, "description": 4096, "footer.text": 2048, "author.name": 256}
EMBED_FIELD_LIMITS = {"name": 256, "value": 1024}
EMBEDS_PER_MESSAGE = 10
FIELDS_PER_EMBED = 25
EMBED_TOTAL_LIMIT = 6000
AUTOCOMPLETE_CHOICES_LIMIT = 25


class DiscordError(Exception):
    """An error answer in Discord's shape: HTTP status, JSON error code, message, optional field errors."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


class NoRoute(DiscordError):
    """A path the stand-in does not implement (recorded in `FakeDiscord.unhandled`)."""


def unknown_interaction() -> DiscordError:
    return DiscordError(404, 10062, "Unknown interaction")


def invalid_webhook_token() -> DiscordError:
    return DiscordError(401, 50027, "Invalid Webhook Token")


def form_error(errors: dict[str, Any]) -> DiscordError:
    return DiscordError(400, 50035, "Invalid Form Body", errors)


def _field_error(code: str, message: str) -> dict[str, Any]:
    return {"_errors": [{"code": code, "message": message}]}


def _nest(errors: dict[str, Any], path: list[str], leaf: dict[str, Any]) -> None:
    node = errors
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = leaf


def check_message_body(body: dict[str, Any], prefix: tuple[str, ...] = ()) -> None:
    """Raise 50035 the way Discord does when content or embeds break the documented limits."""
    errors: dict[str, Any] = {}
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        _nest(errors, [*prefix, "content"], _field_error("BASE_TYPE_STRING", "Must be a string."))
    elif isinstance(content, str) and len(content) > CONTENT_LIMIT:
        _nest(errors, [*prefix, "content"], _field_error(
            "BASE_TYPE_MAX_LENGTH", f"Must be {CONTENT_LIMIT} or fewer in length."))
    embeds = body.get("embeds") or []
    if not isinstance(embeds, list) or not all(isinstance(e, dict) for e in embeds):
        _nest(errors, [*prefix, "embeds"], _field_error("BASE_TYPE_ARRAY", "Must be an array of objects."))
        raise form_error(errors)
    if len(embeds) > EMBEDS_PER_MESSAGE:
        _nest(errors, [*prefix, "embeds"], _field_error(
            "BASE_TYPE_MAX_LENGTH", f"Must be {EMBEDS_PER_MESSAGE} or fewer in length."))
    total = 0
    for index, embed in enumerate(embeds):
        base = [*prefix, "embeds", str(index)]
        for dotted, limit in EMBED_LIMITS.items():
            value: Any = embed
            for key in dotted.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str):
                total += len(value.strip())
                if len(value) > limit:
                    _nest(errors, [*base, *dotted.split(".")], _field_error(
                        "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))
        fields = embed.get("fields") or []
        if len(fields) > FIELDS_PER_EMBED:
            _nest(errors, [*base, "fields"], _field_error(
                "BASE_TYPE_MAX_LENGTH", f"Must be {FIELDS_PER_EMBED} or fewer in length."))
        for findex, fld in enumerate(fields):
            for key, limit in EMBED_FIELD_LIMITS.items():
                value = fld.get(key)
                if isinstance(value, str):
                    total += len(value.strip())
                    if len(value) > limit:
                        _nest(errors, [*base, "fields", str(findex), key], _field_error(
                            "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))
    if total > EMBED_TOTAL_LIMIT and not errors:
        _nest(errors, [*prefix, "embeds"], _field_error(
            "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {EMBED_TOTAL_LIMIT}"))
    if errors:
        raise form_error(errors)


# ---------------------------------------------------------------------------------------------------
# What tests observe


@dataclass
class Attachment:
    """An uploaded file: its metadata as Discord returns it and the bytes the bot sent."""

    id: str
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None

    @property
    def text(self) -> str:
        """The file decoded as UTF-8 (for .txt uploads)."""
        return self.data.decode("utf-8")

    def payload(self) -> dict[str, Any]:
        return payloads.attachment(
            self.id, self.filename, len(self.data), self.url, self.content_type, self.description
        )


@dataclass
class Snapshot:
    """The visible state of a message at one moment (fake clock seconds)."""

    at: float
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[str]
    flags: int


@dataclass
class Message:
    """A message the bot created (interaction response, follow-up or channel message)."""

    id: str
    channel_id: str
    guild_id: str | None
    author: dict[str, Any]
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    webhook_id: str | None = None
    application_id: str | None = None
    interaction_metadata: dict[str, Any] | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    edited_at: datetime | None = None
    deleted: bool = False
    history: list[Snapshot] = field(default_factory=list)

    @property
    def edits(self) -> list[Snapshot]:
        """Snapshots after each edit, oldest first (history[0] is the message as created)."""
        return self.history[1:]

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & payloads.EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred 'thinking...' placeholder nobody has edited yet."""
        return bool(self.flags & payloads.LOADING)

    @property
    def text(self) -> str:
        """Content plus embed titles and descriptions: what a reader sees, for assertions."""
        parts = [self.content] + [
            str(e.get(k)) for e in self.embeds for k in ("title", "description") if e.get(k)
        ]
        return "\n".join(p for p in parts if p)

    def custom_ids(self) -> list[str]:
        """custom_id of every interactive component, in order."""
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def snapshot(self, at: float) -> None:
        self.history.append(Snapshot(
            at, self.content, json.loads(json.dumps(self.embeds)), json.loads(json.dumps(self.components)),
            [a.filename for a in self.attachments], self.flags,
        ))

    def payload(self) -> dict[str, Any]:
        return payloads.message(
            message_id=self.id, channel_id=self.channel_id, author=self.author, content=self.content,
            embeds=self.embeds, components=self.components,
            attachments=[a.payload() for a in self.attachments], flags=self.flags,
            timestamp=payloads.iso(self.created_at),
            edited_timestamp=payloads.iso(self.edited_at) if self.edited_at else None,
            message_type=self.type, webhook_id=self.webhook_id, application_id=self.application_id,
            interaction_metadata=self.interaction_metadata, guild_id=self.guild_id,
        )


def _walk_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for comp in components:
        out.append(comp)
        out.extend(_walk_components(comp.get("components") or []))
        if isinstance(comp.get("component"), dict):  # Label (type 18) wraps one component
            out.extend(_walk_components([comp["component"]]))
        if isinstance(comp.get("accessory"), dict):  # Section accessory
            out.extend(_walk_components([comp["accessory"]]))
    return out


@dataclass
class User:
    """A guild member tests act as."""

    id: str
    name: str
    role_ids: list[str]
    permissions: int
    payload: dict[str, Any]

    @property
    def admin(self) -> bool:
        return bool(self.permissions & payloads.ADMINISTRATOR)


@dataclass
class ErrorReply:
    """An error the fake answered to a request about an interaction."""

    method: str
    path: str
    status: int
    code: int
    message: str
    errors: dict[str, Any] | None


@dataclass
class Interaction:
    """One INTERACTION_CREATE the fake dispatched, and everything the bot did with it."""

    fake: FakeDiscord = field(repr=False)
    id: str
    token: str
    type: int
    name: str
    data: dict[str, Any]
    user: User
    channel_id: str
    created_at: float
    message: Message | None = None  # the message a component sits on
    trigger: Interaction | None = None  # for a modal submit: the interaction that opened the modal
    acked_at: float | None = None
    response_type: int | None = None
    response_data: dict[str, Any] | None = None
    original: Message | None = None
    followups: list[Message] = field(default_factory=list)
    choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    errors: list[ErrorReply] = field(default_factory=list)

    @property
    def deferred_at(self) -> float | None:
        """When a deferring response (5 or 6) arrived, else None."""
        return self.acked_at if self.response_type in (5, 6) else None

    @property
    def ephemeral(self) -> bool:
        return bool(self.original and self.original.ephemeral)

    @property
    def expires_at(self) -> float:
        return self.created_at + self.fake.token_lifetime

    def done(self) -> bool:
        """Answered and, if deferred, followed through (original edited or a follow-up sent)."""
        if self.response_type is None:
            return False
        if self.response_type in (5, 6):
            acked = self.acked_at or 0.0
            edited = self.original is not None and any(s.at >= acked for s in self.original.edits)
            return bool(self.followups) or edited
        return True

    async def wait_done(
        self, predicate: Callable[[Interaction], bool] | None = None, timeout: float = 5.0
    ) -> Interaction:
        """Wait until `predicate(self)` holds (default: `done()`); TimeoutError describes the state."""
        check = predicate or Interaction.done
        try:
            await self.fake.wait_for(lambda: check(self), timeout=timeout)
        except TimeoutError:
            raise TimeoutError(
                f"interaction {self.name!r} not done after {timeout}s: {self.describe()}"
            ) from None
        return self

    async def wait_acked(self, timeout: float = 5.0) -> Interaction:
        """Wait for the initial response (any type)."""
        return await self.wait_done(lambda i: i.response_type is not None, timeout)

    def describe(self) -> str:
        """A one-line account of what happened, for failure messages."""
        orig = None if self.original is None else (self.original.text[:80], len(self.original.edits))
        return (f"response_type={self.response_type} original={orig} followups={len(self.followups)} "
                f"errors={[(e.status, e.code, e.message) for e in self.errors]}")


@dataclass
class RecordedRequest:
    """One REST request and the fake's answer (the Authorization header is not kept)."""

    at: float
    method: str
    path: str
    query: dict[str, str]
    body: JsonBody | None
    files: list[tuple[str, bytes]]
    authorized: bool
    status: int = 0
    response: JsonBody | None = None


@dataclass
class InjectedFailure:
    """A canned failure answered instead of the real handler for matching requests."""

    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    global_: bool
    times: int | None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.method in ("*", method) and self.pattern.search(path) is not None


@dataclass
class CommandSync:
    """One bulk overwrite of commands: its scope (None = global) and whether anything changed."""

    guild_id: str | None
    names: list[str]
    changed: bool


@dataclass
class GatewaySession:
    id: str
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# The server


Handler = Callable[[web.Request, dict[str, str], JsonBody, list["Upload"]], Awaitable[tuple[int, JsonBody]]]


@dataclass
class Upload:
    index: int
    filename: str
    content_type: str | None
    data: bytes


class FakeDiscord:
    """Gateway + REST stand-in for one bot, one guild and a few channels."""

    def __init__(
        self,
        token: str = "test-token",
        *,
        ack_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
        clock: Clock = time.monotonic,
        heartbeat_interval: float = 41.25,
        allowed_privileged_intents: int = payloads.PRIVILEGED_INTENTS,
        validate_spec: bool = True,
        spec_path: Path = SPEC_PATH,
        guild_name: str = "Westeros",
        channel_names: tuple[str, ...] = ("general", "bot-log"),
        bot_name: str = "maester",
        webhook_rate_limit: tuple[int, float] | None = None,
    ) -> None:
        self.token = token
        self.ack_deadline = ack_deadline
        self.token_lifetime = token_lifetime
        self._clock = clock
        self._skew = 0.0
        self.heartbeat_interval = heartbeat_interval
        self.allowed_privileged_intents = allowed_privileged_intents
        self.ids = payloads.Snowflakes()

        self.app_id = self.ids.next()
        self.bot_user = payloads.user(self.app_id, bot_name, bot=True)
        self.owner = payloads.user(self.ids.next(), "owner")
        self.guild_id = self.ids.next()
        self.guild_name = guild_name
        self.roles: dict[str, dict[str, Any]] = {}
        self.everyone_role_id = self.guild_id  # Discord gives @everyone the guild's id
        self.roles[self.guild_id] = payloads.role(
            self.guild_id, "@everyone", payloads.EVERYONE_PERMISSIONS, 0
        )
        self.admin_role_id = self.make_role("Admin", payloads.ADMINISTRATOR)
        self.channels: dict[str, dict[str, Any]] = {}
        for name in channel_names:
            self.add_channel(name)
        self.members: dict[str, dict[str, Any]] = {
            self.app_id: payloads.member(self.bot_user, []),
            self.owner["id"]: payloads.member(self.owner, [self.admin_role_id]),
        }
        self.users: dict[str, User] = {}

        # Observations.
        self.requests: list[RecordedRequest] = []
        self.spec_violations: list[SpecViolation] = []
        self.response_violations: list[SpecViolation] = []
        self.failures: list[InjectedFailure] = []
        self.unhandled: list[RecordedRequest] = []  # requests for paths the stand-in does not implement
        self.rate_limited: list[RecordedRequest] = []  # requests refused by webhook_rate_limit
        self.webhook_rate_limit = webhook_rate_limit
        self._buckets: dict[str, collections.deque[float]] = {}
        self.commands: dict[str, dict[str, Any]] = {}  # global, by name
        self.guild_commands: dict[str, dict[str, dict[str, Any]]] = {}  # guild id -> name -> command
        self.syncs: list[CommandSync] = []
        self.interactions: dict[str, Interaction] = {}
        self.messages: dict[str, Message] = {}
        self.gateway_log: list[tuple[str, int, str | None]] = []  # (direction, op, event name)
        self.identify_payloads: list[dict[str, Any]] = []
        self.resumes = 0
        self.ready_count = 0  # sessions that got READY + GUILD_CREATE
        self.gateway_connections = 0
        self.close_codes: list[int] = []  # codes the fake closed client sockets with

        self._spec = load_spec(spec_path) if validate_spec else None
        # None while validating; otherwise why not (missing spec file, or switched off).
        self.spec_skip_reason: str | None = (
            None if self._spec else (skip_reason(spec_path) if validate_spec else "spec validation disabled")
        )
        if self.spec_skip_reason:
            log.info("%s", self.spec_skip_reason)
        self._session: GatewaySession | None = None
        self._ws: web.WebSocketResponse | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._send_lock = asyncio.Lock()
        self._tick = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []
        self._build_routes()

    # ----- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        """Serve on 127.0.0.1 at a free port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Close sockets and stop serving."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """What discord.http.Route.BASE must be set to."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What DiscordWebSocket.DEFAULT_GATEWAY must be set to."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ----- clock and waiting ---------------------------------------------------------------------

    def now(self) -> float:
        """Fake-clock seconds: the injected clock plus whatever `advance` added."""
        return self._clock() + self._skew

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward (expire deadlines and tokens without sleeping)."""
        self._skew += seconds

    def _changed(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds, re-checked after every request and gateway event.

        Also re-checked every 20 ms, so predicates on the bot's own state (set after the fake answered)
        are seen promptly too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), min(remaining, 0.02))

    async def wait_ready(
        self, timeout: float = 10.0, bot_task: asyncio.Task[Any] | None = None, *, after: int = 0
    ) -> None:
        """Wait until more than `after` clients identified and got READY + GUILD_CREATE.

        Fails fast with the client's own exception if `bot_task` ends first. Pass
        `after=fake.ready_count` taken before starting a client to wait for that client (a restart).
        """
        waiter = asyncio.ensure_future(self.wait_for(lambda: self.ready_count > after, timeout + 1))
        waits: set[asyncio.Future[Any]] = {waiter}
        if bot_task is not None:
            waits.add(bot_task)
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if bot_task is not None and bot_task in done:
            bot_task.result()  # re-raise why the client died
            raise RuntimeError("the client stopped before it was ready")
        if not done:
            raise TimeoutError(f"no client became ready within {timeout}s")

    # ----- the world -----------------------------------------------------------------------------

    def make_role(self, name: str, permissions: int) -> str:
        """Add a guild role; returns its id."""
        role_id = self.ids.next()
        self.roles[role_id] = payloads.role(role_id, name, permissions, len(self.roles))
        return role_id

    def add_channel(self, name: str) -> str:
        """Add a text channel; returns its id."""
        channel_id = self.ids.next()
        self.channels[channel_id] = payloads.text_channel(channel_id, self.guild_id, name, len(self.channels))
        return channel_id

    def channel_id(self, name: str) -> str:
        """The id of the text channel called `name`."""
        for cid, channel in self.channels.items():
            if channel.get("name") == name:
                return cid
        raise LookupError(f"no channel named {name!r}")

    @property
    def default_channel_id(self) -> str:
        return next(iter(self.channels))

    def make_user(
        self, name: str, *, admin: bool = False, roles: list[str] | tuple[str, ...] = ()
    ) -> User:
        """A guild member to act as; admin adds the Admin role (ADMINISTRATOR permission)."""
        user_id = self.ids.next()
        role_ids = list(roles) + ([self.admin_role_id] if admin else [])
        perms = int(self.roles[self.everyone_role_id]["permissions"])
        for rid in role_ids:
            perms |= int(self.roles[rid]["permissions"])
        if perms & payloads.ADMINISTRATOR:
            perms = payloads.ALL_PERMISSIONS
        user_payload = payloads.user(user_id, name)
        self.members[user_id] = payloads.member(user_payload, role_ids)
        self.users[user_id] = User(user_id, name, role_ids, perms, user_payload)
        return self.users[user_id]

    def guild_payload(self) -> dict[str, Any]:
        return payloads.guild(
            self.guild_id, self.guild_name, owner_id=self.owner["id"], roles=list(self.roles.values()),
            channels=[c for c in self.channels.values() if c["type"] != 1],
            members=list(self.members.values()),
        )

    def channel_messages(self, channel_id: str | None = None) -> list[Message]:
        """Non-deleted, non-ephemeral messages in a channel (default: the first channel), oldest first."""
        cid = channel_id or self.default_channel_id
        return [
            m for m in self.messages.values() if m.channel_id == cid and not m.deleted and not m.ephemeral
        ]

    def assert_clean(self) -> None:
        """Raise AssertionError if the bot sent bodies the spec rejects or called routes the fake lacks."""
        problems = [f"  spec: {v}" for v in self.spec_violations]
        problems += [f"  not implemented by the stand-in: {r.method} {r.path}" for r in self.unhandled]
        if problems:
            raise AssertionError("the bot's requests were not all valid:\n" + "\n".join(problems))

    @property
    def sync_count(self) -> int:
        """How many bulk command overwrites (PUT) the bot made, global and guild together."""
        return len(self.syncs)

    def synced_command(self, name: str, guild_id: str | None = None) -> dict[str, Any]:
        """The stored command a user would invoke: the guild's version first, then the global one."""
        gid = guild_id or self.guild_id
        found = self.guild_commands.get(gid, {}).get(name) or self.commands.get(name)
        if found is None:
            known = sorted({*self.commands, *self.guild_commands.get(gid, {})})
            raise LookupError(f"command {name!r} is not synced; synced commands: {known}")
        return found

    # ----- gateway -------------------------------------------------------------------------------

    async def _send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        self.gateway_log.append(("send", payload["op"], payload.get("t")))
        await ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        """Send a DISPATCH (op 0) with the next sequence number; kept for RESUME replay. Returns seq."""
        async with self._send_lock:
            session = self._session
            if session is None:
                raise RuntimeError("no gateway session: wait_ready() first")
            session.seq += 1
            payload = {"op": 0, "t": event, "s": session.seq, "d": data}
            session.events.append(payload)
            ws = self._ws
            if ws is not None and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._send(ws, payload)
            self._changed()
            return session.seq

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the bot's websocket with a resumable code; the client should RESUME."""
        ws = self._ws
        if ws is None:
            raise RuntimeError("no gateway connection to drop")
        self._ws = None
        await self._close(ws, code, "dropped by test")

    async def _close(self, ws: web.WebSocketResponse, code: int, reason: str) -> None:
        self.close_codes.append(code)
        await ws.close(code=code, message=reason.encode())

    async def wait_resumed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until the client has RESUMEd `count` times in total."""
        await self.wait_for(lambda: self.resumes >= count and self._ws is not None, timeout)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.gateway_connections += 1
        self._sockets.add(ws)
        try:
            await self._send(ws, payloads.hello(int(self.heartbeat_interval * 1000)))
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op = frame.get("op")
                self.gateway_log.append(("recv", op, None))
                if op == 1:
                    await self._send(ws, {"op": 11, "s": None, "t": None, "d": None})
                elif op == 2:
                    await self._identify(ws, frame.get("d") or {})
                elif op == 6:
                    await self._resume(ws, frame.get("d") or {})
                elif op == 8:
                    await self._chunk(frame.get("d") or {})
                self._changed()
        finally:
            self._sockets.discard(ws)
            if self._ws is ws:
                self._ws = None
            self._changed()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        # Keep the identify minus its token, so tests can check intents and properties.
        self.identify_payloads.append({k: v for k, v in data.items() if k != "token"})
        if data.get("token") != self.token:
            await self._close(ws, 4004, "Authentication failed.")
            return
        if int(data.get("intents", 0)) & payloads.PRIVILEGED_INTENTS & ~self.allowed_privileged_intents:
            await self._close(ws, 4014, "Disallowed intent(s).")
            return
        async with self._send_lock:
            self._session = GatewaySession(uuid.uuid4().hex)
            self._ws = ws
        await self.dispatch("READY", payloads.ready(
            bot_user=self.bot_user, guild_ids=[self.guild_id], session_id=self._session.id,
            resume_gateway_url=self.gateway_url, app_id=self.app_id,
        ))
        await self.dispatch("GUILD_CREATE", self.guild_payload())
        self.ready_count += 1
        self._changed()

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await self._close(ws, 4004, "Authentication failed.")
            return
        session = self._session
        if session is None or data.get("session_id") != session.id:
            await self._send(ws, {"op": 9, "s": None, "t": None, "d": False})
            return
        async with self._send_lock:
            last = int(data.get("seq") or 0)
            for event in session.events:
                if event["s"] > last:
                    await self._send(ws, event)
            self._ws = ws
        self.resumes += 1
        await self.dispatch("RESUMED", {})

    async def _chunk(self, data: dict[str, Any]) -> None:
        await self.dispatch("GUILD_MEMBERS_CHUNK", {
            "guild_id": self.guild_id, "members": list(self.members.values()),
            "chunk_index": 0, "chunk_count": 1, "nonce": data.get("nonce"),
        })

    # ----- acting as users -----------------------------------------------------------------------

    def _member_payload(self, user: User) -> dict[str, Any]:
        return payloads.member(user.payload, user.role_ids, permissions=user.permissions)

    async def _dispatch_interaction(
        self, itype: int, name: str, data: dict[str, Any], user: User, channel_id: str | None,
        message: Message | None = None, locale: str = "en-US", trigger: Interaction | None = None,
    ) -> Interaction:
        cid = channel_id or self.default_channel_id
        inter = Interaction(
            fake=self, id=self.ids.next(), token=f"itoken-{uuid.uuid4().hex}", type=itype, name=name,
            data=data, user=user, channel_id=cid, created_at=self.now(), message=message, trigger=trigger,
        )
        self.interactions[inter.id] = inter
        await self.dispatch("INTERACTION_CREATE", payloads.interaction(
            interaction_id=inter.id, interaction_type=itype, token=inter.token, app_id=self.app_id,
            data=data, guild_id=self.guild_id, channel=self.channels[cid],
            member_payload=self._member_payload(user), app_permissions=payloads.ALL_PERMISSIONS,
            message_payload=message.payload() if message else None, locale=locale,
        ))
        return inter

    def _command_data(
        self, path: str, options: dict[str, Any], user: User, focused: str | None, enforce_permissions: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Build `data` for a chat-input interaction the way a Discord client would (or refuse)."""
        names = path.split()
        command = self.synced_command(names[0])
        perms = command.get("default_member_permissions")
        if enforce_permissions and perms is not None and not user.admin and (int(perms) & ~user.permissions):
            raise PermissionError(
                f"/{names[0]} is hidden from {user.name}: default_member_permissions={perms}"
            )
        resolved: dict[str, Any] = {}
        defs = command.get("options", [])
        top: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": command["type"]}
        if "guild_id" in command:
            top["guild_id"] = command["guild_id"]
        holder = top
        for sub in names[1:]:
            match = next((o for o in defs if o["name"] == sub and o["type"] in (1, 2)), None)
            if match is None:
                raise LookupError(f"/{path}: {sub!r} is not a subcommand of the synced command")
            node: dict[str, Any] = {"name": sub, "type": match["type"]}
            holder["options"] = [node]
            holder, defs = node, match.get("options", [])
        if any(o["type"] in (1, 2) for o in defs):
            raise ValueError(f"/{path} needs a subcommand: {[o['name'] for o in defs]}")
        built = []
        for key, value in options.items():
            spec = next((o for o in defs if o["name"] == key), None)
            if spec is None:
                raise ValueError(f"/{path} has no option {key!r}; options: {[o['name'] for o in defs]}")
            opt: dict[str, Any] = {"name": key, "type": spec["type"]}
            if key == focused:
                opt["value"], opt["focused"] = str(value), True
            else:
                opt["value"] = _option_value(path, spec, value, resolved, self)
            built.append(opt)
        missing = [o["name"] for o in defs if o.get("required") and o["name"] not in options]
        if missing and focused is None:
            raise ValueError(f"/{path} is missing required options {missing}")
        holder["options"] = built
        if resolved:
            top["resolved"] = resolved
        return top, command

    async def invoke(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        user: User,
        channel_id: str | None = None,
        enforce_permissions: bool = True,
        locale: str = "en-US",
    ) -> Interaction:
        """Run a slash command as `user` ("retrain cancel" for subcommands); options typed from the sync."""
        data, _ = self._command_data(command, options or {}, user, None, enforce_permissions)
        return await self._dispatch_interaction(2, command, data, user, channel_id, locale=locale)

    async def autocomplete(
        self,
        command: str,
        option: str,
        partial: str,
        *,
        user: User,
        options: dict[str, Any] | None = None,
        channel_id: str | None = None,
        timeout: float = 3.0,
    ) -> list[dict[str, Any]]:
        """Type into an autocomplete option; returns the choices the bot answered (callback type 8)."""
        command_def = self.synced_command(command.split()[0])
        data, _ = self._command_data(command, {**(options or {}), option: partial}, user, option, False)
        leaf_defs = command_def.get("options", [])
        for sub in command.split()[1:]:
            leaf_defs = next(o for o in leaf_defs if o["name"] == sub).get("options", [])
        if not any(o["name"] == option and o.get("autocomplete") for o in leaf_defs):
            raise ValueError(f"/{command} {option}: the synced option has no autocomplete")
        inter = await self._dispatch_interaction(4, command, data, user, channel_id)
        await inter.wait_done(lambda i: i.choices is not None, timeout)
        return inter.choices or []

    async def click(
        self, message: Message | str, custom_id: str, *, user: User, values: list[str] | None = None
    ) -> Interaction:
        """Click a button (or pick `values` in a select) on a message the bot sent."""
        msg = message if isinstance(message, Message) else self.messages[message]
        comp = next((c for c in _walk_components(msg.components) if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise LookupError(f"message {msg.id} has no component {custom_id!r}; it has {msg.custom_ids()}")
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled and cannot be used")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": comp["type"]}
        if comp["type"] != 2:
            data["values"] = list(values or [])
        return await self._dispatch_interaction(3, custom_id, data, user, msg.channel_id, message=msg)

    async def submit_modal(
        self, opened: Interaction, values: dict[str, str], *, user: User | None = None
    ) -> Interaction:
        """Submit the modal the bot opened in `opened` (callback type 9) with text input values."""
        if opened.modal is None:
            raise ValueError("the bot did not answer this interaction with a modal")
        missing = set(values)

        def fill(component: dict[str, Any]) -> dict[str, Any]:
            if component.get("type") == 4:
                missing.discard(component["custom_id"])
                return {"type": 4, "custom_id": component["custom_id"],
                        "value": values.get(component["custom_id"], component.get("value", ""))}
            if component.get("type") == 18:
                return {"type": 18, "component": fill(component["component"])}
            return {"type": component.get("type", 1),
                    "components": [fill(c) for c in component.get("components", [])]}

        rows = [fill(c) for c in opened.modal.get("components", [])]
        if missing:
            raise ValueError(f"the modal has no text inputs {sorted(missing)}")
        data = {"custom_id": opened.modal["custom_id"], "components": rows}
        return await self._dispatch_interaction(
            5, opened.modal["custom_id"], data, user or opened.user, opened.channel_id,
            message=opened.message, trigger=opened,
        )

    # ----- failure injection ---------------------------------------------------------------------

    def inject_failure(
        self,
        method: str,
        path_regex: str,
        status: int = 429,
        retry_after: float = 0.2,
        global_: bool = False,
        times: int | None = 1,
    ) -> InjectedFailure:
        """Answer the next `times` requests matching (path relative to /api/v10) with `status`.

        `method` "*" matches any method; `times=None` fails forever. 429s carry the headers and body
        discord.py needs to retry (Via, retry_after, X-RateLimit-*); other statuses are plain errors.
        """
        failure = InjectedFailure(method.upper(), re.compile(path_regex), status, retry_after, global_, times)
        self.failures.append(failure)
        return failure

    def _failure_reply(self, failure: InjectedFailure) -> tuple[int, JsonBody, dict[str, str]]:
        failure.hits += 1
        if failure.status != 429:
            return failure.status, {"message": f"{failure.status}: Server Error", "code": 0}, {}
        reset = time.time() + failure.retry_after
        headers = {
            "Via": "1.1 google",  # without it discord.py assumes a Cloudflare ban and gives up
            "Retry-After": str(max(1, math.ceil(failure.retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{reset:.3f}",
            "X-RateLimit-Reset-After": f"{failure.retry_after:.3f}",
            "X-RateLimit-Bucket": "fakebucket",
            "X-RateLimit-Scope": "global" if failure.global_ else "user",
        }
        if failure.global_:
            headers["X-RateLimit-Global"] = "true"
        return 429, _rate_limit_body(failure.retry_after, failure.global_), headers

    # ----- REST plumbing -------------------------------------------------------------------------

    def _build_routes(self) -> None:
        add = self._add_route
        add("GET", r"/users/@me", self._get_me, auth=True)
        add("GET", r"/oauth2/applications/@me", self._get_app, auth=True)
        add("GET", r"/gateway", self._get_gateway, auth=False)
        add("GET", r"/gateway/bot", self._get_gateway_bot, auth=True)
        add("GET", r"/applications/(?P<app>\d+)/commands", self._get_commands, auth=True)
        add("PUT", r"/applications/(?P<app>\d+)/commands", self._put_commands, auth=True)
        guild_commands = r"/applications/(?P<app>\d+)/guilds/(?P<guild>\d+)/commands"
        add("GET", guild_commands, self._get_commands, auth=True)
        add("PUT", guild_commands, self._put_commands, auth=True)
        add("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", self._callback, auth=False)
        webhook_message = r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)"
        add("GET", webhook_message, self._get_webhook_message, auth=False)
        add("PATCH", webhook_message, self._edit_webhook_message, auth=False)
        add("DELETE", webhook_message, self._delete_webhook_message, auth=False)
        add("POST", r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)", self._followup, auth=False)
        add("GET", r"/channels/(?P<cid>\d+)", self._get_channel, auth=True)
        add("GET", r"/channels/(?P<cid>\d+)/messages", self._channel_history, auth=True)
        add("GET", r"/guilds/(?P<gid>\d+)", self._get_guild, auth=True)
        add("GET", r"/guilds/(?P<gid>\d+)/members/(?P<uid>\d+)", self._get_member, auth=True)
        add("GET", r"/users/(?P<uid>\d+)", self._get_user, auth=True)
        add("POST", r"/users/@me/channels", self._open_dm, auth=True)
        add("POST", r"/channels/(?P<cid>\d+)/typing", self._typing, auth=True)
        add("POST", r"/channels/(?P<cid>\d+)/messages", self._post_channel_message, auth=True)
        channel_message = r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)"
        add("GET", channel_message, self._get_channel_message, auth=True)
        add("PATCH", channel_message, self._edit_channel_message, auth=True)
        add("DELETE", channel_message, self._delete_channel_message, auth=True)

    def _add_route(self, method: str, regex: str, handler: Handler, *, auth: bool) -> None:
        self._routes.append((method, re.compile(f"^{regex}$"), handler, auth))

    async def _read_body(self, request: web.Request) -> tuple[JsonBody | None, list[Upload]]:
        if not request.body_exists:
            return None, []
        if request.content_type.startswith("multipart/"):
            body: JsonBody | None = None
            uploads: list[Upload] = []
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):  # discord.py never nests multiparts
                    continue
                name = part.name or ""
                raw = await part.read(decode=True)
                if name == "payload_json":
                    body = json.loads(raw)
                elif m := re.fullmatch(r"files\[(\d+)\]", name):
                    content_type = part.headers.get("Content-Type")
                    uploads.append(Upload(int(m.group(1)), part.filename or "file", content_type, bytes(raw)))
            return body, uploads
        raw_text = await request.text()
        return (json.loads(raw_text) if raw_text else None), []

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        method = request.method
        try:
            body, uploads = await self._read_body(request)
        except (ValueError, UnicodeDecodeError):
            return _json_response(400, {"message": "400: Bad Request", "code": 50109})
        record = RecordedRequest(
            at=self.now(), method=method, path=path, query=dict(request.query), body=body,
            files=[(u.filename, u.data) for u in uploads],
            authorized=request.headers.get("Authorization") == f"Bot {self.token}",
        )
        self.requests.append(record)
        if self._spec is not None:
            violation = self._spec.validate_request(method, path, record.query, body)
            if violation is not None:
                log.warning("spec violation: %s", violation)
                self.spec_violations.append(violation)
        failure = next((f for f in self.failures if f.matches(method, path)), None)
        if failure is not None:
            return self._answer(record, *self._failure_reply(failure), validate=False)
        headers, retry_after = self._take_rate_limit(path)
        if retry_after is not None:
            self.rate_limited.append(record)
            return self._answer(record, 429, _rate_limit_body(retry_after, False), headers, validate=False)
        try:
            status, reply = await self._route(request, method, path, body, uploads, record.authorized)
        except NoRoute as err:
            log.warning("the stand-in has no handler for %s %s", method, path)
            self.unhandled.append(record)
            status, reply = err.status, err.body()
        except DiscordError as err:
            status, reply = err.status, err.body()
            self._note_error(method, path, err)
        return self._answer(record, status, reply, headers)

    def _answer(
        self, record: RecordedRequest, status: int, reply: JsonBody | None, headers: dict[str, str],
        *, validate: bool = True,
    ) -> web.Response:
        """Record the answer, check it against the spec (unless it is an injected fault) and send it."""
        record.status, record.response = status, reply
        if validate and self._spec is not None:
            violation = self._spec.validate_response(record.method, record.path, status, reply)
            if violation is not None:
                self.response_violations.append(violation)
        self._changed()
        if reply is None:
            return web.Response(status=status, headers=headers)
        return _json_response(status, reply, headers)

    def _take_rate_limit(self, path: str) -> tuple[dict[str, str], float | None]:
        """Per-token webhook bucket (opt-in): headers for the answer, and retry_after when exhausted."""
        m = re.match(r"^/webhooks/\d+/([^/]+)", path)
        if self.webhook_rate_limit is None or m is None:
            return {}, None
        limit, per = self.webhook_rate_limit
        now = self.now()
        hits = self._buckets.setdefault(m.group(1), collections.deque())
        while hits and hits[0] <= now - per:
            hits.popleft()
        exhausted = len(hits) >= limit
        if not exhausted:
            hits.append(now)
        reset_after = max(0.0, hits[0] + per - now)
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - len(hits)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": "webhook-" + uuid.uuid5(uuid.NAMESPACE_URL, m.group(1)).hex[:12],
        }
        if not exhausted:
            return headers, None
        headers |= {"Via": "1.1 google", "Retry-After": str(max(1, math.ceil(reset_after))),
                    "X-RateLimit-Scope": "user"}
        return headers, reset_after

    async def _route(
        self,
        request: web.Request,
        method: str,
        path: str,
        body: JsonBody,
        uploads: list[Upload],
        authed: bool,
    ) -> tuple[int, JsonBody]:
        path_matched = False
        for route_method, pattern, handler, auth in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            path_matched = True
            if route_method != method:
                continue
            if auth and not authed:
                raise DiscordError(401, 0, "401: Unauthorized")
            return await handler(request, match.groupdict(), body, uploads)
        if path_matched:
            raise DiscordError(405, 0, "405: Method Not Allowed")
        raise NoRoute(404, 0, "404: Not Found")

    def _note_error(self, method: str, path: str, err: DiscordError) -> None:
        """Attach an error answer to the interaction it concerns, so tests can see what the bot hit."""
        m = re.match(r"^/(?:interactions/(\d+)/([^/]+)|webhooks/\d+/([^/]+))", path)
        if m is None:
            return
        inter = self.interactions.get(m.group(1) or "") or self._by_token(m.group(3) or "")
        if inter is not None:
            inter.errors.append(ErrorReply(method, path, err.status, err.code, err.message, err.errors))

    def _by_token(self, token: str) -> Interaction | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    # ----- REST: identity, gateway, commands -----------------------------------------------------

    async def _get_me(self, *_: Any) -> tuple[int, JsonBody]:
        return 200, payloads.bot_self_user(self.app_id, self.bot_user["username"])

    async def _get_app(self, *_: Any) -> tuple[int, JsonBody]:
        return 200, payloads.application(self.app_id, self.bot_user["username"], self.owner, self.bot_user)

    async def _get_gateway(self, *_: Any) -> tuple[int, JsonBody]:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, *_: Any) -> tuple[int, JsonBody]:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}

    def _check_app(self, params: dict[str, str]) -> None:
        if params["app"] != self.app_id:
            raise DiscordError(403, 50001, "Missing Access")

    def _scope(self, params: dict[str, str]) -> dict[str, dict[str, Any]]:
        guild = params.get("guild")
        if guild is None:
            return self.commands
        if guild != self.guild_id:
            raise DiscordError(403, 50001, "Missing Access")
        return self.guild_commands.setdefault(guild, {})

    async def _get_commands(self, _r: web.Request, params: dict[str, str], *_: Any) -> tuple[int, JsonBody]:
        self._check_app(params)
        return 200, list(self._scope(params).values())

    async def _put_commands(
        self, _r: web.Request, params: dict[str, str], body: JsonBody, _u: list[Upload]
    ) -> tuple[int, JsonBody]:
        self._check_app(params)
        if not isinstance(body, list):
            raise form_error({"_errors": [{"code": "BASE_TYPE_ARRAY", "message": "Must be an array."}]})
        _check_commands(body)
        scope = self._scope(params)
        guild = params.get("guild")
        stored: dict[str, dict[str, Any]] = {}
        changed = set(scope) != {c["name"] for c in body}
        for definition in body:
            old = scope.get(definition["name"])
            new = payloads.app_command(
                definition, command_id=old["id"] if old else self.ids.next(), app_id=self.app_id,
                version=old["version"] if old else self.ids.next(), guild_id=guild,
            )
            if old is not None and _comparable(old) != _comparable(new):
                new["version"] = self.ids.next()
                changed = True
            stored[new["name"]] = new
        scope.clear()
        scope.update(stored)
        self.syncs.append(CommandSync(guild, list(stored), changed))
        return 200, list(stored.values())

    # ----- REST: interactions --------------------------------------------------------------------

    def _live_interaction(self, token: str) -> Interaction:
        """The interaction owning a webhook token, if it is acknowledged and still valid."""
        inter = self._by_token(token)
        if inter is None or self.now() > inter.expires_at:
            raise invalid_webhook_token()
        if inter.response_type is None:
            if self.now() - inter.created_at > self.ack_deadline:
                raise invalid_webhook_token()  # missing the 3 s deadline invalidates the token
            raise DiscordError(404, 10015, "Unknown Webhook")
        return inter

    def _new_message(
        self, body: dict[str, Any], uploads: list[Upload], *, channel_id: str, inter: Interaction | None,
        flags: int = 0, message_type: int = 0,
    ) -> Message:
        msg = Message(
            id=self.ids.next(), channel_id=channel_id, author=self.bot_user,
            guild_id=None if self.channels[channel_id]["type"] == 1 else self.guild_id,
            type=message_type, flags=flags,
        )
        if inter is not None:
            msg.webhook_id = msg.application_id = self.app_id
            msg.interaction_metadata = self._metadata(inter)
        self._apply(msg, body, uploads, creating=True)
        self.messages[msg.id] = msg
        return msg

    def _metadata(self, inter: Interaction) -> dict[str, Any]:
        """interaction_metadata for a message answering `inter` (shape depends on its type)."""
        meta: dict[str, Any] = {
            "id": inter.id, "type": inter.type, "user": inter.user.payload,
            "authorizing_integration_owners": {"0": self.guild_id},
        }
        if inter.type == 3 and inter.message is not None:
            meta["interacted_message_id"] = inter.message.id
        if inter.type == 5 and inter.trigger is not None:
            meta["triggering_interaction_metadata"] = self._metadata(inter.trigger)
        return meta

    def _apply(self, msg: Message, body: dict[str, Any], uploads: list[Upload], *, creating: bool) -> None:
        """Apply a create/edit body: only the keys present change (as Discord's PATCH does)."""
        if "content" in body:
            msg.content = body["content"] or ""
        if "embeds" in body:
            msg.embeds = body["embeds"] or []
        if "components" in body:
            msg.components = _stored_components(body["components"] or [])
        if "flags" in body and body["flags"] is not None and creating:
            msg.flags |= int(body["flags"]) & payloads.EPHEMERAL
        if "attachments" in body or uploads:
            listed = body.get("attachments") or []
            keep_ids = {str(a.get("id")) for a in listed}
            kept = [a for a in msg.attachments if "attachments" not in body or a.id in keep_ids]
            described = {str(a.get("id")): a for a in listed}
            for up in uploads:
                aid = self.ids.next()
                meta = described.get(str(up.index), {})
                kept.append(Attachment(
                    aid, meta.get("filename") or up.filename, up.data, up.content_type,
                    f"{self.base_url}/attachments/{msg.channel_id}/{aid}/{up.filename}",
                    meta.get("description"),
                ))
            msg.attachments = kept
        if not creating:
            msg.flags &= ~payloads.LOADING  # an edit turns "thinking..." into the real message
            msg.edited_at = datetime.now(UTC)
        msg.snapshot(self.now())

    async def _callback(
        self, request: web.Request, params: dict[str, str], body: JsonBody, uploads: list[Upload]
    ) -> tuple[int, JsonBody]:
        inter = self.interactions.get(params["iid"])
        if inter is None or inter.token != params["token"]:
            raise unknown_interaction()
        if inter.response_type is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self.now() - inter.created_at > self.ack_deadline:
            raise unknown_interaction()
        if not isinstance(body, dict) or not isinstance(body.get("type"), int):
            raise form_error({"type": _field_error("BASE_TYPE_REQUIRED", "This field is required")})
        rtype: int = body["type"]
        data = body.get("data") or {}
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}[inter.type]
        if rtype not in allowed:
            raise form_error({"type": _field_error(
                "INTERACTION_RESPONSE_TYPE_INVALID",
                f"Response type {rtype} is not valid for interaction type {inter.type}.")})
        if rtype in (4, 7):
            check_message_body(data, ("data",))
        resource: dict[str, Any] | None = None
        flags = int(data.get("flags") or 0) & payloads.EPHEMERAL
        if rtype in (4, 5):
            inter.original = self._new_message(
                data if rtype == 4 else {}, uploads if rtype == 4 else [], channel_id=inter.channel_id,
                inter=inter, flags=flags | (payloads.LOADING if rtype == 5 else 0),
                message_type=20 if inter.type == 2 else 19,
            )
            if rtype == 4:
                resource = {"type": 4, "message": inter.original.payload()}
        elif rtype in (6, 7):
            inter.original = inter.message
            if rtype == 7 and inter.message is not None:
                self._apply(inter.message, data, uploads, creating=False)
                resource = {"type": 7, "message": inter.message.payload()}
        elif rtype == 8:
            choices = data.get("choices") or []
            if len(choices) > AUTOCOMPLETE_CHOICES_LIMIT:
                raise form_error({"data": {"choices": _field_error(
                    "BASE_TYPE_MAX_LENGTH", f"Must be {AUTOCOMPLETE_CHOICES_LIMIT} or fewer in length.")}})
            inter.choices = choices
        elif rtype == 9:
            inter.modal = data
        inter.acked_at, inter.response_type, inter.response_data = self.now(), rtype, body
        if "with_response" not in request.query:
            return 204, None
        summary: dict[str, Any] = {"id": inter.id, "type": inter.type}
        if inter.original is not None and rtype in (4, 5, 7):
            summary.update(
                response_message_id=inter.original.id,
                response_message_loading=inter.original.loading,
                response_message_ephemeral=inter.original.ephemeral,
            )
        reply: dict[str, Any] = {"interaction": summary}
        if resource is not None:
            reply["resource"] = resource
        return 200, reply

    def _webhook_target(self, params: dict[str, str]) -> tuple[Interaction, Message]:
        if params["app"] != self.app_id:
            raise DiscordError(404, 10015, "Unknown Webhook")
        inter = self._live_interaction(params["token"])
        if params["mid"] == "@original":
            msg = inter.original
        else:
            msg = self.messages.get(params["mid"])
            owned = [m.id for m in inter.followups] + ([inter.original.id] if inter.original else [])
            if msg is not None and msg.id not in owned:
                msg = None
        if msg is None or msg.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        return inter, msg

    async def _get_webhook_message(
        self, _r: web.Request, params: dict[str, str], *_: Any
    ) -> tuple[int, JsonBody]:
        _, msg = self._webhook_target(params)
        return 200, msg.payload()

    async def _edit_webhook_message(
        self, _r: web.Request, params: dict[str, str], body: JsonBody, uploads: list[Upload]
    ) -> tuple[int, JsonBody]:
        _, msg = self._webhook_target(params)
        body = body or {}
        check_message_body(body)
        self._apply(msg, body, uploads, creating=False)
        return 200, msg.payload()

    async def _delete_webhook_message(
        self, _r: web.Request, params: dict[str, str], *_: Any
    ) -> tuple[int, JsonBody]:
        _, msg = self._webhook_target(params)
        msg.deleted = True
        return 204, None

    async def _followup(
        self, _r: web.Request, params: dict[str, str], body: JsonBody, uploads: list[Upload]
    ) -> tuple[int, JsonBody]:
        if params["app"] != self.app_id:
            raise DiscordError(404, 10015, "Unknown Webhook")
        inter = self._live_interaction(params["token"])
        body = body or {}
        _check_not_empty(body, uploads)
        check_message_body(body)
        flags = int(body.get("flags") or 0) & payloads.EPHEMERAL
        msg = self._new_message(body, uploads, channel_id=inter.channel_id, inter=inter, flags=flags,
                                message_type=20 if inter.type == 2 else 19)
        inter.followups.append(msg)
        return 200, msg.payload()

    # ----- REST: channels ------------------------------------------------------------------------

    def _channel(self, params: dict[str, str]) -> dict[str, Any]:
        channel = self.channels.get(params["cid"])
        if channel is None:
            raise DiscordError(404, 10003, "Unknown Channel")
        return channel

    def _channel_message(self, params: dict[str, str]) -> Message:
        self._channel(params)
        msg = self.messages.get(params["mid"])
        if msg is None or msg.deleted or msg.channel_id != params["cid"] or msg.ephemeral:
            raise DiscordError(404, 10008, "Unknown Message")
        return msg

    async def _get_channel(self, _r: web.Request, params: dict[str, str], *_: Any) -> tuple[int, JsonBody]:
        return 200, self._channel(params)

    async def _channel_history(
        self, request: web.Request, params: dict[str, str], *_: Any
    ) -> tuple[int, JsonBody]:
        self._channel(params)
        limit = max(1, min(100, int(request.query.get("limit", "50"))))
        newest_first = list(reversed(self.channel_messages(params["cid"])))
        if "before" in request.query:
            newest_first = [m for m in newest_first if int(m.id) < int(request.query["before"])]
        return 200, [m.payload() for m in newest_first[:limit]]

    async def _get_guild(self, _r: web.Request, params: dict[str, str], *_: Any) -> tuple[int, JsonBody]:
        if params["gid"] != self.guild_id:
            raise DiscordError(404, 10004, "Unknown Guild")
        g = self.guild_payload()
        # GET /guilds/{id} is GUILD_CREATE minus the gateway-only state.
        gateway_only = ("members", "channels", "threads", "presences", "voice_states", "stage_instances",
                        "guild_scheduled_events", "joined_at", "large", "unavailable", "member_count",
                        "soundboard_sounds")
        return 200, {k: v for k, v in g.items() if k not in gateway_only}

    async def _get_member(self, _r: web.Request, params: dict[str, str], *_: Any) -> tuple[int, JsonBody]:
        found = self.members.get(params["uid"]) if params["gid"] == self.guild_id else None
        if found is None:
            raise DiscordError(404, 10007, "Unknown Member")
        return 200, found

    async def _get_user(self, _r: web.Request, params: dict[str, str], *_: Any) -> tuple[int, JsonBody]:
        found = self.members.get(params["uid"])
        if found is None:
            raise DiscordError(404, 10013, "Unknown User")
        return 200, found["user"]

    async def _open_dm(
        self, _r: web.Request, _p: dict[str, str], body: JsonBody, _u: list[Upload]
    ) -> tuple[int, JsonBody]:
        recipient = str((body or {}).get("recipient_id", ""))
        if recipient not in self.members:
            raise form_error({"recipient_id": _field_error("BASE_TYPE_REQUIRED", "Unknown user")})
        existing = next((c for c in self.channels.values()
                         if c["type"] == 1 and c["recipients"][0]["id"] == recipient), None)
        if existing is None:
            channel_id = self.ids.next()
            existing = self.channels[channel_id] = payloads.dm_channel(
                channel_id, self.members[recipient]["user"])
        return 200, existing

    def dm_messages(self, user: User) -> list[Message]:
        """Messages the bot sent to `user` in a direct message, oldest first."""
        channel = next((c for c in self.channels.values()
                        if c["type"] == 1 and c["recipients"][0]["id"] == user.id), None)
        return [] if channel is None else self.channel_messages(channel["id"])

    async def _typing(self, _r: web.Request, params: dict[str, str], *_: Any) -> tuple[int, JsonBody]:
        self._channel(params)
        return 204, None

    async def _post_channel_message(
        self, _r: web.Request, params: dict[str, str], body: JsonBody, uploads: list[Upload]
    ) -> tuple[int, JsonBody]:
        self._channel(params)
        body = body or {}
        _check_not_empty(body, uploads)
        check_message_body(body)
        msg = self._new_message(body, uploads, channel_id=params["cid"], inter=None)
        return 200, msg.payload()

    async def _get_channel_message(
        self, _r: web.Request, params: dict[str, str], *_: Any
    ) -> tuple[int, JsonBody]:
        return 200, self._channel_message(params).payload()

    async def _edit_channel_message(
        self, _r: web.Request, params: dict[str, str], body: JsonBody, uploads: list[Upload]
    ) -> tuple[int, JsonBody]:
        msg = self._channel_message(params)
        if msg.author["id"] != self.app_id or msg.webhook_id is not None:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body = body or {}
        check_message_body(body)
        self._apply(msg, body, uploads, creating=False)
        return 200, msg.payload()

    async def _delete_channel_message(
        self, _r: web.Request, params: dict[str, str], *_: Any
    ) -> tuple[int, JsonBody]:
        self._channel_message(params).deleted = True
        return 204, None


# ---------------------------------------------------------------------------------------------------
# Helpers


def _rate_limit_body(retry_after: float, global_: bool) -> dict[str, Any]:
    return {
        "message": "You are being rate limited.", "retry_after": retry_after, "global": global_, "code": 0
    }


def _json_response(status: int, body: JsonBody, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": discord.py compares the header verbatim, and aiohttp's
    # json_response would append "; charset=utf-8".
    return web.Response(
        status=status, body=json.dumps(body).encode(),
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _drop_nulls(node: dict[str, Any]) -> None:
    """Remove null values from a dict and the dicts inside it (Discord omits unset component fields)."""
    for key in [k for k, v in node.items() if v is None]:
        del node[key]
    for value in node.values():
        if isinstance(value, dict):
            _drop_nulls(value)


def _stored_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Components as Discord stores them: nulls dropped, a numeric `id` on each (1, 2, ... if unset)."""
    stored = json.loads(json.dumps(components))
    flat = _walk_components(stored)
    used = {c["id"] for c in flat if isinstance(c.get("id"), int)}
    next_id = 1
    for comp in flat:
        _drop_nulls(comp)
        if "id" not in comp:
            while next_id in used:
                next_id += 1
            comp["id"] = next_id
            used.add(next_id)
    return stored


def _check_not_empty(body: dict[str, Any], uploads: list[Upload]) -> None:
    if not (body.get("content") or body.get("embeds") or body.get("components") or uploads
            or body.get("sticker_ids") or body.get("poll")):
        raise DiscordError(400, 50006, "Cannot send an empty message")


_NAME_RE = re.compile(r"^[-_'\w]{1,32}$")


def _check_commands(body: list[dict[str, Any]]) -> None:
    """Discord's bulk-overwrite checks the spec cannot express (name pattern, order, uniqueness)."""
    errors: dict[str, Any] = {}
    seen: set[tuple[str, int]] = set()
    for index, command in enumerate(body):
        name = command.get("name", "")
        ctype = command.get("type", 1)
        if not _NAME_RE.match(name) or (ctype == 1 and name != name.lower()):
            _nest(errors, [str(index), "name"], _field_error(
                "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}"))
        if (name, ctype) in seen:
            _nest(errors, [str(index), "name"], _field_error(
                "APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique"))
        seen.add((name, ctype))
        _check_options(command.get("options") or [], [str(index), "options"], errors)
    if errors:
        raise form_error(errors)


def _check_options(options: list[dict[str, Any]], where: list[str], errors: dict[str, Any]) -> None:
    optional_seen = False
    for index, option in enumerate(options):
        name = option.get("name", "")
        if not _NAME_RE.match(name) or name != name.lower():
            _nest(errors, [*where, str(index), "name"], _field_error(
                "APPLICATION_COMMAND_INVALID_NAME", f"Option name is invalid: {name!r}"))
        if option.get("type") in (1, 2):
            _check_options(option.get("options") or [], [*where, str(index), "options"], errors)
            continue
        if option.get("required"):
            if optional_seen:
                _nest(errors, [*where, str(index), "required"], _field_error(
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options"))
        else:
            optional_seen = True


def _comparable(command: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in command.items() if k not in ("id", "version")}


def _option_value(
    path: str, spec: dict[str, Any], value: Any, resolved: dict[str, Any], fake: FakeDiscord
) -> Any:
    """Coerce and check a test-supplied option value as the Discord client would before sending."""
    otype = spec["type"]
    name = spec["name"]
    if otype == 3:
        value = str(value)
        if len(value) > spec.get("max_length", 6000) or len(value) < spec.get("min_length", 0):
            raise ValueError(f"/{path} {name}: length {len(value)} outside the synced bounds")
    elif otype == 4:
        value = int(value)
    elif otype == 5:
        value = bool(value)
    elif otype == 10:
        value = float(value)
    elif otype == 6:
        target = value if isinstance(value, User) else fake.users[str(value)]
        resolved.setdefault("users", {})[target.id] = target.payload
        member = {k: v for k, v in fake._member_payload(target).items() if k != "user"}
        resolved.setdefault("members", {})[target.id] = member
        value = target.id
    elif otype == 7:
        value = str(value) if str(value) in fake.channels else fake.channel_id(str(value))
        resolved.setdefault("channels", {})[value] = {**fake.channels[value], "permissions": str(
            payloads.ALL_PERMISSIONS)}
    elif otype == 8:
        value = str(value)
        resolved.setdefault("roles", {})[value] = fake.roles[value]
    else:
        raise NotImplementedError(f"/{path} {name}: option type {otype} is not supported by the stand-in")
    if otype in (4, 10):
        low, high = spec.get("min_value"), spec.get("max_value")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"/{path} {name}: {value} outside the synced range [{low}, {high}]")
    choices = spec.get("choices")
    if choices and value not in [c["value"] for c in choices]:
        raise ValueError(f"/{path} {name}: {value!r} is not one of the synced choices")
    return value
