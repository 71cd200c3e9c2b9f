"""How the bot runs training: one interface, two implementations.

- :class:`ServiceTrainerClient` talks to ``python -m trainer serve`` over HTTP (the compose setup, where
  the trainer has its own GPU container), following progress through its server-sent events stream.
- :class:`LocalTrainerClient` runs the trainer as a child process of the bot, through the same
  :class:`trainer.jobs.JobManager` the service uses, so progress, cancel and history behave identically.

:func:`make_trainer_client` picks one from the settings: a trainer URL means the service.
Both report jobs as :class:`trainer.jobs.Job` and refuse requests with :class:`TrainerError`, whose
message is one sentence fit to show an admin.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from trainer.jobs import Job, JobError, JobManager, JobParams

log = logging.getLogger("maester.trainer_client")

REQUEST_TIMEOUT_S = 30.0
FOLLOW_RETRY_S = 2.0  # wait before reconnecting a dropped event stream
FOLLOW_MAX_FAILURES = 5  # consecutive failed reconnects before giving up


class TrainerError(Exception):
    """The trainer refused a request or cannot be reached; the message is one sentence."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TrainerClient(Protocol):
    """What /retrain needs from a trainer, wherever it runs."""

    async def start(self, params: JobParams, *, requested_by: str | None = None) -> Job:
        """Start a job; TrainerError (status 409) when one is already running."""
        ...

    async def get(self, job_id: str) -> Job:
        """One job's current state."""
        ...

    async def history(self) -> list[Job]:
        """Every job, newest first."""
        ...

    async def cancel(self, job_id: str, *, requested_by: str | None = None) -> Job:
        """Stop a running job."""
        ...

    async def resume(self, job_id: str, *, requested_by: str | None = None) -> Job:
        """Restart an interrupted, failed or cancelled job from its last checkpoint."""
        ...

    def follow(self, job_id: str) -> AsyncIterator[Job]:
        """The job after every change, ending once it has finished."""
        ...

    async def close(self) -> None:
        """Release connections (the local runner also stops a running job, leaving it resumable)."""
        ...


async def latest_job(client: TrainerClient) -> Job | None:
    """The newest job (running or not), or None when nothing ever ran."""
    jobs = await client.history()
    return jobs[0] if jobs else None


