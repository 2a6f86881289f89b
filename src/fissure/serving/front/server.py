"""The front's servers: REST (FastAPI under uvicorn) and gRPC, bound where we say, drained on stop.

kserve's routers provide the standard endpoints (health, metadata, v1 model list); the routes
added here first take over inference (our parser and limits), model metadata (versions),
TorchServe's native ``/predictions`` proxy and the model repository API, which is refused
(403 / PERMISSION_DENIED) unless ``FISSURE_ENABLE_REPOSITORY_API`` is set: an unauthenticated
unload would take a model away until restart. Every error goes through
:func:`fissure.errors.status_of`, the one mapping to HTTP and gRPC statuses.

``GET /metrics`` on the REST port is the front's Prometheus exposition (as KServe's model
server): the server's own registry, see :mod:`fissure.observability.serving`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from fissure.body_limit import BodyLimit
from fissure.errors import FissureError, InputError, NotFoundError, PermissionDenied, status_of
from fissure.observability.serving import FrontMetrics, RequestMetrics, code_of
import fissure.serving.front  # noqa: F401 - imports kserve safely first
from fissure.serving.canary import PINNED_VERSION, TrafficSplit
from fissure.serving.front.model import FrontModel
from fissure.serving.front.protocol import Limits, parse_v2_rest
from fissure.settings import settings

from kserve import errors as kserve_errors  # noqa: E402
from kserve.model_repository import ModelRepository  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402
from kserve.protocol.grpc.servicer import InferenceServicer  # noqa: E402
from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints  # noqa: E402
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints  # noqa: E402

log = logging.getLogger("fissure.serve")
REPOSITORY_OFF = "the model repository API is disabled; set FISSURE_ENABLE_REPOSITORY_API=true to allow load/unload"


class FrontDataPlane(DataPlane):
    """kserve's data plane, with model versions in metadata and readiness that means serving."""

    def __init__(self, model_registry: ModelRepository, split: TrafficSplit, metrics: FrontMetrics | None = None):
        super().__init__(model_registry)
        self.draining = False
        self.split = split
        self.metrics = metrics

    async def get_model(self, name: str):
        """The version that answers this request: the champion, a canary's challenger for its share,
        or the version the request named."""
        model = self.split.pick(name)
        if model is None:
            raise NotFoundError(f"model {name!r} is not served here")
        if self.metrics is not None:
            self.metrics.retarget(model)
        return model

    async def model_metadata(self, model_name: str) -> dict:
        meta = self.get_model_from_registry(model_name).metadata()
        versions, percent = self.split.versions(model_name)
        if len(versions) > 1:  # a canary: both versions, and the challenger's share
            meta = {**meta, "versions": versions,
                    "parameters": {**meta["parameters"], "canary_version": versions[1],
                                   "canary_traffic_percent": percent}}
        return meta

    async def ready(self) -> bool:
        models = self._model_registry.get_models().values()
        return not self.draining and bool(models) and all(m.ready for m in models)


class FrontServicer(InferenceServicer):
    """kserve's v2 gRPC service with our error mapping, versions, and the repository switch."""

    def __init__(self, data_plane, repository, repository_enabled: bool, metrics: FrontMetrics | None = None):
        super().__init__(data_plane, repository)
        self._repository_enabled = repository_enabled
        self._metrics = metrics

    async def ModelMetadata(self, request, context):
        return await _guard(context, self._metadata, request)

    async def _metadata(self, request):
        m = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(name=m["name"], versions=m["versions"], platform=m["platform"],
                                        inputs=m["inputs"], outputs=m["outputs"])

    async def ModelInfer(self, request, context):
        PINNED_VERSION.set(request.model_version or None)
        if self._metrics is None:
            return await _guard(context, lambda r: InferenceServicer.ModelInfer(self, r, context), request)
        call = self._metrics.begin(request.model_name, "grpc")
        try:
            response = await InferenceServicer.ModelInfer(self, request, context)
        except BaseException as exc:
            self._metrics.end(call, code_of(exc))  # the HTTP status its gRPC code maps from
            if not isinstance(exc, Exception):
                raise
            await _abort(context, exc, request)
        self._metrics.end(call, 200)
        return response

    async def RepositoryModelLoad(self, request, context):
        return await _guard(context, self._repository(InferenceServicer.RepositoryModelLoad, context), request)

    async def RepositoryModelUnload(self, request, context):
        return await _guard(context, self._repository(InferenceServicer.RepositoryModelUnload, context), request)

    def _repository(self, method, context):
        async def call(request):
            if not self._repository_enabled:
                raise PermissionDenied(REPOSITORY_OFF)
            return await method(self, request, context)
        return call


