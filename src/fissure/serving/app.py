"""Wiring of the kserve ModelServer: fissure's data plane, routes, error mapping and gRPC servicer."""

from __future__ import annotations

import logging

from fissure.serving.backend import Backend, BackendError
from fissure.serving.front import RequestRejected, TorchServeModel, kserve

log = logging.getLogger("fissure.serve")

import kserve.protocol.grpc.server as _grpc_server  # noqa: E402
from fastapi import Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
import orjson  # noqa: E402
from fastapi.responses import JSONResponse, ORJSONResponse, Response  # noqa: E402
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER  # noqa: E402
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput  # noqa: E402
from grpc import StatusCode  # noqa: E402
from kserve.errors import ModelNotFound  # noqa: E402
from kserve.model_server import app  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402
from kserve.protocol.grpc.servicer import InferenceServicer  # noqa: E402


class FissureDataPlane(DataPlane):
    """Adds model versions/platform to metadata and ties server readiness to TorchServe."""

    def __init__(self, model_registry, ts):
        super().__init__(model_registry)
        self._ts = ts

    async def model_metadata(self, model_name: str) -> dict:
        model = self.get_model_from_registry(model_name)
        return model.metadata()

    async def ready(self) -> bool:
        models = self._model_registry.get_models().values()
        return self._ts.alive() and bool(models) and all(m.ready for m in models)


class FissureServicer(InferenceServicer):
    """Standard v2 gRPC service; ModelMetadata also reports versions, backend errors map to UNAVAILABLE."""

    async def ModelMetadata(self, request, context):
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=metadata["inputs"],
            outputs=metadata["outputs"],
        )

    async def ModelInfer(self, request, context):
        try:
            return await super().ModelInfer(request, context)
        except BackendError as exc:
            await context.abort(StatusCode.UNAVAILABLE, exc.reason)


class FissureModelServer(kserve.ModelServer):
    pass


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": (reason or "error").splitlines()[0]})


_routes_added = False


