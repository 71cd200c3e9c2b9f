"""The trainer control service over real HTTP: auth, validation, a tiny job end to end, cancel, restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import trainer.service as service_module
from bot.trainer_client import LocalTrainerClient, ServiceTrainerClient, TrainerError
from tests.test_jobs import tiny_env, tiny_manager, tiny_train_args, write_tiny_corpus
from trainer import runs
from trainer.jobs import JobParams
from trainer.service import MAX_BODY_BYTES, build_app

TOKEN = "s3cret-test-token-value"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def service(tmp_path: Path):
    """The service app on 127.0.0.1 with a tiny-model job manager, plus a raw client."""
    app = build_app(tiny_manager(tmp_path / "ck"), TOKEN)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def trainer_client(client: TestClient) -> ServiceTrainerClient:
    """The bot's client for the service under test."""
    return ServiceTrainerClient(str(client.make_url("")), TOKEN)


async def test_healthz_needs_no_token(service: TestClient) -> None:
    """Liveness is open; everything else is not."""
    response = await service.get("/healthz")
    assert response.status == 200 and (await response.json())["ok"] is True


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({}, "needs an 'Authorization: Bearer"), ({"Authorization": "Bearer nope"}, "token is wrong"),
     ({"Authorization": f"Basic {TOKEN}"}, "needs an 'Authorization: Bearer")],
)
async def test_a_missing_or_wrong_token_gets_401(service: TestClient, headers: dict, fragment: str) -> None:
    """No job can be listed or started without the right bearer token."""
    for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/x/events")):
        response = await service.request(method, path, headers=headers, json={"steps": 1})
        assert response.status == 401
        assert fragment in (await response.json())["error"]
    assert (await service.get("/jobs", headers=AUTH)).status == 200


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"steps": "many"}', 400, "steps must be a whole number"),
        (b'{"steps": -3}', 400, "steps must be between"),
        (b'{"learning_rate": 5}', 400, "learning_rate must be greater than 0 and at most 1"),
        (b'{"init": "llama"}', 400, "init must be one of current, gpt2, scratch"),
        (b'{"steps": 5, "color": "red"}', 400, "Unknown field 'color'"),
        (b'[1, 2]', 400, "must be a JSON object"),
        (b'{"corpus": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}', 413, "larger than"),
    ],
)
async def test_bad_parameters_get_a_sentence(
    service: TestClient, body: bytes, status: int, fragment: str
) -> None:
    """Malformed, mistyped, out-of-range, unknown and oversized bodies are refused; no job starts."""
    response = await service.post("/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == status
    assert fragment in (await response.json())["error"]
    assert (await (await service.get("/jobs", headers=AUTH)).json())["jobs"] == []


async def test_unknown_jobs_are_404(service: TestClient) -> None:
    """Every job endpoint answers 404 with a sentence for an unknown id."""
    for method, path in (("GET", "/jobs/nope"), ("POST", "/jobs/nope/cancel"), ("POST", "/jobs/nope/resume"),
                         ("GET", "/jobs/nope/events")):
        response = await service.request(method, path, headers=AUTH)
        assert response.status == 404 and "no job 'nope'" in (await response.json())["error"]


async def test_a_job_runs_streams_progress_and_publishes(
    service: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """POST /jobs starts the real trainer; the event stream carries progress until the run is published."""
    caplog.set_level(logging.DEBUG)
    corpus = write_tiny_corpus(tmp_path / "corpus.csv")
    client = trainer_client(service)
    try:
        job = await client.start(JobParams(steps=15, init="scratch", corpus=(str(corpus),)),
                                 requested_by="admin#1")
        assert job.state == "running" and job.requested_by == "admin#1"
        updates = [update async for update in client.follow(job.id)]
        final = updates[-1]
        assert final.state == "succeeded", final.error
        assert len({u.step for u in updates}) > 2, "the stream should carry intermediate progress"
        assert final.step == final.total_steps == 15 and final.loss is not None
        assert final.val_ppl_before and final.val_ppl_after and final.tokens_per_s
        assert final.published_run_id == runs.current_run_id(tmp_path / "ck")
        assert (await client.get(job.id)).state == "succeeded"
        assert [j.id for j in await client.history()] == [job.id]
        again = [u async for u in client.follow(job.id)]  # following a finished job ends at once
        assert len(again) == 1 and again[0].state == "succeeded"
    finally:
        await client.close()
    assert TOKEN not in caplog.text


async def test_one_job_at_a_time_and_cancel(
    service: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second job while one runs gets 409 with a message; the event stream keeps an idle connection
    alive without ending; cancel stops the job and ends the stream."""
    monkeypatch.setattr(service_module, "SSE_KEEPALIVE_S", 0.05)
    corpus = str(write_tiny_corpus(tmp_path / "corpus.csv"))
    client = trainer_client(service)
    try:
        job = await client.start(JobParams(steps=100_000, init="scratch", corpus=(corpus,)))
        response = await service.post("/jobs", json={"steps": 5}, headers=AUTH)
        assert response.status == 409 and "already running" in (await response.json())["error"]
        with pytest.raises(TrainerError) as refused:
            await client.start(JobParams(steps=5))
        assert refused.value.status == 409
        stream = await service.get(f"/jobs/{job.id}/events", headers=AUTH)
        assert stream.headers["Content-Type"] == "text/event-stream"
        lines = []
        while not any(line.startswith("data:") and '"step": 0' not in line for line in lines):
            assert not stream.content.at_eof(), f"the stream ended while the job ran: {lines}"
            lines.append((await stream.content.readline()).decode().strip())  # trainer start-up is silent
        assert ": keepalive" in lines and "event: job" in lines
        cancelled = await client.cancel(job.id)
        assert cancelled.state == "cancelled" and 1 <= cancelled.step < 100_000
        assert job.pid is not None
        with pytest.raises(ProcessLookupError):  # SIGTERM went to the trainer's whole process group
            os.killpg(job.pid, 0)
        rest = (await stream.content.read()).decode()
        assert '"state": "cancelled"' in rest and rest.endswith("event: end\ndata: {}\n\n")
        response = await service.post(f"/jobs/{job.id}/cancel", headers=AUTH)
        assert response.status == 409 and "already finished" in (await response.json())["error"]
        assert (await (await service.get("/healthz")).json())["busy"] is False
    finally:
        await client.close()


async def test_the_local_runner_behaves_like_the_service(tmp_path: Path) -> None:
    """Without a trainer URL the bot runs the trainer itself, through the same interface."""
    corpus = str(write_tiny_corpus(tmp_path / "corpus.csv"))
    client = LocalTrainerClient(tmp_path / "ck", extra_train_args=tiny_train_args(), env=tiny_env(),
                                poll_interval_s=0.05)
    try:
        job = await client.start(JobParams(steps=12, init="scratch", corpus=(corpus,)), requested_by="ned")
        with pytest.raises(TrainerError) as busy:
            await client.start(JobParams(steps=5, init="scratch", corpus=(corpus,)))
        assert busy.value.status == 409 and "already running" in str(busy.value)
        updates = [update async for update in client.follow(job.id)]
        assert updates[-1].state == "succeeded" and updates[-1].step == 12
        assert updates[-1].published_run_id == runs.current_run_id(tmp_path / "ck")
        assert runs.load_run(tmp_path / "ck", job.run_id).manifest.steps == 12
        assert client.manager.log_path(job.id).is_file()  # the trainer's output is kept per job
        assert [j.id for j in await client.history()] == [job.id]
        with pytest.raises(TrainerError) as missing:
            await client.get("nope")
        assert missing.value.status == 404
    finally:
        await client.close()


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    """Without MAESTER_TRAINER_TOKEN the service only binds to loopback."""
    env = {k: v for k, v in os.environ.items() if k != "MAESTER_TRAINER_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "serve", "--host", "0.0.0.0", "--checkpoint-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: Set MAESTER_TRAINER_TOKEN") and "Traceback" not in result.stderr


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_service(root: Path, port: int) -> subprocess.Popen:
    env = {**tiny_env(), "MAESTER_TRAINER_TOKEN": TOKEN,
           "MAESTER_SERVICE_TRAIN_ARGS": " ".join(tiny_train_args(checkpoint_every=10, eval_every=100))}
    log = open(root.parent / f"service-{port}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", "serve", "--port", str(port), "--checkpoint-dir", str(root),
         "--cancel-grace", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )


async def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert process.poll() is None, "the service exited during start-up"
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the service did not become healthy")


@pytest.mark.slow
async def test_a_job_cut_off_by_a_service_restart_is_interrupted_and_resumes(tmp_path: Path) -> None:
    """Kill -9 the service mid-job: after a restart the job is interrupted, its trainer stopped, and
    POST /jobs/{id}/resume finishes it from the last checkpoint."""
    root = tmp_path / "ck"
    corpus = str(write_tiny_corpus(tmp_path / "corpus.csv"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    client = ServiceTrainerClient(url, TOKEN)
    service = _start_service(root, port)
    trainer_pid = None
    try:
        await _wait_healthy(url, service)
        job = await client.start(JobParams(steps=400, init="scratch", corpus=(corpus,)))
        async for update in client.follow(job.id):
            if (update.last_checkpoint_step or 0) >= 10 and update.pid:
                # Freeze the trainer at once (a tiny job on an idle machine is over in seconds), so it
                # is certainly still there when the new service starts.
                trainer_pid = update.pid
                os.killpg(trainer_pid, signal.SIGSTOP)
                break
        running = await client.get(job.id)
        assert running.state == "running" and running.pid == trainer_pid
        # Kill the service the hard way: it gets no chance to record anything.
        service.kill()
        service.wait(timeout=30)
        await client.close()

        service = _start_service(root, port)
        await _wait_healthy(url, service)
        client = ServiceTrainerClient(url, TOKEN)
        interrupted = await client.get(job.id)
        assert interrupted.state == "interrupted" and "resume" in (interrupted.error or "")
        assert not _running(trainer_pid), "the new service should have stopped the orphaned trainer"

        resumed = await client.resume(job.id)
        assert resumed.state == "running" and resumed.attempts == 2
        final = [u async for u in client.follow(job.id)][-1]
        assert final.state == "succeeded", final.error
        assert final.step == 400 and runs.current_run_id(root) == job.run_id
    finally:
        await client.close()
        if trainer_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(trainer_pid, signal.SIGKILL)
        service.terminate()
        service.wait(timeout=30)


def test_serve_refuses_the_placeholder_token(tmp_path, monkeypatch, capsys) -> None:
    """`serve` with .env.example's placeholder token stops with one sentence instead of serving."""
    from trainer.cli import main

    monkeypatch.setenv("MAESTER_TRAINER_TOKEN", "replace-me-with-a-long-random-string")
    status = main(["serve", "--checkpoint-dir", str(tmp_path), "--port", "1"])
    assert status == 2
    assert "MAESTER_TRAINER_TOKEN still holds the placeholder" in capsys.readouterr().err
