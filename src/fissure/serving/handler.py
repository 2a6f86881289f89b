"""TorchServe handler logic; ``serving/handlers/fissure_handler.py`` (in every MAR) subclasses it.

TorchServe hands :meth:`FissureHandler.handle` a list of requests (its dynamic batch).
Each request is one of:

* the front's internal wire format (:mod:`fissure.serving.codec`, magic ``FSR1``),
  holding one or more images or one FP32 tensor; accepted only with the header
  ``X-Fissure-Wire: <token>`` equal to this worker's ``FISSURE_WIRE_TOKEN`` (a secret the
  serving supervisor gives the front and TorchServe), else 403;
* raw image bytes (``curl --data-binary @img.jpg .../predictions/<name>``);
* plain JSON: ``{"b64": ...}``, ``{"data": ...}``, ``{"image": {"b64": ...}}`` or
  ``{"instances": [...]}`` of those.

All valid images of all requests go through the model in one forward pass, on the GPU
TorchServe assigned (``gpu_id``) when CUDA is there. A bad item gets its own one-line error;
with ``context.set_response_status`` a bad request in a batch fails alone, the others get
their results. A request over the limits (``FISSURE_MAX_ITEMS`` images,
``FISSURE_MAX_REQUEST_PIXELS``) fails as a whole with 413.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import os
import time

import torch

from fissure.errors import InputError, PayloadTooLarge, PermissionDenied
from fissure.serving import codec
from fissure.serving.runtime import (ModelRuntime, OverBudget, PixelBudget, Prepared, device_for, error_result,
                                     set_threads)
from fissure.settings import settings

try:  # TorchServe is only present in the serving environment
    from ts.torch_handler.base_handler import BaseHandler
except ImportError:  # pragma: no cover - lets the module import for unit tests
    BaseHandler = object

logger = logging.getLogger(__name__)
MAX_FORWARD = 64  # images per forward pass; larger batches are chunked


class _Request:
    __slots__ = ("idx", "wire", "op", "entries", "shape")

    def __init__(self, idx, wire, op, entries, shape="single"):
        self.idx, self.wire, self.op, self.entries, self.shape = idx, wire, op, entries, shape


class FissureHandler(BaseHandler):
    def __init__(self):
        if BaseHandler is not object:
            super().__init__()
        self.runtime: ModelRuntime | None = None
        self.initialized = False
        self.wire_token = b""
        # One log line per batch ("fissure-batch requests=.. images=.."): off by default, it
        # costs latency under load; FISSURE_LOG_BATCHES=1 turns it on (the tests do).
        self.log_batches = False

    def initialize(self, context):
        self.context = context
        props = context.system_properties
        device = device_for(props.get("gpu_id"), torch.cuda.is_available())
        self.runtime = ModelRuntime.from_dir(props.get("model_dir"), device=device)
        # Read once: the supervisor sets it before TorchServe starts the workers.
        self.wire_token = os.environ.get(codec.WIRE_TOKEN_ENV, "").encode()
        self.log_batches = settings().log_batches
        threads = set_threads()
        gc.freeze()  # the model and torch live as long as the worker: keep full collections short
        self.initialized = True
        logger.info("fissure handler ready: %s v%s (%s) on %s, torch threads %d",
                    self.runtime.name, self.runtime.version, self.runtime.task, device, threads)

    # ------------------------------------------------------------------ TorchServe entry
    def handle(self, data, context):
        self.context = context
        started = time.perf_counter()
        requests: list[_Request | None] = []
        outputs: list = [None] * len(data)
        for idx, row in enumerate(data):
            try:
                requests.append(self._parse(idx, row, context))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a one-line 4xx/5xx
                requests.append(None)
                outputs[idx] = self._fail(context, idx, exc)
        n_images = self._run(requests)
        for req in requests:
            if req is not None:
                outputs[req.idx] = self._respond(context, req)
        if self.log_batches:
            logger.info("fissure-batch requests=%d images=%d ms=%.1f", len(data), n_images,
                        (time.perf_counter() - started) * 1000)
        return outputs

    # ------------------------------------------------------------------ parsing
    def _parse(self, idx, row, context) -> _Request:
        body = row.get("data") if isinstance(row, dict) else row
        if body is None and isinstance(row, dict):
            body = row.get("body")
        if body is None and isinstance(row, dict) and row:
            body = next(iter(row.values()))  # multipart form field
        op = "explain" if _headers(context, idx, "explain") == ["True"] else "predict"
        budget = PixelBudget()
        if codec.is_wire(body):
            self._check_wire_token(context, idx)
            op, items = codec.unpack_wire(body)
            return _Request(idx, True, op, [self._prepare(info, payload, budget) for info, payload in items])
        if isinstance(body, (bytes, bytearray)):
            head = bytes(body[:64]).lstrip()
            if head.startswith((b"{", b"[")):
                try:
                    body = json.loads(bytes(body))
                except ValueError as exc:
                    raise InputError(f"malformed JSON: {exc}") from None
            else:
                return _Request(idx, False, op, [self._prepare({"kind": "image"}, body, budget)])
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise InputError(f"malformed JSON: {exc}") from None
        if isinstance(body, dict) and "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise InputError('"instances" must be a non-empty list')
            limit = settings().max_items
            if len(instances) > limit:
                raise PayloadTooLarge(f"{len(instances)} instances in one request; the limit is {limit} "
                                      "(FISSURE_MAX_ITEMS)")
            entries = [self._prepare({"kind": "image"}, _instance_bytes(x), budget) for x in instances]
            return _Request(idx, False, op, entries, shape="instances")
        return _Request(idx, False, op, [self._prepare({"kind": "image"}, _instance_bytes(body), budget)])

    def _check_wire_token(self, context, idx) -> None:
        """The internal frame carries sizes the worker acts on: only the front, which holds the
        token, may send it (TorchServe's own port takes raw bodies from anyone who reaches it)."""
        if not self.wire_token:
            raise PermissionDenied(f"internal frame refused: this worker has no {codec.WIRE_TOKEN_ENV}")
        sent = _headers(context, idx, codec.WIRE_HEADER)
        if not sent or not all(hmac.compare_digest(v.encode(), self.wire_token) for v in sent):
            raise PermissionDenied(f"internal frame refused: missing or wrong {codec.WIRE_HEADER} header")

    def _prepare(self, info, payload, budget: PixelBudget):
        """An entry: list[Prepared], or an error dict if this item is bad (OverBudget fails the request)."""
        try:
            if isinstance(payload, Exception):
                raise payload
            kind = info.get("kind")
            if kind == "pixels":
                return [self.runtime.prepare_pixels(payload, info.get("shape"), info.get("size"), budget)]
            if kind == "tensor":
                return self.runtime.prepare_tensor(payload, info.get("shape"), info.get("dtype", "float32"), budget)
            return [self.runtime.prepare_image(payload, budget)]
        except OverBudget:
            raise
        except Exception as exc:  # noqa: BLE001
            return error_result(exc)

    # ------------------------------------------------------------------ model
    def _run(self, requests) -> int:
        """Forward every valid item, one pass per op; replace entries by their results."""
        total = 0
        for op in ("predict", "explain"):
            slots: list[tuple[_Request, int]] = []
            items: list[Prepared] = []
            for req in requests:
                if req is None or req.op != op:
                    continue
                for j, entry in enumerate(req.entries):
                    if isinstance(entry, list):
                        slots.append((req, j))
                        items.extend(entry)
            if not items:
                continue
            total += len(items)
            fn = self.runtime.predict if op == "predict" else self.runtime.explain
            try:
                results = []
                for start in range(0, len(items), MAX_FORWARD):
                    results.extend(fn(items[start : start + MAX_FORWARD]))
            except Exception as exc:  # noqa: BLE001
                logger.exception("fissure %s failed", op)
                for req, j in slots:
                    req.entries[j] = error_result(exc)
                continue
            pos = 0
            for req, j in slots:
                n = len(req.entries[j])
                req.entries[j] = results[pos : pos + n]
                pos += n
        return total

    # ------------------------------------------------------------------ responses
    def _respond(self, context, req: _Request):
        context.set_response_content_type(req.idx, "application/json")
        errors = [e for e in req.entries if isinstance(e, dict)]
        if req.wire:
            if errors and len(errors) == len(req.entries):
                self._status(context, req.idx, errors[0])
            return json.dumps({"results": req.entries}, separators=(",", ":"))
        meta = {"model_name": self.runtime.name, "model_version": self.runtime.version}
        flat = []
        for entry in req.entries:
            flat.extend([{**r, **meta} for r in entry] if isinstance(entry, list) else [entry])
        if req.shape == "instances":
            if errors and len(errors) == len(req.entries):
                self._status(context, req.idx, errors[0])
            key = "explanations" if req.op == "explain" else "predictions"
            return json.dumps({key: flat}, separators=(",", ":"))
        if errors:
            self._status(context, req.idx, errors[0])
            return json.dumps(errors[0])
        return json.dumps(flat[0], separators=(",", ":"))

    @staticmethod
    def _status(context, idx, err):
        context.set_response_status(err["status"], err["error"], idx)

    def _fail(self, context, idx, exc):
        err = error_result(exc)
        context.set_response_content_type(idx, "application/json")
        self._status(context, idx, err)
        return json.dumps(err)


def _headers(context, idx, name: str) -> list[str]:
    """Every value of request header ``name``, whatever its case (TorchServe hands the worker
    header names as the client spelt them)."""
    name = name.lower()
    headers = context.get_all_request_header(idx) or {}
    # Form fields also appear here, as {"content-type": ...} dicts under their own names.
    return [v for k, v in headers.items() if isinstance(k, str) and k.lower() == name and isinstance(v, str)]


def _instance_bytes(x):
    """A native JSON instance -> image bytes (or the InputError, to report per item)."""
    try:
        return codec.instance_bytes(x, "instance")
    except InputError as exc:
        return exc
