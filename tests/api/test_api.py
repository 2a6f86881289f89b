"""The HTTP contract under TestClient (SQLite store): auth and roles, limits, idempotent
feedback, listing, the review queue, export, tokens, retrain runs, metrics and errors."""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest

from fissure.data.loaders import classification_set, segmentation_items


def test_open_routes_need_no_token(client):
    assert client.get("/ping", role=None).json() == {"status": "ok"}
    assert client.get("/metrics", role=None).status_code == 200
    docs = client.get("/docs", role=None)
    assert docs.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()  # Swagger UI's files are served here, not from a CDN
    assert client.get("/docs/static/swagger-ui-bundle.js", role=None).status_code == 200
    spec = client.get("/openapi.json", role=None).json()
    assert "/predict" in spec["paths"] and "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer fst_wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer "}])
def test_missing_or_wrong_token_is_401(client, headers):
    r = client.http.get("/predictions", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]


@pytest.mark.parametrize("method,path,needs", [
    ("post", "/predictions/x/feedback", "annotator"),
    ("get", "/feedback/export", "annotator"),
    ("post", "/retrain", "admin"),
    ("get", "/retrain/x", "admin"),
    ("post", "/tokens", "admin"),
])
def test_roles(client, method, path, needs):
    below = {"annotator": ["viewer"], "admin": ["viewer", "annotator"]}[needs]
    for role in below:
        r = getattr(client, method)(path, role=role)
        assert r.status_code == 403, (role, r.text)
        assert needs in r.json()["error"]
    assert getattr(client, method)(path, role=needs).status_code != 403


def test_rate_limit_is_per_token_with_retry_after(make_client):
    c = make_client(api_rate_limit=3)
    for _ in range(3):
        assert c.get("/predictions").status_code == 200
    r = c.get("/predictions")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "rate limit" in r.json()["error"]
    assert c.get("/predictions", role="annotator").status_code == 200  # another token has its own bucket


