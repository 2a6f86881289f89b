"""Nothing acknowledged is lost: `fissure api` is SIGKILLed while threads write feedback, then
restarted; every write that got a 2xx is there exactly once, with its own values, and every
mask it references is stored. On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import httpx
import pytest

from fissure.api.auth import create_token
from fissure.api.store import Store

pytestmark = pytest.mark.slow
FISSURE = str(Path(sys.executable).with_name("fissure"))
WRITERS = 6
PREDICTIONS = 60
KILL_AFTER = 40  # acknowledged writes before the kill: the load is well under way, far from done


def test_sigkill_under_load_loses_no_acknowledged_write(db_url, tmp_path, make_prediction, images, start,
                                                         new_port):
    blobs = str(tmp_path / "blobs")
    store = Store(db_url, blobs)
    store.migrate()
    preds = [make_prediction(store, task="segment" if i % 3 == 0 else "classify", seed=i)
             for i in range(PREDICTIONS)]
    tokens = [create_token(store, "annotator", f"writer-{w}")[0] for w in range(WRITERS)]
    env = {**os.environ, "FISSURE_DATABASE_URL": db_url, "FISSURE_BLOB_URL": blobs,
           "FISSURE_HOME": str(tmp_path / "home"), "FISSURE_API_RATE_LIMIT": "1000000"}
    port = new_port()
    url = f"http://127.0.0.1:{port}"
    api = start([FISSURE, "api", "--port", str(port)], env, tmp_path / "api.log", f"{url}/ping")

    acked: dict[tuple[str, int], str] = {}  # (prediction, writer) -> the note the 2xx acknowledged
    failed: list[tuple[str, int]] = []
    errors: list[str] = []  # answers other than a 2xx
    lock = threading.Lock()
    enough = threading.Event()

    def write(w: int, pred, client: httpx.Client) -> None:
        note = f"writer {w} on {pred.id}"
        files = None
        if pred.task == "segment":  # a mask blob per write: written before the row
            files = {"mask": ("m.png", images.mask(rows=slice(w, w + 3 + pred.image_height // 4)), "image/png")}
        r = client.post(f"{url}/predictions/{pred.id}/feedback", files=files,
                        data={"verdict": "wrong" if w % 2 else "correct", "note": note},
                        headers={"Authorization": f"Bearer {tokens[w]}"})
        assert r.status_code == 200, r.text  # anything but a 2xx or a dropped connection fails the test
        with lock:
            acked[(pred.id, w)] = note
            if len(acked) >= KILL_AFTER:
                enough.set()

    def writer(w: int) -> None:
        with httpx.Client(timeout=30) as client:
            for pred in preds[w::2] + preds[1 - w % 2::2]:  # writers cross each other's predictions
                try:
                    write(w, pred, client)
                except httpx.HTTPError:
                    with lock:
                        failed.append((pred.id, w))
                    return  # the server is gone
                except AssertionError as exc:
                    errors.append(str(exc))
                    return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(timeout=120), f"only {len(acked)} writes acknowledged:\n{api.output()[-2000:]}"
        os.killpg(api.proc.pid, signal.SIGKILL)
        api.proc.wait()
        for t in threads:
            t.join(timeout=60)
    finally:
        if api.proc.poll() is None:
            api.stop(signal.SIGKILL)
    assert not errors, errors[:3]
    assert failed, "the kill came after the load had finished"
    assert len(acked) < WRITERS * PREDICTIONS

    api = start([FISSURE, "api", "--port", str(port)], env, tmp_path / "api-again.log", f"{url}/ping")
    try:
        rows = {(f.prediction_id, f.user): f for p in preds for f in store.get_prediction(p.id).feedback}
        for (pid, w), note in acked.items():
            row = rows.get((pid, f"writer-{w}"))
            assert row is not None, f"acknowledged write lost: writer {w} on {pid}"
            assert row.note == note
        assert len(rows) >= len(acked)  # unacknowledged writes may have landed too, never twice
        for row in rows.values():
            if row.mask_sha256:
                assert store.blobs.exists(row.mask_sha256), "a row references a missing blob"
        # the restarted API serves what was acknowledged, and clients can retry what was not
        pid, w = next(iter(acked))
        got = httpx.get(f"{url}/predictions/{pid}", headers={"Authorization": f"Bearer {tokens[w]}"}).json()
        assert f"writer-{w}" in [f["user"] for f in got["feedback"]]
        with httpx.Client(timeout=30) as client:
            for pid, w in failed:
                write(w, next(p for p in preds if p.id == pid), client)
        again = {(f.prediction_id, f.user) for p in preds for f in store.get_prediction(p.id).feedback}
        assert again == set(rows) | {(pid, f"writer-{w}") for pid, w in failed}
        assert store.gc_blobs(older_than=0) is not None  # orphans of killed requests are collectable
        for p in preds:
            for f in store.get_prediction(p.id).feedback:
                assert not f.mask_sha256 or store.blobs.exists(f.mask_sha256)
    finally:
        api.stop()
        store.close()
