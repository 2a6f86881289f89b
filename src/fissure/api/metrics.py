"""The API's Prometheus metrics (prometheus-client), one registry per app.

``fissure_api_requests_total{method,route,status}`` and ``fissure_api_request_seconds{method,route,status}``
for every request (``route`` is the route's template, e.g. ``/predictions/{prediction_id}``, or
``unmatched``, so the label set stays small), ``fissure_api_predictions_total{model,version}`` and
``fissure_api_feedback_total{verdict}``.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("fissure_api_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("fissure_api_request_seconds", "HTTP request latency by route and status",
                                 ["method", "route", "status"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.predictions = Counter("fissure_api_predictions", "Predictions stored, by model and version",
                                   ["model", "version"], registry=self.registry)
        self.feedback = Counter("fissure_api_feedback", "Feedback writes, by verdict", ["verdict"],
                                registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting every request by its route template and final status."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route, str(status)).observe(time.perf_counter() - start)
