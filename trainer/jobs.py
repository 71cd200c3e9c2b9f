"""Training jobs: what a job asks for, its persisted history, and the subprocess that runs it.

A job runs ``python -m trainer train`` as a child process in its own process group, so a crash or an
out-of-memory kill of training never takes its parent (the control service, or the bot's local runner)
down. The child's stdout and stderr go to ``<checkpoint-dir>/jobs/<job-id>/train.log``; progress is read
by tailing ``<checkpoint-dir>/work/<run-id>/metrics.jsonl``, the JSON lines the trainer writes.

Job history lives in ``<checkpoint-dir>/jobs/jobs.json``, replaced atomically on every change. When a
manager starts, a job still marked running (its parent stopped without finishing it) is marked
``interrupted``; :meth:`JobManager.resume` restarts it with ``train --resume`` from its last checkpoint.

One job runs at a time. Cancelling sends SIGTERM to the job's process group, then SIGKILL after a grace
period. A child killed by a signal nobody asked for (the OOM killer, an operator) is ``interrupted`` too,
so it can be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer import runs

log = logging.getLogger("maester.jobs")

JOBS_DIR = "jobs"
HISTORY_NAME = "jobs.json"
LOG_NAME = "train.log"
METRICS_NAME = "metrics.jsonl"

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE_STATES = frozenset({"queued", "running"})
RESUMABLE_STATES = frozenset({"interrupted", "failed", "cancelled"})
INITS = ("current", "gpt2", "scratch")

MAX_STEPS = 10_000_000
MAX_EPOCHS = 1000.0
MAX_LEARNING_RATE = 1.0
MAX_CORPUS_PATHS = 64
MAX_HISTORY = 200  # oldest finished jobs beyond this are dropped from jobs.json


class JobError(Exception):
    """A request the job manager refuses; its message is one sentence for the user."""

    status = 400


class BadJobParams(JobError):
    """Job parameters that are malformed or out of range."""

    status = 400


class JobNotFound(JobError):
    """No job with that id."""

    status = 404


class JobConflict(JobError):
    """The request clashes with the current state: a job is already running, or this one cannot do that."""

    status = 409


@dataclass(frozen=True)
class JobParams:
    """What a training job asks for; every field is optional and falls back to the trainer's default."""

    steps: int | None = None  # optimizer steps; mutually exclusive with epochs
    epochs: float | None = None  # passes over the training split
    learning_rate: float | None = None
    init: str = "current"  # current: continue the served run; gpt2: fresh pretrained GPT-2; scratch
    corpus: tuple[str, ...] = ()  # corpus files or folders on the trainer's machine

    @classmethod
    def from_json(cls, data: Any) -> JobParams:
        """Validate a decoded JSON body, raising :class:`BadJobParams` with one sentence."""
        if not isinstance(data, dict):
            raise BadJobParams("The request body must be a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadJobParams(
                f"Unknown field {unknown[0]!r}; allowed fields are {', '.join(sorted(known))}."
            )
        steps = _optional_int(data.get("steps"), "steps", 1, MAX_STEPS)
        epochs = _optional_number(data.get("epochs"), "epochs", MAX_EPOCHS)
        if steps is not None and epochs is not None:
            raise BadJobParams("Give either steps or epochs, not both.")
        learning_rate = _optional_number(data.get("learning_rate"), "learning_rate", MAX_LEARNING_RATE)
        init = data.get("init", "current")
        if init not in INITS:
            raise BadJobParams(f"init must be one of {', '.join(INITS)}, not {init!r}.")
        corpus = data.get("corpus", ())
        if isinstance(corpus, str):
            corpus = [corpus]
        if not isinstance(corpus, list | tuple) or not all(isinstance(p, str) and p for p in corpus):
            raise BadJobParams("corpus must be a path or a list of paths (non-empty strings).")
        if len(corpus) > MAX_CORPUS_PATHS:
            raise BadJobParams(f"corpus may list at most {MAX_CORPUS_PATHS} paths.")
        return cls(steps=steps, epochs=epochs, learning_rate=learning_rate, init=init, corpus=tuple(corpus))

    def to_json(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict (only the fields that were given)."""
        data: dict[str, Any] = {"init": self.init}
        for name in ("steps", "epochs", "learning_rate"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.corpus:
            data["corpus"] = list(self.corpus)
        return data

    def train_args(self) -> list[str]:
        """The ``python -m trainer train`` flags these parameters translate to."""
        args: list[str] = []
        if self.steps is not None:
            args += ["--steps", str(self.steps)]
        if self.epochs is not None:
            args += ["--epochs", repr(self.epochs)]
        if self.learning_rate is not None:
            args += ["--lr", repr(self.learning_rate)]
        if self.init == "gpt2":
            args += ["--init", "pretrained", "--model", "gpt2"]
        else:
            args += ["--init", self.init]
        if self.corpus:
            args += ["--corpus", *self.corpus]
        return args


def _optional_int(value: Any, name: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadJobParams(f"{name} must be a whole number.")
    if not low <= value <= high:
        raise BadJobParams(f"{name} must be between {low} and {high}, not {value}.")
    return value


def _optional_number(value: Any, name: str, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadJobParams(f"{name} must be a number.")
    if not math.isfinite(value) or not 0 < value <= high:
        raise BadJobParams(f"{name} must be greater than 0 and at most {high:g}, not {value}.")
    return float(value)


@dataclass
class Job:
    """One training job and the latest progress its trainer reported."""

    id: str
    params: JobParams
    run_id: str
    state: str = "queued"
    created_at: str = field(default_factory=lambda: _now())
    started_at: str | None = None
    finished_at: str | None = None
    requested_by: str | None = None  # free text from the client, for the audit trail
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    val_loss: float | None = None
    val_ppl: float | None = None
    val_ppl_before: float | None = None
    val_ppl_after: float | None = None
    published_run_id: str | None = None
    last_checkpoint_step: int | None = None
    early_stopped: bool = False
    error: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    pid: int | None = None

    @property
    def finished(self) -> bool:
        """True once the job will make no more progress on its own."""
        return self.state not in ACTIVE_STATES

    def to_json(self) -> dict[str, Any]:
        """The job as a JSON-ready dict."""
        data = asdict(self)
        data["params"] = self.params.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        """Rebuild a job from :meth:`to_json` output (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        kwargs = {key: value for key, value in data.items() if key in known}
        kwargs["params"] = JobParams.from_json(dict(data.get("params") or {}))
        return cls(**kwargs)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A sortable, unique run id for a new training run."""
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def apply_event(job: Job, event: Mapping[str, Any]) -> None:
    """Fold one metrics.jsonl event into the job's progress fields."""
    kind = event.get("event")
    if kind == "start":
        job.total_steps = _int_or(event.get("total_steps"), job.total_steps)
    elif kind == "step":
        job.step = _int_or(event.get("step"), job.step)
        job.total_steps = _int_or(event.get("total_steps"), job.total_steps)
        job.loss = _float_or(event.get("loss"), job.loss)
        job.learning_rate = _float_or(event.get("lr"), job.learning_rate)
        job.tokens_per_s = _float_or(event.get("tokens_per_s"), job.tokens_per_s)
        job.eta_s = _float_or(event.get("eta_s"), job.eta_s)
        job.elapsed_s = _float_or(event.get("elapsed_s"), job.elapsed_s)
    elif kind == "eval":
        job.val_loss = _float_or(event.get("val_loss"), job.val_loss)
        job.val_ppl = _float_or(event.get("val_ppl"), job.val_ppl)
        if job.val_ppl_before is None and _int_or(event.get("step"), None) == 0:
            job.val_ppl_before = job.val_ppl
    elif kind == "checkpoint":
        job.last_checkpoint_step = _int_or(event.get("step"), job.last_checkpoint_step)
    elif kind == "early_stop":
        job.early_stopped = True
    elif kind == "published":
        job.published_run_id = str(event.get("run_id") or job.run_id)
        job.val_ppl_before = _float_or(event.get("val_ppl_before"), job.val_ppl_before)
        job.val_ppl_after = _float_or(event.get("val_ppl_after"), job.val_ppl_after)
    elif kind == "error":
        message = event.get("message") or event.get("error")
        if message:
            job.error = str(message)


def _int_or(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float_or(value: Any, default: float | None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


class MetricsTail:
    """Reads the complete lines appended to a metrics.jsonl file since the last read."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read_new(self) -> list[dict[str, Any]]:
        """New events since the last call; a half-written last line waits for the next call."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # rewritten from scratch: read it again
            self.offset = 0
        if size == self.offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events = []
        for line in chunk[: end + 1].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a garbled line must not stop progress reporting
            if isinstance(event, dict):
                events.append(event)
        return events


class JobStore:
    """The persisted job history: one JSON file, replaced atomically."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / JOBS_DIR
        self.path = self.dir / HISTORY_NAME

    def load(self) -> list[Job]:
        """Every job on record, oldest first; an unreadable history is set aside, not fatal."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [Job.from_json(item) for item in data["jobs"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError, JobError) as exc:
            broken = self.path.with_suffix(".broken")
            os.replace(self.path, broken)
            log.error("job history %s was unreadable (%s); moved it to %s", self.path, exc, broken)
            return []

    def save(self, jobs: Sequence[Job]) -> None:
        """Write the history atomically (temp file, fsync, rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"jobs": [job.to_json() for job in jobs]}, indent=1) + "\n"
        tmp = self.path.with_name(f".{HISTORY_NAME}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        runs.fsync_dir(self.dir)

    def log_path(self, job_id: str) -> Path:
        """Where a job's trainer output is kept."""
        return self.dir / job_id / LOG_NAME


class JobManager:
    """Starts, tracks, cancels and resumes training jobs, one at a time, on the running event loop."""

    def __init__(
        self,
        checkpoint_dir: Path,
        *,
        extra_train_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cancel_grace_s: float = 10.0,
        poll_interval_s: float = 0.5,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(checkpoint_dir)
        self.store = JobStore(self.root)
        self.extra_train_args = list(extra_train_args)
        self.env = dict(env) if env is not None else None
        self.cancel_grace_s = cancel_grace_s
        self.poll_interval_s = poll_interval_s
        self.python = python
        self._jobs: dict[str, Job] = {}
        self._active: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._cancel_requested = False
        self._changed = asyncio.Condition()
        self._save_lock = asyncio.Lock()
        self._closed = False

    async def open(self) -> None:
        """Load the history; a job left running by a previous parent becomes ``interrupted``."""
        jobs = await asyncio.to_thread(self.store.load)
        stale = [job for job in jobs if job.state in ACTIVE_STATES]
        for job in stale:
            await asyncio.to_thread(_stop_orphan, job, self.cancel_grace_s)
            job.state = "interrupted"
            job.error = "The trainer service stopped while this job was running; resume it to continue."
            job.finished_at = job.finished_at or _now()
            job.pid = None
        self._jobs = {job.id: job for job in jobs}
        if stale:
            await self._save()

    async def close(self) -> None:
        """Stop a running job (it becomes ``interrupted``, resumable later) and save the history."""
        self._closed = True
        if self._active is not None and self._process is not None:
            job = self._jobs[self._active]
            await self._terminate(self._process)
            if self._monitor is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._monitor
            if job.state != "succeeded":
                job.state = "interrupted"
                job.error = "The trainer service stopped while this job was running; resume it to continue."
            await self._notify()

    # --- queries -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """A copy of one job, or :class:`JobNotFound`."""
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"There is no job {job_id!r}.")
        return replace(job)

    def history(self) -> list[Job]:
        """Copies of every job, newest first."""
        return [replace(job) for job in reversed(self._jobs.values())]

    def active(self) -> Job | None:
        """A copy of the queued or running job, if any."""
        return replace(self._jobs[self._active]) if self._active else None

    def log_path(self, job_id: str) -> Path:
        """Where a job's trainer output is kept."""
        return self.store.log_path(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """Yield the job now and after every change, ending after it reaches a final state."""
        last: dict[str, Any] | None = None
        while True:
            async with self._changed:
                job = self.get(job_id)
                snapshot = job.to_json()
                if snapshot == last:
                    await self._changed.wait()
                    continue
            last = snapshot
            yield job
            if job.finished:
                return

    # --- commands ------------------------------------------------------------------------------

    async def start(self, params: JobParams, *, requested_by: str | None = None) -> Job:
        """Start a new job, or raise :class:`JobConflict` when one is already queued or running."""
        self._refuse_if_busy()
        job = Job(id=secrets.token_hex(6), params=params, run_id=new_run_id(), requested_by=requested_by)
        self._jobs[job.id] = job
        self._trim_history()
        await self._launch(job, resume=False)
        return self.get(job.id)

    async def resume(self, job_id: str, *, requested_by: str | None = None) -> Job:
        """Restart an interrupted, failed or cancelled job from its last checkpoint."""
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"There is no job {job_id!r}.")
        if job.state not in RESUMABLE_STATES:
            raise JobConflict(f"Job {job_id} is {job.state}; only an interrupted, failed or cancelled job "
                              "can be resumed.")
        self._refuse_if_busy()
        job.state = "queued"
        job.error = None
        job.finished_at = None
        job.exit_code = None
        if requested_by:
            job.requested_by = requested_by
        await self._launch(job, resume=True)
        return self.get(job.id)

    async def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job: SIGTERM, then SIGKILL after the grace period."""
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"There is no job {job_id!r}.")
        if job.finished:
            raise JobConflict(f"Job {job_id} already finished ({job.state}).")
        self._cancel_requested = True
        process = self._process
        if process is not None and process.returncode is None:
            await self._terminate(process)
        if self._monitor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._monitor)
        return self.get(job_id)

    # --- internals -----------------------------------------------------------------------------

    def _refuse_if_busy(self) -> None:
        if self._closed:
            raise JobConflict("The trainer is shutting down.")
        if self._active is not None:
            busy = self._jobs[self._active]
            raise JobConflict(
                f"Job {busy.id} is already {busy.state} (step {busy.step}/{busy.total_steps or '?'}); "
                "cancel it or wait for it to finish."
            )

    def _trim_history(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[: max(0, len(self._jobs) - MAX_HISTORY)]:
            del self._jobs[job_id]

    def command(self, job: Job, *, resume: bool) -> list[str]:
        """The trainer command line for a job."""
        cmd = [self.python, "-m", "trainer", "train", "--checkpoint-dir", str(self.root),
               "--run-id", job.run_id, "--no-progress",  # a progress bar would only bloat the log
               *job.params.train_args(), *self.extra_train_args]
        if resume:
            cmd.append("--resume")
        return cmd

    async def _launch(self, job: Job, *, resume: bool) -> None:
        self._active = job.id
        self._cancel_requested = False
        await self._notify()
        metrics = self.root / runs.WORK_DIR / job.run_id / METRICS_NAME
        # A resumed run appends to its metrics file: only what it writes from now on is news.
        offset = await asyncio.to_thread(_size_or_zero, metrics) if resume else 0
        try:
            log_file = await asyncio.to_thread(_open_log, self.store.log_path(job.id))
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.command(job, resume=resume),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # own process group: cancel kills the whole tree
                    env=self.child_env(),
                )
            finally:
                log_file.close()  # the child has its own copy of the descriptor
        except Exception as exc:  # whatever went wrong, the manager must not stay "busy" forever
            job.state = "failed"
            job.error = f"Could not start the trainer: {exc}."
            job.finished_at = _now()
            self._active = None
            await self._notify()
            return
        self._process = process
        if self._cancel_requested:  # cancelled while it was being started
            asyncio.get_running_loop().create_task(self._terminate(process))
        job.state = "running"
        job.pid = process.pid
        job.attempts += 1
        job.started_at = job.started_at or _now()
        log.info("job %s started (run %s, pid %d, attempt %d)", job.id, job.run_id, process.pid, job.attempts)
        await self._notify()
        self._monitor = asyncio.create_task(self._follow(job, process, MetricsTail(metrics, offset)))

    def child_env(self) -> dict[str, str]:
        """The trainer's environment: ours (or the one given), minus secrets it has no use for."""
        env = dict(os.environ if self.env is None else self.env)
        for secret in ("MAESTER_TRAINER_TOKEN", "DISCORD_TOKEN"):  # the trainer needs neither secret
            env.pop(secret, None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def _follow(self, job: Job, process: asyncio.subprocess.Process, tail: MetricsTail) -> None:
        """Fold metrics into the job until the trainer exits, then record how it ended."""
        wait = asyncio.ensure_future(process.wait())
        last_save = asyncio.get_running_loop().time()
        try:
            while True:
                done, _ = await asyncio.wait({wait}, timeout=self.poll_interval_s)
                events = await asyncio.to_thread(tail.read_new)
                for event in events:
                    apply_event(job, event)
                if events:
                    # Persist progress now and then, so an interrupted job still shows how far it got.
                    now = asyncio.get_running_loop().time()
                    save = now - last_save >= 5.0 or any(e.get("event") == "checkpoint" for e in events)
                    last_save = now if save else last_save
                    await self._notify(save=save)
                if done:
                    break
            failed_line = None
            if process.returncode and process.returncode > 0:  # the trainer's last words say why
                failed_line = await asyncio.to_thread(self._last_log_line, job)
            self._finish(job, process.returncode, failed_line)
        finally:
            if not wait.done():
                wait.cancel()
            self._process = None
            self._active = None
            job.pid = None
            await self._notify()

    def _finish(self, job: Job, code: int | None, failed_line: str | None = None) -> None:
        job.exit_code = code
        job.finished_at = _now()
        if self._cancel_requested:
            job.state = "cancelled"
            job.error = None
        elif code == 0:
            job.state = "succeeded"
            job.error = None
        elif code is not None and code < 0:
            name = _signal_name(-code)
            job.state = "interrupted"
            job.error = (f"The trainer was killed by {name}"
                         f"{' (out of memory?)' if -code == signal.SIGKILL else ''}; resume it to continue.")
        else:
            job.state = "failed"
            job.error = job.error or failed_line or f"The trainer exited with status {code}."
        log.info("job %s %s (exit %s)", job.id, job.state, code)

    def _last_log_line(self, job: Job) -> str | None:
        try:
            with open(self.store.log_path(job.id), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 4096))
                lines = handle.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return None
        return lines[-1].strip()[:500] if lines else None

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, then SIGKILL it if it outlives the grace period."""
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), self.cancel_grace_s)
        except TimeoutError:
            log.warning("trainer pid %d ignored SIGTERM for %.0f s; killing it", process.pid,
                        self.cancel_grace_s)
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        # Children the trainer left behind (data loader workers) share its group: make sure they go too.
        _signal_group(process.pid, signal.SIGKILL)

    async def _notify(self, *, save: bool = True) -> None:
        async with self._changed:
            self._changed.notify_all()
        if save:
            await self._save()

    async def _save(self) -> None:
        async with self._save_lock:
            jobs = [replace(job) for job in self._jobs.values()]
            await asyncio.to_thread(self.store.save, jobs)


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_log(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # handed to the child process; the caller closes its copy


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stop_orphan(job: Job, grace_s: float) -> None:
    """Stop a trainer a previous parent left running, so a resume never races it for the same files."""
    import time

    if job.pid is None or not _is_our_trainer(job.pid, job.run_id):
        return
    log.warning("job %s: stopping trainer pid %d left running by a previous service", job.id, job.pid)
    _signal_group(job.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _is_our_trainer(job.pid, job.run_id):
        time.sleep(0.1)
    _signal_group(job.pid, signal.SIGKILL)


def _is_our_trainer(pid: int, run_id: str) -> bool:
    """True when ``pid`` is alive and is the trainer for ``run_id`` (guards against a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return run_id.encode() in cmdline and b"trainer" in cmdline
