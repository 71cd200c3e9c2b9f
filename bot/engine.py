"""The generation engine: one worker thread owns the model and serves every request in shared batches.

How a request flows:

- :meth:`Engine.submit` (on the event loop) validates the settings, puts the request in a bounded queue
  and returns a :class:`GenerationHandle` at once. Nothing blocking runs on the loop: tokenizing,
  the model and decoding all happen on the worker thread.
- The worker runs continuous batching with its own decode loop over the model and a KV cache it manages:
  before every step, waiting requests are prefilled (left padded, with an attention mask and per-row
  position ids) and their cache rows are joined to the running batch; finished requests leave it at
  once. Each request keeps its own sampling settings, seeded generator, token cap, timeout and context
  limit, so seeded requests give the same text alone or batched.
- Text goes back to the loop with ``loop.call_soon_threadsafe`` as whole lines: a scene is dialogue,
  and a line is only final once it has ended (an unfinished last line is dropped when a request stops
  for length), so the streamed deltas always add up to exactly the final text.
- Generation stops at the end of the scene: the end-of-text token, or the start of a new scene header.
- :meth:`Engine.swap` changes the model between batches: requests already generating finish on the old
  model, later ones are served by the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch

from bot.model_loader import LoadedModel
from bot.sampling import RequestSampler, SamplingParams, new_seed, sample_next
from trainer.runs import Manifest
from trainer.scene_format import cut_at_scene_end, drop_unfinished_line

__all__ = [
    "Engine",
    "EngineClosedError",
    "EngineStats",
    "GenerationHandle",
    "GenerationResult",
    "QueueFullError",
    "SamplingParams",
]

log = logging.getLogger(__name__)

FINISH_REASONS = ("scene_end", "eos", "length", "context", "timeout", "cancelled")
_IDLE_POLL_S = 0.05  # how often an idle worker checks queued requests for timeouts
_RECENT = 256  # completed requests kept for latency percentiles
_RATE_WINDOW_S = 30.0  # window of the recent aggregate tokens/s figure
_PROMPT_CHAR_LIMIT_PER_TOKEN = 16  # a prompt longer than this many chars per context token is refused early


@dataclass(frozen=True)
class GenerationResult:
    """A finished request: its text (the scene continuation, cut at the scene's end) and how it ended."""

    text: str
    new_tokens: int
    finish_reason: str  # one of FINISH_REASONS
    seconds: float  # from submit to finish, queueing included
    run_id: str
    seed: int


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load and recent performance."""

    queue_depth: int
    active: int
    completed: int
    p50_latency_s: float | None
    p95_latency_s: float | None
    tokens_per_s: float
    uptime_s: float
    run_id: str
    peak_batch_size: int = 0  # the most requests that have generated together


class QueueFullError(Exception):
    """The queue is full; try again after ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"the generation queue is full; try again in about {math.ceil(retry_after_s)} s.")


class EngineClosedError(Exception):
    """The engine is not running (not started yet, or stopping)."""


class _Request:
    """One request's state, shared by the loop (submit, cancel) and the worker (everything else)."""

    def __init__(self, request_id: int, prompt: str, params: SamplingParams, seed: int, timeout_s: float,
                 handle: GenerationHandle) -> None:
        self.id = request_id
        self.prompt = prompt
        self.params = params
        self.seed = seed
        self.handle = handle
        self.submitted = time.monotonic()
        self.deadline = self.submitted + timeout_s
        self.cancelled = False  # set on the loop, read by the worker: a bool write is atomic
        # Worker-only state, set when the request joins a batch.
        self.admitted = 0.0
        self.prompt_len = 0
        self.tokens: list[int] = []
        self.sampler: RequestSampler | None = None
        self.model: LoadedModel | None = None
        self.emitted = ""  # text streamed so far
        self.first_token_at: float | None = None


