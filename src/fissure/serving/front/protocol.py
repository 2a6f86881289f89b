"""KServe v1 / Open Inference Protocol v2 bodies <-> fissure work items, with the request limits.

Parsing only: no model, no server. An *entry* is what one request item becomes:

* ``({"kind": "image"}, bytes)``: encoded image bytes, decoded later by the model's preprocess;
* ``({"kind": "tensor", "dtype": ..., "shape": [N, 3, H, W]}, bytes)``: a numeric tensor;
* ``{"error": msg, "status": code}``: an item that is bad on its own (the others still run).

A problem with the request as a whole raises a FissureError (one line, its status).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass

import numpy as np
import orjson

from fissure.errors import InputError, PayloadTooLarge
from fissure.serving import codec
from fissure.settings import settings

from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput  # noqa: E402

V1_FORMS = ('v1 body must be {"instances": [{"b64": "<base64 image>"}, ...]} '
            '(or {"data": ...} / {"image": {"b64": ...}} instances, or raw image bytes)')
_NUMERIC = {"FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (FISSURE_MAX_* settings)."""

    max_items: int
    max_request_pixels: int
    max_body_bytes: int

    @classmethod
    def from_settings(cls) -> "Limits":
        s = settings()
        return cls(s.max_items, s.max_request_pixels, s.max_body_bytes)

    def check_items(self, n: int) -> None:
        if n > self.max_items:
            raise PayloadTooLarge(f"{n} items in one request; the limit is {self.max_items} (FISSURE_MAX_ITEMS)")

    def check_pixels(self, n: int) -> None:
        if n > self.max_request_pixels:
            raise PayloadTooLarge(f"the request's images hold {n} pixels; the limit is "
                                  f"{self.max_request_pixels} (FISSURE_MAX_REQUEST_PIXELS)")


# ---------------------------------------------------------------------------- v1


def v1_entries(payload, limits: Limits) -> list:
    """A decoded v1 body (dict, or raw bytes for non-JSON content) -> entries."""
    if isinstance(payload, (bytes, bytearray)):
        return [({"kind": "image"}, bytes(payload))]
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InputError(V1_FORMS)
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InputError('"instances" must be a non-empty list')
    limits.check_items(len(instances))
    entries = []
    for i, inst in enumerate(instances):
        try:
            entries.append(({"kind": "image"}, codec.instance_bytes(inst, f"instances[{i}]")))
        except InputError as exc:
            entries.append(_error_entry(exc))
    return entries


def v1_response(model_name: str, version: str, op: str, results: list[dict]) -> dict:
    key = "explanations" if op == "explain" else "predictions"
    meta = {"model_name": model_name, "model_version": version}
    return {key: [r if "error" in r else {**r, **meta} for r in results], **meta}


# ---------------------------------------------------------------------------- v2


def parse_v2_rest(body: bytes, headers: dict, model_name: str) -> InferRequest:
    """v2 JSON, or JSON + binary tensors (Inference-Header-Content-Length), -> InferRequest.

    Our own parser: kserve 0.21 turns binary-extension BYTES inputs into UTF-8 text, which
    fails for image bytes (and echoes the whole payload in a 500)."""
    json_len = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
    try:
        n = int(json_len) if json_len is not None else len(body)
        if not 0 < n <= len(body):
            raise ValueError(f"{INFERENCE_CONTENT_LENGTH_HEADER} {n} outside the body")
    except ValueError as exc:
        raise InputError(f"bad {INFERENCE_CONTENT_LENGTH_HEADER}: {exc}") from None
    try:
        doc = orjson.loads(body[:n])
    except orjson.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InputError('v2 body must be {"inputs": [{"name", "datatype", "shape", "data"}, ...]}')
    inputs, offset = [], n
    for i, spec in enumerate(doc["inputs"]):
        if not isinstance(spec, dict) or not all(k in spec for k in ("name", "datatype", "shape")):
            raise InputError(f"inputs[{i}] needs name, datatype and shape")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InputError(f"inputs[{i}].shape must be a list of non-negative integers")
        params = spec.get("parameters") or {}
        inp = InferInput(name=str(spec["name"]), shape=shape, datatype=str(spec["datatype"]), parameters=params)
        if "data" in spec:
            data = spec["data"]
            inp.data = data if isinstance(data, list) else [data]
        elif isinstance(params, dict) and isinstance(params.get("binary_data_size"), int):
            size = params["binary_data_size"]
            if size < 0 or offset + size > len(body):
                raise InputError(f"inputs[{i}]: binary data shorter than binary_data_size")
            inp._raw_data = body[offset : offset + size]
            offset += size
        else:
            raise InputError(f"inputs[{i}] has no data")
        inputs.append(inp)
    outputs = None
    if isinstance(doc.get("outputs"), list):
        outputs = [RequestedOutput(name=o.get("name"), parameters=o.get("parameters"))
                   for o in doc["outputs"] if isinstance(o, dict)]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=doc.get("id"),
                        parameters=doc.get("parameters"), request_outputs=outputs or None)


