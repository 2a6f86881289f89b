"""Every metric fissure exports: one place for names, types, labels and buckets.

The serving front, the API, the Prometheus rules (charts/fissure/files/prometheus/), the Grafana
dashboards (dashboards/) and the canary analysis all read these names; tests check that every
series a rule or a panel uses is declared here.

Label conventions (as KServe and kube-state-metrics): ``model`` is the served name
(``crack-classifier``, ``crack-segmenter``), ``version`` the MLflow registered model version
the process serves, ``protocol`` one of :data:`PROTOCOLS`, ``code`` the HTTP status of the
answer (gRPC answers carry the HTTP status their error maps to, see :mod:`fissure.errors`, so one
``code=~"5.."`` selects server errors across protocols). Whether a version is the champion or
the challenger is in ``fissure_model_info{role}``, joined on (model, version).
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOLS = ("rest-v1", "rest-v2", "grpc")
DRIFT_FEATURES = ("brightness", "contrast", "sharpness", "megapixels", "confidence")
VERDICTS = ("correct", "wrong")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
AREA_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MEGAPIXEL_BUCKETS = (0.05, 0.1, 0.3, 1.0, 2.0, 5.0, 8.0, 12.0, 20.0, 50.0)
UNIT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # brightness in [0, 1]
CONTRAST_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)  # grey-level std in [0, 0.5]
SHARPNESS_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # mean |Laplacian| of grey in [0, 1]


@dataclass(frozen=True)
class Metric:
    name: str  # as exported; counters get "_total" from prometheus-client
    kind: str  # counter | histogram | gauge | info
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None
    source: str = "front"  # front | api | torchserve

    @property
    def series(self) -> str:
        """The name a PromQL query uses (counters: ``_total``; histograms: ``_bucket`` etc. are suffixes)."""
        return self.name + "_total" if self.kind == "counter" else self.name


MV = ("model", "version")

# --------------------------------------------------------------------------- serving (the front)
REQUESTS = Metric("fissure_requests", "counter", "Inference requests answered, by protocol and HTTP status",
                  MV + ("protocol", "code"))
LATENCY = Metric("fissure_request_duration_seconds", "histogram",
                 "Inference request latency in the front, from parsed request to answer",
                 MV + ("protocol",), LATENCY_BUCKETS)
BATCH_SIZE = Metric("fissure_batch_size", "histogram", "Images per model call (the runtime's batch)",
                    MV, BATCH_BUCKETS)
QUEUE = Metric("fissure_queue_seconds", "histogram", "Time a request waits before its model call starts",
               MV, LATENCY_BUCKETS)
INFLIGHT = Metric("fissure_inflight_requests", "gauge", "Inference requests being answered now", MV)
READY = Metric("fissure_model_ready", "gauge", "1 when the model answers inference, 0 when loading or draining", MV)
MODEL_INFO = Metric("fissure_model_info", "gauge",
                    "Always 1: what a served model version is (role champion|challenger, runtime, MLflow run)",
                    MV + ("role", "runtime", "run_id"))

# --------------------------------------------------------------------------- model behaviour
PREDICTIONS = Metric("fissure_predictions", "counter",
                     "Predicted images by outcome: the class (classifier) or crack|no_crack (segmenter)",
                     MV + ("label",))
CONFIDENCE = Metric("fissure_prediction_confidence", "histogram",
                    "Confidence per image: top-class probability (classifier) or mean max(p, 1-p) over pixels (segmenter)",
                    MV, CONFIDENCE_BUCKETS)
CRACK_AREA = Metric("fissure_crack_area_ratio", "histogram", "Share of an image's pixels segmented as crack",
                    MV, AREA_BUCKETS)
INPUT_MEGAPIXELS = Metric("fissure_input_megapixels", "histogram", "Input image size in megapixels",
                          MV, MEGAPIXEL_BUCKETS)
INPUT_BRIGHTNESS = Metric("fissure_input_brightness", "histogram", "Mean grey level of the input, 0-1",
                          MV, UNIT_BUCKETS)
INPUT_CONTRAST = Metric("fissure_input_contrast", "histogram", "Grey-level standard deviation of the input, 0-0.5",
                        MV, CONTRAST_BUCKETS)
INPUT_SHARPNESS = Metric("fissure_input_sharpness", "histogram",
                         "Mean absolute Laplacian of the input's grey levels at model size", MV, SHARPNESS_BUCKETS)

# --------------------------------------------------------------------------- drift
DRIFT_PSI = Metric("fissure_drift_psi", "gauge",
                   "Population stability index of recent inputs/confidences against the model's training profile",
                   MV + ("feature",))
DRIFT_WINDOW = Metric("fissure_drift_window_items", "gauge", "Images in the window the PSI is computed over", MV)

# --------------------------------------------------------------------------- people (the API, from its store)
FEEDBACK = Metric("fissure_feedback", "counter",
                  "Feedback verdicts (correct|wrong; one per prediction and user, a changed verdict moves), "
                  "from the store",
                  MV + ("verdict",), source="api")
DISAGREEMENT = Metric("fissure_feedback_disagreement_ratio", "gauge",
                      "wrong / judged over all stored feedback for a model version", MV, source="api")

# --------------------------------------------------------------------------- pipeline (the API, from its store)
RETRAIN_RUNS = Metric("fissure_retrain_runs", "counter", "Finished retraining runs by state (succeeded|failed)",
                      ("state",), source="api")
GATE_DECISIONS = Metric("fissure_gate_decisions", "counter", "Offline gate decisions by result (passed|failed)",
                        ("model", "result"), source="api")
CANARY_STEPS = Metric("fissure_canary_steps", "counter", "Canary steps by result (passed|failed)",
                      ("model", "result"), source="api")
PROMOTIONS = Metric("fissure_promotions", "counter", "Canary outcomes by action (promoted|rolled_back)",
                    ("model", "action"), source="api")
CANARY_WEIGHT = Metric("fissure_canary_weight_percent", "gauge", "Share of traffic sent to the challenger now",
                       MV, source="api")
CHAMPION = Metric("fissure_champion_info", "gauge", "Always 1: the version the MLflow alias champion points at",
                  ("model", "version"), source="api")

# --------------------------------------------------------------------------- the API's own HTTP traffic
API_REQUESTS = Metric("fissure_api_requests", "counter", "API HTTP requests by route template and status",
                      ("method", "route", "status"), source="api")
API_LATENCY = Metric("fissure_api_request_seconds", "histogram", "API HTTP request latency by route and status",
                     ("method", "route", "status"), LATENCY_BUCKETS, source="api")
API_PREDICTIONS = Metric("fissure_api_predictions", "counter",
                         "Predictions this API process stored (POST /predict), by model and version",
                         MV, source="api")

# TorchServe's own (runtime=torchserve, port 8082): what 0.12 really exports in Prometheus mode
# (checked against a running TorchServe: see docs/observability.md); labelled by its own names.
TORCHSERVE_SERIES = ("ts_inference_requests_total", "ts_inference_latency_microseconds",
                     "ts_queue_latency_microseconds")

ALL: tuple[Metric, ...] = tuple(v for v in globals().values() if isinstance(v, Metric))
BY_NAME = {m.name: m for m in ALL}


def series_names() -> set[str]:
    """Every series name a query may use: counters' ``_total``, histograms' ``_bucket|_sum|_count``."""
    out: set[str] = set()
    for m in ALL:
        if m.kind == "histogram":
            out |= {m.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            out.add(m.series)
    return out
