"""The in-process runtime answers as the TorchServe one does, batches adaptively, fails items alone."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow
CLF, SEG = "crack-classifier", "crack-segmenter"


def _v2(images: list[bytes]) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                        "data": [base64.b64encode(b).decode() for b in images]}]}


def _outputs(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return {o["name"]: o["data"] for o in resp.json()["outputs"]}


def test_metadata_names_the_runtime(inprocess_server):
    meta = inprocess_server.get(f"/v2/models/{CLF}").json()
    assert meta["platform"] == "pytorch" and meta["versions"] == ["1"]


@pytest.mark.parametrize("model", [CLF, SEG])
def test_same_answers_as_torchserve(server, inprocess_server, images, model):
    batch = [images.png(seed=s) for s in range(3)]
    ts = _outputs(server.post(f"/v2/models/{model}/infer", json=_v2(batch)))
    ip = _outputs(inprocess_server.post(f"/v2/models/{model}/infer", json=_v2(batch)))
    assert ts.keys() == ip.keys()
    for name in ts:
        if name in ("probabilities", "score", "crack_ratio"):
            np.testing.assert_allclose(ts[name], ip[name], atol=1e-5)
        else:
            assert ts[name] == ip[name], name


def test_grpc_and_explain(inprocess_server, png_bytes):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(inprocess_server.grpc)
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png_bytes], dtype=np.object_))
    res = client.infer(SEG, [inp])
    assert res.as_numpy("mask_png")[0].startswith(b"\x89PNG")
    r = inprocess_server.post(f"/v1/models/{CLF}:explain",
                              json={"instances": [{"b64": base64.b64encode(png_bytes).decode()}]})
    assert r.status_code == 200 and r.json()["explanations"][0]["method"] == "grad-cam"


def test_requests_queued_while_the_model_is_busy_are_merged_and_keep_their_answers(inprocess_server, images):
    """While one long call runs (48 masks of 512 px to encode), 12 small requests queue; the
    batcher must merge them into its next call, and each still gets its own answer."""
    import threading
    import time

    srv = inprocess_server
    pngs = [images.png(seed=s) for s in range(12)]
    alone = [_outputs(srv.post(f"/v2/models/{SEG}/infer", json=_v2([p])))["mask_png"][0] for p in pngs]
    seen = len(srv.log.read_text().splitlines())
    big = [images.png(seed=100 + s, w=512, h=512) for s in range(48)]
    busy = threading.Thread(target=lambda: httpx.post(f"{srv.url}/v2/models/{SEG}/infer", json=_v2(big), timeout=120))
    busy.start()
    deadline = time.monotonic() + 30
    while "images=48" not in "".join(srv.log.read_text().splitlines()[seen:]):  # the long call has started
        assert time.monotonic() < deadline, "the long call never reached the model"
        time.sleep(0.02)

    def one(p):
        return _outputs(httpx.post(f"{srv.url}/v2/models/{SEG}/infer", json=_v2([p]), timeout=60))

    with ThreadPoolExecutor(12) as pool:
        together = [o["mask_png"][0] for o in pool.map(one, pngs)]
    busy.join(120)
    assert together == alone
    sizes = [int(line.split("requests=")[1].split()[0]) for line in srv.log.read_text().splitlines()[seen:]
             if "fissure-batch requests=" in line]
    assert max(sizes) > 1, f"no two requests were merged into one model call: {sizes}"


def test_bad_item_fails_alone(inprocess_server, png_bytes):
    r = inprocess_server.post(f"/v2/models/{CLF}/infer", json={"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [2],
        "data": [base64.b64encode(png_bytes).decode(), base64.b64encode(b"not an image").decode()]}]})
    out = _outputs(r)
    assert out["label"][0] in ("crack", "no_crack") and out["label"][1] == ""
    assert out["error"][0] == "" and out["error"][1]


def test_no_torchserve_process(inprocess_server):
    import psutil

    tree = [psutil.Process(inprocess_server.proc.pid), *psutil.Process(inprocess_server.proc.pid).children(True)]
    assert not any("java" in " ".join(p.cmdline()) for p in tree)


def test_sigterm_drains_requests_in_flight(own_inprocess_server, images):
    """Readiness turns false and a request already running still gets its answer."""
    import signal
    import threading
    import time

    srv = own_inprocess_server
    batch = [images.png(seed=s, w=512, h=512) for s in range(48)]
    answer = {}

    def slow():
        answer["r"] = httpx.post(f"{srv.url}/v2/models/{SEG}/infer", json=_v2(batch), timeout=120)

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 30
    while "fissure-batch requests=1 images=48" not in srv.log.read_text():  # the model is at work
        assert time.monotonic() < deadline, "the batch never reached the model"
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert answer["r"].status_code == 200 and len(_outputs(answer["r"])["mask_png"]) == 48
    assert srv.proc.wait(60) == 0
    assert "draining for up to" in srv.log.read_text()
