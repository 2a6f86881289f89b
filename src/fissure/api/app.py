"""The feedback API: :func:`create_app` builds the FastAPI app that ``fissure api`` serves.

Routes (docs/feedback.md has the contract; OpenAPI at /docs and /openapi.json):
/ping, /metrics, /predict, /save-for-retrain, /predictions[/{id}[/image|overlay|mask|heatmap|feedback]],
/feedback/{id}/mask, /review-queue, /feedback/export, /retrain[/{id}], /tokens, /pipeline/events, and the
UI's pages.

Every error is ``{"error": "<one line>"}`` with its status from :func:`fissure.errors.status_of`
(400 for a malformed request too, where FastAPI would say 422); a client's mistake is never a
500. Each write is one store transaction, committed before the 2xx.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import fastapi_offline
import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from fissure import MODEL_NAMES, __version__
from fissure.api import export, ui
from fissure.api.auth import (ALL_ROLES, PIPELINE, ROLES, Principal, RateLimited, RateLimiter, Unauthenticated,
                               authenticate, create_token)
from fissure.api.forms import FORM_OVERHEAD, Form, read_form
from fissure.body_limit import BodyLimit
from fissure.api.inference import InferenceClient, InferenceResult
from fissure.api.metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from fissure.api.retrain import Retrainer, log_tail
from fissure.api.store import EVENT_KINDS, EVENT_NAME, MAX_EVENT_TEXT, PredictionFilter, Store, unavailable
from fissure.errors import FissureError, InputError, PermissionDenied, UnsupportedMediaType, status_of
from fissure.serving import codec
from fissure.settings import Settings, settings as current_settings, tracking_uri

log = logging.getLogger("fissure.api")

DEFAULT_MODEL = MODEL_NAMES["classify"]
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_NOTE = 4000
TRUE, FALSE = {"true"}, {"false", ""}  # a multipart boolean as the spec says: true or false
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# MPO: a phone's multi-picture JPEG (its first frame is an ordinary JPEG, which is what is decoded)
IMAGE_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff",
              "WEBP": "image/webp"}
NoNul = r"^[^\x00]*$"  # text the API takes holds no NUL byte (PostgreSQL's text cannot)


def _iso_only(value):
    """Dates as ISO-8601 text only: pydantic would also read '0.5' as a Unix time."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}", value.strip()):
        raise ValueError("expected an ISO-8601 date-time like 2026-01-31T12:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


# ---------------------------------------------------------------------------- response models

class ErrorOut(BaseModel):
    error: str


class FeedbackOut(BaseModel):
    id: str
    prediction_id: str
    user: str
    verdict: Literal["correct", "wrong"]
    label: str | None
    mask_sha256: str | None
    note: str | None
    created_at: datetime
    updated_at: datetime


class Links(BaseModel):
    image: str
    overlay: str
    mask: str | None
    heatmap: str | None


class PredictionOut(BaseModel):
    id: str
    image_sha256: str
    image_size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    model_name: str
    model_version: str
    mlflow_run_id: str | None
    task: Literal["classify", "segment"]
    output: dict[str, Any]
    uncertainty: float = Field(description="0..1, larger: the model is less sure (the review queue's order)")
    latency_ms: float
    created_at: datetime
    flag: Literal["unsatisfactory"] | None
    feedback: list[FeedbackOut]
    links: Links


class PredictionPage(BaseModel):
    items: list[PredictionOut]
    total: int
    page: int
    page_size: int


class Queue(BaseModel):
    items: list[PredictionOut]


class TokenIn(BaseModel):
    role: Literal["viewer", "annotator", "admin", "pipeline"]
    name: str | None = Field(None, max_length=128, pattern=NoNul)


class TokenOut(BaseModel):
    token: str = Field(description="shown once; the store keeps only its sha256")
    role: str
    name: str
    id: str


class RetrainQueued(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed"]


class RetrainOut(RetrainQueued):
    exit_code: int | None
    log_tail: str
    started_at: datetime | None
    finished_at: datetime | None


# pipeline events: one body per kind (the "kind" field picks it); the store checks them again
EventName = Annotated[str, Field(pattern=EVENT_NAME.pattern, description="served model name")]
EventVersion = Annotated[str, Field(pattern=EVENT_NAME.pattern, description="MLflow registered model version")]
Details = Annotated[dict[str, Any] | None, Field(
    None, description="free JSON object, at most 16 KiB: a gate's metrics and thresholds, a run's id and URL")]


class _EventIn(BaseModel):
    # strict: JSON's types as the schema says them (no true for a weight, no 4 for a version)
    model_config = ConfigDict(extra="forbid", strict=True)


class RetrainEventIn(_EventIn):
    """A retraining run ended (the Argo workflow; runs of POST /retrain are counted from their own table)."""
    kind: Literal["retrain"]
    result: Literal["succeeded", "failed"]
    model: EventName | None = None
    version: EventVersion | None = Field(None, description="the version it registered, if any")
    details: Details


class GateEventIn(_EventIn):
    """The offline gate decided on a candidate version."""
    kind: Literal["gate"]
    model: EventName
    version: EventVersion
    result: Literal["passed", "failed"]
    details: Details


class CanaryEventIn(_EventIn):
    """A canary step: the challenger version served ``weight`` percent of traffic and passed or failed."""
    kind: Literal["canary"]
    model: EventName
    version: EventVersion
    weight: float = Field(ge=0, le=100, allow_inf_nan=False, description="challenger's share of traffic, percent")
    result: Literal["passed", "failed"]
    details: Details


class ChampionChangeIn(_EventIn):
    """The champion moved from ``from_version`` to ``to_version`` (promotion, or a rollback to the old one)."""
    kind: Literal["promotion", "rollback"]
    model: EventName
    to_version: EventVersion = Field(description="the champion after this event")
    from_version: EventVersion | None = Field(None, description="promotion: the old champion; "
                                                                "rollback: the version rolled back")
    who: str | None = Field(None, max_length=128, pattern=NoNul)
    why: str | None = Field(None, max_length=MAX_EVENT_TEXT, pattern=NoNul)
    details: Details


PipelineEventIn = Annotated[Union[RetrainEventIn, GateEventIn, CanaryEventIn, ChampionChangeIn],
                            Field(discriminator="kind")]


class PipelineEventOut(BaseModel):
    id: int
    kind: Literal["retrain", "gate", "canary", "promotion", "rollback"]
    created_at: datetime
    model: str | None
    version: str | None
    result: str | None
    weight: float | None
    from_version: str | None
    to_version: str | None
    who: str | None
    why: str | None
    details: dict[str, Any] | None
    recorded_by: str = Field(description="the name of the token that recorded it")


class PipelineEventPage(BaseModel):
    items: list[PipelineEventOut]
    total: int
    page: int
    page_size: int


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorOut} for code in codes}


