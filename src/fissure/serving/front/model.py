"""The front's kserve Models, one per served model, following kserve's Model contract:

``preprocess``  parse the v1/v2 body, enforce the limits, decode and resize the images
                (as a KServe transformer would; a thread keeps big images off the event loop);
``predict``     hand the decoded items to the model runtime and collect per-item results;
``postprocess`` shape v1 JSON or named v2 tensors.

Only ``predict`` differs between the runtimes: :class:`TorchServeModel` forwards the items in
the internal wire format to TorchServe's worker (the TorchServe handler path), and
:class:`InProcessModel` runs the same :class:`~fissure.serving.runtime.ModelRuntime` in this
process through an :class:`AdaptiveBatcher`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fissure.errors import FissureError, InputError, Unavailable
from fissure.models import preprocess_config
from fissure.models.tiling import tiling_config, unstretched_pixels
from fissure.observability.drift import input_stats
from fissure.preprocess import decode_image, image_to_array, open_image
from fissure.serving import codec
from fissure.serving.backend import Backend, ts_error
from fissure.serving.front import kserve
from fissure.serving.canary import inject
from fissure.serving.front.protocol import (
    Limits, v1_entries, v1_response, v2_entries, v2_response, wants_explanation,
)
from fissure.serving.runtime import ModelRuntime, Prepared, error_result
from fissure.settings import settings

from kserve.protocol.infer_type import InferRequest  # noqa: E402

PLATFORM = "pytorch_torchserve"
# Requests with up to this many pixels in all are decoded on the event loop (a 256 px JPEG
# decodes in ~0.2 ms, the executor round trip cost ~0.3 ms at one client); larger ones in a thread.
INLINE_DECODE_PIXELS = 300_000
log = logging.getLogger("fissure.serve")


@dataclass
class Work:
    """One request on its way through the hooks."""

    request: object  # InferRequest (v2) or the decoded v1 body
    op: str  # "predict" | "explain"
    entries: list
    results: list[dict] = field(default_factory=list)
    stats: list | None = None  # per entry: drift.input_stats of a decoded image, else None


class FrontModel(kserve.Model):
    """What both runtimes share: metadata, parsing, decoding and response shaping."""

    platform = PLATFORM
    runtime_name = ""  # fissure_model_info{runtime}

    def __init__(self, served_name: str, meta: dict, spec: dict, limits: Limits | None = None):
        super().__init__(served_name)
        self.meta = meta
        self.spec = spec
        self.task = spec.get("task", meta.get("task"))
        self.classes = list(spec.get("classes") or [])
        self.preprocess_config = preprocess_config(spec)
        self.size = self.preprocess_config.size
        self.tiling = tiling_config(spec)  # tile: images go to the model at their own resolution
        self.version = str(meta.get("version") or "1")
        self.limits = limits or Limits.from_settings()
        self.ready = False
        # champion unless FISSURE_MODEL_ROLE says otherwise; per model, so one front may serve both
        self.role = settings().model_role
        self.metrics = None  # a fissure.observability.serving.ModelMetrics once a server attaches one
        self.fault = None  # a canary challenger's injected fault (serving.canary.Fault)

    def attach(self, metrics) -> None:
        self.metrics = metrics

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
            ] + ([{"name": "tile_map", "datatype": "BYTES", "shape": [-1]}] if self.tiling.tiles else [])
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
            "platform": self.platform,
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
    async def preprocess(self, payload, headers=None) -> Work:
        if self.fault is not None:
            await inject(self.fault)
        if isinstance(payload, InferRequest):
            op = "explain" if wants_explanation(payload) else "predict"
            entries = v2_entries(payload, self.limits)
        else:
            op, entries = "predict", v1_entries(payload, self.limits)
        entries, stats = await self._decode(entries)
        return Work(payload, op, entries, stats=stats)

    def validate(self, payload):
        return payload

    async def predict(self, work: Work, headers=None, response_headers=None) -> Work:
        good = [e for e in work.entries if isinstance(e, tuple)]
        answers = await self.run(work.op, good) if good else []
        work.results = _merge(work.entries, answers)
        if self.metrics is not None and work.op == "predict":  # explanations are not predictions
            self._observe(work, answers)
        errors = [r for r in work.results if "error" in r]
        if errors and len(errors) == len(work.results):  # nothing usable: the request fails
            raise FissureError(errors[0]["error"], errors[0].get("status", 400))
        return work

    async def explain(self, work: Work, headers=None) -> Work:
        work.op = "explain"
        return await self.predict(work, headers)

    async def postprocess(self, work: Work, headers=None, response_headers=None):
        if isinstance(work.request, InferRequest):
            return v2_response(work.request, self.name, self.version, self.task, self.classes,
                               work.op, work.results)
        return v1_response(self.name, self.version, work.op, work.results)

    def _observe(self, work: Work, answers: list) -> None:
        """Every predicted image's result and input statistics (model behaviour, drift)."""
        it = iter(answers)
        stats = work.stats or [None] * len(work.entries)
        for entry, st in zip(work.entries, stats):
            if isinstance(entry, dict):  # failed before the model
                continue
            answer = next(it)
            if isinstance(answer, dict):  # the entry failed as a whole
                continue
            for result in answer:
                if "error" not in result:
                    self.metrics.prediction(result, st)

    # ------------------------------------------------------------------ the runtime's part
    async def run(self, op: str, entries: list[tuple[dict, bytes]]) -> list:
        """One answer per entry: a list of results (an image: one; a tensor: N) or an error dict."""
        raise NotImplementedError

    # ------------------------------------------------------------------ decoding
    async def _decode(self, entries: list) -> tuple[list, list | None]:
        """Images -> "pixels" entries (uint8 [S, S, 3] + the image's own size), within the limits,
        and per entry the image's input statistics (None for tensors, errors, or without metrics).

        The request's pixel budget is checked from the image headers before anything is
        decoded, so a small body of highly compressed huge images costs no decoding time."""
        todo = [i for i, e in enumerate(entries) if isinstance(e, tuple) and e[0]["kind"] == "image"]
        if not todo:
            return entries, None
        pixels = sum(_declared_pixels(entries[i][1]) for i in todo)
        self.limits.check_pixels(pixels)
        if pixels <= INLINE_DECODE_PIXELS:  # a thread hop costs more than decoding a small image
            done = [self._pixels_entry(entries[i][1]) for i in todo]
        else:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(None, lambda: [self._pixels_entry(entries[i][1]) for i in todo])
        entries, stats = list(entries), [None] * len(entries)
        for i, (entry, st) in zip(todo, done):
            entries[i], stats[i] = entry, st
        return entries, stats

    def _pixels_entry(self, data: bytes):
        """(entry, input statistics or None). The worker is sent the image decoded and resized but
        not contrast stretched (it stretches, once per input it makes). The statistics are of that
        image at model size: in resize mode the very pixels sent (no second pass over the full
        image), in tile mode one more resize of it."""
        cfg = self.preprocess_config
        try:
            img = decode_image(data)
            pixels = unstretched_pixels(img, cfg, self.tiling)
        except Exception as exc:  # noqa: BLE001 - a bad image fails alone, as in the worker
            return error_result(exc), None
        stats = None
        if self.metrics is not None:  # at model size and unstretched, as the training profile's
            small = image_to_array(img, cfg, stretch=False) if self.tiling.tiles else pixels
            stats = input_stats(small, (img.height, img.width))
        entry = {"kind": "pixels", "shape": list(pixels.shape), "size": [img.height, img.width]}, pixels.tobytes()
        return entry, stats


