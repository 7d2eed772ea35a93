"""Prometheus metrics of one server (`GET /metrics`), through prometheus_client.

Each app has its own `CollectorRegistry` (several apps live in one test process). What changes
on events (offers, batches, loads) is counted as it happens; what is a state (sessions, frame
totals, event-loop lag, GPU memory) is read from the live objects at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline import PipelineService
from pipeline.resources import hardware
from pipeline.serving.events import BatchDone, LoadDone, ServiceEvent

from .sessions import SessionRegistry

PREFIX = "livev2v"
OFFER_PATH = "/api/v1/webrtc/offer"


class ServerMetrics:
    def __init__(self, sessions: SessionRegistry, service: PipelineService) -> None:
        self.sessions = sessions
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.offers = Counter(f"{PREFIX}_offers", "WebRTC offers answered, by HTTP status "
                              "(200 answered, 4xx refused, 503 busy or loading)", ["code"],
                              registry=r)
        self.batch_size = Histogram(f"{PREFIX}_pipeline_batch_size",
                                    "Sessions served by one pipeline call", ["pipeline"],
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.batch_seconds = Histogram(
            f"{PREFIX}_pipeline_batch_seconds", "Time of one pipeline call", ["pipeline"],
            buckets=(.002, .005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2, 5),
            registry=r)
        self.batch_failures = Counter(f"{PREFIX}_pipeline_batch_failures",
                                      "Pipeline calls that raised (their sessions were stopped)",
                                      ["pipeline"], registry=r)
        self.load_seconds = Histogram(f"{PREFIX}_pipeline_load_seconds",
                                      "Time to load a pipeline, by outcome",
                                      ["pipeline", "outcome"],
                                      buckets=(.1, .5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
                                      registry=r)
        self.load_failures = Counter(f"{PREFIX}_pipeline_load_failures",
                                     "Pipeline loads that failed", ["pipeline"], registry=r)
        self.osc_messages = Counter(
            f"{PREFIX}_osc_messages", "OSC messages received, by outcome: applied, no_session "
            "(valid, no live session), unknown_session, unknown_address, bad_value, refused "
            "(every session refused it, e.g. an input_mode its pipeline lacks), malformed "
            "(a datagram that is not OSC)", ["outcome"], registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        r.register(_StateCollector(sessions, service))
        service.add_listener(self.observe)

    def observe(self, event: ServiceEvent) -> None:
        """The service's listener (worker and loader threads; prometheus_client is thread-safe)."""
        if isinstance(event, BatchDone):
            if event.ok:
                self.batch_size.labels(event.pipeline_id).observe(event.size)
                self.batch_seconds.labels(event.pipeline_id).observe(event.seconds)
            else:
                self.batch_failures.labels(event.pipeline_id).inc()
        elif isinstance(event, LoadDone):
            outcome = "loaded" if event.ok else "failed"
            self.load_seconds.labels(event.pipeline_id, outcome).observe(event.seconds)
            if not event.ok:
                self.load_failures.labels(event.pipeline_id).inc()


class _StateCollector(Collector):
    """Read at scrape time (on the event loop, like everything that changes sessions)."""

    def __init__(self, sessions: SessionRegistry, service: PipelineService) -> None:
        self.sessions = sessions
        self.service = service

    def collect(self) -> Iterator[Metric]:
        sessions = self.sessions
        states = GaugeMetricFamily(f"{PREFIX}_sessions", "Sessions by state: pending (answered, "
                                   "ICE/DTLS not done) or connected", labels=["state"])
        states.add_metric(["pending"], len(sessions.pending()))
        states.add_metric(["connected"], len(sessions.connected()))
        yield states
        ingests = GaugeMetricFamily(f"{PREFIX}_sessions_by_ingest", "Live sessions by how they "
                                    "came in: offer (Scope's API) or whip", labels=["ingest"])
        live = sessions.live()
        for ingest in ("offer", "whip"):
            ingests.add_metric([ingest], sum(1 for s in live if s.ingest == ingest))
        yield ingests
        viewers = GaugeMetricFamily(f"{PREFIX}_whep_viewers", "WHEP viewers (receive-only "
                                    "peers playing a session's output)")
        viewers.add_metric([], len(sessions.viewers()))
        yield viewers
        limits = GaugeMetricFamily(f"{PREFIX}_sessions_limit", "Bound on sessions by state",
                                   labels=["state"])
        limits.add_metric(["pending"], sessions.max_pending)
        limits.add_metric(["connected"], sessions.max_sessions)
        yield limits

        totals = sessions.frame_counters()
        frames_in = CounterMetricFamily(f"{PREFIX}_frames_in", "Input frames received from "
                                        "clients (video mode)")
        frames_in.add_metric([], totals["in"])
        yield frames_in
        frames_out = CounterMetricFamily(f"{PREFIX}_frames_out", "Frames the pipeline produced")
        frames_out.add_metric([], totals["out"])
        yield frames_out
        dropped = CounterMetricFamily(
            f"{PREFIX}_frames_dropped", "Frames dropped, by reason: input (a newer input frame "
            "replaced it before the pipeline took it), output (the sender fell behind)",
            labels=["reason"])
        dropped.add_metric(["input"], totals["dropped_input"])
        dropped.add_metric(["output"], totals["dropped_output"])
        yield dropped

        status = self.service.status()
        loaded = GaugeMetricFamily(f"{PREFIX}_pipeline_status", "1 for the pipeline's current "
                                   "status", labels=["pipeline", "status"])
        loaded.add_metric([status.pipeline_id or "", status.status], 1)
        yield loaded

        probe = sessions.loop_lag
        lag = probe.max_lag_s() if probe is not None else None
        if lag is not None:
            gauge = GaugeMetricFamily(f"{PREFIX}_event_loop_lag_seconds", "The most the event "
                                      "loop ran late over the last second")
            gauge.add_metric([], lag)
            yield gauge
            worst = GaugeMetricFamily(f"{PREFIX}_event_loop_lag_max_seconds",
                                      "The most the event loop ran late since start")
            worst.add_metric([], probe.worst_s)
            yield worst

        gpus = hardware.gpu_memory()
        if gpus:
            allocated = GaugeMetricFamily(f"{PREFIX}_gpu_memory_allocated_bytes",
                                          "CUDA memory held by tensors", labels=["device"])
            reserved = GaugeMetricFamily(f"{PREFIX}_gpu_memory_reserved_bytes",
                                         "CUDA memory held by torch's allocator", labels=["device"])
            total = GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "CUDA device memory",
                                      labels=["device"])
            for gpu in gpus:
                allocated.add_metric([str(gpu.index)], gpu.allocated_bytes)
                reserved.add_metric([str(gpu.index)], gpu.reserved_bytes)
                total.add_metric([str(gpu.index)], gpu.total_bytes)
            yield from (allocated, reserved, total)


class OfferOutcomes:
    """Counts the status of every `POST /api/v1/webrtc/offer` (validation and size errors
    included: they never reach the route)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not scope["path"].endswith(OFFER_PATH)):
            await self.app(scope, receive, send)
            return
        code = "500"

        async def watch(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.offers.labels(code).inc()