def _add_routes(server: FissureModelServer, backend: Backend) -> None:
    """Routes that must win over kserve's own (added first to the shared FastAPI app)."""
    global _routes_added
    if _routes_added:
        return
    _routes_added = True

    def model(name: str) -> TorchServeModel:
        m = server.registered_models.get_model(name)
        if m is None:
            raise ModelNotFound(name)
        return m

    @app.get("/v2/models/{model_name}", include_in_schema=False)
    async def v2_metadata(model_name: str):
        return model(model_name).metadata()

    @app.post("/v2/models/{model_name}/infer", include_in_schema=False)
    async def v2_infer(model_name: str, request: Request):
        # Our own parsing: kserve 0.21 turns binary-extension BYTES inputs into UTF-8 text,
        # which fails for image bytes (and echoes the whole payload in a 500).
        model(model_name)
        headers = dict(request.headers)
        infer_request = parse_v2_request(await request.body(), headers, model_name)
        result, _ = await server.dataplane.infer(model_name=model_name, request=infer_request, headers=headers)
        result, res_headers = server.dataplane.encode(model_name=model_name, response=result,
                                                      headers=headers, req_attributes={})
        if isinstance(result, bytes):
            return Response(content=result, headers=res_headers, media_type="application/octet-stream")
        return ORJSONResponse(content=result, headers=res_headers)

    @app.get("/v1/models/{model_name}", include_in_schema=False)
    async def v1_model(model_name: str):
        m = model(model_name)
        return {"name": m.name, "ready": bool(m.ready), "versions": [m.version],
                "platform": "pytorch_torchserve", **m.metadata()["parameters"]}

    async def proxy(kind: str, model_name: str, request: Request):
        model(model_name)
        ctype = request.headers.get("content-type") or "application/octet-stream"
        if ctype.startswith("application/x-www-form-urlencoded"):  # curl's default for --data-binary
            ctype = "application/octet-stream"
        headers = {"Content-Type": ctype}
        resp = await backend.post(f"/{kind}/{model_name}", await request.body(), headers)
        return Response(content=resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", "application/json"))

    @app.post("/predictions/{model_name}", include_in_schema=False)
    async def predictions(model_name: str, request: Request):
        return await proxy("predictions", model_name, request)

    @app.post("/explanations/{model_name}", include_in_schema=False)
    async def explanations(model_name: str, request: Request):
        return await proxy("explanations", model_name, request)

    async def rejected(_req, exc: RequestRejected):
        return _error(exc.status, exc.reason)

    async def backend_error(_req, exc: BackendError):
        log.error("backend error: %s", exc.reason)
        return _error(exc.status, exc.reason)

    async def validation(_req, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return _error(400, f"malformed JSON: {msg}")
        return _error(400, f"invalid request{' at ' + where if where else ''}: {msg}")

    app.add_exception_handler(RequestRejected, rejected)
    app.add_exception_handler(BackendError, backend_error)
    app.add_exception_handler(RequestValidationError, validation)


def parse_v2_request(body: bytes, headers: dict, model_name: str) -> InferRequest:
    """v2 JSON, or JSON + binary tensors (Inference-Header-Content-Length), -> InferRequest."""
    json_len = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
    try:
        n = int(json_len) if json_len is not None else len(body)
        if not 0 < n <= len(body):
            raise ValueError(f"{INFERENCE_CONTENT_LENGTH_HEADER} {n} outside the body")
    except ValueError as exc:
        raise RequestRejected(f"bad {INFERENCE_CONTENT_LENGTH_HEADER}: {exc}") from None
    try:
        doc = orjson.loads(body[:n])
    except orjson.JSONDecodeError as exc:
        raise RequestRejected(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise RequestRejected('v2 body must be {"inputs": [{"name", "datatype", "shape", "data"}, ...]}')
    inputs, offset = [], n
    for i, spec in enumerate(doc["inputs"]):
        if not isinstance(spec, dict) or not all(k in spec for k in ("name", "datatype", "shape")):
            raise RequestRejected(f"inputs[{i}] needs name, datatype and shape")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise RequestRejected(f"inputs[{i}].shape must be a list of non-negative integers")
        params = spec.get("parameters") or {}
        inp = InferInput(name=str(spec["name"]), shape=shape, datatype=str(spec["datatype"]), parameters=params)
        if "data" in spec:
            data = spec["data"]
            inp.data = data if isinstance(data, list) else [data]
        elif isinstance(params, dict) and isinstance(params.get("binary_data_size"), int):
            size = params["binary_data_size"]
            if offset + size > len(body):
                raise RequestRejected(f"inputs[{i}]: binary data shorter than binary_data_size")
            inp._raw_data = body[offset : offset + size]
            offset += size
        else:
            raise RequestRejected(f"inputs[{i}] has no data")
        inputs.append(inp)
    outputs = None
    if isinstance(doc.get("outputs"), list):
        outputs = [RequestedOutput(name=o.get("name"), parameters=o.get("parameters"))
                   for o in doc["outputs"] if isinstance(o, dict)]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=doc.get("id"),
                        parameters=doc.get("parameters"), request_outputs=outputs or None)


class _DropPerCallLines(logging.Filter):
    """kserve logs every gRPC call at INFO ("grpc method: ..."); keep the log for events."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("grpc method:")


def build_server(opts, ts, mars: list[dict]):
    backend = Backend(ts.inference)
    models = []
    for mar in mars:
        m = TorchServeModel(mar["served_name"], mar["meta"], mar["spec"], backend)
        m.ready = True
        models.append(m)
    server = FissureModelServer(
        http_port=opts.http_port,
        grpc_port=opts.grpc_port,
        enable_grpc=True,
        max_threads=opts.grpc_threads,
        grace_period=10,
        enable_latency_logging=False,
    )
    server.dataplane = FissureDataPlane(server.registered_models, ts)
    logging.getLogger("kserve").addFilter(_DropPerCallLines())
    _grpc_server.InferenceServicer = FissureServicer
    _add_routes(server, backend)
    return server, models
