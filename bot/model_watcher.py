"""Hot swap: notice a newly published run, load it off the event loop, smoke-test it, hand it to the engine.

The watcher polls the ``CURRENT`` pointer every few seconds. The poll is a ``stat`` of one small file
(run in a thread, like every disk access here); only when the file changed is it read. A new run id is
validated, loaded and smoke-tested on the watcher's own loader thread, so generation keeps running on
the engine's worker meanwhile, and then handed to ``engine.swap``, which lets requests already in flight
finish on the old model.

A run that fails to load or to pass its smoke test is refused: the old model keeps serving, the refusal
(run id and one-sentence reason) is remembered so the poll does not retry it in a loop, and ``notify`` is
called so the admins hear about it. ``check(force=True)`` (``/reload``) retries a refused run.
``rollback()`` (``/rollback``) goes back to the run served before, loading it before ``CURRENT`` moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import runs
from trainer.runs import InvalidRunError, RunInfo

log = logging.getLogger("maester.model_watcher")

DEFAULT_POLL_INTERVAL_S = 5.0  # a retrain takes minutes; noticing it within seconds is plenty


@dataclass(frozen=True)
class WatchResult:
    """What a check or rollback did: ``unchanged``, ``swapped``, ``refused`` or ``nothing`` (no run)."""

    outcome: str
    run_id: str | None
    message: str
    previous_run_id: str | None = None


Loader = Callable[[RunInfo], Any]  # RunInfo -> LoadedModel, blocking, raises InvalidRunError
SmokeTest = Callable[[Any], None]  # LoadedModel -> None, blocking, raises InvalidRunError
Notify = Callable[[WatchResult], Awaitable[None]]


class ModelWatcher:
    """Watches ``CURRENT`` and swaps the engine's model when it names a new, healthy run."""

    def __init__(
        self,
        checkpoint_dir: Path,
        engine: Any,
        *,
        loader: Loader,
        smoke_test: SmokeTest,
        served_run_id: str | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        notify: Notify | None = None,
    ) -> None:
        self.root = Path(checkpoint_dir)
        self.engine = engine
        self.loader = loader
        self.smoke_test = smoke_test
        self.poll_interval_s = poll_interval_s
        self.notify = notify
        # What the engine serves now; rollback and "unchanged" are judged against it.
        self.served_run_id = served_run_id if served_run_id is not None else getattr(engine, "run_id", None)
        self.served_before: list[str] = []  # run ids served earlier, most recent last (for rollback)
        self.refused: dict[str, str] = {}  # run id -> why it was refused
        self.last_result: WatchResult | None = None
        self._signature: tuple[int, int, int] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # One thread of its own: loading never waits behind generation, nor blocks the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin polling in the background."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll_forever(), name="model-watcher")

    async def stop(self) -> None:
        """Stop polling and release the loader thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a surprise must not end the watching for good
                log.exception("model watcher check failed; trying again in %.0f s", self.poll_interval_s)
            await asyncio.sleep(self.poll_interval_s)

    # --- checks ------------------------------------------------------------------------------------

    async def check(self, *, force: bool = False) -> WatchResult:
        """Swap in the run ``CURRENT`` names if it is new; ``force`` re-reads it and retries a refusal."""
        async with self._lock:
            signature = await asyncio.to_thread(_pointer_signature, self.root)
            if not force and signature == self._signature:
                return self._unchanged()
            run_id = await asyncio.to_thread(runs.current_run_id, self.root)
            self._signature = signature
            if run_id is None:
                return WatchResult("nothing", None, "Nothing has been published yet.")
            if run_id == self.served_run_id:
                return self._unchanged()
            if run_id in self.refused and not force:
                return WatchResult("refused", run_id, self.refused[run_id])
            return await self._load_and_swap(run_id)

    async def rollback(self) -> WatchResult:
        """Serve the run served before this one (loading it first), and point ``CURRENT`` back at it."""
        async with self._lock:
            target = await asyncio.to_thread(self._rollback_target)
            if target is None:
                return self._remember(WatchResult("nothing", self.served_run_id,
                                                  "There is no earlier run to roll back to."))
            result = await self._load_and_swap(target, point_current=True)
            if result.outcome == "swapped":
                # The run we came from stays on disk; it is no longer the next rollback target.
                while self.served_before and self.served_before[-1] in (target, result.previous_run_id):
                    self.served_before.pop()
            return result

    def _rollback_target(self) -> str | None:
        while self.served_before:
            candidate = self.served_before[-1]
            if candidate not in self.refused and (runs.runs_dir(self.root) / candidate).is_dir():
                return candidate
            self.served_before.pop()
        # Nothing remembered (e.g. after a restart): the newest complete run older than the served one.
        published = runs.list_runs(self.root)
        ids = [run.run_id for run in published]
        older = ids[: ids.index(self.served_run_id)] if self.served_run_id in ids else ids
        older = [run_id for run_id in older if run_id not in self.refused]
        return older[-1] if older else None

    async def _load_and_swap(self, run_id: str, *, point_current: bool = False) -> WatchResult:
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._executor, self._load_checked, run_id)
        except InvalidRunError as exc:
            return await self._refuse(run_id, str(exc))
        except Exception as exc:  # out of memory, a CUDA error, a bug: refuse rather than crash the bot
            log.exception("loading run %s failed", run_id)
            reason = f"run {run_id} could not be loaded ({type(exc).__name__}: {exc})."
            return await self._refuse(run_id, reason)
        if point_current:
            await asyncio.to_thread(runs.set_current, self.root, run_id)
            self._signature = await asyncio.to_thread(_pointer_signature, self.root)
        previous = self.served_run_id
        await self.engine.swap(loaded)
        if previous is not None:
            self.served_before.append(previous)
        self.served_run_id = run_id
        self.refused.pop(run_id, None)
        verb = "Rolled back to" if point_current else "Now serving"
        result = WatchResult("swapped", run_id, f"{verb} run {run_id} (was {previous or 'none'}).", previous)
        log.info("%s", result.message)
        await self._announce(result)
        return result

    def _load_checked(self, run_id: str) -> Any:
        """Validate, load and smoke-test a run (on the loader thread)."""
        run = runs.load_run(self.root, run_id)
        loaded = self.loader(run)
        self.smoke_test(loaded)
        return loaded

    async def _refuse(self, run_id: str, reason: str) -> WatchResult:
        self.refused[run_id] = reason
        serving = f"still serving {self.served_run_id}" if self.served_run_id else "no model is being served"
        result = WatchResult("refused", run_id, f"Refused run {run_id}: {reason} ({serving}.)")
        log.warning("%s", result.message)
        await self._announce(result)
        return result

    def _unchanged(self) -> WatchResult:
        return WatchResult("unchanged", self.served_run_id, f"Already serving {self.served_run_id}.")

    def _remember(self, result: WatchResult) -> WatchResult:
        self.last_result = result
        return result

    async def _announce(self, result: WatchResult) -> None:
        self.last_result = result
        if self.notify is None:
            return
        try:
            await self.notify(result)
        except Exception:  # telling the admins must never break serving
            log.exception("could not announce: %s", result.message)

    def status_lines(self) -> list[str]:
        """Short facts for /status: what is served and which runs were refused."""
        lines = [f"Serving run: {self.served_run_id or 'none'}"]
        for run_id, reason in list(self.refused.items())[-3:]:
            lines.append(f"Refused run {run_id}: {reason}")
        return lines


def _pointer_signature(root: Path) -> tuple[int, int, int] | None:
    """A cheap fingerprint of the CURRENT file: changes whenever it is replaced."""
    try:
        stat = os.stat(Path(root) / runs.CURRENT_NAME)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
