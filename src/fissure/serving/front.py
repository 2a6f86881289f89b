"""The protocol front: a KServe Python ModelServer (REST 8080, gRPC 8081) over TorchServe.

One :class:`TorchServeModel` per MAR turns KServe v1/v2 (REST and gRPC) requests into the
internal wire format (:mod:`fissure.serving.codec`), forwards them over a pooled keep-alive
aiohttp client to TorchServe's loopback inference API, and shapes the handler's per-item results
into v1 JSON or named v2 tensors. This mirrors KServe's own TorchServe runtime, which puts the
kserve ModelServer in front of TorchServe; TorchServe's own OIP gRPC is not used (it registers
a non-standard service name, so standard clients get UNIMPLEMENTED).
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from http import HTTPStatus

import numpy as np

from fissure.errors import InputError
from fissure.models import preprocess_config
from fissure.preprocess import decode_image, image_to_array
from fissure.serving import codec
from fissure.serving.backend import Backend, BackendError, ts_error
from fissure.serving.runtime import error_result


def _import_kserve():
    """Import kserve without letting its module-level argparse read our command line."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve  # noqa: F401
        import kserve.model_server  # noqa: F401
    finally:
        sys.argv = argv
    return kserve


kserve = _import_kserve()
from kserve.errors import InvalidInput, ModelNotFound  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

PLATFORM = "pytorch_torchserve"


