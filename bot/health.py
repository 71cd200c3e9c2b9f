"""``/healthz`` and ``/metrics`` over HTTP (aiohttp), for docker healthchecks and Prometheus.

``/healthz`` answers 200 ``{"ok": true, ...}`` when the gateway is connected and a model is loaded, and
503 with a JSON ``reason`` otherwise. ``/metrics`` is the Prometheus text format (version 0.0.4):

- ``maester_scene_requests_total{outcome=...}``: every /scene, Regenerate and Continue request by outcome
  (ok, invalid, cooldown, busy, shutting_down, timeout, cancelled, error);
- ``maester_scene_latency_seconds``: a histogram of request-to-final-message time for finished scenes;
- ``maester_tokens_generated_total``, ``maester_queue_depth``, ``maester_active_generations``,
  ``maester_gateway_connected``, ``maester_model_loaded``, ``maester_uptime_seconds``;
- ``maester_model_info{run_id=...} 1``: which run is served.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "invalid", "cooldown", "busy", "shutting_down", "timeout", "cancelled", "error")
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Metrics:
    """Counters the bot updates as requests finish; rendered by :func:`render_metrics`."""

    requests: Counter = field(default_factory=Counter)
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0
    tokens_generated: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def record(self, outcome: str, *, seconds: float | None = None, tokens: int = 0) -> None:
        """Count one finished request, with its latency when it produced a scene."""
        self.requests[outcome] += 1
        self.tokens_generated += tokens
        if seconds is not None:
            self.latency_sum += seconds
            self.latency_count += 1
            for index, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.latency_counts[index] += 1


@dataclass(frozen=True)
class Probe:
    """A point-in-time view of the bot for the health endpoints."""

    gateway_connected: bool
    model_loaded: bool
    run_id: str | None
    queue_depth: int
    active: int
    reason: str = ""


def render_metrics(metrics: Metrics, probe: Probe) -> str:
    """The Prometheus text exposition of ``metrics`` and ``probe``."""
    lines = [
        "# HELP maester_scene_requests_total Scene requests by outcome.",
        "# TYPE maester_scene_requests_total counter",
    ]
    for outcome in sorted(set(OUTCOMES) | set(metrics.requests)):
        lines.append(
            f'maester_scene_requests_total{{outcome="{_label(outcome)}"}} {metrics.requests[outcome]}'
        )
    lines += [
        "# HELP maester_scene_latency_seconds Time from request to finished scene.",
        "# TYPE maester_scene_latency_seconds histogram",
    ]
    for bound, count in zip(LATENCY_BUCKETS, metrics.latency_counts, strict=True):
        lines.append(f'maester_scene_latency_seconds_bucket{{le="{bound}"}} {count}')
    lines += [
        f'maester_scene_latency_seconds_bucket{{le="+Inf"}} {metrics.latency_count}',
        f"maester_scene_latency_seconds_sum {metrics.latency_sum:.6f}",
        f"maester_scene_latency_seconds_count {metrics.latency_count}",
    ]
    gauges: list[tuple[str, str, str, float]] = [
        (
            "maester_tokens_generated_total",
            "counter",
            "Tokens generated for scenes.",
            metrics.tokens_generated,
        ),
        ("maester_queue_depth", "gauge", "Requests waiting for the model.", probe.queue_depth),
        ("maester_active_generations", "gauge", "Requests being generated now.", probe.active),
        (
            "maester_gateway_connected",
            "gauge",
            "1 when the Discord gateway is connected.",
            int(probe.gateway_connected),
        ),
        ("maester_model_loaded", "gauge", "1 when a model is loaded and serving.", int(probe.model_loaded)),
        (
            "maester_uptime_seconds",
            "gauge",
            "Seconds since the bot started.",
            round(time.monotonic() - metrics.started_at, 3),
        ),
    ]
    for name, kind, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    lines += ["# HELP maester_model_info The served model run.", "# TYPE maester_model_info gauge"]
    if probe.run_id:
        lines.append(f'maester_model_info{{run_id="{_label(probe.run_id)}"}} 1')
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """Escape a Prometheus label value."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class HealthServer:
    """A small aiohttp server for ``/healthz`` and ``/metrics``; ``probe`` is called per request."""

    def __init__(self, host: str, port: int, metrics: Metrics, probe: Callable[[], Probe]) -> None:
        self.host, self.requested_port = host, port
        self.metrics, self.probe = metrics, probe
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the bound port, known after start (port 0 picks one)

    def app(self) -> web.Application:
        """The aiohttp application (also handy for aiohttp's test client)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        """Bind and serve."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # aiohttp exposes no public getter
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        log.info("health endpoints on http://%s:%s/healthz and /metrics", self.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        probe = self.probe()
        body: dict[str, Any] = {
            "ok": probe.gateway_connected and probe.model_loaded,
            "gateway_connected": probe.gateway_connected,
            "model_loaded": probe.model_loaded,
            "run_id": probe.run_id,
            "queue_depth": probe.queue_depth,
        }
        if not body["ok"]:
            body["reason"] = probe.reason or (
                "the Discord gateway is not connected"
                if not probe.gateway_connected
                else "no model is loaded"
            )
        return web.Response(
            status=200 if body["ok"] else 503, text=json.dumps(body), content_type="application/json"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=render_metrics(self.metrics, self.probe()),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