def _declared_pixels(data: bytes) -> int:
    """Width x height from the image header; 0 when unreadable or over the per-image limit
    (decoding then fails that item alone, with its own one-line reason)."""
    try:
        with open_image(data) as img:
            return int(img.width) * int(img.height)
    except Exception:  # noqa: BLE001 - over the per-image limit, or not an image
        return 0


def _merge(entries: list, answers: list) -> list[dict]:
    """Per-item results in request order: answers for the good entries, errors in between."""
    results: list[dict] = []
    it = iter(answers)
    for entry in entries:
        if isinstance(entry, dict):
            results.append(entry)
            continue
        answer = next(it)
        results.extend([answer] if isinstance(answer, dict) else answer)
    return results


# ---------------------------------------------------------------------------- TorchServe


class TorchServeModel(FrontModel):
    """Forwards to TorchServe's worker, which runs the fissure handler (the MAR's)."""

    runtime_name = "torchserve"

    def __init__(self, served_name: str, meta: dict, spec: dict, backend: Backend, wire_token: str,
                 limits: Limits | None = None):
        super().__init__(served_name, meta, spec, limits)
        self.backend = backend
        # the handler accepts internal frames only with this token (see fissure.serving.serve)
        self.headers = {"Content-Type": codec.WIRE_CONTENT_TYPE, codec.WIRE_HEADER: wire_token}

    async def run(self, op, entries):
        if self.metrics is not None:  # items per call to TorchServe; its queue is ts_queue_latency_microseconds
            self.metrics.model_call(sum(info["shape"][0] if info["kind"] == "tensor" else 1 for info, _ in entries))
        body = codec.pack_wire(op, entries)
        resp = await self.backend.post(f"/predictions/{self.name}", body, self.headers)
        try:
            answers = resp.json()["results"]
        except (ValueError, KeyError, TypeError):
            status, reason = ts_error(resp)
            if status >= 500 or status in (404, 408, 429):
                raise Unavailable(f"TorchServe: {reason}") from None
            raise InputError(reason, status) from None
        if len(answers) != len(entries):
            raise Unavailable(f"TorchServe answered {len(answers)} items for {len(entries)}")
        return answers


