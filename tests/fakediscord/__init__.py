"""A loopback stand-in for Discord for tests: start it, point discord.py at it, act as users, assert.

    from tests.fakediscord import FakeDiscord, running_bot

    async with FakeDiscord(token="test-token") as fake, running_bot(fake, MyBot(...)) as bot:
        alice = fake.make_user("alice")                      # root = fake.make_user("root", admin=True)
        inter = await fake.invoke("scene", {"characters": "Jon Snow", "length": "short"}, user=alice)
        await inter.wait_done(timeout=5)                     # or wait_done(predicate, timeout)
        assert inter.response_type == 5 and "Jon" in inter.original.text
        choices = await fake.autocomplete("scene", "characters", "jo", user=alice)
        click = await fake.click(inter.original, "some:custom_id", user=alice)

The `fake_discord` fixture starts a FakeDiscord and fails the test if the bot sent a request body
Discord's OpenAPI spec rejects or called a route the stand-in does not implement. Tests use it by
importing it (`from tests.fakediscord import fake_discord  # noqa: F401`) and naming it as a parameter.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator

import pytest

from . import payloads
from .client import patch_discord, running_bot
from .server import (
    Attachment,
    CommandSync,
    DiscordError,
    FakeDiscord,
    InjectedFailure,
    Interaction,
    Message,
    RecordedRequest,
    Snapshot,
    User,
    check_message_body,
)
from .spec import SPEC_SKIP_REASON, SpecViolation, load_spec, skip_reason

__all__ = [
    "SPEC_SKIP_REASON",
    "Attachment",
    "CommandSync",
    "DiscordError",
    "FakeDiscord",
    "InjectedFailure",
    "Interaction",
    "Message",
    "RecordedRequest",
    "Snapshot",
    "SpecViolation",
    "User",
    "check_message_body",
    "fake_discord",
    "load_spec",
    "patch_discord",
    "payloads",
    "running_bot",
    "skip_reason",
]


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord; the test fails if a request broke Discord's spec or hit a missing route."""
    async with FakeDiscord(token="test-token") as fake:
        yield fake
    if fake.response_violations:  # the stand-in's own fault, not the bot's: say so without failing
        listed = "; ".join(str(v) for v in fake.response_violations)
        warnings.warn(f"the Discord stand-in answered outside the spec: {listed}", stacklevel=1)
    try:
        fake.assert_clean()
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)
