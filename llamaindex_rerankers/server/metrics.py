"""Prometheus metrics of one app (its own registry, so several apps can live in one process).

Names, all prefixed ``llamaindex_rerankers_``:

- ``http_requests_total{endpoint,method,status}`` and ``http_request_duration_seconds{endpoint}``
  (a streamed chat counts until its last byte);
- ``stage_duration_seconds{stage}``: condense, retrieve, rerank, cross_encoder, llm_judge, answer;
- ``llm_judge_calls_total``, ``llm_judge_tokens_total{kind}``, ``llm_judge_cache_hits_total``,
  ``llm_judge_failures_total``: the LLM reranker's work;
- ``rerank_outcomes_total{outcome}``: ok, abstained, reranker_failed;
- ``injection_suspected_total``: candidates the reranker's injection detector flagged;
- ``rejected_requests_total{endpoint,reason}``: every error answer by its code (overloaded,
  timeout, unauthorized, invalid_request, payload_too_large, not_ready ...);
- ``in_flight{gate}``, ``queued{gate}``: requests running and waiting (search, chat);
- ``sessions``: server-side chat sessions alive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llamaindex_rerankers.types import RerankReport

_P = "llamaindex_rerankers_"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The app's collectors and the helpers that feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            _P + "http_requests",
            "HTTP requests answered",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            _P + "http_request_duration_seconds",
            "HTTP request latency, until the last byte",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            _P + "stage_duration_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.llm_calls = Counter(
            _P + "llm_judge_calls", "HTTP requests of the LLM reranker", registry=r
        )
        self.llm_tokens = Counter(
            _P + "llm_judge_tokens", "Tokens of the LLM reranker", ["kind"], registry=r
        )
        self.llm_cache_hits = Counter(
            _P + "llm_judge_cache_hits", "LLM judgements served from the cache", registry=r
        )
        self.llm_failures = Counter(
            _P + "llm_judge_failures", "LLM judgements that failed for good", registry=r
        )
        self.outcomes = Counter(
            _P + "rerank_outcomes", "Reranked requests by outcome", ["outcome"], registry=r
        )
        self.injection_suspected = Counter(
            _P + "injection_suspected",
            "Candidates the injection detector flagged (possible prompt injection)",
            registry=r,
        )
        self.rejected = Counter(
            _P + "rejected_requests",
            "Requests refused (not answered 2xx) by reason",
            ["endpoint", "reason"],
            registry=r,
        )
        self.refusal_latency = Histogram(
            _P + "refusal_duration_seconds",
            "Time to answer a 503 (overloaded, shutting down, unavailable), from the request "
            "reaching the application to the last byte",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(_P + "in_flight", "Requests running", ["gate"], registry=r)
        self.queued = Gauge(_P + "queued", "Requests waiting for a slot", ["gate"], registry=r)
        self.sessions = Gauge(_P + "sessions", "Server-side chat sessions alive", registry=r)

    def watch_gate(self, gate: Any) -> None:
        """Report an :class:`~llamaindex_rerankers.server.limits.AdmissionGate`'s counts."""
        self.in_flight.labels(gate.name).set_function(lambda: gate.active)
        self.queued.labels(gate.name).set_function(lambda: gate.waiting)

    def watch_sessions(self, count: Callable[[], int]) -> None:
        self.sessions.set_function(lambda: float(count()))

    def observe_report(self, report: RerankReport) -> None:
        """Add one rerank call's figures."""
        self.stage.labels("rerank").observe(report.seconds)
        if report.cross_encoder is not None:
            self.stage.labels("cross_encoder").observe(report.cross_encoder.seconds)
        if report.llm is not None:
            llm = report.llm
            self.stage.labels("llm_judge").observe(llm.seconds)
            self.llm_calls.inc(llm.calls)
            self.llm_tokens.labels("prompt").inc(llm.prompt_tokens)
            self.llm_tokens.labels("completion").inc(llm.completion_tokens)
            self.llm_cache_hits.inc(llm.cache_hits)
            self.llm_failures.inc(llm.failures)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template (never
    the raw path, so the label set stays bounded). Refusals are counted where they are
    answered (:func:`count_rejection`)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def tracking_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            endpoint = endpoint_of(scope)
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status[0])).inc()
            elapsed = time.perf_counter() - started
            self.metrics.latency.labels(endpoint).observe(elapsed)
            if status[0] == 503:
                self.metrics.refusal_latency.labels(endpoint).observe(elapsed)


def endpoint_of(scope: Mapping[str, Any]) -> str:
    """The route template of a request (``/v1/chat``), ``other`` when no route matched."""
    route = scope.get("route")
    return str(getattr(route, "path", None) or "other")


def count_rejection(metrics: Metrics | None, scope: Mapping[str, Any], reason: str) -> None:
    """Count one refused request (``reason`` is the error code)."""
    if metrics is not None:
        metrics.rejected.labels(endpoint_of(scope), reason).inc()
