"""Settings: read from the environment and .env, validated, frozen, and never showing the token."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from bot.logging_setup import REDACTED, RedactingFilter
from bot.settings import Secret, Settings, SettingsError

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.this-is-not-a-real-token-0123456789"
REPO = Path(__file__).resolve().parents[1]


def load(**env: str) -> Settings:
    return Settings.from_env({"DISCORD_TOKEN": TOKEN, **env}, dotenv=None)


def test_defaults_are_sensible() -> None:
    settings = load()
    assert settings.guild_ids == ()
    assert settings.device == "auto"
    assert settings.checkpoint_dir == Path("checkpoints")
    assert settings.length_tokens("long") == settings.max_new_tokens
    assert settings.length_tokens("short") < settings.length_tokens("medium") < settings.length_tokens("long")


def test_every_setting_is_parsed() -> None:
    settings = load(
        MAESTER_CHECKPOINT_DIR="/data/ckpt",
        MAESTER_GUILD_IDS="123456789012345678, 223456789012345678,",
        MAESTER_ADMIN_USER_IDS="42",
        MAESTER_ADMIN_ROLE_IDS="7,8",
        MAESTER_DEVICE="CUDA",
        MAESTER_THREADS="4",
        MAESTER_QUANTIZE="int8",
        MAESTER_DEFAULT_TEMPERATURE="0.7",
        MAESTER_TOP_P="0.9",
        MAESTER_TOP_K="40",
        MAESTER_REPETITION_PENALTY="1.2",
        MAESTER_MAX_NEW_TOKENS="200",
        MAESTER_COOLDOWN_SECONDS="5",
        MAESTER_QUEUE_SIZE="10",
        MAESTER_MAX_BATCH_SIZE="4",
        MAESTER_REQUEST_TIMEOUT="60",
        MAESTER_STREAM_EDIT_INTERVAL="1.5",
        MAESTER_SCENE_MEMORY="50",
        MAESTER_SHUTDOWN_GRACE="3",
        MAESTER_GUILD_READY_TIMEOUT="0.5",
        MAESTER_HEALTH_HOST="0.0.0.0",
        MAESTER_HEALTH_PORT="9000",
        MAESTER_LOG_LEVEL="debug",
        MAESTER_TRAINER_URL="http://trainer:8081/",
        MAESTER_TRAINER_TOKEN="trainer-secret-value",
    )
    assert settings.checkpoint_dir == Path("/data/ckpt")
    assert settings.guild_ids == (123456789012345678, 223456789012345678)
    assert settings.admin_user_ids == frozenset({42})
    assert settings.admin_role_ids == frozenset({7, 8})
    assert (settings.device, settings.threads, settings.quantize) == ("cuda", 4, "int8")
    assert (settings.default_temperature, settings.top_p, settings.top_k) == (0.7, 0.9, 40)
    assert settings.repetition_penalty == 1.2
    assert (settings.max_new_tokens, settings.cooldown_seconds) == (200, 5.0)
    assert (settings.queue_size, settings.max_batch_size, settings.request_timeout) == (10, 4, 60.0)
    assert (settings.stream_edit_interval, settings.scene_memory, settings.shutdown_grace) == (1.5, 50, 3.0)
    assert (settings.health_host, settings.health_port, settings.log_level) == ("0.0.0.0", 9000, "DEBUG")
    assert settings.trainer_url == "http://trainer:8081"
    assert settings.trainer_token.get() == "trainer-secret-value"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("MAESTER_DEVICE", "tpu", "expected one of cpu, cuda, auto"),
        ("MAESTER_THREADS", "many", "expected an integer"),
        ("MAESTER_DEFAULT_TEMPERATURE", "3", "at most 1.5"),
        ("MAESTER_DEFAULT_TEMPERATURE", "nan", "expected a number"),
        ("MAESTER_MAX_NEW_TOKENS", "0", "at least 8"),
        ("MAESTER_GUILD_IDS", "12,abc", "'abc' is not a Discord id"),
        ("MAESTER_HEALTH_PORT", "70000", "at most 65535"),
        ("MAESTER_LOG_LEVEL", "loud", "expected one of"),
        ("MAESTER_TRAINER_URL", "trainer:8081", "http:// or https://"),
        ("MAESTER_REQUEST_TIMEOUT", "0", "greater than 0"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(**{name: value})
    message = str(caught.value)
    assert message.startswith(name)
    assert fragment in message
    assert "\n" not in message


def test_a_missing_token_is_named() -> None:
    with pytest.raises(SettingsError, match=r"^DISCORD_TOKEN is not set"):
        Settings.from_env({}, dotenv=None)
    assert not Settings.from_env({}, dotenv=None, require_token=False).discord_token


def test_a_token_with_a_bot_prefix_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"DISCORD_TOKEN": f"Bot {TOKEN}"}, dotenv=None)
    assert TOKEN not in str(caught.value)


def test_a_trainer_url_needs_a_token() -> None:
    with pytest.raises(SettingsError) as caught:
        load(MAESTER_TRAINER_URL="http://trainer:8081")
    assert "MAESTER_TRAINER_TOKEN" in str(caught.value)


def test_dotenv_fills_in_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"DISCORD_TOKEN={TOKEN}\nMAESTER_QUEUE_SIZE=5\nMAESTER_THREADS=2\n")
    settings = Settings.from_env({"MAESTER_THREADS": "3"}, dotenv=dotenv)
    assert settings.discord_token.get() == TOKEN
    assert (settings.queue_size, settings.threads) == (5, 3)


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.queue_size = 3  # type: ignore[misc]


def test_the_token_never_shows_in_repr_str_or_summary() -> None:
    settings = load(MAESTER_TRAINER_URL="http://t:1", MAESTER_TRAINER_TOKEN="trainer-secret-value")
    shown = [repr(settings), str(settings), repr(settings.discord_token), f"{settings.discord_token}"]
    shown += [f"{name}={value}" for name, value in settings.summary()]
    for text in shown:
        assert TOKEN not in text
        assert "trainer-secret-value" not in text
    assert ("discord_token", "set (hidden)") in settings.summary()
    assert Secret("abc") == Secret("abc") and Secret("abc") != Secret("abd")


def test_the_redacting_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    flt = RedactingFilter([TOKEN, "short"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "login with %s failed", (TOKEN,), None)
    assert flt.filter(record)
    assert record.getMessage() == f"login with {REDACTED} failed"
    try:
        raise RuntimeError(f"header was Bot {TOKEN}")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    flt.filter(record)
    formatted = logging.Formatter().format(record)
    assert TOKEN not in formatted and REDACTED in formatted
    # Secrets too short to be tokens are ignored, so ordinary words are never redacted.
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a short message", (), None)
    flt.filter(record)
    assert record.getMessage() == "a short message"


def test_env_example_lists_every_setting_the_code_reads() -> None:
    env_example = REPO / ".env.example"
    if not env_example.is_file():
        pytest.skip(".env.example is not in this checkout yet")
    documented = set(re.findall(r"^#?\s*((?:MAESTER_|DISCORD_)[A-Z_]+)=", env_example.read_text(), re.M))
    source = (REPO / "bot" / "settings.py").read_text()
    read = set(re.findall(r'"((?:MAESTER_|DISCORD_)[A-Z_]+)"', source))
    assert read - documented == set(), "settings missing from .env.example"


def test_interaction_tokens_in_logged_urls_are_redacted():
    """discord.py's DEBUG lines carry webhook URLs; the token segment is masked, the route kept."""
    from bot.logging_setup import REDACTED, RedactingFilter

    line = "PATCH https://discord.com/api/v10/webhooks/1234/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQ/messages/@original"
    redacted = RedactingFilter([]).redact(line)
    assert "aW50ZXJhY3Rpb24" not in redacted
    assert redacted.endswith(f"/webhooks/1234/{REDACTED}/messages/@original")
    callback = "POST /api/v10/interactions/99/itoken-abcdefghijklmnopqrstuvwxyz/callback"
    assert "itoken-abc" not in RedactingFilter([]).redact(callback)


def test_placeholders_copied_from_env_example_are_refused():
    """A copied but unfilled .env stops start-up with a sentence naming the variable."""
    import pytest

    from bot.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="DISCORD_TOKEN still holds the placeholder"):
        Settings.from_env({"DISCORD_TOKEN": "replace-me-with-your-discord-bot-token"}, dotenv=None)
    with pytest.raises(SettingsError, match="MAESTER_TRAINER_TOKEN still holds the placeholder"):
        Settings.from_env(
            {"DISCORD_TOKEN": "a" * 40, "MAESTER_TRAINER_TOKEN": "replace-me-with-a-long-random-string"},
            dotenv=None,
        )
