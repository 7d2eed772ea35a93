"""`GET /metrics`: Prometheus' format, read back with prometheus_client's own parser, after
real sessions, offers, loads and pipeline calls; the API key rule; one registry per app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tests.pipelines  # noqa: F401 - registers the test pipelines
from signaling.client import ApiError, LiveV2VClient, NumberedFrames
from tests.conftest import serve_in_thread, wait_until_loaded
from tests.pipelines import GatedLoadPipeline

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str, **headers: str) -> Samples:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def eventually(url: str, check: Callable[[Samples], bool],
                     timeout_s: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError("metrics never showed it")
        await asyncio.sleep(0.1)


async def test_metrics_follow_sessions_offers_frames_and_batches() -> None:
    with serve_in_thread(pipeline="cpu-effect", max_sessions=1) as server, \
            serve_in_thread(pipeline="passthrough") as other:  # a second app, its own registry
        url = server.url
        before = await scrape(url)
        assert value(before, "livev2v_sessions", state="connected") == 0
        assert value(before, "livev2v_sessions", state="pending") == 0
        assert value(before, "livev2v_sessions_limit", state="connected") == 1
        assert value(before, "livev2v_pipeline_status", pipeline="cpu-effect", status="loaded") == 1
        assert value(before, "livev2v_pipeline_load_seconds_count", pipeline="cpu-effect",
                     outcome="loaded") == 1
        assert value(before, "process_resident_memory_bytes") > 10_000_000
        assert value(before, "process_cpu_seconds_total") > 0
        await eventually(url, lambda s: value(s, "livev2v_event_loop_lag_seconds") is not None)

        async with LiveV2VClient(url) as client:
            await client.connect(NumberedFrames(size=64, fps=20))
            for _ in range(5):
                await client.recv(timeout_s=30)
            stats = await client.message("stats", timeout_s=30)
            assert isinstance(stats["event_loop_lag_ms"], float) and stats["event_loop_lag_ms"] >= 0
            live = await eventually(url, lambda s: value(
                s, "livev2v_sessions", state="connected") == 1)
            assert value(live, "livev2v_offers_total", code="200") == 1
            assert value(live, "livev2v_frames_in_total") >= 5
            assert value(live, "livev2v_frames_out_total") >= 5
            assert value(live, "livev2v_pipeline_batch_size_count", pipeline="cpu-effect") >= 5
            assert value(live, "livev2v_pipeline_batch_size_bucket", pipeline="cpu-effect",
                         le="1.0") >= 5  # one session: batches of one
            assert value(live, "livev2v_pipeline_batch_seconds_sum", pipeline="cpu-effect") > 0
            assert value(live, "livev2v_frames_dropped_total", reason="input") is not None
            assert value(live, "livev2v_frames_dropped_total", reason="output") is not None

            # Refused offers are counted by their status: at capacity, malformed, invalid.
            async with LiveV2VClient(url) as second:
                with pytest.raises(ApiError) as refused:
                    await second.connect(NumberedFrames(size=64, fps=20))
                assert refused.value.status == 503
            async with httpx.AsyncClient(base_url=url) as http:
                bad = await http.post("/api/v1/webrtc/offer",
                                      json={"sdp": "v=0 nope", "type": "offer"})
                assert bad.status_code == 400
                assert (await http.post("/api/v1/webrtc/offer", json={})).status_code == 422
            frames_out = value(live, "livev2v_frames_out_total")
            assert await client.stop() == 204

        after = await eventually(url, lambda s: value(s, "livev2v_sessions", state="connected") == 0
                                 and value(s, "livev2v_sessions", state="pending") == 0)
        assert value(after, "livev2v_offers_total", code="503") == 1
        assert value(after, "livev2v_offers_total", code="400") == 1
        assert value(after, "livev2v_offers_total", code="422") == 1
        # Totals outlive the session that made them.
        assert value(after, "livev2v_frames_out_total") >= frames_out

        # The other app counted nothing of this.
        theirs = await scrape(other.url)
        assert value(theirs, "livev2v_offers_total", code="200") is None
        assert value(theirs, "livev2v_pipeline_status", pipeline="passthrough",
                     status="loaded") == 1


async def test_load_failures_and_pipeline_errors_are_counted() -> None:
    GatedLoadPipeline.fail = True
    GatedLoadPipeline.gate.set()
    try:
        with serve_in_thread(pipeline="test-faulty") as server:
            url = server.url
            async with LiveV2VClient(url) as client:
                await client.connect(NumberedFrames(size=64, fps=20))
                await client.recv(timeout_s=30)
                await client.send({"prompts": [{"text": "boom", "weight": 1}]})
                stopped = await client.message("stream_stopped", timeout_s=30)
                assert "boom" in stopped["error_message"]
            samples = await scrape(url)
            assert value(samples, "livev2v_pipeline_batch_failures_total",
                         pipeline="test-faulty") == 1
            async with httpx.AsyncClient(base_url=url) as http:
                r = await http.post("/api/v1/pipeline/load", json={"pipeline_ids": ["test-gated"]})
                assert r.status_code == 200
            wait_until_loaded(url)
            samples = await scrape(url)
            assert value(samples, "livev2v_pipeline_load_failures_total",
                         pipeline="test-gated") == 1
            assert value(samples, "livev2v_pipeline_load_seconds_count", pipeline="test-gated",
                         outcome="failed") == 1
            assert value(samples, "livev2v_pipeline_status", pipeline="test-gated",
                         status="error") == 1
    finally:
        GatedLoadPipeline.fail = False
        GatedLoadPipeline.gate.clear()


async def test_metrics_need_the_api_key_when_one_is_set() -> None:
    with serve_in_thread(pipeline="passthrough", api_key="s3cret-metrics") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/metrics")).status_code == 401
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert (await http.get("/health")).status_code == 200  # open, as before
        samples = await scrape(server.url, Authorization="Bearer s3cret-metrics")
        assert value(samples, "livev2v_sessions", state="connected") == 0
        assert await scrape(server.url, **{"X-API-Key": "s3cret-metrics"})