def v2_entries(request: InferRequest, limits: Limits) -> list:
    if not request.inputs:
        raise InputError("v2 request has no inputs")
    limits.check_items(sum(_declared_items(inp) for inp in request.inputs))
    entries = []
    for inp in request.inputs:
        dt = (inp.datatype or "").upper()
        if dt == "BYTES":
            for j, item in enumerate(_as_numpy(inp).reshape(-1)):
                try:
                    entries.append(({"kind": "image"}, _v2_bytes(item, f"{inp.name}[{j}]")))
                except InputError as exc:
                    entries.append(_error_entry(exc))
        elif dt in _NUMERIC:
            shape = [int(d) for d in inp.shape]
            if len(shape) != 4:
                raise InputError(f"tensor shape must be [N,3,H,W], got {shape}")
            limits.check_pixels(shape[0] * shape[2] * shape[3])
            arr = np.ascontiguousarray(_as_numpy(inp))
            entries.append(({"kind": "tensor", "dtype": arr.dtype.name, "shape": list(arr.shape)},
                            arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()))
        else:
            raise InputError(f"input {inp.name!r}: datatype {inp.datatype} not supported; "
                             "send BYTES images or FP32 [N,3,H,W]")
    return entries


def wants_explanation(request: InferRequest) -> bool:
    v = _param(request.parameters, "explain")
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes"))


def v2_response(request: InferRequest, model_name: str, version: str, task: str, classes: list[str],
                op: str, results: list[dict]) -> InferResponse:
    grpc = bool(request.from_grpc)
    n = len(results)
    ok = ["error" not in r for r in results]

    def png(field):
        if grpc:  # raw bytes on gRPC, base64 text in JSON
            return [codec.b64decode(r[field]) if good else b"" for r, good in zip(results, ok)]
        return [r[field] if good else "" for r, good in zip(results, ok)]

    def js(fn):
        return [json.dumps(fn(r), separators=(",", ":")) if good else "" for r, good in zip(results, ok)]

    def floats(key):
        return [r[key] if good else 0.0 for r, good in zip(results, ok)]

    if op == "explain":
        outputs = [_out("heatmap_png", [n], "BYTES", png("heatmap_png")),
                   _out("explanation", [n], "BYTES", js(lambda r: {k: v for k, v in r.items() if k != "heatmap_png"}))]
    elif task == "classify":
        c = len(classes)
        probs = [[r["probabilities"].get(k, 0.0) for k in classes] if good else [0.0] * c
                 for r, good in zip(results, ok)]
        outputs = [_out("label", [n], "BYTES", [r["label"] if good else "" for r, good in zip(results, ok)]),
                   _out("probabilities", [n, c], "FP32", [p for row in probs for p in row]),
                   _out("score", [n], "FP32", floats("score"))]
        if any(good and "tile_map" in r for r, good in zip(results, ok)):  # tiling classifiers (large photos)
            outputs.append(_out("tile_map", [n], "BYTES", js(lambda r: r.get("tile_map"))))
    else:
        outputs = [_out("mask_png", [n], "BYTES", png("mask_png")),
                   _out("mask_rle", [n], "BYTES", js(lambda r: r["mask_rle"])),
                   _out("crack_ratio", [n], "FP32", floats("crack_ratio")),
                   _out("boxes", [n], "BYTES", js(lambda r: r["boxes"]))]
    if not all(ok):
        outputs.append(_out("error", [n], "BYTES", [r.get("error", "") for r in results]))
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        model_version=version,
        infer_outputs=outputs,
        from_grpc=grpc,
        # gRPC: raw_output_contents, as Triton does (tritonclient reads only those)
        use_binary_outputs=grpc,
    )


# ---------------------------------------------------------------------------- helpers


def _error_entry(exc: InputError) -> dict:
    return {"error": exc.message, "status": exc.http_status}


def _declared_items(inp: InferInput) -> int:
    """Images (BYTES elements) or tensor rows an input declares, before any of it is decoded."""
    shape = [int(d) for d in inp.shape or [0]]
    if (inp.datatype or "").upper() == "BYTES":
        return math.prod(shape)
    return shape[0] if shape else 0


def _as_numpy(inp: InferInput) -> np.ndarray:
    try:
        return inp.as_numpy()
    except (ValueError, TypeError) as exc:
        raise InputError(f"input {inp.name!r}: data does not match shape {inp.shape}: {exc}") from None
    except InvalidInput as exc:
        raise InputError(f"input {inp.name!r}: {exc.reason}") from None


def _v2_bytes(item, where: str) -> bytes:
    """A BYTES element: raw bytes (gRPC / binary extension) or a base64 string (JSON)."""
    if isinstance(item, (bytes, bytearray, np.bytes_)):
        return bytes(item)
    if isinstance(item, str):
        return codec.b64decode(item, where)
    raise InputError(f"{where}: BYTES elements must be base64 strings (JSON) or raw bytes (gRPC)")


def _out(name, shape, datatype, data) -> InferOutput:
    return InferOutput(name=name, shape=shape, datatype=datatype, data=data)


def _param(params, key):
    """A request parameter from REST (dict) or gRPC (map of InferParameter)."""
    if not params or key not in params:
        return None
    v = params[key]
    if hasattr(v, "WhichOneof"):
        kind = v.WhichOneof("parameter_choice")
        return getattr(v, kind) if kind else None
    return v