def test_upload_over_the_limit_is_413(make_client, images):
    c = make_client(api_max_upload_bytes=10_000)
    big = images.png(200, 200, seed=1)
    assert len(big) > 10_000
    r = c.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "FISSURE_API_MAX_UPLOAD_BYTES" in r.json()["error"]
    # a body far over the limit is refused from its declared length, before it is read
    r = c.post("/predict", content=b"x" * 2_000_000, headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(40):
            yield b"y" * 65536

    r = c.post("/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413
    r = c.post("/tokens", role="admin", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]


@pytest.mark.parametrize("files,data,status,words", [
    ({"file": ("a.txt", b"hello world", "text/plain")}, {}, 415, "not an image"),
    ({"file": ("a.png", b"", "image/png")}, {}, 400, "empty"),
    ({"other": ("a.png", b"abc", "image/png")}, {}, 400, "'file'"),
    (None, {"model": "x"}, 400, "'file'"),  # urlencoded: read, but has no file
    ({"file": ("a.png", "PNG", "image/png")}, {"model": "../../v2/x"}, 400, "model name"),
    ({"file": ("a.png", "PNG", "image/png")}, {"explain": "maybe"}, 400, "explain"),
])
def test_predict_bad_input(client, images, files, data, status, words):
    if files and files.get("file", (None, None))[1] == "PNG":
        files = {"file": ("a.png", images.png(), "image/png")}
    r = client.post("/predict", files=files, data=data) if files else client.post("/predict", data=data)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_predict_not_multipart_is_415(client):
    r = client.post("/predict", json={"file": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]


def test_serving_down_is_503(client, images):
    r = client.post("/predict", files={"file": ("a.png", images.png(), "image/png")})
    assert r.status_code == 503
    assert r.json()["error"].startswith("inference server unreachable at http://127.0.0.1:")
    assert client.get("/predictions").json()["total"] == 0  # nothing stored


def test_feedback_idempotent_per_user(client, make_prediction):
    p = make_prediction(client.store)
    url = f"/predictions/{p.id}/feedback"
    r1 = client.post(url, role="annotator", data={"verdict": "wrong", "label": "no_crack", "note": "a shadow"})
    assert r1.status_code == 200, r1.text
    r2 = client.post(url, role="annotator", data={"verdict": "correct"})
    r3 = client.post(url, role="admin", data={"verdict": "wrong"})
    assert r2.json()["id"] == r1.json()["id"] and r2.json()["verdict"] == "correct"
    assert r1.json()["user"] == "annotator-user" and r3.json()["user"] == "admin-user"
    got = client.get(f"/predictions/{p.id}").json()
    assert sorted((f["user"], f["verdict"]) for f in got["feedback"]) == [
        ("admin-user", "wrong"), ("annotator-user", "correct")]
    assert got["links"]["image"] == f"/predictions/{p.id}/image" and got["links"]["mask"] is None


def test_feedback_mask(client, make_prediction, images):
    seg = make_prediction(client.store, task="segment", w=48, h=32)
    cls = make_prediction(client.store, seed=3)

    def send(files=None, data=None, pid=seg.id):
        return client.post(f"/predictions/{pid}/feedback", role="annotator", files=files,
                           data={"verdict": "wrong", **(data or {})})

    assert send({"mask": ("m.jpg", images.jpeg(48, 32), "image/jpeg")}).status_code == 415
    r = send({"mask": ("m.png", images.mask(40, 32), "image/png")})
    assert r.status_code == 400 and "40x32" in r.json()["error"]
    assert send({"mask": ("m.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}).status_code == 400
    assert send({"mask": ("m.png", images.mask(48, 32), "image/png")}, pid=cls.id).status_code == 400
    assert send(data={"label": "crack"}).status_code == 400  # a label is for classifier predictions
    assert send(data={"label": "pothole"}, pid=cls.id).status_code == 400
    assert send(data={"verdict": "maybe"}).status_code == 400
    assert client.post("/predictions/nope/feedback", role="annotator", data={"verdict": "correct"}).status_code == 404

    gray = images.mask(48, 32, rows=slice(0, 5))  # stored as 0/255 whatever the PNG's values
    r = send({"mask": ("m.png", gray, "image/png")}, {"note": "wider"})
    assert r.status_code == 200, r.text
    fb = r.json()
    got = client.get(f"/feedback/{fb['id']}/mask")
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert client.store.blobs.exists(fb["mask_sha256"])
    assert client.get(f"/predictions/{seg.id}/mask").content == images.mask(48, 32)
    assert client.get(f"/predictions/{seg.id}/heatmap").status_code == 404
    assert client.get(f"/predictions/{cls.id}/image").content == images.png(seed=3)


def test_list_and_review_queue_over_http(client, make_prediction):
    a = make_prediction(client.store, seed=1, uncertainty=0.2)
    b = make_prediction(client.store, seed=2, uncertainty=0.9)
    client.post(f"/predictions/{a.id}/feedback", role="annotator", data={"verdict": "correct"})
    page = client.get("/predictions", params={"verdict": "correct"}).json()
    assert [p["id"] for p in page["items"]] == [a.id] and page["total"] == 1
    assert client.get("/predictions", params={"has_feedback": "false"}).json()["items"][0]["id"] == b.id
    assert client.get("/predictions", params={"since": "2100-01-01T00:00:00"}).json()["total"] == 0
    assert [p["id"] for p in client.get("/review-queue").json()["items"]] == [b.id]
    for bad in ({"page": 0}, {"page_size": 1000}, {"verdict": "maybe"}, {"since": "yesterday"}):
        r = client.get("/predictions", params=bad)
        assert r.status_code == 400 and list(r.json()) == ["error"], (bad, r.text)
    assert client.get("/predictions/nope").status_code == 404


def test_export_zip_layout_manifest_and_determinism(client, make_prediction, images, tmp_path):
    s = client.store
    right = make_prediction(s, seed=1, p_crack=0.9)          # judged correct: crack
    wrong = make_prediction(s, seed=2, p_crack=0.8)          # judged wrong, no label: binary -> no_crack
    seg = make_prediction(s, task="segment", seed=3)         # judged wrong with a corrected mask
    seg_ok = make_prediction(s, task="segment", seed=4)      # judged correct: the predicted mask
    seg_no = make_prediction(s, task="segment", seed=5)      # judged wrong without a mask: skipped
    make_prediction(s, seed=6)                               # not judged: not exported
    fb = lambda p, **d: client.post(f"/predictions/{p.id}/feedback", role="annotator", **d)  # noqa: E731
    fb(right, data={"verdict": "correct"})
    fb(wrong, data={"verdict": "wrong"})
    fb(seg, data={"verdict": "wrong"}, files={"mask": ("m.png", images.mask(rows=slice(0, 2)), "image/png")})
    fb(seg_ok, data={"verdict": "correct"})
    fb(seg_no, data={"verdict": "wrong"})

    r = client.get("/feedback/export", role="annotator")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.content == client.get("/feedback/export", role="annotator").content  # same data, same bytes
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    assert names == sorted(names[:-1]) + ["manifest.json"]
    manifest = json.loads(zf.read("manifest.json"))
    stem = lambda p: p.image_sha256[:16]  # noqa: E731
    assert {i["path"] for i in manifest["items"]} == {
        f"images/crack/{stem(right)}.png", f"images/no_crack/{stem(wrong)}.png",
        f"images/{stem(seg)}.png", f"images/{stem(seg_ok)}.png"}
    assert manifest["counts"] == {"classify": {"crack": 1, "no_crack": 1}, "segment": 2, "skipped": 1}
    assert manifest["skipped"][0]["prediction_id"] == seg_no.id
    item = next(i for i in manifest["items"] if i["prediction_id"] == seg.id)
    assert item["user"] == "annotator-user" and item["verdict"] == "wrong" and item["judged_at"]
    assert zf.read(item["mask"]) != images.mask()  # the corrected mask, not the predicted one
    assert zf.read(f"masks/{stem(seg_ok)}.png") == images.mask()
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())

    # the layouts `fissure data prepare` reads
    out = tmp_path / "export"
    zf.extractall(out)
    assert [p.image.name for p in segmentation_items(out)] == sorted([f"{stem(seg)}.png", f"{stem(seg_ok)}.png"])
    cls = classification_set(out / "images")
    assert cls.classes == ["no_crack", "crack"] and len(cls.items) == 2

    # new feedback changes the export; an unchanged store gives the same bytes again
    fb(seg_no, data={"verdict": "correct"})
    assert client.get("/feedback/export", role="annotator").content != r.content


def test_export_skips_an_image_type_the_loaders_cannot_read_and_phone_jpegs_are_jpegs(client, make_prediction, images, tmp_path):
    """A stored image of no known type is listed as skipped, not written under a name `fissure data
    prepare` passes over (its mask alone would stop the whole feedback set); a phone's
    multi-picture JPEG (MPO) is stored as the JPEG it is."""
    from PIL import Image

    from fissure.api.app import _image_info

    odd = make_prediction(client.store, task="segment", seed=7, media_type="application/octet-stream")
    ok = make_prediction(client.store, task="segment", seed=8)
    for p in (odd, ok):
        client.post(f"/predictions/{p.id}/feedback", role="annotator", data={"verdict": "correct"})
    zf = zipfile.ZipFile(io.BytesIO(client.get("/feedback/export", role="annotator").content))
    manifest = json.loads(zf.read("manifest.json"))
    assert [i["prediction_id"] for i in manifest["items"]] == [ok.id]
    assert manifest["skipped"][0]["prediction_id"] == odd.id
    assert "application/octet-stream" in manifest["skipped"][0]["reason"]
    out = tmp_path / "export"
    zf.extractall(out)
    assert [p.image.name for p in segmentation_items(out)] == [f"{ok.image_sha256[:16]}.png"]

    buf = io.BytesIO()
    frames = [Image.new("RGB", (40, 30), c) for c in ("white", "gray")]
    frames[0].save(buf, format="MPO", save_all=True, append_images=frames[1:])
    assert _image_info(buf.getvalue()) == ((30, 40), "image/jpeg")


def test_tokens_endpoint(client):
    r = client.post("/tokens", role="admin", json={"role": "annotator", "name": "inspector"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["token"].startswith("fst_") and body["role"] == "annotator" and body["name"] == "inspector"
    assert client.http.get("/predictions", headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200
    # only the hash is kept
    from fissure.api.auth import hash_token

    assert client.store.token_by_hash(hash_token(body["token"])).name == "inspector"
    for bad in ({"role": "root"}, {"name": "x"}, {"role": "viewer", "name": "n" * 200}):
        r = client.post("/tokens", role="admin", json=bad)
        assert r.status_code == 400 and list(r.json()) == ["error"], r.text
    assert client.post("/tokens", role="admin", content=b"{not json", headers={
        "Content-Type": "application/json"}).status_code == 400


def _wait_run(client, run_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/retrain/{run_id}", role="admin").json()
        if body["state"] in ("succeeded", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {body['state']}")


def test_retrain_runs_in_the_background(make_client, tmp_path):
    marker = tmp_path / "ran"
    c = make_client(retrain_command=f"echo exporting; sleep 0.5; echo trained > {marker}; echo done")
    r = c.post("/retrain", role="admin")
    assert r.status_code == 202 and r.json()["state"] == "queued"
    assert not marker.exists()  # the request returned before the command finished
    run = _wait_run(c, r.json()["id"])
    assert run["state"] == "succeeded" and run["exit_code"] == 0
    assert "exporting" in run["log_tail"] and run["log_tail"].rstrip().endswith("done")
    assert run["started_at"] and run["finished_at"] and marker.read_text() == "trained\n"
    assert c.get("/retrain/nope", role="admin").status_code == 404


def test_retrain_failure_and_queue(make_client):
    c = make_client(retrain_command="echo failing >&2; exit 3")
    ids = [c.post("/retrain", role="admin").json()["id"] for _ in range(2)]
    for run_id in ids:
        run = _wait_run(c, run_id)
        assert run["state"] == "failed" and run["exit_code"] == 3 and "failing" in run["log_tail"]


def test_stopping_the_api_stops_its_run_and_the_next_start_fails_it(tmp_path):
    from fastapi.testclient import TestClient

    from fissure.api.app import create_app
    from fissure.api.auth import create_token
    from fissure.api.store import Store
    from fissure.settings import Settings

    cfg = Settings(database_url=f"sqlite:///{tmp_path / 'api.db'}", blob_url=str(tmp_path / "blobs"),
                   home=tmp_path / "home", retrain_command=f"echo started; sleep 60; touch {tmp_path / 'x'}")
    store = Store(cfg.database_url, cfg.blob_url)
    store.migrate()
    auth = {"Authorization": f"Bearer {create_token(store, 'admin', 'a')[0]}"}
    with TestClient(create_app(cfg, store)) as tc:
        running = tc.post("/retrain", headers=auth).json()["id"]
        queued = tc.post("/retrain", headers=auth).json()["id"]
        deadline = time.monotonic() + 30
        while tc.get(f"/retrain/{running}", headers=auth).json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # the API stopped: its command was stopped with it, within the grace period, not after 60 s
    assert store.get_run(running).state == "failed" and store.get_run(running).exit_code == -15
    assert store.get_run(queued).state == "queued" and not (tmp_path / "x").exists()
    with TestClient(create_app(cfg, store)) as tc:
        again = tc.get(f"/retrain/{queued}", headers=auth).json()
        assert again["state"] == "failed" and "stopped while this run was queued" in again["log_tail"]
    store.close()


def test_close_while_a_command_is_starting_still_stops_it(tmp_path, monkeypatch):
    """The run is marked running before its process exists: close() in between (a loaded
    machine's slow fork) must wait for the process and stop it, not leave it running."""
    import subprocess
    import threading

    from fissure.api import retrain as retrain_mod
    from fissure.api.store import Store

    real_popen, started = subprocess.Popen, threading.Event()

    def slow_popen(*args, **kwargs):
        started.set()
        time.sleep(0.5)  # close() is called in this window
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(retrain_mod.subprocess, "Popen", slow_popen)
    store = Store(f"sqlite:///{tmp_path / 'api.db'}", str(tmp_path / "blobs"))
    store.migrate()
    worker = retrain_mod.Retrainer(store, f"sleep 60; touch {tmp_path / 'x'}", tmp_path / "logs")
    run = worker.submit("ana")
    assert started.wait(10)
    begun = time.monotonic()
    worker.close(timeout=5)
    got = store.get_run(run.id)
    assert (got.state, got.exit_code) == ("failed", -15), got
    assert time.monotonic() - begun < 5 and not (tmp_path / "x").exists()
    store.close()


def test_default_retrain_command_is_fissure_retrain():
    """export + dvc repro + the gate (docs/retraining.md); exit 3 (refused) is kept as the run's code"""
    from fissure.settings import Settings

    assert Settings().retrain_command == "fissure retrain"


def test_metrics_count_requests_predictions_feedback(client, make_prediction):
    p = make_prediction(client.store)
    client.get("/predictions")
    client.get("/predictions/nope")
    client.post(f"/predictions/{p.id}/feedback", role="annotator", data={"verdict": "wrong"})
    text = client.get("/metrics", role=None).text
    assert 'fissure_api_requests_total{method="GET",route="/predictions",status="200"} 1.0' in text
    assert ('fissure_api_requests_total{method="GET",route="/predictions/{prediction_id}",status="404"} 1.0'
            in text)
    assert 'fissure_api_request_seconds_count{method="GET",route="/predictions",status="200"} 1.0' in text
    # feedback is counted from the store (tests/observability/test_api_metrics.py has the rest)
    assert 'fissure_feedback_total{model="crack-classifier",verdict="wrong",version="1"} 1.0' in text


def test_unknown_routes_and_methods_are_one_line_json(client):
    r = client.get("/nope", role=None)
    assert r.status_code == 404 and r.json() == {"error": "no route GET /nope"}
    r = client.http.delete("/predictions")
    assert r.status_code == 405 and list(r.json()) == ["error"]


def test_database_down_is_503(make_client, postgres, make_prediction):
    import psycopg

    c = make_client(database_url=postgres.new_database())
    p = make_prediction(c.store)
    assert c.get(f"/predictions/{p.id}").status_code == 200
    db = c.store.engine.url.database
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
    try:
        r = c.get(f"/predictions/{p.id}")
        assert r.status_code == 503 and r.json()["error"].startswith("database unavailable at postgresql")
        assert "Traceback" not in r.text
    finally:
        with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
