"""Health endpoints: /healthz says 200 only when connected and loaded, /metrics is valid Prometheus text."""

from __future__ import annotations

import re

import aiohttp

from bot.health import LATENCY_BUCKETS, HealthServer, Metrics, Probe, render_metrics

# One sample line of the Prometheus text format: name, optional labels, a number.
SAMPLE_RE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+Inf]+$'
)


def probe(**changes: object) -> Probe:
    values = {
        "gateway_connected": True,
        "model_loaded": True,
        "run_id": "run-1",
        "queue_depth": 2,
        "active": 1,
    }
    return Probe(**{**values, **changes})  # type: ignore[arg-type]


def test_metrics_text_is_well_formed_and_counts_outcomes() -> None:
    metrics = Metrics()
    metrics.record("ok", seconds=0.7, tokens=30)
    metrics.record("ok", seconds=12.0, tokens=50)
    metrics.record("busy")
    text = render_metrics(metrics, probe(run_id='weird"run\\id'))
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE_RE.match(line), line
    assert 'maester_scene_requests_total{outcome="ok"} 2' in text
    assert 'maester_scene_requests_total{outcome="busy"} 1' in text
    assert 'maester_scene_requests_total{outcome="timeout"} 0' in text
    assert "maester_tokens_generated_total 80" in text
    assert "maester_queue_depth 2" in text
    assert "maester_gateway_connected 1" in text
    assert 'maester_model_info{run_id="weird\\"run\\\\id"} 1' in text
    # Histogram buckets are cumulative and end with +Inf == count.
    buckets = [int(m) for m in re.findall(r'maester_scene_latency_seconds_bucket\{le="[^"]+"\} (\d+)', text)]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets == sorted(buckets) and buckets[-1] == 2
    assert 'le="1.0"} 1' in text and "maester_scene_latency_seconds_sum 12.700000" in text


async def test_healthz_and_metrics_over_http() -> None:
    state = {"probe": probe()}
    server = HealthServer("127.0.0.1", 0, Metrics(), lambda: state["probe"])
    await server.start()
    try:
        assert server.port
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
                body = await response.json()
                assert body["ok"] is True and body["run_id"] == "run-1"
            state["probe"] = probe(gateway_connected=False)
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 503
                assert (await response.json())["reason"] == "the Discord gateway is not connected"
            state["probe"] = probe(model_loaded=False, run_id=None)
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 503
                assert (await response.json())["reason"] == "no model is loaded"
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
                assert "maester_model_loaded 0" in text and "maester_model_info{" not in text
    finally:
        await server.stop()