class GenerationHandle:
    """What :meth:`Engine.submit` returns: the request's place in line, its text stream and result."""

    def __init__(self, engine: Engine, request_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self._engine = engine
        self._deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self._future: asyncio.Future[GenerationResult] = loop.create_future()
        self.first_token_s: float | None = None  # seconds from submit to the first generated token

    def position(self) -> int:
        """0 while generating (or done), k > 0 while k-th in line."""
        return self._engine._position(self.request_id)

    async def stream(self) -> AsyncIterator[str]:
        """Text deltas as they are generated, whole lines at a time; they add up to the final text.

        Meant for one reader: deltas already read are not replayed.
        """
        while True:
            delta = await self._deltas.get()
            if delta is None:
                self._deltas.put_nowait(None)  # so a second reader (or a late one) ends too
                break
            yield delta
        if self._future.done() and not self._future.cancelled() and self._future.exception() is not None:
            raise self._future.exception()  # type: ignore[misc]

    async def result(self) -> GenerationResult:
        """The finished request (ValueError when the prompt cannot fit the model's context)."""
        return await asyncio.shield(self._future)

    def done(self) -> bool:
        """Whether the request has finished."""
        return self._future.done()

    def cancel(self) -> None:
        """Stop the request: it finishes with ``finish_reason == "cancelled"`` and the text so far."""
        self._engine._cancel(self.request_id)

    # Called on the loop thread only (through call_soon_threadsafe from the worker).
    def _push(self, delta: str) -> None:
        self._deltas.put_nowait(delta)

    def _finish(self, outcome: GenerationResult | BaseException) -> None:
        if self._future.done():
            return
        if isinstance(outcome, BaseException):
            self._future.set_exception(outcome)
        else:
            self._future.set_result(outcome)
        self._deltas.put_nowait(None)


class Engine:
    """Batched, streaming text generation from one model, owned by one worker thread."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_size: int = 8,
        max_queue: int = 32,
        request_timeout_s: float = 120.0,
        max_new_tokens_cap: int = 400,
        threads: int | None = None,
    ) -> None:
        if min(max_batch_size, max_queue, max_new_tokens_cap) < 1 or request_timeout_s <= 0:
            raise ValueError("batch size, queue size and token cap must be >= 1, and the timeout > 0.")
        self._model = model
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.max_new_tokens_cap = max_new_tokens_cap
        self.threads = threads
        self._lock = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._active: dict[int, _Request] = {}
        self._swaps: deque[tuple[LoadedModel, asyncio.Future[None]]] = deque()
        self._next_id = 1
        self._closed = False  # no new requests (stopping or stopped)
        self._abort = False  # the worker cancels everything left and exits
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started_at = time.monotonic()
        self._completed = 0
        self._latencies: deque[float] = deque(maxlen=_RECENT)
        self._service_times: deque[float] = deque(maxlen=_RECENT)
        self._token_log: deque[tuple[float, int]] = deque()  # (time, tokens) per decode step
        self._peak_batch = 0

    # ----- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread; requests may be submitted from this event loop afterwards."""
        if self._thread is not None:
            raise RuntimeError("the engine is already started.")
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._worker, name="maester-engine", daemon=True)
        self._thread.start()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new requests, give queued and running ones ``drain_timeout_s`` to end, cancel the rest."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is None:
            return
        deadline = time.monotonic() + max(0.0, drain_timeout_s)
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and not self._active:
                    break
            await asyncio.sleep(0.02)
        with self._lock:
            self._abort = True
            self._lock.notify_all()
        await asyncio.to_thread(self._thread.join)

    # ----- requests --------------------------------------------------------------------------------------

    def submit(self, prompt: str, params: SamplingParams) -> GenerationHandle:
        """Queue a request; QueueFullError when the queue is full, EngineClosedError when not running."""
        loop = self._require_loop()
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty.")
        if len(prompt) > self._model.context_length * _PROMPT_CHAR_LIMIT_PER_TOKEN:
            raise ValueError(f"the prompt is too long ({len(prompt)} characters) for the model's context.")
        params.validate()
        if params.max_new_tokens > self.max_new_tokens_cap:
            params = _replace(params, max_new_tokens=self.max_new_tokens_cap)
        seed = params.seed if params.seed is not None else new_seed()
        with self._lock:
            if self._closed:
                raise EngineClosedError("the generation engine is stopping and takes no new requests.")
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(self._estimated_wait_locked())
            request_id = self._next_id
            self._next_id += 1
            handle = GenerationHandle(self, request_id, loop)
            self._queue.append(_Request(request_id, prompt, params, seed, self.request_timeout_s, handle))
            self._lock.notify_all()
        return handle

    async def swap(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next batch on; returns once it is in use."""
        if self._thread is None or not self._thread.is_alive():
            self._model = model
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._abort:
                raise EngineClosedError("the generation engine has stopped.")
            self._swaps.append((model, future))
            self._lock.notify_all()
        await future

    @property
    def run_id(self) -> str:
        """The run being served (the new one once a swap has completed)."""
        return self._model.run_id

    @property
    def manifest(self) -> Manifest:
        """The manifest of the run being served."""
        return self._model.manifest

    @property
    def model(self) -> LoadedModel:
        """The loaded model being served."""
        return self._model

    def stats(self) -> EngineStats:
        """Queue depth, active requests, latency percentiles, recent aggregate tokens/s, uptime."""
        now = time.monotonic()
        with self._lock:
            latencies = sorted(self._latencies)
            self._trim_token_log(now)
            tokens = sum(count for _, count in self._token_log)
            uptime = now - self._started_at
            window = min(_RATE_WINDOW_S, uptime) or 1.0
            return EngineStats(
                queue_depth=len(self._queue),
                active=len(self._active),
                completed=self._completed,
                p50_latency_s=_percentile(latencies, 0.50),
                p95_latency_s=_percentile(latencies, 0.95),
                tokens_per_s=tokens / window,
                uptime_s=uptime,
                run_id=self._model.run_id,
                peak_batch_size=self._peak_batch,
            )

    def estimated_wait_s(self) -> float:
        """A rough wait before a request submitted now would start generating."""
        with self._lock:
            return self._estimated_wait_locked()

    # ----- loop-side helpers -----------------------------------------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._thread is None:
            raise EngineClosedError("the generation engine has not been started.")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise RuntimeError("Engine.submit must be called on the event loop that started the engine.")
        return self._loop

    def _position(self, request_id: int) -> int:
        with self._lock:
            for index, request in enumerate(self._queue):
                if request.id == request_id:
                    return index + 1
            return 0

    def _cancel(self, request_id: int) -> None:
        with self._lock:
            for request in self._queue:
                if request.id == request_id:
                    self._queue.remove(request)
                    self._record_locked(request, 0)
                    break
            else:
                request = self._active.get(request_id)
                if request is not None:
                    request.cancelled = True  # the worker finishes it after the current step
                return
        # Still in line: it never started, so it finishes here, on the loop, with no text.
        request.handle._finish(self._result(request, "", "cancelled"))

    def _estimated_wait_locked(self) -> float:
        if self._service_times:
            per_request = statistics.fmean(self._service_times)
        else:
            per_request = self.max_new_tokens_cap / 20.0  # a guess of 20 tokens/s until we have figures
        busy = len(self._active) >= self.max_batch_size
        waves = len(self._queue) / self.max_batch_size + (1 if busy else 0)
        return max(0.0, waves * per_request)

    def _trim_token_log(self, now: float) -> None:
        while self._token_log and self._token_log[0][0] < now - _RATE_WINDOW_S:
            self._token_log.popleft()

    def _result(self, request: _Request, text: str, reason: str) -> GenerationResult:
        model = request.model or self._model
        return GenerationResult(
            text=text,
            new_tokens=len(request.tokens),
            finish_reason=reason,
            seconds=time.monotonic() - request.submitted,
            run_id=model.run_id,
            seed=request.seed,
        )

    def _record_locked(self, request: _Request, tokens: int) -> None:
        self._completed += 1
        self._latencies.append(time.monotonic() - request.submitted)
        if tokens and request.admitted:
            self._service_times.append(time.monotonic() - request.admitted)

    # ----- worker thread ---------------------------------------------------------------------------------

    def _post(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread; a closed loop has nobody left to tell."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _worker(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        batch = _Batch()
        with torch.inference_mode():
            while True:
                with self._lock:
                    self._expire_queued_locked()
                    if self._abort:
                        break
                    if self._swaps and not batch.requests:
                        model, future = self._swaps.popleft()
                        self._model = model
                        self._post(_resolve, future)
                        log.info("now serving run %s", model.run_id)
                        continue
                    admitted: list[_Request] = []
                    if not self._swaps:  # a pending swap waits for the running batch to drain
                        room = self.max_batch_size - len(batch.requests)
                        while self._queue and room > 0:
                            request = self._queue.popleft()
                            self._active[request.id] = request
                            admitted.append(request)
                            room -= 1
                    if not admitted and not batch.requests:
                        self._lock.wait(_IDLE_POLL_S)
                        continue
                    model = self._model
                try:
                    if admitted:
                        self._admit(batch, admitted, model)
                    if batch.requests:
                        self._decode_step(batch)
                except Exception as exc:  # a model failure must not kill the worker: fail the batch instead
                    log.exception("generation step failed")
                    error = RuntimeError(f"generation failed: {exc}")
                    involved = {r.id: r for r in [*batch.requests, *admitted]}
                    for request in involved.values():
                        self._fail(request, error)
                    batch = _Batch()
            self._shutdown(batch)

    def _expire_queued_locked(self) -> None:
        now = time.monotonic()
        for request in [r for r in self._queue if r.deadline <= now]:
            self._queue.remove(request)
            self._record_locked(request, 0)
            self._post(request.handle._finish, self._result(request, "", "timeout"))

    def _shutdown(self, batch: _Batch) -> None:
        with self._lock:
            leftovers = list(self._queue)
            self._queue.clear()
            swaps = list(self._swaps)
            self._swaps.clear()
        for request in leftovers:
            self._finish(request, "cancelled")
        for request in list(batch.requests):
            self._finish(request, "cancelled")
        for _, future in swaps:
            self._post(_reject, future, EngineClosedError("the generation engine stopped before the swap."))

    def _admit(self, batch: _Batch, requests: list[_Request], model: LoadedModel) -> None:
        """Tokenize and prefill new requests, sample their first token, and join them to the batch."""
        ready: list[_Request] = []
        encoded: list[list[int]] = []
        for request in requests:
            request.model = model
            request.admitted = time.monotonic()
            budget = model.context_length - min(request.params.max_new_tokens, model.context_length // 4)
            try:
                ids = encode_prompt(model.tokenizer, request.prompt, max(1, budget))
            except ValueError as exc:
                self._fail(request, exc)
                continue
            request.prompt_len = len(ids)
            request.sampler = RequestSampler(
                request.params,
                request.seed,
                vocab_size=_vocab_size(model),
                context_ids=ids,
                device=model.device,
            )
            ready.append(request)
            encoded.append(ids)
        if not ready:
            return
        if batch.requests and batch.model is not model:
            raise RuntimeError("a batch cannot mix two models.")
        pad_id = model.tokenizer.eos_token_id
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(ready), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ready), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        input_ids = input_ids.to(model.device)
        mask = mask.to(model.device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = _new_cache()
        logits = _forward(model, input_ids, mask, positions, cache)
        batch.join(model, ready, cache, mask)
        self._consume(batch, ready, logits)

    def _decode_step(self, batch: _Batch) -> None:
        """Feed every request its last token, sample the next one, and let finished requests leave."""
        model = batch.model
        assert model is not None
        requests = batch.requests
        input_ids = torch.tensor([[r.tokens[-1]] for r in requests], dtype=torch.long, device=model.device)
        positions = torch.tensor(
            [[r.prompt_len + len(r.tokens) - 1] for r in requests], dtype=torch.long, device=model.device
        )
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(requests), 1))], dim=1)
        logits = _forward(model, input_ids, batch.mask, positions, batch.cache)
        self._consume(batch, list(requests), logits)

    def _consume(self, batch: _Batch, requests: list[_Request], logits: torch.Tensor) -> None:
        """Sample a token for each of ``requests`` (rows of ``logits``), stream text, retire finished ones."""
        samplers = [r.sampler for r in requests]
        tokens = sample_next(logits, samplers)  # type: ignore[arg-type]
        now = time.monotonic()
        finished: list[tuple[_Request, str]] = []
        for request, token in zip(requests, tokens, strict=True):
            reason = self._advance(request, token, now)
            if reason is not None:
                finished.append((request, reason))
        with self._lock:
            self._token_log.append((now, len(requests)))
            self._peak_batch = max(self._peak_batch, len(batch.requests))
            self._trim_token_log(now)
        if finished:
            batch.leave([r.id for r, _ in finished])
            for request, reason in finished:
                self._finish(request, reason)

    def _advance(self, request: _Request, token: int, now: float) -> str | None:
        """Add one token to a request; return why it stops, or None to go on."""
        model = request.model
        assert model is not None and request.sampler is not None
        if request.first_token_at is None:
            request.first_token_at = now
            self._post(setattr, request.handle, "first_token_s", now - request.submitted)
        if token == model.tokenizer.eos_token_id:
            return "eos"
        request.tokens.append(token)
        request.sampler.observe(token)
        text, ended = cut_at_scene_end(self._decode(request))
        if ended:
            return "scene_end"
        # Stream whole lines only: they are final, whatever happens next.
        complete = text[: text.rfind("\n") + 1]
        if len(complete) > len(request.emitted):
            self._emit(request, complete)
        if len(request.tokens) >= request.params.max_new_tokens:
            return "length"
        if request.prompt_len + len(request.tokens) >= model.context_length:
            return "context"
        if request.cancelled:
            return "cancelled"
        if now >= request.deadline:
            return "timeout"
        return None

    def _decode(self, request: _Request) -> str:
        assert request.model is not None
        text = request.model.tokenizer.decode(request.tokens, skip_special_tokens=False)
        # A multi-byte character whose bytes are not all generated yet decodes as U+FFFD: wait for the rest.
        return text.rstrip("\ufffd")

    def _emit(self, request: _Request, text: str) -> None:
        delta = text[len(request.emitted):]
        request.emitted = text
        if delta:
            self._post(request.handle._push, delta)

    def _finish(self, request: _Request, reason: str) -> None:
        """Send a request's last delta and result, and record it in the stats."""
        text = self._decode(request) if request.model is not None else ""
        if reason in ("eos", "scene_end"):
            text, _ = cut_at_scene_end(text)
        else:
            text = drop_unfinished_line(cut_at_scene_end(text)[0])
        if not text.startswith(request.emitted):  # cannot happen: only complete lines are streamed
            text = request.emitted
        self._emit(request, text)
        with self._lock:
            self._active.pop(request.id, None)
            self._record_locked(request, len(request.tokens))
        self._post(request.handle._finish, self._result(request, text, reason))

    def _fail(self, request: _Request, error: BaseException) -> None:
        with self._lock:
            self._active.pop(request.id, None)
            self._completed += 1
        self._post(request.handle._finish, error)


class _Batch:
    """The requests generating together: one KV cache with a row each, left padded, and its attention mask."""

    def __init__(self) -> None:
        self.requests: list[_Request] = []
        self.model: LoadedModel | None = None
        self.cache: Any = None
        self.mask: torch.Tensor = torch.zeros((0, 0), dtype=torch.long)

    def join(self, model: LoadedModel, requests: list[_Request], cache: Any, mask: torch.Tensor) -> None:
        """Append prefilled rows, padding the shorter of the two caches on the left."""
        if not self.requests:
            self.requests, self.model, self.cache, self.mask = list(requests), model, cache, mask
            return
        old_layers, new_layers = _cache_layers(self.cache), _cache_layers(cache)
        width = max(self.mask.shape[1], mask.shape[1])
        layers = []
        for (old_k, old_v), (new_k, new_v) in zip(old_layers, new_layers, strict=True):
            keys = torch.cat([_pad_left(old_k, width), _pad_left(new_k, width)], dim=0)
            values = torch.cat([_pad_left(old_v, width), _pad_left(new_v, width)], dim=0)
            layers.append((keys, values))
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(mask, width)], dim=0)
        self.cache = _make_cache(layers)
        self.requests.extend(requests)

    def leave(self, request_ids: list[int]) -> None:
        """Drop finished rows, then the columns of padding no remaining row needs."""
        gone = set(request_ids)
        keep = [i for i, r in enumerate(self.requests) if r.id not in gone]
        self.requests = [self.requests[i] for i in keep]
        if not self.requests:
            self.cache, self.mask = None, torch.zeros((0, 0), dtype=torch.long)
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0].item()) if used.numel() else 0
        self.mask = mask[:, start:]
        layers = [
            (k.index_select(0, index)[:, :, start:, :], v.index_select(0, index)[:, :, start:, :])
            for k, v in _cache_layers(self.cache)
        ]
        self.cache = _make_cache(layers)


