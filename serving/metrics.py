"""Prometheus metrics of the scoring server (`GET /metrics`).

Each app owns its `CollectorRegistry` (not the client's global one), so several apps can live in
one process (tests) and nothing else's metrics leak into ours. Names follow Prometheus conventions:
`_total` counters, `_seconds` histograms, base units.

With several worker processes (`recsys-mtl serve --workers N`, serving/workers.py) a scrape lands
on one of them, so each must answer for all: the parent sets PROMETHEUS_MULTIPROC_DIR to a fresh
directory before the workers start, prometheus_client then keeps every value in a per-process file
there, and `exposition` reads them all (`MultiProcessCollector`): counters and histograms sum over
the workers, dead ones included (a counter never goes back); the queue gauge sums the live workers;
`recsys_model_info` is reported per live worker (a `pid` label), so a rollout shows which worker
serves which version.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# prometheus_client decides when it is imported whether values live in files; so do we
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))

# `*_created` series double the output and no dashboard reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 10, 50, 100, 200, 500, 1000, 2000, 4000, 8000)


class ServingMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests_total",
            "Requests by route, variant and HTTP status.",
            ["route", "variant", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "recsys_request_latency_seconds",
            "Request latency inside the server, by route and variant.",
            ["route", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_candidates = Histogram(
            "recsys_request_candidates", "Candidates per scored request.", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_candidates = Histogram(
            "recsys_batch_candidates",
            "Candidates per forward (after merging concurrent requests).",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "recsys_batch_requests",
            "Requests merged into one forward.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.forward_seconds = Histogram(
            "recsys_forward_seconds",
            "Transform + forward time of one merged batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "recsys_inference_queue",
            "Requests waiting for the inference thread (summed over live workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "recsys_model_info",
            "1 for each model loaded for a variant (labels say which).",
            ["experiment", "variant", "model", "version", "build"],
            registry=r,
            multiprocess_mode="liveall",  # one series per live worker (pid label)
        )
        self.reloads = Counter(
            "recsys_model_reloads_total",
            "Model versions loaded, validated and swapped in.",
            ["model"],
            registry=r,
        )
        self.reload_failures = Counter(
            "recsys_model_reload_failures_total",
            "Model versions refused (checksum, validation, load).",
            ["model"],
            registry=r,
        )
        self.config_reloads = Counter(
            "recsys_config_reloads_total", "Serving config reloads by result.", ["result"], registry=r
        )
        self.connections_refused = Counter(
            "recsys_connections_refused_total",
            "Connections closed by the server before a request: too_many (runtime.max_connections), "
            "head_timeout (runtime.header_timeout_s), head_too_large.",
            ["reason"],
            registry=r,
        )
        self.shadow = Counter(
            "recsys_shadow_requests_total",
            "Shadow scorings by variant and result.",
            ["variant", "result"],
            registry=r,
        )
        self.shadow_diff = Histogram(
            "recsys_shadow_abs_diff",
            "Mean |shadow - served| score per request, by variant and task.",
            ["variant", "task"],
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
            registry=r,
        )


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format of a scrape: this app's registry, or with several workers every worker's
    values (module docstring)."""
    if not MULTIPROCESS:
        return generate_latest(registry)
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return generate_latest(merged)
