"""Counters behind GET /metrics, in the Prometheus text format: requests by route and status,
request latency and batch size histograms (per run).

    tunelab_requests_total{route="/v1/classify",status="200"} 12
    tunelab_request_seconds_bucket{route="/v1/classify",le="0.01"} 9
    tunelab_batch_size_bucket{model="spam",le="8"} 3
"""

from __future__ import annotations

import threading
import time
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative buckets, sum and count for one label set."""

    def __init__(self, buckets):
        self.buckets, self.counts, self.sum, self.n = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.n += 1
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = [f'{name}_bucket{{{labels},le="{edge}"}} {c}' for edge, c in zip(self.buckets, self.counts)]
        return [*out, f'{name}_bucket{{{labels},le="+Inf"}} {self.n}', f"{name}_sum{{{labels}}} {self.sum:.6f}", f"{name}_count{{{labels}}} {self.n}"]


class Metrics:
    """Thread-safe: the batch workers record from their own threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batches: dict[str, Histogram] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[route, status] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, model: str, size: int) -> None:
        with self.lock:
            self.batches.setdefault(model, Histogram(BATCH_BUCKETS)).observe(size)

    def text(self) -> str:
        with self.lock:
            lines = ["# TYPE tunelab_requests_total counter"]
            lines += [f'tunelab_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
            lines.append("# TYPE tunelab_request_seconds histogram")
            for route, h in sorted(self.latency.items()):
                lines += h.lines("tunelab_request_seconds", f'route="{route}"')
            lines.append("# TYPE tunelab_batch_size histogram")
            for model, h in sorted(self.batches.items()):
                lines += h.lines("tunelab_batch_size", f'model="{model}"')
        return "\n".join(lines) + "\n"


class CountRequests:
    """ASGI middleware (outermost): every request's route, status and time, 401s and 413s too.
    Unknown paths count as route "other", so a scanner cannot grow the table."""

    def __init__(self, app, metrics: Metrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.request(route, status, time.perf_counter() - started)