def encode_prompt(tokenizer: Any, prompt: str, budget: int) -> list[int]:
    """Token ids of ``prompt`` within ``budget`` tokens: whole lines after the header are dropped from the
    front until it fits (the header and the last line are kept); ValueError when even that is too long."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if len(ids) <= budget:
        return ids
    header, separator, body = prompt.partition("\n\n")
    lines = body.splitlines(keepends=True) if separator else []
    while len(lines) > 1:
        lines.pop(0)
        ids = tokenizer.encode(header + separator + "".join(lines), add_special_tokens=False)
        if len(ids) <= budget:
            return ids
    raise ValueError(
        f"the prompt is too long for the model's context (at most {budget} prompt tokens), "
        "even with earlier lines dropped; shorten the setting or the character list."
    )


def _forward(model: LoadedModel, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: Any) -> torch.Tensor:
    """One forward pass through the model with our cache; the last position's logits."""
    kwargs = {_cache_argument(model.model): cache}
    output = model.model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
    )
    return output.logits[:, -1, :]


_CACHE_ARGUMENT: dict[type, str] = {}


def _cache_argument(module: Any) -> str:
    """transformers 5 names the forward argument ``cache``; earlier versions ``past_key_values``."""
    kind = type(module)
    if kind not in _CACHE_ARGUMENT:
        parameters = inspect.signature(module.forward).parameters
        _CACHE_ARGUMENT[kind] = "cache" if "cache" in parameters else "past_key_values"
    return _CACHE_ARGUMENT[kind]


