"""What a review found open, read as an attacker would: each test fails on the old server."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
CLF, SEG = "crack-classifier", "crack-segmenter"


def _v1(images: list[bytes], key: str = "b64") -> dict:
    return {"instances": [{key: base64.b64encode(b).decode()} for b in images]}


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def _ready(server) -> int:
    return httpx.get(server.url + "/v2/health/ready", timeout=10).status_code


def _wait_for(server, status: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _ready(server) == status:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


# ---------------------------------------------------------------------------- model repository


@pytest.mark.parametrize("op", ["unload", "load"])
def test_rest_repository_api_is_refused(server, png_bytes, op):
    r = server.post(f"/v2/repository/models/{CLF}/{op}")
    assert r.status_code == 403
    assert "FISSURE_ENABLE_REPOSITORY_API" in r.json()["error"]
    assert server.post(f"/v1/models/{CLF}:predict", json=_v1([png_bytes])).status_code == 200


def test_grpc_repository_api_is_refused(server, png_bytes):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc)
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        client.unload_model(CLF)
    assert client.is_model_ready(CLF)


# ---------------------------------------------------------------------------- internal frame


def _frame(n_declared: int) -> bytes:
    from fissure.serving import codec

    header = json.dumps({"op": "predict", "items": [
        {"kind": "pixels", "n": n_declared, "shape": [30000, 30000, 3], "size": [100000, 100000]}]}).encode()
    return codec.WIRE_MAGIC + len(header).to_bytes(4, "big") + header + b"\0" * 16


def test_internal_frame_from_a_client_is_refused_at_the_front(server):
    from fissure.serving import codec

    r = server.post(f"/predictions/{CLF}", content=_frame(16),
                    headers={"Content-Type": codec.WIRE_CONTENT_TYPE, codec.WIRE_HEADER: "guess"})
    assert r.status_code == 403, r.text
    assert "\n" not in r.json()["error"]


def test_internal_frame_without_the_token_is_refused_by_torchserve(server):
    from fissure.serving import codec

    r = httpx.post(f"{server.ts_inference}/predictions/{CLF}", content=_frame(16),
                   headers={"Content-Type": codec.WIRE_CONTENT_TYPE}, timeout=30)
    assert r.status_code == 403, r.text


# ---------------------------------------------------------------------------- limits


def test_body_over_the_limit_is_413_before_it_is_read(server):
    from fissure.settings import Settings

    limit = Settings().max_body_bytes
    r = server.post(f"/v1/models/{CLF}:predict", content=b"0" * (limit + 1),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "FISSURE_MAX_BODY_BYTES" in r.json()["error"]


def test_a_streamed_body_over_the_limit_is_413_and_unknown_routes_answer_error(server):
    """No Content-Length (chunked): the body is counted while it streams in; the refusal and a
    route that does not exist answer in the front's {"error"} shape, not Starlette's {"detail"}."""
    from fissure.settings import Settings

    limit = Settings().max_body_bytes
    block = b"0" * (1 << 20)

    def chunks():
        for _ in range(limit // len(block) + 2):
            yield block

    r = server.post(f"/v1/models/{CLF}:predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "FISSURE_MAX_BODY_BYTES" in r.json()["error"]
    r = server.get("/v1/no-such-route")
    assert r.status_code == 404 and list(r.json()) == ["error"]


def test_too_many_items_is_413(server, png_bytes):
    from fissure.settings import Settings

    n = Settings().max_items + 1
    r = server.post(f"/v1/models/{CLF}:predict", json=_v1([png_bytes] * n))
    assert r.status_code == 413 and f"{n} items in one request" in r.json()["error"]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [n],
                        "data": [base64.b64encode(png_bytes).decode()] * n}]}
    r = server.post(f"/v2/models/{CLF}/infer", json=body)
    assert r.status_code == 413 and "FISSURE_MAX_ITEMS" in r.json()["error"]


def test_small_body_of_huge_images_is_413_without_decoding(server):
    """Three 30-megapixel black PNGs are ~90 kB on the wire and 90 MP to decode."""
    big = _png(6000, 5000)
    assert len(big) < 100_000
    r = server.post(f"/v1/models/{SEG}:predict", json=_v1([big] * 3))
    assert r.status_code == 413 and "FISSURE_MAX_REQUEST_PIXELS" in r.json()["error"]


def test_grpc_message_over_the_limit_is_resource_exhausted(server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from fissure.settings import Settings

    client = grpcclient.InferenceServerClient(server.grpc)
    data = np.array([b"\0" * (Settings().max_body_bytes + 1)], dtype=np.object_)
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED"):
        client.infer(CLF, [inp])


# ---------------------------------------------------------------------------- KServe's TorchServe form


def test_kserve_torchserve_v1_form_is_accepted(server, png_bytes):
    """KServe's TorchServe samples send {"instances": [{"data": "<base64>"}]}."""
    r = server.post(f"/v1/models/{CLF}:predict", json=_v1([png_bytes], key="data"))
    assert r.status_code == 200, r.text
    same = server.post(f"/v1/models/{CLF}:predict", json=_v1([png_bytes])).json()
    assert r.json()["predictions"][0]["probabilities"] == same["predictions"][0]["probabilities"]


# ---------------------------------------------------------------------------- binding


def _listening(pid: int) -> dict[int, str]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    found = {}
    for p in procs:
        conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections(kind="inet")
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                found[c.laddr.port] = c.laddr.ip.removeprefix("::ffff:")  # IPv4-mapped (java, gRPC)
    return found


def test_every_port_listens_on_loopback_by_default(server):
    from urllib.parse import urlparse

    listening = _listening(server.proc.pid)
    for url in (server.url, "http://" + server.grpc, server.ts_metrics, server.ts_inference, server.ts_management):
        port = urlparse(url).port
        assert listening.get(port) == "127.0.0.1", (port, listening)
    assert set(listening.values()) == {"127.0.0.1"}, listening


# ---------------------------------------------------------------------------- readiness


def test_readiness_follows_torchserve(server, png_bytes):
    """A frozen TorchServe makes the front unready (its /ping stops answering); back when it thaws."""
    pid = int((server.workdir / "tmp" / ".model_server.pid").read_text())
    assert _ready(server) == 200
    os.kill(pid, signal.SIGSTOP)
    try:
        assert _wait_for(server, 503), "front stayed ready while TorchServe was frozen"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _wait_for(server, 200), "front did not become ready again"
    assert server.post(f"/v1/models/{CLF}:predict", json=_v1([png_bytes])).status_code == 200
