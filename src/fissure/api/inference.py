"""The API's async client for the serving front, over Open Inference Protocol v2 REST.

:meth:`InferenceClient.predict` sends one image to ``/v2/models/<name>/infer`` (and, for a
heatmap, the same request with ``parameters.explain``) and returns an :class:`InferenceResult`:
the result shaped as the serving v1 result (``label``/``score``/``probabilities`` or
``crack_ratio``/``boxes``/``mask_rle``), the PNGs apart, the model's version and MLflow run id
(from the v2 model metadata's ``parameters``, cached per model and version) and an uncertainty
in [0, 1] for the review queue (larger: less sure):

* classifier: ``1 - |2 p - 1|`` with p the crack probability (of an N-class defect model with one
  negative class, the probability of any defect), i.e. ``|p - 0.5|`` smallest first;
* segmenter: the mean of ``1 - |2 p - 1|`` over the predicted mask's boundary band (pixels
  within ``BOUNDARY_BAND`` px of its edge; the whole image when no crack is predicted), from
  the per-pixel crack probability that the segmenter's explain returns. So every segmenter
  prediction is two calls (predict and explain), and its heatmap is that probability map.

``FISSURE_INFERENCE_URL`` may hold ``{model}`` (KServe's one predictor Service per model, e.g.
``http://{model}-predictor.fissure.svc.cluster.local``); it is replaced by the model's name.
Errors are fissure errors: the server down is 503 ``inference server unreachable at <url>``, an
unknown model 404, the image refused by the server its 4xx with the server's one-line reason.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image

from fissure.data.loaders import NEGATIVE_NAMES
from fissure.errors import FissureError, InputError, NotFoundError, ServerError, Unavailable

CLASSIFIER_THRESHOLD = 0.5  # the classifier's label is the likelier class: p(crack) >= 0.5
BOUNDARY_BAND = 2


@dataclass
class InferenceResult:
    model_name: str
    model_version: str
    mlflow_run_id: str | None
    task: str
    output: dict
    mask_png: bytes | None = None
    heatmap_png: bytes | None = None
    uncertainty: float = 0.0
    latency_ms: float = 0.0
    classes: list[str] = field(default_factory=list)


class InferenceClient:
    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")  # may hold "{model}": one server per model (KServe predictors)
        self.timeout = timeout
        self._client = httpx.AsyncClient(timeout=timeout)
        self._meta: dict[str, dict] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    def base(self, model: str) -> str:
        return self.url.replace("{model}", model)

    async def _call(self, method: str, path: str, model: str, **kw) -> dict:
        url = self.base(model)
        try:
            resp = await self._client.request(method, url + path, **kw)
        except httpx.TimeoutException:
            raise Unavailable(f"inference server at {url} did not answer in {self.timeout:g} s") from None
        except httpx.HTTPError:
            raise Unavailable(f"inference server unreachable at {url}") from None
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError:
                raise ServerError(f"inference server at {url} answered something that is not JSON",
                                  http_status=502) from None
        try:
            reason = str(resp.json().get("error") or "").strip()
        except (ValueError, AttributeError):
            reason = ""
        reason = (reason or resp.text or f"HTTP {resp.status_code}").splitlines()[0][:300]
        if resp.status_code == 404:
            raise NotFoundError(f"model {model!r} is not served at {url}")
        if resp.status_code in (400, 413, 415, 422):
            raise InputError(reason, http_status=400 if resp.status_code == 422 else resp.status_code)
        if resp.status_code == 503:
            raise Unavailable(f"inference server at {url} is not ready: {reason}")
        raise ServerError(f"inference server at {url} answered {resp.status_code}: {reason}", http_status=502)

    async def metadata(self, model: str, refresh: bool = False) -> dict:
        if refresh or model not in self._meta:
            self._meta[model] = await self._call("GET", f"/v2/models/{model}", model)
        return self._meta[model]

    async def _infer(self, model: str, image: bytes, explain: bool) -> dict:
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(image).decode("ascii")]}]}
        if explain:
            body["parameters"] = {"explain": True}
        return await self._call("POST", f"/v2/models/{model}/infer", model, json=body)

    async def predict(self, image: bytes, model: str, explain: bool = False) -> InferenceResult:
        start = time.perf_counter()
        meta = await self.metadata(model)
        task = (meta.get("parameters") or {}).get("task")
        if task not in ("classify", "segment"):
            raise ServerError(f"model {model!r} at {self.base(model)} reports no known task ({task!r})",
                              http_status=502)
        calls = [self._infer(model, image, explain=False)]
        if explain or task == "segment":
            calls.append(self._infer(model, image, explain=True))
        answers = await asyncio.gather(*calls)
        latency_ms = (time.perf_counter() - start) * 1000.0
        version = str(answers[0].get("model_version") or "")
        if version and version not in [str(v) for v in meta.get("versions") or []]:
            meta = await self.metadata(model, refresh=True)  # the server now runs another version
        params = meta.get("parameters") or {}
        result = InferenceResult(
            model_name=str(answers[0].get("model_name") or model),
            model_version=version or str((meta.get("versions") or [""])[0]),
            mlflow_run_id=params.get("mlflow_run_id"),
            task=task,
            output={},
            classes=list(params.get("classes") or []),
            latency_ms=latency_ms,
        )
        try:
            _fill(result, _outputs(answers[0]), _outputs(answers[1]) if len(answers) > 1 else None)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ServerError(f"inference server at {self.base(model)} answered an unexpected v2 body: {exc}",
                              http_status=502) from None
        result.uncertainty = await asyncio.to_thread(uncertainty, result)
        return result


def _outputs(answer: dict) -> dict:
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    if outputs.get("error") and outputs["error"][0]:
        raise InputError(str(outputs["error"][0]))
    return outputs


def _fill(result: InferenceResult, out: dict, explained: dict | None) -> None:
    if result.task == "classify":
        probs = [float(p) for p in out["probabilities"]]
        names = result.classes if len(result.classes) == len(probs) else [str(i) for i in range(len(probs))]
        result.output = {"label": out["label"][0], "score": float(out["score"][0]),
                         "probabilities": dict(zip(names, probs, strict=True))}
    else:
        result.output = {"crack_ratio": float(out["crack_ratio"][0]), "boxes": json.loads(out["boxes"][0]),
                         "mask_rle": json.loads(out["mask_rle"][0])}
        result.mask_png = base64.b64decode(out["mask_png"][0])
    if explained is not None:
        result.heatmap_png = base64.b64decode(explained["heatmap_png"][0])
        result.output["explanation"] = json.loads(explained["explanation"][0])


def crack_probability(probabilities: dict[str, float]) -> float:
    """p(crack) of a classifier result: the positive class of a binary model; for an N-class
    defect model with one negative class (``free``, ``no_crack``, ...) p(any defect) = 1 - p(negative);
    else the top score."""
    positives = [v for k, v in probabilities.items() if k.lower() not in NEGATIVE_NAMES]
    if len(probabilities) == 2 and len(positives) == 1:
        return float(positives[0])
    negatives = [v for k, v in probabilities.items() if k.lower() in NEGATIVE_NAMES]
    if len(probabilities) > 2 and len(negatives) == 1:
        return float(1.0 - negatives[0])
    return max(probabilities.values(), default=0.0)


def _gray(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png), formats=["PNG"]) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def uncertainty(result: InferenceResult) -> float:
    """The review queue's key, in [0, 1]; larger means the model is less sure (module docstring)."""
    if result.task == "classify":
        p = crack_probability(result.output["probabilities"])
        return float(1.0 - min(1.0, abs(p - CLASSIFIER_THRESHOLD) / CLASSIFIER_THRESHOLD))
    from scipy import ndimage

    prob = _gray(result.heatmap_png)
    mask = _gray(result.mask_png) > 0.5
    if mask.shape != prob.shape:
        raise FissureError(f"mask {mask.shape} and probability map {prob.shape} differ in size", http_status=502)
    band = ndimage.binary_dilation(mask, iterations=BOUNDARY_BAND) & ~ndimage.binary_erosion(
        mask, iterations=BOUNDARY_BAND, border_value=1)
    values = 1.0 - np.abs(2.0 * prob - 1.0)
    return float(values[band].mean() if band.any() else values.mean())