def _new_cache() -> Any:
    """An empty KV cache whose layers grow in place (a plain DynamicCache where that is not possible)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    growable = _growable_layer_class()
    if growable is not None and getattr(cache, "layer_class_to_replicate", None) is growable.__base__:
        cache.layer_class_to_replicate = growable
    return cache


@functools.cache
def _growable_layer_class() -> type | None:
    """A DynamicLayer that keeps spare room, so a decode step writes one position instead of copying the
    whole cache (DynamicLayer concatenates: a full copy of every layer's keys and values per token)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers 4.x: plain DynamicCache
        return None

    class GrowableLayer(DynamicLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._length = 0
                self._key_buffer = self._value_buffer = None
            needed = self._length + key_states.shape[-2]
            if self._key_buffer is None or needed > self._key_buffer.shape[-2]:
                capacity = max(needed + 64, 2 * self._length)
                self._key_buffer = _grown(self._key_buffer, key_states, self._length, capacity)
                self._value_buffer = _grown(self._value_buffer, value_states, self._length, capacity)
            self._key_buffer[:, :, self._length : needed] = key_states
            self._value_buffer[:, :, self._length : needed] = value_states
            self._length = needed
            self.keys = self._key_buffer[:, :, :needed]
            self.values = self._value_buffer[:, :, :needed]
            return self.keys, self.values

    return GrowableLayer


def _grown(buffer: torch.Tensor | None, like: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    shape = (like.shape[0], like.shape[1], capacity, like.shape[3])
    grown = like.new_empty(shape)
    if buffer is not None and length:
        grown[:, :, :length] = buffer[:, :, :length]
    return grown


def _make_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    cache = _new_cache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


def _cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers 4.x


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0)) if missing else tensor


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return torch.nn.functional.pad(mask, (missing, 0)) if missing else mask


def _vocab_size(model: LoadedModel) -> int:
    return int(model.model.config.vocab_size)


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def _replace(params: SamplingParams, **changes: Any) -> SamplingParams:
    from dataclasses import replace

    return replace(params, **changes)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reject(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
