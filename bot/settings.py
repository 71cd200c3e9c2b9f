"""The bot's settings: read from the environment and ``.env`` into one typed, validated, frozen object.

Every setting is an environment variable (``DISCORD_TOKEN`` and ``MAESTER_*``); a ``.env`` file in the
working directory supplies values the environment lacks. A wrong or missing value raises
:class:`SettingsError` with one sentence naming the variable, which ``python -m bot`` prints before
exiting non-zero. Secrets are wrapped in :class:`Secret`, whose repr and str are masked, so printing the
settings (or an exception that holds them) never shows the token.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from trainer.envargs import is_placeholder
from trainer.errors import UserError

T = TypeVar("T")

DEVICES = ("cpu", "cuda", "auto")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LENGTHS = ("short", "medium", "long")


class SettingsError(UserError):
    """A setting that is missing or has an invalid value; the message names it."""


class Secret:
    """A string that never shows itself in repr/str; read it with :meth:`get`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret value itself; pass it straight to the API that needs it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything the bot is configured with. Build it with :meth:`from_env`."""

    discord_token: Secret
    checkpoint_dir: Path
    # Where the bot keeps its own small state (which commands it last synced). None: the checkpoint
    # directory. Set it when the checkpoints are mounted read-only, as in docker compose.
    state_dir: Path | None = None
    guild_ids: tuple[int, ...] = ()  # empty: sync commands globally (can take up to an hour to show)
    admin_user_ids: frozenset[int] = frozenset()
    admin_role_ids: frozenset[int] = frozenset()
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    quantize: str = "none"  # passed to the model loader (e.g. dynamic int8 on CPU)
    # Generation defaults and limits.
    default_temperature: float = 0.8  # lively but mostly coherent for GPT-2 dialogue
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.1  # GPT-2 small loops without a little penalty
    max_new_tokens: int = 300  # "long" scenes; "medium" is half of it, "short" a quarter
    cooldown_seconds: float = 20.0  # per user, between accepted /scene requests
    queue_size: int = 32  # requests waiting beyond it get "busy, try again"
    max_batch_size: int = 8
    request_timeout: float = 120.0  # seconds a single generation may take
    # Discord presentation.
    stream_edit_interval: float = 1.0  # seconds between streamed edits (Discord allows ~5 edits / 5 s)
    progress_edit_interval: float = 5.0  # seconds between /retrain progress edits; a retrain takes minutes
    model_poll_interval: float = 5.0  # seconds between checks of CURRENT for a newly published run
    scene_memory: int = 500  # scenes remembered for Regenerate/Continue buttons
    shutdown_grace: float = 20.0  # seconds in-flight scenes get to finish on shutdown
    guild_ready_timeout: float = 2.0  # discord.py's wait for guilds before on_ready
    # Health endpoints.
    health_host: str = "127.0.0.1"
    health_port: int = 8080  # 0 picks a free port (tests)
    log_level: str = "INFO"
    # Remote trainer control API (used by /retrain); empty URL: run the trainer locally.
    trainer_url: str = ""
    trainer_token: Secret = field(default_factory=lambda: Secret(""))

    def length_tokens(self, length: str) -> int:
        """The max_new_tokens for a /scene length choice."""
        divisor = {"short": 4, "medium": 2, "long": 1}[length]
        return max(8, self.max_new_tokens // divisor)

    def secrets(self) -> list[str]:
        """Secret values to redact from logs."""
        return [s.get() for s in (self.discord_token, self.trainer_token) if s]

    def summary(self) -> list[tuple[str, str]]:
        """(name, value) pairs for display, secrets masked."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                shown = "set (hidden)" if value else "not set"
            elif isinstance(value, tuple | frozenset):
                shown = ", ".join(str(v) for v in sorted(value)) or "(none)"
            else:
                shown = str(value)
            rows.append((f.name, shown))
        return rows

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        dotenv: Path | str | None = ".env",
        require_token: bool = True,
    ) -> Settings:
        """Read and validate settings; ``environ`` defaults to ``os.environ``, overriding ``.env``."""
        values: dict[str, str] = {}
        if dotenv is not None and Path(dotenv).is_file():
            from dotenv import dotenv_values

            values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return _parse(values, require_token=require_token)