class RequestRejected(InvalidInput):
    """A client error with its HTTP status (400, 413, 415, ...) and a one-line reason."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason.splitlines()[0] if reason else "bad request")
        self.status = int(status)


class TorchServeModel(kserve.Model):
    """A KServe model that delegates to one TorchServe model."""

    def __init__(self, served_name: str, meta: dict, spec: dict, backend: Backend):
        super().__init__(served_name)
        self.meta = meta
        self.spec = spec
        self.task = spec.get("task", meta.get("task"))
        self.classes = list(spec.get("classes") or [])
        self.preprocess_config = preprocess_config(spec)
        self.size = self.preprocess_config.size
        self.version = str(meta.get("version") or "1")
        self.backend = backend
        self.ready = False

    # ------------------------------------------------------------------ metadata
    def get_input_types(self):
        return [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "tensor", "datatype": "FP32", "shape": [-1, 3, self.size, self.size]},
        ]

    def get_output_types(self):
        if self.task == "classify":
            return [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.classes)]},
                {"name": "score", "datatype": "FP32", "shape": [-1]},
            ]
        return [
            {"name": "mask_png", "datatype": "BYTES", "shape": [-1]},
            {"name": "mask_rle", "datatype": "BYTES", "shape": [-1]},
            {"name": "crack_ratio", "datatype": "FP32", "shape": [-1]},
            {"name": "boxes", "datatype": "BYTES", "shape": [-1]},
        ]

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": self.get_input_types(),
            "outputs": self.get_output_types(),
            "parameters": {
                "mlflow_model_name": self.meta.get("name"),
                "mlflow_model_version": self.version,
                "mlflow_run_id": self.meta.get("run_id"),
                "source_uri": self.meta.get("source_uri"),
                "task": self.task,
                "classes": self.classes,
                "input_size": self.size,
            },
        }

    # ------------------------------------------------------------------ kserve hooks
    def validate(self, payload):
        return payload

    async def preprocess(self, payload, headers=None):
        return payload

    async def predict(self, payload, headers=None, response_headers=None):
        return await self._infer(payload, "predict")

    async def explain(self, payload, headers=None):
        return await self._infer(payload, "explain")

    async def _infer(self, payload, op: str):
        if isinstance(payload, InferRequest):
            if _truthy(_param(payload.parameters, "explain")):
                op = "explain"
            results = await self._forward(op, self._v2_entries(payload))
            return self._v2_response(payload, op, results)
        results = await self._forward(op, self._v1_entries(payload))
        return self._v1_response(op, results)

    # ------------------------------------------------------------------ requests
    def _v1_entries(self, payload) -> list:
        if isinstance(payload, (bytes, bytearray)):
            return [({"kind": "image"}, bytes(payload))]
        if not isinstance(payload, dict) or "instances" not in payload:
            raise RequestRejected('v1 body must be {"instances": [{"b64": "<base64 image>"}, ...]} or raw image bytes')
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestRejected('"instances" must be a non-empty list')
        entries = []
        for i, inst in enumerate(instances):
            try:
                entries.append(({"kind": "image"}, _v1_instance_bytes(inst, i)))
            except InputError as exc:
                entries.append({"error": exc.message, "status": exc.http_status})
        return entries

    def _v2_entries(self, request: InferRequest) -> list:
        if not request.inputs:
            raise RequestRejected("v2 request has no inputs")
        entries = []
        for inp in request.inputs:
            dt = (inp.datatype or "").upper()
            try:
                arr = inp.as_numpy()
            except (ValueError, TypeError) as exc:
                raise RequestRejected(f"input {inp.name!r}: data does not match shape {inp.shape}: {exc}") from None
            except InvalidInput as exc:
                raise RequestRejected(f"input {inp.name!r}: {exc.reason}") from None
            if dt == "BYTES":
                for j, item in enumerate(arr.reshape(-1)):
                    try:
                        entries.append(({"kind": "image"}, _v2_bytes(item, f"{inp.name}[{j}]")))
                    except InputError as exc:
                        entries.append({"error": exc.message, "status": exc.http_status})
            elif dt in _NUMERIC:
                if arr.ndim != 4:
                    raise RequestRejected(f"tensor shape must be [N,3,H,W], got {list(arr.shape)}")
                arr = np.ascontiguousarray(arr)
                entries.append(({"kind": "tensor", "dtype": arr.dtype.name, "shape": list(arr.shape)},
                                arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()))
            else:
                raise RequestRejected(f"input {inp.name!r}: datatype {inp.datatype} not supported; send BYTES images or FP32 [N,3,H,W]")
        return entries

    async def _decode_images(self, entries: list) -> list:
        """Decode and resize images here, as a KServe transformer would: the TorchServe worker is
        the one serial stage of the pipeline, so it should spend its time on the model. Same code
        as training (fissure.preprocess); a thread keeps large images off the event loop."""
        todo = [i for i, e in enumerate(entries) if isinstance(e, tuple) and e[0].get("kind") == "image"]
        if not todo:
            return entries
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(None, lambda: [self._pixels_entry(entries[i][1]) for i in todo])
        entries = list(entries)
        for i, entry in zip(todo, done):
            entries[i] = entry
        return entries

    def _pixels_entry(self, data: bytes):
        """Image bytes -> a "pixels" wire entry (uint8 [S, S, 3] + the image's size), or an error entry."""
        try:
            img = decode_image(data)
            pixels = image_to_array(img, self.preprocess_config)
        except Exception as exc:  # noqa: BLE001 - a bad image fails alone, as in the worker
            return error_result(exc)
        return {"kind": "pixels", "shape": list(pixels.shape), "size": [img.height, img.width]}, pixels.tobytes()

    async def _forward(self, op: str, entries: list) -> list[dict]:
        """Send the valid entries to TorchServe; per-image results (or error dicts), in order."""
        entries = await self._decode_images(entries)
        good = [e for e in entries if isinstance(e, tuple)]
        answers: list = []
        if good:
            body = codec.pack_wire(op, good)
            resp = await self.backend.post(
                f"/predictions/{self.name}", body,
                {"Content-Type": codec.WIRE_CONTENT_TYPE, codec.WIRE_HEADER: "1"},
            )
            if resp.status_code != 200:
                status, reason = ts_error(resp)
                try:
                    answers = resp.json()["results"]
                except (ValueError, KeyError, TypeError):
                    if status >= 500 or status in (404, 408, 429):
                        raise BackendError(f"TorchServe: {reason}", 503 if status >= 500 else status) from None
                    raise RequestRejected(reason, status) from None
            else:
                answers = resp.json()["results"]
        results: list[dict] = []
        it = iter(answers)
        for entry in entries:
            if isinstance(entry, dict):
                results.append(entry)
                continue
            answer = next(it)
            if isinstance(answer, dict):
                results.append(answer)
            else:
                results.extend(answer)
        errors = [r for r in results if "error" in r]
        if errors and len(errors) == len(results):
            raise RequestRejected(errors[0]["error"], errors[0].get("status", 400))
        return results

    # ------------------------------------------------------------------ responses
    def _v1_response(self, op: str, results: list[dict]) -> dict:
        key = "explanations" if op == "explain" else "predictions"
        out = []
        for r in results:
            out.append({**r, "model_name": self.name, "model_version": self.version} if "error" not in r else r)
        return {key: out, "model_name": self.name, "model_version": self.version}

    def _v2_response(self, request: InferRequest, op: str, results: list[dict]) -> InferResponse:
        grpc = bool(request.from_grpc)
        n = len(results)
        ok = ["error" not in r for r in results]

        def png(field):
            vals = []
            for r, good in zip(results, ok):
                if not good:
                    vals.append(b"" if grpc else "")
                else:
                    vals.append(codec.b64decode(r[field]) if grpc else r[field])
            return vals

        def js(fn):
            return [json.dumps(fn(r), separators=(",", ":")) if good else "" for r, good in zip(results, ok)]

        outputs: list[InferOutput] = []
        if op == "explain":
            outputs.append(_out("heatmap_png", [n], "BYTES", png("heatmap_png")))
            outputs.append(_out("explanation", [n], "BYTES",
                                js(lambda r: {k: v for k, v in r.items() if k != "heatmap_png"})))
        elif self.task == "classify":
            c = len(self.classes)
            probs = [[r["probabilities"].get(k, 0.0) for k in self.classes] if good else [0.0] * c
                     for r, good in zip(results, ok)]
            outputs.append(_out("label", [n], "BYTES", [r["label"] if good else "" for r, good in zip(results, ok)]))
            outputs.append(_out("probabilities", [n, c], "FP32", [p for row in probs for p in row]))
            outputs.append(_out("score", [n], "FP32", [r["score"] if good else 0.0 for r, good in zip(results, ok)]))
        else:
            outputs.append(_out("mask_png", [n], "BYTES", png("mask_png")))
            outputs.append(_out("mask_rle", [n], "BYTES", js(lambda r: r["mask_rle"])))
            outputs.append(_out("crack_ratio", [n], "FP32",
                                [r["crack_ratio"] if good else 0.0 for r, good in zip(results, ok)]))
            outputs.append(_out("boxes", [n], "BYTES", js(lambda r: r["boxes"])))
        if not all(ok):
            outputs.append(_out("error", [n], "BYTES", [r.get("error", "") if not good else ""
                                                         for r, good in zip(results, ok)]))
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=self.version,
            infer_outputs=outputs,
            from_grpc=grpc,
            # gRPC: raw_output_contents, as Triton does (tritonclient reads only those)
            use_binary_outputs=grpc,
        )


