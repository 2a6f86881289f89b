"""A small client for people and tests: one image -> one normalised result, over v1, v2 or gRPC."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import httpx
import numpy as np

from fissure.errors import FissureError, InputError, NotFoundError, ServerError
from fissure.serving import codec
from fissure.settings import settings

DEFAULT_URL = settings().url
DEFAULT_GRPC = settings().grpc_url
# The :authority a gateway routes gRPC by (Gateway API GRPCRoute hostnames), when it is not
# the host of --grpc-url: e.g. crack-segmenter.grpc.fissure.localtest.me through a port-forward.
DEFAULT_GRPC_AUTHORITY = settings().grpc_authority
GRPC_MAX_MESSAGE = 64 * 1024 * 1024


def _check(resp: httpx.Response) -> dict:
    if resp.status_code != 200:
        try:
            reason = resp.json().get("error") or resp.text
        except ValueError:
            reason = resp.text
        err = ServerError(f"HTTP {resp.status_code}: {str(reason).splitlines()[0] if reason else ''}")
        err.http_status = resp.status_code
        raise err
    return resp.json()


def list_models(url: str = DEFAULT_URL, timeout: float = 10.0) -> list[str]:
    try:
        return _check(httpx.get(f"{url.rstrip('/')}/v2/models", timeout=timeout))["models"]
    except httpx.HTTPError as exc:
        raise ServerError(f"cannot reach {url}: {exc}") from None


def predict(image: bytes, model: str, url: str = DEFAULT_URL, protocol: str = "v2",
            explain: bool = False, grpc_url: str = DEFAULT_GRPC, timeout: float = 60.0,
            grpc_authority: str | None = DEFAULT_GRPC_AUTHORITY) -> dict:
    """Send encoded image bytes; return the result as the v1 protocol shapes it (plus names)."""
    if not image:
        raise InputError("the image file is empty")
    try:
        if protocol == "v1":
            verb = "explain" if explain else "predict"
            body = {"instances": [{"b64": codec.b64encode(image)}]}
            data = _check(httpx.post(f"{url.rstrip('/')}/v1/models/{model}:{verb}", json=body, timeout=timeout))
            result = data["explanations" if explain else "predictions"][0]
            if "error" in result:
                raise ServerError(result["error"])
            return result
        if protocol == "v2":
            body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [codec.b64encode(image)]}]}
            if explain:
                body["parameters"] = {"explain": True}
            data = _check(httpx.post(f"{url.rstrip('/')}/v2/models/{model}/infer", json=body, timeout=timeout))
            outputs = {o["name"]: np.asarray(o["data"], dtype=object if o["datatype"] == "BYTES" else np.float64)
                       .reshape(o["shape"]).tolist() for o in data["outputs"]}
            return _with_classes(_from_v2(outputs, data, explain, binary=False), url, model)
    except httpx.HTTPError as exc:
        raise ServerError(f"cannot reach {url}: {exc}") from None
    if protocol == "grpc":
        return _with_classes(_grpc(image, model, grpc_url, explain, timeout, grpc_authority), url, model)
    raise FissureError(f"unknown protocol {protocol!r}; use v1, v2 or grpc")


def _grpc(image: bytes, model: str, target: str, explain: bool, timeout: float,
          authority: str | None = None) -> dict:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    target = urlparse(target).netloc or target if "://" in target else target
    options = [("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
               ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE)]
    if authority:
        options.append(("grpc.default_authority", authority))
    client = grpcclient.InferenceServerClient(target, channel_args=options)
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object))
    try:
        res = client.infer(model, [inp], parameters={"explain": True} if explain else None,
                           client_timeout=timeout)
    except InferenceServerException as exc:
        status = exc.status() or ""
        if "NOT_FOUND" in status:
            raise NotFoundError(exc.message()) from None
        raise ServerError(f"gRPC {status}: {exc.message()}") from None
    finally:
        client.close()
    meta = res.get_response(as_json=True)
    outputs = {o["name"]: res.as_numpy(o["name"]).tolist() for o in meta["outputs"]}
    return _from_v2(outputs, meta, explain, binary=True)


def _with_classes(result: dict, url: str, model: str) -> dict:
    """v2 probabilities come as a vector; name them from the model's metadata when reachable."""
    probs = result.get("probabilities")
    if isinstance(probs, list):
        try:
            meta = httpx.get(f"{url.rstrip('/')}/v2/models/{model}", timeout=5.0).json()
            classes = meta.get("parameters", {}).get("classes") or []
            if len(classes) == len(probs):
                result["probabilities"] = dict(zip(classes, probs))
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
    return result


def _from_v2(outputs: dict, meta: dict, explain: bool, binary: bool) -> dict:
    def first(name):
        v = outputs[name][0]
        return v

    def text(name):
        v = first(name)
        return v.decode() if isinstance(v, bytes) else v

    def png(name):
        v = first(name)
        return codec.b64encode(v) if binary else v

    if "error" in outputs and text("error"):
        raise ServerError(text("error"))
    result = {"model_name": meta.get("model_name"), "model_version": meta.get("model_version")}
    if explain:
        result.update(json.loads(text("explanation")))
        result["heatmap_png"] = png("heatmap_png")
    elif "label" in outputs:
        probs = outputs["probabilities"][0]
        result.update({"label": text("label"), "score": float(first("score")), "probabilities": probs})
    else:
        result.update({
            "crack_ratio": float(first("crack_ratio")),
            "boxes": json.loads(text("boxes")),
            "mask_rle": json.loads(text("mask_rle")),
            "mask_png": png("mask_png"),
        })
    return result


def describe(result: dict) -> str:
    """A readable one-or-few-line summary of a result."""
    head = f"{result.get('model_name')} v{result.get('model_version')}"
    if "heatmap_png" in result:
        s = result.get("summary", {})
        target = f" for {result['target']} ({result['score']:.3f})" if "target" in result else ""
        return (f"{head}: {result.get('method')}{target}; heatmap {s.get('size', ['?', '?'])[1]}x"
                f"{s.get('size', ['?', '?'])[0]}, peak at x={s.get('peak', ['?'])[0]} y={s.get('peak', ['?', '?'])[1]}, "
                f"mean {s.get('mean', 0):.3f}")
    if "label" in result:
        probs = result["probabilities"]
        if isinstance(probs, dict):
            items = sorted(probs.items(), key=lambda kv: -kv[1])
            ptxt = ", ".join(f"{k} {v:.3f}" for k, v in items)
        else:
            ptxt = ", ".join(f"{v:.3f}" for v in probs)
        return f"{head}: {result['label']} ({result['score']:.3f})  probabilities: {ptxt}"
    boxes = result.get("boxes", [])
    size = result.get("mask_rle", {}).get("size", ["?", "?"])
    lines = [f"{head}: crack area {100 * result['crack_ratio']:.2f}% of {size[1]}x{size[0]}, "
             f"{len(boxes)} region{'s' if len(boxes) != 1 else ''}"]
    for b in boxes[:10]:
        lines.append(f"  box x={b['box'][0]}..{b['box'][2]} y={b['box'][1]}..{b['box'][3]}  area {b['area']} px")
    if len(boxes) > 10:
        lines.append(f"  ... {len(boxes) - 10} more")
    return "\n".join(lines)
