"""`fissure api`, `fissure token create` and `fissure feedback export` as a person runs them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

FISSURE = str(Path(sys.executable).with_name("fissure"))
TOKEN = re.compile(r"fst_[A-Za-z0-9_-]{20,}")


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "FISSURE_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}


def run(env, *args, timeout=60):
    return subprocess.run([FISSURE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_api_prints_an_admin_token_once_and_it_works(env, tmp_path, start, new_port):
    port = new_port()
    url = f"http://127.0.0.1:{port}"
    first = start([FISSURE, "api", "--port", str(port)], env, tmp_path / "first.log", f"{url}/ping")
    try:
        tokens = TOKEN.findall(first.output())
        assert len(tokens) == 1
        auth = {"Authorization": f"Bearer {tokens[0]}"}
        assert httpx.get(f"{url}/predictions", headers=auth).status_code == 200
        made = httpx.post(f"{url}/tokens", headers=auth, json={"role": "viewer", "name": "v"})
        assert made.status_code == 201
    finally:
        first.stop()  # SIGTERM: uvicorn shuts down, then re-raises the signal (exit -15)
        assert "Traceback" not in first.output()
    second = start([FISSURE, "api", "--port", str(port)], env, tmp_path / "second.log", f"{url}/ping")
    try:
        assert TOKEN.findall(second.output()) == []  # the store has tokens: none printed again
        assert httpx.get(f"{url}/predictions", headers=auth).status_code == 200
    finally:
        second.stop()


def test_api_registers_the_admin_token_it_is_given(env, tmp_path, start, new_port):
    port = new_port()
    url = f"http://127.0.0.1:{port}"
    given = "fst_from-a-kubernetes-secret-0123456789"
    proc = start([FISSURE, "api", "--port", str(port)], {**env, "FISSURE_API_ADMIN_TOKEN": given},
                 tmp_path / "api.log", f"{url}/ping")
    try:
        assert given not in proc.output() and TOKEN.findall(proc.output()) == []
        r = httpx.post(f"{url}/tokens", headers={"Authorization": f"Bearer {given}"}, json={"role": "viewer"})
        assert r.status_code == 201
    finally:
        proc.stop()


def test_help_everywhere(env):
    for args in (["api"], ["token"], ["token", "create"], ["feedback"], ["feedback", "export"], ["feedback", "gc"]):
        r = run(env, *args, "--help")
        assert r.returncode == 0 and "Usage: fissure" in r.stdout, args


@pytest.mark.parametrize("args,code,words", [
    (["token", "create", "--role", "root"], 2, "'root' is not one of"),
    (["token", "create"], 2, "Missing option '--role'"),
    (["feedback", "export"], 2, "Missing option '--out'"),
    (["api", "--port", "0"], 2, "0 is not in the range"),
])
def test_bad_input_is_one_line(env, args, code, words):
    r = run(env, *args)
    assert r.returncode == code and words in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("var,value,code,words", [
    ("FISSURE_DATABASE_URL", "not a url", 2, "FISSURE_DATABASE_URL"),
    ("FISSURE_DATABASE_URL", "postgresql://fissure@127.0.0.1:1/fissure", 1, "database unavailable at postgresql"),
    ("FISSURE_BLOB_URL", "nosuchprotocol://bucket/blobs", 2, "FISSURE_BLOB_URL"),
])
def test_bad_store_settings_are_one_line(env, var, value, code, words):
    r = run({**env, var: value}, "token", "create", "--role", "viewer")
    assert r.returncode == code and r.stderr.strip().count("\n") == 0, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_token_create_and_export(env, tmp_path):
    r = run(env, "token", "create", "--role", "annotator", "--name", "inspector")
    assert r.returncode == 0, r.stderr
    assert TOKEN.fullmatch(r.stdout.strip()) and "inspector" in r.stderr
    out = tmp_path / "feedback"
    out.mkdir()
    (out / ".gitkeep").write_text("")
    (out / "images").mkdir()
    (out / "images" / "stale.png").write_bytes(b"old export")
    r = run(env, "feedback", "export", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "0 items" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == [".gitkeep", "manifest.json"]  # the old export is gone
    (tmp_path / "file").write_text("")
    r = run(env, "feedback", "export", "--out", str(tmp_path / "file"))
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_feedback_gc_removes_unreferenced_blobs(env, tmp_path, make_prediction):
    from fissure.api.store import Store

    store = Store(f"sqlite:///{tmp_path / 'home' / 'api.db'}", str(tmp_path / "home" / "blobs"))
    store.migrate()
    kept = make_prediction(store)
    orphan = store.blobs.put(b"left by a request that died before its row")
    r = run(env, "feedback", "gc")
    assert r.returncode == 0 and r.stdout.strip() == "removed 0 unreferenced blobs"  # within the grace period
    r = run(env, "feedback", "gc", "--older-than", "0")
    assert r.returncode == 0 and r.stdout.strip() == "removed 1 unreferenced blob"
    assert not store.blobs.exists(orphan) and store.blobs.exists(kept.image_sha256)


def test_api_port_in_use_is_one_line(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run(env, "api", "--port", str(s.getsockname()[1]))
    assert r.returncode == 1 and "is in use" in r.stderr and "Traceback" not in r.stderr
