"""Point a stock discord.py client at a FakeDiscord, and run a bot against it for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.contextmanager
def patch_discord(fake: FakeDiscord) -> Iterator[None]:
    """Redirect discord.py's REST base and gateway URL to `fake` (127.0.0.1 only); restore them after."""
    api, gateway = yarl.URL(fake.api_url), yarl.URL(fake.gateway_url)
    if api.host != "127.0.0.1" or gateway.host != "127.0.0.1":
        raise ValueError("the stand-in must be served from 127.0.0.1")
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    # Route builds its URL when constructed, so the patch must span the client's whole life.
    Route.BASE = fake.api_url
    DiscordWebSocket.DEFAULT_GATEWAY = gateway
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeDiscord, client: ClientT, *, token: str | None = None, ready_timeout: float = 10.0
) -> AsyncIterator[ClientT]:
    """Start `client` against `fake`, wait for READY, yield it, then close it and re-raise if it crashed."""
    with patch_discord(fake):
        already = fake.ready_count
        task = asyncio.create_task(client.start(token or fake.token), name="fakediscord-client")
        try:
            await fake.wait_ready(ready_timeout, bot_task=task, after=already)
            yield client
        finally:
            await client.close()
            try:
                await asyncio.wait_for(task, timeout=5.0)
            except asyncio.CancelledError:
                pass
            except TimeoutError:
                task.cancel()
            # An exception from the client's task propagates here unless the block already raised.