class ServiceTrainerClient:
    """A client for the trainer control service (``python -m trainer serve``)."""

    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the token
        return f"ServiceTrainerClient({self.base_url!r})"

    def _headers(self, requested_by: str | None = None) -> dict[str, str]:
        headers = {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if requested_by:
            headers["X-Maester-Requested-By"] = requested_by
        return headers

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _request(self, method: str, path: str, *, body: Any = None,
                       requested_by: str | None = None) -> Any:
        url = self.base_url + path
        try:
            async with self._http().request(
                method, url, json=body, headers=self._headers(requested_by), timeout=self._timeout
            ) as response:
                text = await response.text()
                data = _json_or_none(text)
                if response.status >= 400:
                    message = data.get("error") if isinstance(data, dict) else None
                    raise TrainerError(message or f"The trainer service answered {response.status}.",
                                       response.status)
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TrainerError(
                f"The trainer service at {self.base_url} is unreachable ({_why(exc)})."
            ) from exc

    async def start(self, params: JobParams, *, requested_by: str | None = None) -> Job:
        """POST /jobs."""
        return Job.from_json(await self._request("POST", "/jobs", body=params.to_json(),
                                                 requested_by=requested_by))

    async def get(self, job_id: str) -> Job:
        """GET /jobs/{id}."""
        return Job.from_json(await self._request("GET", f"/jobs/{job_id}"))

    async def history(self) -> list[Job]:
        """GET /jobs."""
        data = await self._request("GET", "/jobs")
        return [Job.from_json(item) for item in data["jobs"]]

    async def cancel(self, job_id: str, *, requested_by: str | None = None) -> Job:
        """POST /jobs/{id}/cancel."""
        return Job.from_json(await self._request("POST", f"/jobs/{job_id}/cancel", requested_by=requested_by))

    async def resume(self, job_id: str, *, requested_by: str | None = None) -> Job:
        """POST /jobs/{id}/resume."""
        return Job.from_json(await self._request("POST", f"/jobs/{job_id}/resume", requested_by=requested_by))

    async def follow(self, job_id: str) -> AsyncIterator[Job]:
        """Follow GET /jobs/{id}/events, reconnecting when the stream drops, until the job finishes."""
        failures = 0
        while True:
            try:
                async for job in self._events(job_id):
                    failures = 0
                    yield job
                    if job.finished:
                        return
                job = await self.get(job_id)  # stream ended early: the current state decides
                if job.finished:
                    yield job
                    return
            except (aiohttp.ClientError, TimeoutError, TrainerError) as exc:
                if isinstance(exc, TrainerError) and exc.status is not None:
                    raise
                failures += 1
                if failures > FOLLOW_MAX_FAILURES:
                    raise TrainerError(f"Lost the trainer service's progress stream ({_why(exc)}).") from exc
                log.warning("progress stream for job %s dropped (%s); reconnecting", job_id, _why(exc))
            await asyncio.sleep(FOLLOW_RETRY_S)

    async def _events(self, job_id: str) -> AsyncIterator[Job]:
        """Parse one server-sent events connection into jobs."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total, sock_read=60)
        async with self._http().get(f"{self.base_url}/jobs/{job_id}/events", headers=self._headers(),
                                    timeout=timeout) as response:
            if response.status >= 400:
                data = _json_or_none(await response.text())
                message = data.get("error") if isinstance(data, dict) else None
                raise TrainerError(message or f"The trainer service answered {response.status}.",
                                   response.status)
            event, data_lines = "message", []
            async for raw in response.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    continue  # keepalive comment
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data_lines.append(line[5:].lstrip())
                elif line == "":
                    if event == "end":
                        return
                    if event == "job" and data_lines:
                        yield Job.from_json(json.loads("\n".join(data_lines)))
                    event, data_lines = "message", []

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


class LocalTrainerClient:
    """Runs the trainer as a child process of the bot, with the service's job manager."""

    def __init__(self, checkpoint_dir: Path, **manager_options: Any) -> None:
        self.manager = JobManager(Path(checkpoint_dir), **manager_options)
        self._opened = False
        self._open_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"LocalTrainerClient({str(self.manager.root)!r})"

    async def _ready(self) -> JobManager:
        async with self._open_lock:
            if not self._opened:
                await self.manager.open()
                self._opened = True
        return self.manager

    async def start(self, params: JobParams, *, requested_by: str | None = None) -> Job:
        """Start a trainer subprocess."""
        manager = await self._ready()
        return await _guarded(manager.start(params, requested_by=requested_by))

    async def get(self, job_id: str) -> Job:
        """One job."""
        manager = await self._ready()
        try:
            return manager.get(job_id)
        except JobError as exc:
            raise TrainerError(str(exc), exc.status) from exc

    async def history(self) -> list[Job]:
        """Every job, newest first."""
        return (await self._ready()).history()

    async def cancel(self, job_id: str, *, requested_by: str | None = None) -> Job:
        """SIGTERM, then SIGKILL, the trainer subprocess."""
        manager = await self._ready()
        return await _guarded(manager.cancel(job_id))

    async def resume(self, job_id: str, *, requested_by: str | None = None) -> Job:
        """Restart from the last checkpoint."""
        manager = await self._ready()
        return await _guarded(manager.resume(job_id, requested_by=requested_by))

    async def follow(self, job_id: str) -> AsyncIterator[Job]:
        """The job after every change."""
        await self.get(job_id)  # TrainerError for an unknown job
        async for job in self.manager.watch(job_id):
            yield job

    async def close(self) -> None:
        """Stop a running trainer (it stays resumable) and save the history."""
        if self._opened:
            await self.manager.close()


async def _guarded(call: Awaitable[Job]) -> Job:
    """Await a job manager call, turning its refusals into TrainerError."""
    try:
        return await call
    except JobError as exc:
        raise TrainerError(str(exc), exc.status) from exc


def make_trainer_client(settings: Any) -> TrainerClient:
    """The service client when ``settings.trainer_url`` is set, else the local subprocess runner."""
    url = getattr(settings, "trainer_url", None)
    if url:
        token = getattr(settings, "trainer_token", None)
        if token is not None and hasattr(token, "get"):
            token = token.get()  # a settings Secret
        return ServiceTrainerClient(str(url), token or None)
    return LocalTrainerClient(Path(settings.checkpoint_dir))


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