_NUMERIC = {"FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"}


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


def _truthy(v) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes"))


def _v1_instance_bytes(inst, i: int) -> bytes:
    where = f"instances[{i}]"
    if isinstance(inst, dict):
        if "b64" in inst:
            return codec.b64decode(inst["b64"], f"{where}.b64")
        image = inst.get("image")
        if isinstance(image, dict) and "b64" in image:
            return codec.b64decode(image["b64"], f"{where}.image.b64")
        if isinstance(image, str):
            return codec.b64decode(image, f"{where}.image")
    elif isinstance(inst, str):
        return codec.b64decode(inst, where)
    raise InputError(f'{where} must be {{"b64": "<base64 image>"}} or {{"image": {{"b64": ...}}}}')


def _v2_bytes(item, where: str) -> bytes:
    """A BYTES element: raw bytes (gRPC / binary extension) or a base64 string (JSON)."""
    if isinstance(item, (bytes, bytearray, np.bytes_)):
        return bytes(item)
    if isinstance(item, str):
        return codec.b64decode(item, where)
    raise InputError(f"{where}: BYTES elements must be base64 strings (JSON) or raw bytes (gRPC)")


__all__ = ["TorchServeModel", "Backend", "RequestRejected", "BackendError", "HTTPStatus", "ModelNotFound"]
