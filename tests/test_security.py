"""Security: secrets stay out of every log line and answer, and nothing untrusted is unpickled.

- The bot runs the production way (``python -m bot``'s ``main``: settings from the environment, its own
  logging, signal handling) against the loopback Discord and a real trainer service, serves a scene, an
  admin command and a refused one, then shuts down on SIGTERM; a second start uses a token Discord
  rejects. Every byte written to stdout/stderr, every log record before redaction, and every message the
  bot sent to Discord are searched for the bot token and the trainer token.
- The trainer service is driven with and without its token: nothing unauthenticated gets through
  (the full matrix of bad requests is in tests/test_bad_input.py) and the token is never echoed.
- The code loads weights only from safetensors and other state with ``torch.load(weights_only=True)``;
  no module imports pickle.

Covered elsewhere: admin commands fail closed (tests/test_admin_e2e.py), images run as non-root
(tests/test_deployment.py), secrets masked in settings repr and the redacting filter
(tests/test_settings.py).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakediscord import FakeDiscord, patch_discord
from tests.tiny import publish_tiny_run

REPO = Path(__file__).resolve().parents[1]
BOT_TOKEN = "MTEyMzU4MTMyMTM0NTU4OTE0NA.GsEcUr.security-bot-token-never-logged-0123456789"
WRONG_TOKEN = "MTEyMzU4MTMyMTM0NTU4OTE0NA.GwRoNg.security-wrong-token-never-logged-987654"
TRAINER_TOKEN = "security-trainer-token-never-logged-0123456789abcdef"
SECRETS = (BOT_TOKEN, WRONG_TOKEN, TRAINER_TOKEN)
RAW_LOGGERS = ("discord", "bot", "maester", "trainer", "aiohttp", "asyncio")


class Background:
    """An event loop in its own thread, serving the fake Discord and the trainer service, so the bot can
    run in the main thread exactly as ``python -m bot`` runs it (its own ``asyncio.run``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class RawRecords(logging.Handler):
    """Every record as the code emitted it, before any redacting filter runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.texts.append(f"{record.name}: {text}")


@contextlib.contextmanager
def raw_records() -> Iterator[RawRecords]:
    handler = RawRecords()
    loggers = [logging.getLogger(name) for name in RAW_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


async def _start_service(root: Path) -> tuple[web.AppRunner, str]:
    from tests.test_jobs import tiny_manager
    from trainer.service import build_app

    runner = web.AppRunner(build_app(tiny_manager(root), TRAINER_TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _bot_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeDiscord, **extra: str) -> None:
    for key in [k for k in os.environ if k.startswith("MAESTER_") or k == "DISCORD_TOKEN"]:
        monkeypatch.delenv(key)
    values = {
        "MAESTER_CHECKPOINT_DIR": str(tmp_path / "ck"), "MAESTER_GUILD_IDS": fake.guild_id,
        "MAESTER_LOG_LEVEL": "DEBUG", "MAESTER_HEALTH_PORT": "0", "MAESTER_COOLDOWN_SECONDS": "0",
        "MAESTER_MAX_NEW_TOKENS": "16", "MAESTER_DEVICE": "cpu", "MAESTER_THREADS": "1",
        "MAESTER_GUILD_READY_TIMEOUT": "0.05", "MAESTER_SHUTDOWN_GRACE": "2", **extra,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def _drive(background: Background, fake: FakeDiscord, done: threading.Event, errors: list[BaseException],
           admin: Any) -> None:
    """As users: a scene, an admin command that reaches the trainer, a refused one; then SIGTERM."""
    try:
        background.call(fake.wait_ready(60))
        background.call(fake.wait_for(lambda: bool(fake.syncs), timeout=30))
        user = fake.make_user("sam")
        scene = background.call(fake.invoke("scene", {"characters": "Jon Snow"}, user=user))
        background.call(scene.wait_done(lambda i: bool(i.original and (i.original.embeds or i.errors)), 60))
        status = background.call(fake.invoke("retrain status", user=admin, enforce_permissions=False))
        background.call(status.wait_done(timeout=30))
        refused = background.call(fake.invoke("reload", user=user, enforce_permissions=False))
        background.call(refused.wait_done(timeout=30))
    except BaseException as exc:  # reported by the test in the main thread
        errors.append(exc)
    finally:
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # the bot's own handler: graceful shutdown


def test_tokens_never_reach_logs_errors_or_discord(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """A whole bot run at DEBUG (scene, admin command via the trainer service, refusal, shutdown) and a
    start with a rejected token: neither token appears in any output, log record or Discord message."""
    from bot.__main__ import main

    publish_tiny_run(tmp_path / "ck", "tiny-run")
    background = Background()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        fake = background.call(FakeDiscord(token=BOT_TOKEN).start())
        runner, service_url = background.call(_start_service(tmp_path / "trainer"))
        admin = fake.make_user("ned", admin=True)
        _bot_env(monkeypatch, tmp_path, fake, DISCORD_TOKEN=BOT_TOKEN, MAESTER_ADMIN_USER_IDS=admin.id,
                 MAESTER_TRAINER_URL=service_url, MAESTER_TRAINER_TOKEN=TRAINER_TOKEN)
        done, errors = threading.Event(), []
        driver = threading.Thread(target=_drive, args=(background, fake, done, errors, admin))
        with raw_records() as raw, patch_discord(fake):
            driver.start()
            try:
                status = main(["--env-file", str(tmp_path / "absent.env")])
            finally:
                done.set()
                driver.join(timeout=60)
            assert not errors, errors
            assert status == 0
            requests_seen = len(fake.requests)

            # A token Discord rejects: one clear line, and the wrong token is not shown either.
            monkeypatch.setenv("DISCORD_TOKEN", WRONG_TOKEN)
            assert main(["--env-file", str(tmp_path / "absent.env")]) == 2
        out, err = capfd.readouterr()
        background.call(runner.cleanup())
        background.call(fake.close())
    finally:
        signal.signal(signal.SIGTERM, previous)
        background.close()

    assert "Discord rejected the token" in err.strip().splitlines()[-1]
    # The run was real and logged: requests went to Discord, commands synced, the admin action audited.
    assert requests_seen >= 6 and "synced" in err and "/retrain status" in err, err[-3000:]
    sent = [str(r.body) for r in fake.requests if r.body is not None]
    for secret in SECRETS:
        assert secret not in out and secret not in err, "a token reached stdout/stderr"
        leaked = [text for text in raw.texts if secret in text]
        assert not leaked, f"a log record carried a token before redaction: {leaked[:2]}"
        assert not any(secret in body for body in sent), "a token was sent to Discord in a message"


async def test_the_trainer_service_lets_no_unauthenticated_call_through(tmp_path: Path) -> None:
    """Every route but /healthz answers 401 without the right bearer token, and never echoes a token."""
    _runner, url = await _start_service(tmp_path)
    routes = [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/x"), ("POST", "/jobs/x/cancel"),
              ("POST", "/jobs/x/resume"), ("GET", "/jobs/x/events"), ("DELETE", "/jobs"), ("GET", "/nope")]
    wrong = [{}, {"Authorization": "Bearer " + TRAINER_TOKEN[:-1]}, {"Authorization": TRAINER_TOKEN},
             {"Authorization": f"Bearer {TRAINER_TOKEN} extra"}, {"X-Maester-Token": TRAINER_TOKEN}]
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in routes:
                for headers in wrong:
                    request = http.request(method, url + path, headers=headers, json={"steps": 1})
                    async with request as response:
                        body = await response.text()
                        assert response.status == 401, (method, path, headers, body)
                        assert TRAINER_TOKEN not in body
            async with http.get(url + "/healthz") as response:
                assert response.status == 200 and TRAINER_TOKEN not in await response.text()
            async with http.get(url + "/jobs", headers={"Authorization": f"Bearer {TRAINER_TOKEN}"}) as ok:
                assert ok.status == 200
    finally:
        await _runner.cleanup()


# --------------------------------------------------------------------------------------------------
# What the code loads, read from its source


def _sources() -> list[Path]:
    return sorted(p for folder in ("trainer", "bot", "benchmarks") for p in (REPO / folder).rglob("*.py"))


def _calls(name: str) -> Iterator[tuple[Path, ast.Call]]:
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    yield path, node


def _where(path: Path, call: ast.Call) -> str:
    return f"{path.relative_to(REPO)}:{call.lineno}"


def _keyword_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def test_every_torch_load_is_weights_only() -> None:
    """Resume state is read with torch.load(weights_only=True) only; nothing else calls torch.load."""
    loads = list(_calls("load"))
    torch_loads = [(p, c) for p, c in loads if isinstance(c.func, ast.Attribute)
                   and isinstance(c.func.value, ast.Name) and c.func.value.id == "torch"]
    assert torch_loads, "the resume code should read its state with torch.load"
    unsafe = [_where(p, c) for p, c in torch_loads if not _keyword_true(c, "weights_only")]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_no_module_uses_pickle() -> None:
    """No pickle, dill, joblib or marshal anywhere in the product code."""
    banned = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n in banned]
    assert not found, found


def test_the_bot_loads_model_weights_only_from_safetensors() -> None:
    """Every model the bot loads is read with use_safetensors=True (a pickled .bin is never opened)."""
    calls = [(p, c) for p, c in _calls("from_pretrained") if "bot" in p.parts
             and isinstance(c.func, ast.Attribute) and "Model" in ast.unparse(c.func.value)]
    assert calls
    unsafe = [_where(p, c) for p, c in calls if not _keyword_true(c, "use_safetensors")]
    assert not unsafe, unsafe


def test_the_trainer_loads_model_weights_only_from_safetensors() -> None:
    """The trainer's starting model (a Hub name or a local directory) is read from safetensors only."""
    calls = [(p, c) for p, c in _calls("from_pretrained") if "trainer" in p.parts
             and isinstance(c.func, ast.Attribute) and "Model" in ast.unparse(c.func.value)]
    assert calls
    unsafe = [_where(p, c) for p, c in calls if not _keyword_true(c, "use_safetensors")]
    assert not unsafe, unsafe