async def _guard(context, fn: Callable[..., Awaitable], request):
    try:
        return await fn(request)
    except Exception as exc:  # noqa: BLE001 - mapped to a status, never a traceback on the wire
        await _abort(context, exc, request)


async def _abort(context, exc: Exception, request):
    http, code, message = status_of(exc)
    if http >= 500 and not isinstance(exc, FissureError):
        log.error("gRPC %s failed", type(request).__name__, exc_info=exc)
    await context.abort(getattr(grpc.StatusCode, code), message)


def _error(exc: Exception) -> JSONResponse:
    http, _, message = status_of(exc)
    if http >= 500 and not isinstance(exc, FissureError):
        log.error("request failed: %s: %s", type(exc).__name__, exc)
    return JSONResponse(status_code=http, content={"error": message})


def build_app(dataplane: FrontDataPlane, repository: ModelRepositoryExtension, repository_enabled: bool,
              proxy: Callable[[str, str, bytes, str], Awaitable[Response]] | None, limits: Limits,
              metrics: FrontMetrics | None = None) -> FastAPI:
    app = FastAPI(title="fissure inference", docs_url=None, redoc_url=None)

    def model(name: str) -> FrontModel:
        m = dataplane.model_registry.get_model(name)
        if m is None:
            raise NotFoundError(f"model {name!r} is not served here")
        return m

    async def answer(model_name: str, result, headers) -> Response:
        result, res_headers = dataplane.encode(model_name=model_name, response=result, headers=headers,
                                               req_attributes={})
        if isinstance(result, bytes):
            return Response(content=result, headers=res_headers, media_type="application/octet-stream")
        return _json(result, res_headers)

    if metrics is not None:
        @app.get("/metrics", include_in_schema=False)
        async def prometheus():
            return Response(content=await metrics.render_async(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2/models/{model_name}", include_in_schema=False)
    async def v2_metadata(model_name: str):
        model(model_name)
        return await dataplane.model_metadata(model_name)

    @app.post("/v2/models/{model_name}/infer", include_in_schema=False)
    @app.post("/v2/models/{model_name}/versions/{model_version}/infer", include_in_schema=False)
    async def v2_infer(model_name: str, request: Request, model_version: str | None = None):
        model(model_name)
        PINNED_VERSION.set(model_version)  # the canary's pick honours it (404 for a version not served)
        headers = dict(request.headers)
        infer_request = parse_v2_rest(await request.body(), headers, model_name)
        result, _ = await dataplane.infer(model_name=model_name, request=infer_request, headers=headers)
        return await answer(model_name, result, headers)

    @app.get("/v1/models/{model_name}", include_in_schema=False)
    async def v1_model(model_name: str):
        m = model(model_name)
        return {"name": m.name, "ready": bool(m.ready), "versions": [m.version],
                "platform": m.platform, **m.metadata()["parameters"]}

    async def v1_body(request: Request):
        body = await request.body()
        ctype = request.headers.get("content-type", "")
        if "json" in ctype or body[:1].lstrip() in (b"{", b"["):
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"malformed JSON: {exc}") from None
        return body

    async def v1(call, model_name: str, request: Request) -> Response:
        model(model_name)
        result, _ = await call(model_name=model_name, request=await v1_body(request), headers=dict(request.headers))
        return _json(result)

    @app.post("/v1/models/{model_name}:predict", include_in_schema=False)
    async def v1_predict(model_name: str, request: Request):
        return await v1(dataplane.infer, model_name, request)

    @app.post("/v1/models/{model_name}:explain", include_in_schema=False)
    async def v1_explain(model_name: str, request: Request):
        return await v1(dataplane.explain, model_name, request)

    @app.post("/v2/repository/models/{model_name}/load", include_in_schema=False)
    @app.post("/v2/repository/models/{model_name}/unload", include_in_schema=False)
    async def v2_repository(model_name: str, request: Request):
        if not repository_enabled:
            raise PermissionDenied(REPOSITORY_OFF)
        if request.url.path.endswith("/load"):
            await repository.load(model_name)
            return {"name": model_name, "load": True}
        await repository.unload(model_name)
        return {"name": model_name, "unload": True}

    if proxy is not None:
        @app.post("/predictions/{model_name}", include_in_schema=False)
        @app.post("/explanations/{model_name}", include_in_schema=False)
        async def native(model_name: str, request: Request):
            model(model_name)
            kind = request.url.path.split("/")[1]
            ctype = request.headers.get("content-type") or "application/octet-stream"
            return await proxy(kind, model_name, await request.body(), ctype)

    async def validation(_req, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return _error(InputError(f"malformed JSON: {msg}"))
        return _error(InputError(f"invalid request{' at ' + where if where else ''}: {msg}"))

    async def any_error(_req, exc: Exception):
        return _error(exc)

    app.add_exception_handler(RequestValidationError, validation)
    # StarletteHTTPException: the body limit's 413 and unknown routes answer {"error"} too
    for exc_type in (FissureError, StarletteHTTPException, kserve_errors.InvalidInput, kserve_errors.ModelNotFound,
                     kserve_errors.ModelNotReady, kserve_errors.InferenceError, Exception):
        app.add_exception_handler(exc_type, any_error)
    register_v1_endpoints(app, dataplane, repository)
    register_v2_endpoints(app, dataplane, repository)
    app.add_api_route("/", dataplane.live, include_in_schema=False)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, setting="FISSURE_MAX_BODY_BYTES")
    if metrics is not None:  # added last: outermost, so the body limit's refusals are counted too
        app.add_middleware(RequestMetrics, metrics=metrics)
    return app


class FrontServer:
    """REST and gRPC on ``host``; ``run`` returns the exit code when stopped or when a watched
    dependency fails (``watch`` returns a reason to stop)."""

    def __init__(self, models: list[FrontModel], host: str, http_port: int, grpc_port: int, *,
                 repository_enabled: bool = False, limits: Limits | None = None, drain_seconds: float = 10.0,
                 grpc_threads: int = 8, proxy=None, background: Callable[[], Awaitable[str | None]] | None = None,
                 routing_file=None, loader: Callable | None = None):
        self.models = models
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.limits = limits or Limits.from_settings()
        self.drain_seconds = drain_seconds
        self.grpc_threads = grpc_threads
        self.background = background
        self.registry = ModelRepository()
        for m in models:
            self.registry.update(m)
        self.metrics = FrontMetrics(drift_window=settings().drift_window, draining=lambda: self.dataplane.draining)
        for m in models:
            m.attach(self.metrics.add_model(m))
        # which version answers; a canary beside the champions only with a routing file (the local
        # stack) and a loader for its models
        self.split = TrafficSplit(self.registry, loader, routing_file if loader is not None else None, self.metrics)
        self.dataplane = FrontDataPlane(self.registry, self.split, self.metrics)
        self.repository = ModelRepositoryExtension(model_registry=self.registry)
        self.repository_enabled = repository_enabled
        self.app = build_app(self.dataplane, self.repository, repository_enabled, proxy, self.limits, self.metrics)
        self.exit_code = 0

    async def _grpc(self) -> grpc.aio.Server:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.limits.max_body_bytes),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            FrontServicer(self.dataplane, self.repository, self.repository_enabled, self.metrics), server)
        if server.add_insecure_port(f"{_grpc_host(self.host)}:{self.grpc_port}") == 0:
            raise FissureError(f"cannot listen on {self.host}:{self.grpc_port} (gRPC)")
        await server.start()
        return server

    async def serve(self) -> int:
        config = uvicorn.Config(self.app, host=self.host, port=self.http_port, log_config=None,
                                timeout_graceful_shutdown=max(1, int(self.drain_seconds)),
                                timeout_keep_alive=65, lifespan="off")
        rest = uvicorn.Server(config)
        grpc_server = await self._grpc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Server._serve: uvicorn's serve() without its signal capture; our handlers stop both servers.
        tasks = [asyncio.ensure_future(rest._serve())]
        if self.background is not None:
            async def watched():
                reason = await self.background()
                if reason:
                    log.error("%s; stopping", reason)
                    self.exit_code = 1
                    stop.set()
            tasks.append(asyncio.ensure_future(watched()))
        if self.split.path is not None:
            tasks.append(asyncio.ensure_future(self.split.watch()))
        log.info("fissure front: REST http://%s:%d, gRPC %s:%d, models %s", self.host, self.http_port,
                 self.host, self.grpc_port, ", ".join(m.name for m in self.models))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([tasks[0], stopper], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():  # REST stopped by itself (e.g. it could not bind)
            self.exit_code = 1
        # Drain: readiness turns false at once, in-flight requests get drain_seconds.
        self.dataplane.draining = True
        log.info("draining for up to %.0fs", self.drain_seconds)
        rest.should_exit = True
        await asyncio.gather(grpc_server.stop(self.drain_seconds), tasks[0], return_exceptions=True)
        for t in tasks[1:] + [stopper]:
            t.cancel()
        serving = list(self.registry.get_models().values())
        serving += list(self.split.challengers.values())
        for m in serving:
            close = getattr(m, "close", None)
            if close is not None:
                await close()
        return self.exit_code


def _json(content, headers=None) -> Response:
    return Response(content=orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), headers=headers,
                    media_type="application/json")


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
