"""The one factory for Discord-shaped JSON: users, members, roles, channels, guilds, messages, commands.

Every payload the stand-in sends (gateway events and REST answers) is built here, so the keys discord.py
indexes with `[...]` (member `flags`, interaction `attachment_size_limit`, READY `resume_gateway_url`,
...) are written in one place, and the REST shapes match Discord's OpenAPI spec.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits (Discord's documented values) used to build roles and interaction members.
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 53) - 1
EVERYONE_PERMISSIONS = (
    VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
    | USE_APPLICATION_COMMANDS
)

# Gateway intents Discord calls privileged: GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT.
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)

# Message flags.
EPHEMERAL = 1 << 6
LOADING = 1 << 7

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


class Snowflakes:
    """Monotonic snowflake ids whose timestamp part is the current time (as Discord's are)."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def next(self) -> str:
        """A new unique id, as the decimal string Discord sends."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._counter) & 0x3FFFFF))


def iso(moment: datetime | None = None) -> str:
    """An ISO 8601 timestamp with offset, as Discord writes them."""
    return (moment or datetime.now(UTC)).isoformat()


def user(user_id: str, username: str, *, bot: bool = False) -> dict[str, Any]:
    """A user object (UserResponse in the spec)."""
    payload: dict[str, Any] = {
        "id": user_id,
        "username": username,
        "avatar": None,
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0,
        "global_name": None if bot else username.title(),
        "primary_guild": None,
        "banner": None,
        "accent_color": None,
        "avatar_decoration_data": None,
        "collectibles": None,
    }
    if bot:
        payload["bot"] = True
    return payload


def bot_self_user(user_id: str, username: str) -> dict[str, Any]:
    """The bot's own user as GET /users/@me returns it (UserPIIResponse adds a few keys)."""
    return {**user(user_id, username, bot=True), "mfa_enabled": False, "locale": "en-US", "verified": True}


def role(role_id: str, name: str, permissions: int, position: int) -> dict[str, Any]:
    """A guild role."""
    return {
        "id": role_id,
        "name": name,
        "description": None,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


def member(
    user_payload: dict[str, Any], role_ids: list[str], *, permissions: int | None = None
) -> dict[str, Any]:
    """A guild member; `permissions` is only present in interaction payloads (resolved by Discord)."""
    payload: dict[str, Any] = {
        "user": user_payload,
        "roles": list(role_ids),
        "joined_at": "2024-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
        "pending": False,
        "nick": None,
        "avatar": None,
        "banner": None,
        "flags": 0,  # discord.py indexes member["flags"]: never omit it
        "premium_since": None,
        "communication_disabled_until": None,
    }
    if permissions is not None:
        payload["permissions"] = str(permissions)
    return payload


def text_channel(channel_id: str, guild_id: str, name: str, position: int) -> dict[str, Any]:
    """A guild text channel (type 0)."""
    return {
        "id": channel_id,
        "type": 0,
        "guild_id": guild_id,
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "topic": None,
        "nsfw": False,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "parent_id": None,
        "last_pin_timestamp": None,
        "flags": 0,
    }


def dm_channel(channel_id: str, recipient: dict[str, Any]) -> dict[str, Any]:
    """A direct-message channel (type 1) with one recipient."""
    return {"id": channel_id, "type": 1, "last_message_id": None, "flags": 0, "recipients": [recipient]}


def guild(
    guild_id: str,
    name: str,
    *,
    owner_id: str,
    roles: list[dict[str, Any]],
    channels: list[dict[str, Any]],
    members: list[dict[str, Any]],
) -> dict[str, Any]:
    """A full guild as GUILD_CREATE carries it (channels without guild_id, as Discord sends them)."""
    return {
        "id": guild_id,
        "name": name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": owner_id,
        "region": "us-west",
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "preferred_locale": "en-US",
        "system_channel_id": channels[0]["id"] if channels else None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "application_id": None,
        "max_members": 500000,
        "max_video_channel_users": 25,
        "widget_enabled": False,
        "widget_channel_id": None,
        "home_header": None,
        "max_presences": None,
        "max_stage_video_channel_users": 50,
        "nsfw": False,
        "features": [],
        "roles": roles,
        "emojis": [],
        "stickers": [],
        "soundboard_sounds": [],
        "joined_at": "2024-01-01T00:00:00+00:00",
        "large": False,
        "unavailable": False,
        "member_count": len(members),
        "members": members,
        "channels": [{k: v for k, v in c.items() if k != "guild_id"} for c in channels],
        "threads": [],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "incidents_data": None,
    }


def application(app_id: str, name: str, owner: dict[str, Any], bot_user: dict[str, Any]) -> dict[str, Any]:
    """GET /oauth2/applications/@me (PrivateApplicationResponse in the spec)."""
    return {
        "id": app_id,
        "name": name,
        "icon": None,
        "description": "",
        "type": None,
        "bot": bot_user,
        "summary": "",
        "bot_public": True,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "flags": 0,
        "flags_new": "0",
        "redirect_uris": [],
        # Must stay null: discord.py warns that gateway interactions won't arrive otherwise.
        "interactions_endpoint_url": None,
        "role_connections_verification_url": None,
        "owner": owner,
        "approximate_guild_count": 1,
        "approximate_user_install_count": 0,
        "approximate_user_authorization_count": 0,
        "explicit_content_filter": 0,
        "team": None,
        "eligible_oauth2_scopes": [],
        "tags": [],
        "integration_types_config": {},
    }


def hello(heartbeat_interval_ms: int) -> dict[str, Any]:
    """Gateway op 10 HELLO."""
    return {"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": heartbeat_interval_ms}}


def ready(
    *,
    bot_user: dict[str, Any],
    guild_ids: list[str],
    session_id: str,
    resume_gateway_url: str,
    app_id: str,
) -> dict[str, Any]:
    """READY dispatch data; `resume_gateway_url` is mandatory for discord.py."""
    return {
        "v": 10,
        "user": {**bot_user, "mfa_enabled": False, "verified": True},
        "guilds": [{"id": gid, "unavailable": True} for gid in guild_ids],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": resume_gateway_url,
        "application": {"id": app_id, "flags": 0},
        "shard": [0, 1],
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "user_settings": {},
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": ["us-west"],
    }


def attachment(
    attachment_id: str, filename: str, size: int, url: str, content_type: str | None, description: str | None
) -> dict[str, Any]:
    """A message attachment (MessageAttachmentResponse)."""
    payload: dict[str, Any] = {
        "id": attachment_id,
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url,
        "flags": 0,
    }
    if content_type:
        payload["content_type"] = content_type
    if description:
        payload["description"] = description
    return payload


def message(
    *,
    message_id: str,
    channel_id: str,
    author: dict[str, Any],
    content: str,
    embeds: list[dict[str, Any]],
    components: list[dict[str, Any]],
    attachments: list[dict[str, Any]],
    flags: int,
    timestamp: str,
    edited_timestamp: str | None,
    message_type: int = 0,
    webhook_id: str | None = None,
    application_id: str | None = None,
    interaction_metadata: dict[str, Any] | None = None,
    guild_id: str | None = None,
) -> dict[str, Any]:
    """A message object (MessageResponse)."""
    payload: dict[str, Any] = {
        "id": message_id,
        "type": message_type,
        "channel_id": channel_id,
        "author": author,
        "content": content,
        "embeds": embeds,
        "components": components,
        "attachments": attachments,
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": False,
        "pinned": False,
        "tts": False,
        "timestamp": timestamp,
        "edited_timestamp": edited_timestamp,
        "flags": flags,
    }
    if webhook_id is not None:
        payload["webhook_id"] = webhook_id
    if application_id is not None:
        payload["application_id"] = application_id
    if interaction_metadata is not None:
        payload["interaction_metadata"] = interaction_metadata
    if guild_id is not None:
        payload["guild_id"] = guild_id
    return payload


def _command_option(option: dict[str, Any]) -> dict[str, Any]:
    """A synced option as Discord echoes it: nulls dropped, sub-options recursed."""
    out = {k: v for k, v in option.items() if v is not None and k != "options"}
    if option.get("type") not in (1, 2):  # subcommands and groups carry no "required"
        out.setdefault("required", False)
    if option.get("options"):
        out["options"] = [_command_option(o) for o in option["options"]]
    return out


def app_command(
    definition: dict[str, Any], *, command_id: str, app_id: str, version: str, guild_id: str | None
) -> dict[str, Any]:
    """A stored command (ApplicationCommandResponse) built from the body the bot synced."""
    perms = definition.get("default_member_permissions")
    payload: dict[str, Any] = {
        "id": command_id,
        "application_id": app_id,
        "version": version,
        "type": definition.get("type", 1),
        "name": definition["name"],
        "description": definition.get("description", ""),
        # discord.py sends an int; Discord answers with the string form.
        "default_member_permissions": None if perms is None else str(perms),
        "nsfw": bool(definition.get("nsfw", False)),
        "contexts": definition.get("contexts"),
        "integration_types": definition.get("integration_types") or [0],
    }
    if guild_id is not None:
        payload["guild_id"] = guild_id
    else:
        payload["dm_permission"] = definition.get("dm_permission", True) is not False
    if definition.get("options"):
        payload["options"] = [_command_option(o) for o in definition["options"]]
    return payload


def interaction(
    *,
    interaction_id: str,
    interaction_type: int,
    token: str,
    app_id: str,
    data: dict[str, Any],
    guild_id: str,
    channel: dict[str, Any],
    member_payload: dict[str, Any],
    app_permissions: int,
    message_payload: dict[str, Any] | None = None,
    locale: str = "en-US",
) -> dict[str, Any]:
    """INTERACTION_CREATE data; every key discord.py indexes with [...] is present."""
    payload: dict[str, Any] = {
        "id": interaction_id,
        "application_id": app_id,
        "type": interaction_type,
        "data": data,
        "guild_id": guild_id,
        "guild": {"id": guild_id, "locale": "en-US", "features": []},
        "channel_id": channel["id"],
        "channel": {**channel, "permissions": member_payload.get("permissions", "0")},
        "member": member_payload,
        "token": token,
        "version": 1,
        "app_permissions": str(app_permissions),
        "locale": locale,
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": guild_id},
        "context": 0,
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    }
    if message_payload is not None:
        payload["message"] = message_payload
    return payload