def _parse(env: Mapping[str, str], *, require_token: bool) -> Settings:
    reader = _Reader(env)
    token = reader.get("DISCORD_TOKEN", str, "")
    if require_token and not token:
        raise SettingsError("DISCORD_TOKEN is not set; put your bot token in the environment or in .env.")
    if token and (any(c.isspace() for c in token) or token.lower().startswith("bot ")):
        raise SettingsError("DISCORD_TOKEN must be the bare token, without spaces or a 'Bot ' prefix.")
    if require_token and is_placeholder(token):
        raise SettingsError("DISCORD_TOKEN still holds the placeholder from .env.example; put your bot's "
                            "token there (Discord Developer Portal > your application > Bot > Reset Token).")
    if is_placeholder(reader.get("MAESTER_TRAINER_TOKEN", str, "")):
        raise SettingsError("MAESTER_TRAINER_TOKEN still holds the placeholder from .env.example; set it to "
                            "the same long random string as the trainer service's.")
    positive_float = _bounded(float, low=0.0, low_open=True)
    settings = Settings(
        discord_token=Secret(token),
        checkpoint_dir=Path(reader.get("MAESTER_CHECKPOINT_DIR", str, "checkpoints")),
        state_dir=reader.get("MAESTER_STATE_DIR", Path, None),
        guild_ids=tuple(reader.get("MAESTER_GUILD_IDS", _id_list, ())),
        admin_user_ids=frozenset(reader.get("MAESTER_ADMIN_USER_IDS", _id_list, ())),
        admin_role_ids=frozenset(reader.get("MAESTER_ADMIN_ROLE_IDS", _id_list, ())),
        device=reader.get("MAESTER_DEVICE", _choice(DEVICES), "auto"),
        threads=reader.get("MAESTER_THREADS", _bounded(int, low=0, high=256), 0),
        quantize=reader.get("MAESTER_QUANTIZE", _choice(("none", "int8")), "none"),
        default_temperature=reader.get("MAESTER_DEFAULT_TEMPERATURE", _bounded(float, 0.1, 1.5), 0.8),
        top_p=reader.get("MAESTER_TOP_P", _bounded(float, 0.0, 1.0, low_open=True), 0.95),
        top_k=reader.get("MAESTER_TOP_K", _bounded(int, 0, 1000), 50),
        repetition_penalty=reader.get("MAESTER_REPETITION_PENALTY", _bounded(float, 1.0, 2.0), 1.1),
        max_new_tokens=reader.get("MAESTER_MAX_NEW_TOKENS", _bounded(int, 8, 1000), 300),
        cooldown_seconds=reader.get("MAESTER_COOLDOWN_SECONDS", _bounded(float, 0.0, 3600.0), 20.0),
        queue_size=reader.get("MAESTER_QUEUE_SIZE", _bounded(int, 1, 10_000), 32),
        max_batch_size=reader.get("MAESTER_MAX_BATCH_SIZE", _bounded(int, 1, 256), 8),
        request_timeout=reader.get("MAESTER_REQUEST_TIMEOUT", positive_float, 120.0),
        stream_edit_interval=reader.get("MAESTER_STREAM_EDIT_INTERVAL", _bounded(float, 0.05, 60.0), 1.0),
        progress_edit_interval=reader.get(
            "MAESTER_PROGRESS_EDIT_INTERVAL", _bounded(float, 0.05, 600.0), 5.0
        ),
        model_poll_interval=reader.get("MAESTER_MODEL_POLL_INTERVAL", _bounded(float, 0.05, 3600.0), 5.0),
        scene_memory=reader.get("MAESTER_SCENE_MEMORY", _bounded(int, 1, 100_000), 500),
        shutdown_grace=reader.get("MAESTER_SHUTDOWN_GRACE", _bounded(float, 0.0, 600.0), 20.0),
        guild_ready_timeout=reader.get("MAESTER_GUILD_READY_TIMEOUT", _bounded(float, 0.0, 60.0), 2.0),
        health_host=reader.get("MAESTER_HEALTH_HOST", _nonempty, "127.0.0.1"),
        health_port=reader.get("MAESTER_HEALTH_PORT", _bounded(int, 0, 65535), 8080),
        log_level=reader.get("MAESTER_LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "INFO"),
        trainer_url=reader.get("MAESTER_TRAINER_URL", _url, ""),
        trainer_token=Secret(reader.get("MAESTER_TRAINER_TOKEN", str, "")),
    )
    if settings.trainer_url and not settings.trainer_token:
        raise SettingsError("MAESTER_TRAINER_TOKEN must be set when MAESTER_TRAINER_URL is.")
    return settings


class _Reader:
    """Reads one variable at a time and turns a parse failure into a sentence naming it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, parse: Callable[[str], T], default: Any) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            # The value is shown except for anything that might be secret.
            shown = "" if "TOKEN" in name else f"={raw.strip()!r}"
            raise SettingsError(f"{name}{shown} is invalid: {exc}.") from None


def _bounded(
    kind: Callable[[str], Any], low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if kind is float and value != value:  # NaN passes every comparison below
            raise ValueError("expected a number")
        if low is not None and (value <= low if low_open else value < low):
            raise ValueError(f"must be {'greater than' if low_open else 'at least'} {low}")
        if high is not None and value > high:
            raise ValueError(f"must be at most {high}")
        return value

    return parse


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _id_list(raw: str) -> tuple[int, ...]:
    ids = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) < 2**64:
            raise ValueError(f"{part!r} is not a Discord id (a number like 123456789012345678)")
        ids.append(int(part))
    return tuple(dict.fromkeys(ids))


def _nonempty(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")
