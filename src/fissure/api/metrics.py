"""The API's Prometheus metrics (prometheus-client), one registry per app; names from
:mod:`fissure.observability.catalog`.

Per process (this replica's traffic): ``fissure_api_requests_total{method,route,status}`` and
``fissure_api_request_seconds{method,route,status}`` for every request (``route`` is the route's
template, e.g. ``/predictions/{prediction_id}``, or ``unmatched``, so the label set stays small),
``fissure_api_predictions_total{model,version}``.

From the store, at scrape time (:class:`StoreCollector`): the people's feedback
(``fissure_feedback_total{model,version,verdict}``, ``fissure_feedback_disagreement_ratio``) and
the pipeline's events (``fissure_retrain_runs_total{state}``, ``fissure_gate_decisions_total``,
``fissure_canary_steps_total``, ``fissure_promotions_total``, ``fissure_canary_weight_percent``).
Counts of rows, so they survive restarts and every replica reports the same numbers; exported as
counters so ``rate()`` works (a changed verdict moves one count down: Prometheus reads that as a
reset of that one series). A few GROUP BYs per scrape at most, cached for ``ttl`` seconds.

``fissure_champion_info{model,version}`` is the MLflow alias ``champion`` of each registered model
(:class:`ChampionReader`: a short timeout, a cache, the last known value while MLflow is down),
else the ``to_version`` of the model's newest promotion or rollback event. A scrape never fails
because MLflow or the database is down: the series they give are left out (and logged).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlparse

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric as Family
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from fissure import MODEL_NAMES
from fissure.observability import catalog
from fissure.observability.catalog import Metric

__all__ = ["CONTENT_TYPE_LATEST", "ChampionReader", "Metrics", "MetricsMiddleware", "StoreCollector"]

log = logging.getLogger("fissure.api.metrics")

CHAMPION_ALIAS = "champion"
REGISTERED_MODELS = tuple(MODEL_NAMES.values())


def family(metric: Metric) -> Family:
    """An empty sample family for a catalog counter or gauge."""
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
    return kinds[metric.kind](metric.name, metric.help, labels=metric.labels)


class Metrics:
    def __init__(self, store=None, tracking_uri: Callable[[], str] | None = None, ttl: float = 5.0):
        self.registry = CollectorRegistry()
        self.requests = Counter(catalog.API_REQUESTS.name, catalog.API_REQUESTS.help, catalog.API_REQUESTS.labels,
                                registry=self.registry)
        self.latency = Histogram(catalog.API_LATENCY.name, catalog.API_LATENCY.help, catalog.API_LATENCY.labels,
                                 registry=self.registry, buckets=catalog.API_LATENCY.buckets)
        self.predictions = Counter(catalog.API_PREDICTIONS.name, catalog.API_PREDICTIONS.help,
                                   catalog.API_PREDICTIONS.labels, registry=self.registry)
        self.champions = ChampionReader(tracking_uri) if tracking_uri else None
        self.store = StoreCollector(store, self.champions, ttl) if store is not None else None
        if self.store is not None:
            self.registry.register(self.store)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StoreCollector:
    """People and pipeline metrics counted from the store when Prometheus scrapes (cached ``ttl`` s)."""

    FAMILIES = (catalog.FEEDBACK, catalog.DISAGREEMENT, catalog.RETRAIN_RUNS, catalog.GATE_DECISIONS,
                catalog.CANARY_STEPS, catalog.PROMOTIONS, catalog.CANARY_WEIGHT, catalog.CHAMPION)

    def __init__(self, store, champions: ChampionReader | None = None, ttl: float = 5.0):
        self.store = store
        self.champions = champions
        self.ttl = ttl
        self._lock = threading.Lock()  # one scrape counts, the others wait for its answer
        self._cached: tuple[float, list[Family]] | None = None

    def describe(self) -> Iterable[Family]:
        # registering must not query the store (it may not be migrated yet)
        return [family(m) for m in self.FAMILIES]

    def collect(self) -> Iterable[Family]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl:
                self._cached = (now, self._families())
            return self._cached[1]

    def _families(self) -> list[Family]:
        try:
            counts = self.store.metric_counts()
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            log.warning("metrics: the store did not answer, its series are left out: %s",
                        reason[0] if reason else type(exc).__name__)
            counts = None
        champions = self.champions.get() if self.champions else {}
        if counts is None:
            return [self._champion_family(champions, {})]
        out = []

        feedback = family(catalog.FEEDBACK)
        judged: dict[tuple[str, str], list[int]] = {}
        for model, version, verdict, n in sorted(counts.feedback):
            feedback.add_metric([model, version, verdict], n)
            judged.setdefault((model, version), [0, 0])[verdict == "wrong"] += n
        ratio = family(catalog.DISAGREEMENT)
        for (model, version), (right, wrong) in sorted(judged.items()):
            ratio.add_metric([model, version], wrong / (right + wrong))
        out += [feedback, ratio]

        runs: dict[str, int] = dict.fromkeys(("succeeded", "failed"), 0)  # both series from the start
        for state, n in counts.runs:
            runs[state] += n
        gates, canaries, promotions = family(catalog.GATE_DECISIONS), family(catalog.CANARY_STEPS), {}
        for kind, model, result, n in sorted(counts.events, key=lambda r: tuple(str(x) for x in r)):
            if kind == "retrain" and result in runs:
                runs[result] += n
            elif kind == "gate":
                gates.add_metric([model, result], n)
            elif kind == "canary":
                canaries.add_metric([model, result], n)
            elif kind in ("promotion", "rollback"):
                key = (model, "promoted" if kind == "promotion" else "rolled_back")
                promotions[key] = promotions.get(key, 0) + n
        retrain = family(catalog.RETRAIN_RUNS)
        for state, n in runs.items():
            retrain.add_metric([state], n)
        promoted = family(catalog.PROMOTIONS)
        for (model, action), n in sorted(promotions.items()):
            promoted.add_metric([model, action], n)
        out += [retrain, gates, canaries, promoted]

        # the newest canary's weight while it runs; 0 once a promotion or rollback came after it
        weight = family(catalog.CANARY_WEIGHT)
        for model, step in sorted(counts.last_canary.items()):
            change = counts.last_change.get(model)
            weight.add_metric([model, step.version], 0.0 if change is not None and change.id > step.id else step.weight)
        out.append(weight)
        out.append(self._champion_family(champions, {m: e.to_version for m, e in counts.last_change.items()}))
        return out

    @staticmethod
    def _champion_family(from_mlflow: dict[str, str], from_events: dict[str, str]) -> Family:
        champion = family(catalog.CHAMPION)
        for model, version in sorted({**from_events, **from_mlflow}.items()):
            champion.add_metric([model, version], 1.0)
        return champion


class ChampionReader:
    """The MLflow ``champion`` alias of each registered model, read with a short timeout and cached.

    A read runs in a thread of its own; :meth:`get` waits for it at most ``timeout`` seconds and
    otherwise answers the last known versions (the read keeps going and updates them when done).
    A model whose alias MLflow says is not set is left out; while MLflow cannot be reached the last
    versions it gave stay. HTTP(S) tracking servers are asked over their REST API (no retries: the
    next scrape asks again); any other tracking URI (a SQLite file, a database) through MlflowClient.
    """

    def __init__(self, tracking_uri: Callable[[], str], models: tuple[str, ...] = REGISTERED_MODELS,
                 timeout: float = 2.0, ttl: float = 15.0):
        self.tracking_uri = tracking_uri
        self.models = models
        self.timeout = timeout
        self.ttl = ttl
        self.known: dict[str, str] = {}
        self._lock = threading.Lock()
        self._fetched_at: float | None = None
        self._running: threading.Thread | None = None

    def get(self) -> dict[str, str]:
        started = None
        with self._lock:
            stale = self._fetched_at is None or time.monotonic() - self._fetched_at >= self.ttl
            if stale and (self._running is None or not self._running.is_alive()):
                self._fetched_at = time.monotonic()  # one read per ttl, whether it answers or not
                started = self._running = threading.Thread(target=self._refresh, name="fissure-champion",
                                                           daemon=True)
                started.start()
        if started is not None:  # a read still hanging from an earlier scrape is not waited for again
            started.join(self.timeout)
        with self._lock:
            return dict(self.known)

    def _refresh(self) -> None:
        try:
            uri = self.tracking_uri()
            found = self._read_http(uri) if urlparse(uri).scheme in ("http", "https") else self._read_client(uri)
        except Exception as exc:  # noqa: BLE001 - MLflow down or broken: keep what we knew
            log.warning("metrics: MLflow's %s aliases not read, keeping the last known: %s", CHAMPION_ALIAS,
                        (str(exc).strip().splitlines() or [type(exc).__name__])[0])
            return
        with self._lock:
            self.known = found

    def _read_http(self, uri: str) -> dict[str, str]:
        headers, auth = {}, None
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        verify = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() not in ("true", "1")
        found = {}
        with httpx.Client(base_url=uri.rstrip("/"), timeout=self.timeout, headers=headers, auth=auth,
                          verify=verify) as client:
            for model in self.models:
                r = client.get("/api/2.0/mlflow/registered-models/get", params={"name": model})
                if r.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in r.text[:2000]:
                    continue  # MLflow answered: no such registered model
                r.raise_for_status()
                aliases = {a.get("alias"): a.get("version") for a in r.json()["registered_model"].get("aliases", [])}
                if aliases.get(CHAMPION_ALIAS) is not None:
                    found[model] = str(aliases[CHAMPION_ALIAS])
        return found

    def _read_client(self, uri: str) -> dict[str, str]:
        if uri.startswith("sqlite:"):
            db = make_url(uri).database
            if db and db != ":memory:" and not Path(db).exists():
                return {}  # no MLflow store yet: nothing registered (and none is made here)
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)
        found = {}
        for model in self.models:
            try:
                aliases = client.get_registered_model(model).aliases
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    continue  # no such registered model
                raise
            if aliases.get(CHAMPION_ALIAS) is not None:
                found[model] = str(aliases[CHAMPION_ALIAS])
        return found


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
