"""The serving front's instruments: requests, latency, batches, model behaviour and drift.

One :class:`FrontMetrics` per server, with its own ``CollectorRegistry`` (not prometheus-client's
global one: tests run several fronts in one process, and kserve's own global histograms carry no
version). The front exports it on its REST port at ``/metrics``, as KServe's model server does.

* per request (REST v1, REST v2, gRPC, errors included): ``fissure_requests_total{code}``,
  ``fissure_request_duration_seconds``, ``fissure_inflight_requests``; REST through the ASGI
  middleware :class:`RequestMetrics`, gRPC from the servicer (:meth:`FrontMetrics.begin` /
  :meth:`FrontMetrics.end`). A name the front does not serve is counted as ``model="unknown"``
  (callers choose the path: their typos must not create series);
* per model call: ``fissure_batch_size``, ``fissure_queue_seconds`` (:class:`ModelMetrics`);
* per predicted image (explanations are requests, not predictions): the class mix, confidence,
  crack area, input statistics, and the model's :class:`~fissure.observability.drift.DriftWindow`;
* at scrape time (:class:`_ScrapeCollector`): ``fissure_model_ready``, ``fissure_model_info``,
  ``fissure_drift_psi`` and ``fissure_drift_window_items``.

Every update is a child looked up once and kept (a few microseconds each); the PSI is computed
only when Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily

from fissure.errors import status_of
from fissure.observability import catalog
from fissure.observability.catalog import Metric
from fissure.observability.drift import DriftWindow, Profile

log = logging.getLogger("fissure.serve")

UNKNOWN_MODEL = "unknown"  # the model label of requests for a name this front does not serve
CLIENT_CLOSED = 499  # nginx's code for a request the client gave up on (gRPC cancellation)
INPUT_FEATURES = {  # input_stats key -> its histogram
    "brightness": catalog.INPUT_BRIGHTNESS,
    "contrast": catalog.INPUT_CONTRAST,
    "sharpness": catalog.INPUT_SHARPNESS,
    "megapixels": catalog.INPUT_MEGAPIXELS,
}


def instrument(metric: Metric, registry: CollectorRegistry) -> Counter | Histogram | Gauge:
    """The prometheus-client object for a catalogue :class:`Metric`, registered in ``registry``."""
    if metric.kind == "counter":
        return Counter(metric.name, metric.help, metric.labels, registry=registry)
    if metric.kind == "histogram":
        return Histogram(metric.name, metric.help, metric.labels, buckets=metric.buckets, registry=registry)
    if metric.kind == "gauge":
        return Gauge(metric.name, metric.help, metric.labels, registry=registry)
    raise ValueError(f"{metric.name}: no prometheus-client instrument for kind {metric.kind!r}")


def family(metric: Metric) -> GaugeMetricFamily:
    """An empty gauge family for a catalogue metric, for collectors that compute at scrape time."""
    if metric.kind != "gauge":
        raise ValueError(f"{metric.name} is a {metric.kind}, not a gauge")
    return GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)


def code_of(exc: BaseException) -> int:
    """The HTTP status an exception answers with (as the servers map it); 499 for a cancelled call."""
    if isinstance(exc, Exception):
        return status_of(exc)[0]
    return CLIENT_CLOSED


class _Requests:
    """The request series of one (model, version): children cached per protocol and code."""

    __slots__ = ("front", "labels", "inflight", "_count", "_latency")

    def __init__(self, front: "FrontMetrics", model: str, version: str, inflight: bool):
        self.front = front
        self.labels = (model, version)
        self.inflight = front.inflight.labels(model, version) if inflight else None
        self._count: dict[tuple[str, int], object] = {}
        self._latency: dict[str, object] = {}

    def done(self, protocol: str, code: int, seconds: float) -> None:
        child = self._count.get((protocol, code))
        if child is None:
            child = self._count[(protocol, code)] = self.front.requests.labels(*self.labels, protocol, str(code))
        child.inc()
        latency = self._latency.get(protocol)
        if latency is None:
            latency = self._latency[protocol] = self.front.latency.labels(*self.labels, protocol)
        latency.observe(seconds)


# the request this task is answering: set by FrontMetrics.begin, read by retarget (a canary's pick)
CURRENT_CALL: contextvars.ContextVar["Call | None"] = contextvars.ContextVar("fissure_current_call", default=None)


class Call:
    """One request being answered: which series it counts in, and since when."""

    __slots__ = ("series", "protocol", "start", "ended")

    def __init__(self, series: _Requests, protocol: str):
        self.series, self.protocol = series, protocol
        self.start = time.perf_counter()
        self.ended = False

    def parsed(self) -> None:
        """The request is all in: the clock starts here (upload time is the client's network)."""
        self.start = time.perf_counter()


class ModelMetrics:
    """What one served model version records: its model calls and what it predicts."""

    def __init__(self, front: "FrontMetrics", model):
        self.model = model  # read at scrape time: name, version, ready, role, runtime, meta
        self.name, self.version = model.name, str(model.version)
        self.task = getattr(model, "task", None)
        lv = (self.name, self.version)
        self.requests = _Requests(front, self.name, self.version, inflight=True)
        self.batch = front.batch.labels(*lv)
        self.queue = front.queue.labels(*lv)
        self.confidence = front.confidence.labels(*lv)
        self.area = front.area.labels(*lv) if self.task != "classify" else None  # no series for classifiers
        self.inputs = {k: front.inputs[k].labels(*lv) for k in INPUT_FEATURES}
        self._predictions = front.predictions
        self._labels: dict[str, object] = {}
        self.drift = self._drift_window(getattr(model, "spec", None) or {}, front.drift_window)

    def _drift_window(self, spec: Mapping, size: int) -> DriftWindow | None:
        try:
            profile = Profile.from_spec(spec)
        except ValueError as exc:  # a bad profile must not stop serving: no drift gauges for it
            log.warning("model %s version %s: unreadable reference_profile (%s): no drift gauges",
                        self.name, self.version, exc)
            return None
        if profile is None or not profile.features:
            log.info("model %s version %s has no reference_profile in its spec: no drift gauges",
                     self.name, self.version)
            return None
        return DriftWindow(profile, size=size)

    # ------------------------------------------------------------------ model calls
    def model_call(self, items: int, waits: list[float] = ()) -> None:
        """One call of the model runtime: ``items`` images, and each request's wait before it."""
        self.batch.observe(items)
        for w in waits:
            self.queue.observe(w)

    # ------------------------------------------------------------------ predictions
    def prediction(self, result: Mapping, stats: Mapping[str, float] | None) -> None:
        """One predicted image: its result (classifier or segmenter) and its input statistics
        (``drift.input_stats``; None for tensor inputs, which have no image statistics)."""
        if self.task == "classify":
            label, confidence = result.get("label"), result.get("score")
        else:
            ratio = float(result.get("crack_ratio") or 0.0)
            label, confidence = ("crack" if ratio > 0 else "no_crack"), result.get("confidence")
            self.area.observe(ratio)
        child = self._labels.get(label)
        if child is None:
            child = self._labels[label] = self._predictions.labels(self.name, self.version, str(label))
        child.inc()
        if confidence is not None:
            self.confidence.observe(confidence)
        if stats:
            for key, hist in self.inputs.items():
                value = stats.get(key)
                if value is not None:
                    hist.observe(value)
        if self.drift is not None:
            seen = dict(stats) if stats else {}
            if confidence is not None:
                seen["confidence"] = float(confidence)
            self.drift.observe(seen)


class FrontMetrics:
    """One front's registry and instruments; :meth:`add_model` for each served model."""

    def __init__(self, registry: CollectorRegistry | None = None, drift_window: int = 500,
                 draining: Callable[[], bool] = lambda: False, process: bool = True):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.drift_window = drift_window
        self.draining = draining
        reg = self.registry
        self.requests = instrument(catalog.REQUESTS, reg)
        self.latency = instrument(catalog.LATENCY, reg)
        self.inflight = instrument(catalog.INFLIGHT, reg)
        self.batch = instrument(catalog.BATCH_SIZE, reg)
        self.queue = instrument(catalog.QUEUE, reg)
        self.predictions = instrument(catalog.PREDICTIONS, reg)
        self.confidence = instrument(catalog.CONFIDENCE, reg)
        self.area = instrument(catalog.CRACK_AREA, reg)
        self.inputs = {k: instrument(m, reg) for k, m in INPUT_FEATURES.items()}
        self.models: dict[str, ModelMetrics] = {}  # by name: the version requests count in first (champion)
        self.versions: dict[tuple[str, str], ModelMetrics] = {}  # every served version, a canary's too
        self._unknown = _Requests(self, UNKNOWN_MODEL, "", inflight=False)
        reg.register(_ScrapeCollector(self))
        if process:  # process_resident_memory_bytes & co, for the soak's memory bound
            ProcessCollector(registry=reg)

    def add_model(self, model, primary: bool = True) -> ModelMetrics:
        key = (model.name, str(model.version))
        mm = self.versions.get(key)
        if mm is None:
            mm = self.versions[key] = ModelMetrics(self, model)
        mm.model = model
        if primary:
            self.models[model.name] = mm
        return mm

    def set_primary(self, model) -> None:
        """``model`` (a served version) now answers its name's requests (a promotion)."""
        model.attach(self.add_model(model, primary=True))

    def remove_model(self, model) -> None:
        """A retired version: its series stop being exported (Prometheus sees them go stale)."""
        mm = self.versions.get((model.name, str(model.version)))
        if mm is not None and mm.model is model and self.models.get(model.name) is not mm:
            del self.versions[(model.name, str(model.version))]

    def retarget(self, model) -> None:
        """The request being answered goes to ``model`` (a canary picked another version than the
        one :meth:`begin` counted it for): count it in that version's series."""
        call = CURRENT_CALL.get()
        mm = self.versions.get((model.name, str(model.version)))
        if call is None or mm is None or call.ended or call.series is mm.requests:
            return
        if call.series.inflight is not None:
            call.series.inflight.dec()
        call.series = mm.requests
        if call.series.inflight is not None:
            call.series.inflight.inc()

    # ------------------------------------------------------------------ requests
    def begin(self, model_name: str, protocol: str) -> Call:
        mm = self.models.get(model_name)
        call = Call(mm.requests if mm is not None else self._unknown, protocol)
        if call.series.inflight is not None:
            call.series.inflight.inc()
        CURRENT_CALL.set(call)
        return call

    def end(self, call: Call, code: int) -> None:
        if call.ended:
            return
        call.ended = True
        call.series.done(call.protocol, int(code), time.perf_counter() - call.start)
        if call.series.inflight is not None:
            call.series.inflight.dec()

    # ------------------------------------------------------------------ exposition
    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """Off the event loop: the PSI of every window is computed now."""
        return await asyncio.to_thread(self.render)


class _ScrapeCollector:
    """Readiness, model info and drift, read from the models when Prometheus scrapes."""

    def __init__(self, front: FrontMetrics):
        self.front = front

    def collect(self):
        ready, info = family(catalog.READY), family(catalog.MODEL_INFO)
        psi, items = family(catalog.DRIFT_PSI), family(catalog.DRIFT_WINDOW)
        draining = self.front.draining()
        for mm in list(self.front.versions.values()):
            m, lv = mm.model, [mm.name, mm.version]
            ready.add_metric(lv, 1.0 if getattr(m, "ready", False) and not draining else 0.0)
            meta = getattr(m, "meta", None) or {}
            info.add_metric(lv + [str(getattr(m, "role", "champion")), str(getattr(m, "runtime_name", "")),
                                  str(meta.get("run_id") or "")], 1.0)
            if mm.drift is not None:
                for feature, value in sorted(mm.drift.psi().items()):
                    psi.add_metric(lv + [feature], value)
                items.add_metric(lv, float(mm.drift.count))
        return [ready, info, psi, items]


# ---------------------------------------------------------------------------- REST


def inference_route(path: str) -> tuple[str, str] | None:
    """(protocol, model name) of an inference path, None for anything else (health, metadata)."""
    if path.startswith("/v1/models/"):
        rest = path[len("/v1/models/"):]
        for verb in (":predict", ":explain"):
            if rest.endswith(verb):
                return "rest-v1", rest[: -len(verb)]
        return None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        rest = path[len("/v2/models/"): -len("/infer")]
        return "rest-v2", rest.split("/versions/", 1)[0]
    return None


class RequestMetrics:
    """ASGI middleware (outermost, so refusals by the body limit count too): every REST inference
    request counted by its answer's status, timed from the moment its body is all in."""

    def __init__(self, app, metrics: FrontMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        route = inference_route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            return await self.app(scope, receive, send)
        protocol, name = route
        metrics = self.metrics
        call = metrics.begin(name, protocol)
        status, started = 500, False

        async def timed_receive():
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                call.parsed()
            return message

        async def counted_send(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                metrics.end(call, status)  # before the last byte: a client that scrapes next sees it
            await send(message)

        try:
            await self.app(scope, timed_receive, counted_send)
        except BaseException as exc:
            # unanswered: the server error middleware, outside us, answers as status_of maps it
            metrics.end(call, status if started else code_of(exc))
            raise
        finally:
            metrics.end(call, status)  # no-op when already counted