# ---------------------------------------------------------------------------- in-process


class AdaptiveBatcher:
    """Runs model calls one at a time on a dedicated thread, batching only what is already queued.

    A request that finds the model idle runs at once (no batch delay at low load); requests that
    arrive while the model is busy are merged into the next call, up to ``max_batch`` items, so
    throughput grows with load as with TorchServe's batcher, without its fixed wait.
    """

    def __init__(self, runtime: ModelRuntime, max_batch: int = 64):
        self.runtime = runtime
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{runtime.name}")
        self.log_batches = settings().log_batches
        self.metrics = None  # ModelMetrics: batch size and queue time per call
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, op: str, items: list[Prepared]) -> list[dict]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, items, fut, time.perf_counter()))
        return await fut

    async def _serve(self):
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            n = len(jobs[0][1])
            while not self._queue.empty() and n < self.max_batch:
                jobs.append(self._queue.get_nowait())
                n += len(jobs[-1][1])
            for op in ("predict", "explain"):
                group = [j for j in jobs if j[0] == op]
                if not group:
                    continue
                items = [item for _, its, _, _ in group for item in its]
                if self.metrics is not None:
                    now = time.perf_counter()
                    self.metrics.model_call(len(items), [now - t for *_, t in group])
                if self.log_batches:
                    log.info("fissure-batch requests=%d images=%d", len(group), len(items))
                fn = self.runtime.predict if op == "predict" else self.runtime.explain
                try:
                    results = await loop.run_in_executor(self._executor, fn, items)
                except Exception as exc:  # noqa: BLE001 - every waiting request gets the one-line error
                    results = [error_result(exc)] * len(items)
                pos = 0
                for _, its, fut, _ in group:
                    if not fut.done():
                        fut.set_result(results[pos : pos + len(its)])
                    pos += len(its)

    def close(self):
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class InProcessModel(FrontModel):
    """The model runtime in the front's own process: no second hop, no TorchServe."""

    platform = "pytorch"
    runtime_name = "inprocess"

    def __init__(self, served_name: str, meta: dict, spec: dict, runtime: ModelRuntime,
                 limits: Limits | None = None):
        super().__init__(served_name, meta, spec, limits)
        self.runtime = runtime
        self.batcher = AdaptiveBatcher(runtime)

    def attach(self, metrics) -> None:
        super().attach(metrics)
        self.batcher.metrics = metrics

    async def close(self):
        self.batcher.close()

    async def run(self, op, entries):
        prepared, slots = [], []
        for info, payload in entries:
            try:
                if info["kind"] == "pixels":
                    items = [self.runtime.prepare_pixels(payload, info["shape"], info["size"])]
                else:
                    items = self.runtime.prepare_tensor(payload, info["shape"], info.get("dtype", "float32"))
            except Exception as exc:  # noqa: BLE001 - this entry fails alone
                slots.append(error_result(exc))
                continue
            slots.append(len(items))
            prepared.extend(items)
        results = await self.batcher.submit(op, prepared) if prepared else []
        answers, pos = [], 0
        for slot in slots:
            if isinstance(slot, dict):
                answers.append(slot)
            else:
                answers.append(results[pos : pos + slot])
                pos += slot
        return answers