# every route with a token: who may call, how often, and the store being reachable (503)
AUTH_ERRORS = {**_errors(401, 403, 503), 429: {"model": ErrorOut, "headers": {"Retry-After": {
    "description": "seconds until this token may send again", "schema": {"type": "integer"}}}}}
IMAGE_TYPES = {t: {} for t in ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp")}


def _form_body(properties: dict, required: list[str], encoding: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": required}, "encoding": encoding}}}}


PREDICT_BODY = _form_body({
    "file": {"type": "string", "format": "binary", "description": "the image (JPEG, PNG, BMP, TIFF, WebP)"},
    "model": {"type": "string", "default": DEFAULT_MODEL, "pattern": MODEL_NAME.pattern,
              "description": "served model name"},
    "explain": {"type": "boolean", "default": False, "description": "also store the explanation heatmap"},
}, ["file"], {"file": {"contentType": ", ".join(IMAGE_TYPES)}})
FEEDBACK_BODY = _form_body({
    "verdict": {"type": "string", "enum": ["correct", "wrong"]},
    "label": {"type": "string", "pattern": NoNul,
              "description": "the right class (classifier predictions): not the predicted one with verdict wrong, "
                             "the predicted one (or none) with verdict correct"},
    "note": {"type": "string", "maxLength": MAX_NOTE, "pattern": NoNul},
    "mask": {"type": "string", "format": "binary",
             "description": "the right mask (segmenter predictions): PNG of the image's size, 0/255"},
}, ["verdict"], {"mask": {"contentType": "image/png"}})


# ---------------------------------------------------------------------------- the app

def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The API over ``store`` (default: from the settings); migrated and recovered at start-up."""
    cfg = settings or current_settings()
    store = store or Store(cfg.database_url, cfg.blob_url)
    metrics = Metrics(store, tracking_uri=tracking_uri)
    limiter = RateLimiter(cfg.api_rate_limit)
    retrainer = Retrainer(store, cfg.retrain_command, Path(cfg.home).resolve() / "retrain")
    max_upload = cfg.api_max_upload_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(store.migrate)
        await run_in_threadpool(retrainer.recover)
        app.state.inference = InferenceClient(cfg.inference_url)
        try:
            yield
        finally:
            await app.state.inference.aclose()
            await run_in_threadpool(retrainer.close)

    app = FastAPI(title="fissure API", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Predictions, feedback and the retraining loop of fissure. Send "
                              "`Authorization: Bearer <token>`; roles viewer < annotator < admin, and "
                              "pipeline (pipeline events only).")
    app.state.settings, app.state.store, app.state.metrics = cfg, store, metrics
    # outermost last: metrics, HEAD, the body cap, NUL in the URL, then the routes
    app.add_middleware(RefuseNul)
    app.add_middleware(BodyLimit, limit=max_upload + FORM_OVERHEAD,
                       setting=f"FISSURE_API_MAX_UPLOAD_BYTES={max_upload} for a file, "
                               f"plus {FORM_OVERHEAD // 2**20} MiB for the rest of the body")
    app.add_middleware(HeadAsGet)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _error_handlers(app)

    bearer = HTTPBearer(auto_error=False, description="an API token (fissure token create)")

    def role(*required: str):
        # the message names every role that passes (admin may record pipeline events too)
        others = [r for r in ALL_ROLES if r not in required
                  and any(Principal("", "", r).allows(q) for q in required)]
        needs = f"the {' or '.join(required)} role" + (f" (or {' or '.join(others)})" if others else "")

        async def dependency(request: Request, _=Security(bearer)) -> Principal:
            who = await run_in_threadpool(authenticate, store, request.headers.get("authorization"))
            limiter.take(who.token_id)
            if not any(who.allows(r) for r in required):
                raise PermissionDenied(f"this needs {needs}; the token {who.name!r} is {who.role}")
            return who
        return dependency

    viewer, annotator, admin = (Depends(role(r)) for r in ROLES)
    pipeline_writer, pipeline_reader = Depends(role(PIPELINE)), Depends(role("viewer", PIPELINE))

    def links(request: Request, p) -> dict:
        base = f"{request.scope.get('root_path', '').rstrip('/')}/predictions/{p.id}"
        return {"image": f"{base}/image", "overlay": f"{base}/overlay",
                "mask": f"{base}/mask" if p.mask_sha256 else None,
                "heatmap": f"{base}/heatmap" if p.heatmap_sha256 else None}

    def prediction_out(request: Request, p) -> dict:
        return {"id": p.id, "image_sha256": p.image_sha256, "image_size": [p.image_height, p.image_width],
                "model_name": p.model_name, "model_version": p.model_version, "mlflow_run_id": p.mlflow_run_id,
                "task": p.task, "output": p.output, "uncertainty": p.uncertainty, "latency_ms": p.latency_ms,
                "created_at": p.created_at, "flag": p.flag,
                "feedback": [feedback_out(f) for f in p.feedback], "links": links(request, p)}

    # ------------------------------------------------------------------ open routes
    docs_static = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI's files, no CDN
    app.mount("/docs/static", StaticFiles(directory=docs_static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="fissure API",
                                   swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs/static/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs/static/favicon.png")

    @app.get("/ping", tags=["health"], summary="Liveness: the process answers")
    def ping() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ predictions
    async def predict_and_store(request: Request, who: Principal, flag: str | None) -> dict:
        form = await read_form(request, max_upload)
        upload = form.files.get("file")
        if upload is None:
            raise InputError("send the image as the form file 'file'")
        model = form.fields.get("model", DEFAULT_MODEL)  # absent: the default; empty: not a name
        if not MODEL_NAME.match(model):
            raise InputError(f"not a model name: {model[:80]!r}")
        explain = _bool(form, "explain")
        size, media_type = await run_in_threadpool(_image_info, upload.data)
        result = await request.app.state.inference.predict(upload.data, model, explain=explain)
        row = await run_in_threadpool(_store_prediction, store, who, upload.data, media_type, size, result, flag)
        metrics.predictions.labels(row.model_name, row.model_version).inc()
        return prediction_out(request, row)

    @app.post("/predict", tags=["predictions"], status_code=201, response_model=PredictionOut,
              summary="Predict with a served model and store the prediction",
              openapi_extra=PREDICT_BODY, responses={**AUTH_ERRORS, **_errors(400, 404, 413, 415, 502)})
    async def predict(request: Request, who: Principal = viewer):
        return await predict_and_store(request, who, None)

    @app.post("/save-for-retrain", tags=["predictions"], status_code=201, response_model=PredictionOut,
              summary="As /predict, flagged 'unsatisfactory' (the seed designs' alias)",
              openapi_extra=PREDICT_BODY, responses={**AUTH_ERRORS, **_errors(400, 404, 413, 415, 502)})
    async def save_for_retrain(request: Request, who: Principal = viewer):
        return await predict_and_store(request, who, "unsatisfactory")

    @app.get("/predictions", tags=["predictions"], response_model=PredictionPage,
             summary="Stored predictions, newest first", responses={**AUTH_ERRORS, **_errors(400)})
    def list_predictions(request: Request, who: Principal = viewer,
                         model: str | None = Query(None, max_length=128),
                         version: str | None = Query(None, max_length=64),
                         verdict: Literal["correct", "wrong", "none"] | None = None,
                         has_feedback: bool | None = None,
                         since: IsoDateTime | None = Query(None, description="ISO-8601; naive means UTC"),
                         until: IsoDateTime | None = Query(None, description="ISO-8601, exclusive"),
                         page: int = Query(1, ge=1, le=1_000_000), page_size: int = Query(20, ge=1, le=100)):
        filt = PredictionFilter(model=model, version=version, verdict=verdict, has_feedback=has_feedback,
                                since=_utc(since), until=_utc(until))
        items, total = store.list_predictions(filt, page, page_size)
        return {"items": [prediction_out(request, p) for p in items], "total": total, "page": page,
                "page_size": page_size}

    @app.get("/predictions/{prediction_id}", tags=["predictions"], response_model=PredictionOut,
             summary="One prediction with its feedback", responses={**AUTH_ERRORS, **_errors(404)})
    def get_prediction(request: Request, prediction_id: str, who: Principal = viewer):
        return prediction_out(request, store.get_prediction(prediction_id))

    def blob_route(kind: str, what: str):
        @app.get(f"/predictions/{{prediction_id}}/{kind}", tags=["predictions"], response_class=Response,
                 summary=what, responses={200: {"content": IMAGE_TYPES}, **AUTH_ERRORS,
                                          **_errors(404)})
        def blob(prediction_id: str, who: Principal = viewer):
            p = store.get_prediction(prediction_id)
            digest = getattr(p, f"{kind}_sha256")
            if not digest:
                raise FissureError(f"prediction {prediction_id} has no {kind}", http_status=404)
            media = p.image_media_type if digest == p.image_sha256 else "image/png"
            return Response(store.blobs.get(digest), media_type=media,
                            headers={"Cache-Control": "private, max-age=31536000, immutable",
                                     "ETag": f'"{digest}"'})
        blob.__name__ = f"prediction_{kind}"

    blob_route("image", "The uploaded image, as sent")
    blob_route("overlay", "The prediction drawn over the image (PNG; a classifier's without heatmap: the image)")
    blob_route("mask", "The predicted mask, 0/255 PNG (segmenter)")
    blob_route("heatmap", "The explanation heatmap, 8-bit PNG (classifier with explain; segmenter: p(crack))")

    # ------------------------------------------------------------------ feedback
    @app.post("/predictions/{prediction_id}/feedback", tags=["feedback"], response_model=FeedbackOut,
              summary="Judge a prediction (one row per prediction and user: a resubmission updates it)",
              openapi_extra=FEEDBACK_BODY,
              responses={**AUTH_ERRORS, **_errors(400, 404, 413, 415)})
    async def give_feedback(request: Request, prediction_id: str, who: Principal = annotator):
        pred = await run_in_threadpool(store.get_prediction, prediction_id)
        form = await read_form(request, max_upload)
        row = await run_in_threadpool(_store_feedback, store, who, pred, form)
        return feedback_out(row)

    @app.get("/feedback/{feedback_id}/mask", tags=["feedback"], response_class=Response,
             summary="The corrected mask a feedback carries (0/255 PNG)",
             responses={200: {"content": {"image/png": {}}}, **AUTH_ERRORS, **_errors(404)})
    def feedback_mask(feedback_id: str, who: Principal = viewer):
        fb = store.get_feedback(feedback_id)
        if not fb.mask_sha256:
            raise FissureError(f"feedback {feedback_id} has no mask", http_status=404)
        return Response(store.blobs.get(fb.mask_sha256), media_type="image/png")

    @app.get("/review-queue", tags=["feedback"], response_model=Queue,
             summary="Predictions nobody judged yet, most uncertain first",
             responses={**AUTH_ERRORS, **_errors(400)})
    def review_queue(request: Request, who: Principal = viewer, model: str | None = Query(None, max_length=128),
                     limit: int = Query(20, ge=1, le=100)):
        return {"items": [prediction_out(request, p) for p in store.review_queue(model, limit)]}

    @app.get("/feedback/export", tags=["feedback"], response_class=StreamingResponse,
             summary="The judged items as a zip in the layouts `fissure data prepare` reads (deterministic)",
             responses={200: {"content": {"application/zip": {}}}, **AUTH_ERRORS})
    async def export_zip(who: Principal = annotator):
        spool = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
        await run_in_threadpool(export.write_zip, store, spool)
        spool.seek(0)

        def chunks():
            with spool:
                while data := spool.read(1024 * 1024):
                    yield data

        return StreamingResponse(chunks(), media_type="application/zip",
                                 headers={"Content-Disposition": 'attachment; filename="fissure-feedback.zip"'})

    # ------------------------------------------------------------------ admin
    @app.post("/retrain", tags=["admin"], status_code=202, response_model=RetrainQueued,
              summary="Queue a retraining run (export + dvc repro, in the background)",
              responses={**AUTH_ERRORS})
    def retrain(who: Principal = admin):
        run = retrainer.submit(who.name)
        return {"id": run.id, "state": run.state}

    @app.get("/retrain/{run_id}", tags=["admin"], response_model=RetrainOut, summary="A retraining run's state",
             responses={**AUTH_ERRORS, **_errors(404)})
    def retrain_state(run_id: str, who: Principal = admin):
        run = store.get_run(run_id)
        return {"id": run.id, "state": run.state, "exit_code": run.exit_code, "log_tail": log_tail(run.log_path),
                "started_at": run.started_at, "finished_at": run.finished_at}

    @app.post("/tokens", tags=["admin"], status_code=201, response_model=TokenOut, summary="Create a token",
              responses={**AUTH_ERRORS, **_errors(400)})
    def new_token(body: TokenIn, who: Principal = admin):
        token, row = create_token(store, body.role, body.name)
        return {"token": token, "role": row.role, "name": row.name, "id": row.id}

    # ------------------------------------------------------------------ pipeline
    @app.post("/pipeline/events", tags=["pipeline"], status_code=201, response_model=PipelineEventOut,
              summary="Record a pipeline event: a retraining run's end, a gate decision, a canary step, "
                      "a promotion or a rollback (admin or pipeline token)",
              responses={**AUTH_ERRORS, **_errors(400)})
    def record_event(body: PipelineEventIn, who: Principal = pipeline_writer):
        fields = body.model_dump(exclude={"kind"})
        return event_out(store.record_event(body.kind, who.name, **fields))

    @app.get("/pipeline/events", tags=["pipeline"], response_model=PipelineEventPage,
             summary="Recorded pipeline events, newest first", responses={**AUTH_ERRORS, **_errors(400)})
    def list_events(who: Principal = pipeline_reader, model: str | None = Query(None, max_length=128),
                    kind: Literal[EVENT_KINDS] | None = None,
                    page: int = Query(1, ge=1, le=1_000_000), page_size: int = Query(50, ge=1, le=200)):
        items, total = store.list_events(model, kind, page, page_size)
        return {"items": [event_out(e) for e in items], "total": total, "page": page, "page_size": page_size}

    app.include_router(ui.router)
    app.openapi = lambda: _openapi(app)
    return app


def feedback_out(f) -> dict:
    return {"id": f.id, "prediction_id": f.prediction_id, "user": f.user, "verdict": f.verdict, "label": f.label,
            "mask_sha256": f.mask_sha256, "note": f.note, "created_at": f.created_at, "updated_at": f.updated_at}


def event_out(e) -> dict:
    return {"id": e.id, "kind": e.kind, "created_at": e.created_at, "model": e.model, "version": e.version,
            "result": e.result, "weight": e.weight, "from_version": e.from_version, "to_version": e.to_version,
            "who": e.who, "why": e.why, "details": e.details, "recorded_by": e.recorded_by}


# ---------------------------------------------------------------------------- helpers

def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _bool(form: Form, name: str) -> bool:
    value = form.fields.get(name, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise InputError(f"{name} must be true or false; got {value[:40]!r}")


def _image_info(data: bytes) -> tuple[tuple[int, int], str]:
    """(height, width) and media type of an upload, from its header (415 when not an image)."""
    from fissure.preprocess import open_image  # imports torch: on the first upload, not at start

    with open_image(data) as img:
        return (img.height, img.width), IMAGE_MIME.get(img.format, "application/octet-stream")


def _store_prediction(store: Store, who: Principal, image: bytes, media_type: str, size: tuple[int, int],
                      result: InferenceResult, flag: str | None):
    """Blobs first (image, mask, heatmap, overlay), then the row, in one transaction."""
    from fissure.preprocess import decode_image  # imports torch: on the first upload, not at start

    image_sha = store.blobs.put(image)
    mask_sha = store.blobs.put(result.mask_png) if result.mask_png else None
    heatmap_sha = store.blobs.put(result.heatmap_png) if result.heatmap_png else None
    overlay_sha = image_sha
    if result.mask_png or (result.heatmap_png and result.task == "classify"):
        picture = decode_image(image)
        if result.mask_png:
            layer = codec.png_to_mask(result.mask_png)
        else:
            with Image.open(io.BytesIO(result.heatmap_png), formats=["PNG"]) as heat:
                layer = np.asarray(heat.convert("L"), dtype=np.float32) / 255.0
        buf = io.BytesIO()
        codec.overlay(picture, layer).save(buf, format="PNG", compress_level=1)
        overlay_sha = store.blobs.put(buf.getvalue())
    return store.add_prediction(
        created_by=who.name, image_sha256=image_sha, image_media_type=media_type, image_height=size[0],
        image_width=size[1], model_name=result.model_name, model_version=result.model_version,
        mlflow_run_id=result.mlflow_run_id, task=result.task, output=result.output,
        uncertainty=result.uncertainty, latency_ms=round(result.latency_ms, 3), flag=flag,
        overlay_sha256=overlay_sha, mask_sha256=mask_sha, heatmap_sha256=heatmap_sha)


def _store_feedback(store: Store, who: Principal, pred, form: Form):
    verdict = form.fields.get("verdict", "").strip()
    if verdict not in ("correct", "wrong"):
        raise InputError(f"verdict must be correct or wrong; got {verdict[:40]!r}")
    label = form.fields.get("label", "").strip() or None
    note = form.fields.get("note", "").strip() or None
    if note and len(note) > MAX_NOTE:
        raise InputError(f"the note is over {MAX_NOTE} characters")
    mask = form.files.get("mask")
    if mask is not None and not mask.data:
        mask = None  # an empty file field: a browser form with no file chosen
    classes = sorted((pred.output.get("probabilities") or {}))
    if label is not None:
        if pred.task != "classify":
            raise InputError("label is for classifier predictions; send a mask for a segmenter's")
        if label not in classes:
            raise InputError(f"label {label[:80]!r} is not one of the model's classes {classes}")
        predicted = pred.output.get("label")
        if verdict == "correct" and label != predicted:
            raise InputError(f"verdict correct with label {label!r}, but the prediction is {predicted!r}: "
                             "send verdict=wrong to correct it")
        if verdict == "wrong" and label == predicted:
            raise InputError(f"verdict wrong with label {label!r}, the predicted label: send the right class, "
                             "or verdict=correct")
    mask_sha = None
    if mask is not None:
        if pred.task != "segment":
            raise InputError("mask is for segmenter predictions; send a label for a classifier's")
        if not mask.data.startswith(PNG_MAGIC):
            raise UnsupportedMediaType("the mask must be a PNG")
        try:
            pixels = codec.png_to_mask(mask.data)
        except UnidentifiedImageError:  # its message is Pillow's repr of the buffer
            raise InputError("unreadable mask: not a valid PNG image") from None
        except (OSError, SyntaxError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "corrupt"
            raise InputError(f"unreadable mask: not a valid PNG image ({reason})") from None
        if pixels.shape != (pred.image_height, pred.image_width):
            raise InputError(f"the mask is {pixels.shape[1]}x{pixels.shape[0]}; the image is "
                             f"{pred.image_width}x{pred.image_height}")
        mask_sha = store.blobs.put(codec.mask_to_png(pixels))  # stored as 0/255, before the row
    return store.put_feedback(pred.id, who.name, verdict, label=label, mask_sha256=mask_sha, note=note)


class RefuseNul:
    """ASGI middleware: a NUL byte (``%00``) in the path or the query string is a 400, before any
    route: PostgreSQL's text cannot hold one, and no id, name or filter has one. (Bodies: the form
    reader and the JSON models refuse NUL in their text fields.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            query = scope.get("query_string", b"")
            where = ("path" if "\x00" in scope["path"] else
                     "query string" if b"%00" in query or b"\x00" in query else None)
            if where:
                response = JSONResponse({"error": f"the request's {where} contains a NUL byte (%00)"}, status_code=400)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class HeadAsGet:
    """ASGI middleware: HEAD is answered as GET without the body (uptime checks, ``curl -I``);
    FastAPI's routes answer only the methods they name. The metrics still count it as HEAD."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        scope["method"] = "GET"  # in place: the router's match (scope["route"]) reaches the metrics
        try:
            await self.app(scope, receive, headers_only)
        finally:
            scope["method"] = "HEAD"


def _error_handlers(app: FastAPI) -> None:
    def answer(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(FissureError)
    async def fissure_error(request: Request, exc: FissureError):
        status, _, message = status_of(exc)
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = "Bearer"
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, message)
        return answer(status, message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette's Allow names only the first route of the path; a path with a route per
            # method (/pipeline/events: GET and POST) must name them all
            allowed = {m for route in request.app.router.routes if getattr(route, "methods", None)
                       and route.matches(request.scope)[0] != Match.NONE for m in route.methods}
            if allowed:
                headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return answer(exc.status_code, message.splitlines()[0] if message else "error", headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc, ctx, message = tuple(err.get("loc", ())), err.get("ctx") or {}, err.get("msg", "invalid")
        if err.get("type") == "json_invalid":  # loc: ("body", the character where parsing stopped)
            reason = f": {ctx['error']}" if ctx.get("error") else ""
            at = f" (at character {loc[1]})" if len(loc) > 1 else ""
            return answer(400, f"request body is not valid JSON{reason}{at}".splitlines()[0])
        if err.get("type") == "string_pattern_mismatch" and ctx.get("pattern") == NoNul:
            message = "must not contain a NUL byte"
        where = ".".join(str(x) for x in loc if x != "body") or "request"
        return answer(400, f"{where}: {message}".splitlines()[0])

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError):
        err = unavailable(request.app.state.store.url, exc)
        log.warning("%s %s -> 503: %s", request.method, request.url.path, err.message)
        return answer(503, err.message)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        status, _, message = status_of(exc)
        return answer(status, message)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema with our error shape: 400 {"error"} where it would document 422; string
    parameters say they hold no NUL (RefuseNul)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            for param in op.get("parameters", []):  # RefuseNul: no NUL in the path or the query string
                for s in [param.get("schema", {}), *param.get("schema", {}).get("anyOf", [])]:
                    if s.get("type") == "string" and not {"pattern", "enum", "format"} & s.keys():
                        s["pattern"] = NoNul
            responses = op.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": "Bad Request", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}})
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema
