"""`fissure token list|revoke`, a revoked token at the API, and `fissure api` without an admin token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FISSURE = str(Path(sys.executable).with_name("fissure"))
TOKEN = re.compile(r"fst_[A-Za-z0-9_-]{20,}")
NO_ADMIN = "the store has tokens but no admin token"


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "FISSURE_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}


def run(env, *args, timeout=60):
    return subprocess.run([FISSURE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(r, code: int, words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.strip().count("\n") == 0 and words in r.stderr, r.stderr
    assert r.stderr.startswith("fissure: error:") and "Traceback" not in r.stderr


def test_list_shows_tokens_but_never_their_secret(env):
    made = {}
    for role, name in (("annotator", "ana"), ("viewer", "vic")):
        r = run(env, "token", "create", "--role", role, "--name", name)
        assert r.returncode == 0, r.stderr
        made[name] = r.stdout.strip()
    r = run(env, "token", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLE", "CREATED", "REVOKED"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["ana"][2:] == ["annotator", rows["ana"][3], "no"] and rows["vic"][2] == "viewer"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows["ana"][3])
    from fissure.api.auth import hash_token

    for value in made.values():  # neither the token nor its hash
        assert value not in r.stdout and hash_token(value) not in r.stdout and not TOKEN.search(r.stdout)


def test_list_of_an_empty_store(env):
    r = run(env, "token", "list")
    assert r.returncode == 0 and r.stdout == "" and "no tokens" in r.stderr


def test_revoke_by_name_or_id_idempotent_and_unknown(env):
    assert run(env, "token", "create", "--role", "admin", "--name", "boss").returncode == 0
    assert run(env, "token", "create", "--role", "annotator", "--name", "ana").returncode == 0
    r = run(env, "token", "revoke", "ana")
    assert r.returncode == 0 and r.stdout.startswith("revoked token ") and "'ana'" in r.stdout, r.stderr
    assert NO_ADMIN not in r.stderr and r.stderr == ""
    r = run(env, "token", "revoke", "ana")
    assert r.returncode == 0 and "was already revoked" in r.stdout, r.stderr
    listed = {line.split()[1]: line.split() for line in run(env, "token", "list").stdout.splitlines()[1:]}
    assert listed["ana"][4] == "yes" and listed["boss"][4] == "no"
    r = run(env, "token", "revoke", listed["boss"][0])  # by id; the last admin token: say how to make one
    assert r.returncode == 0 and f"revoked token {listed['boss'][0]}" in r.stdout
    assert "fissure token create --role admin --name NAME" in r.stderr
    one_line_error(run(env, "token", "revoke", "nobody"), 1, "no token with the id or name 'nobody'")


def test_a_name_that_several_live_tokens_share_is_revoked_by_id(env):
    for _ in range(2):
        assert run(env, "token", "create", "--role", "viewer", "--name", "shared").returncode == 0
    r = run(env, "token", "revoke", "shared")
    one_line_error(r, 1, "2 tokens are named 'shared'")
    ids = re.findall(r"[0-9a-f]{32}", r.stderr)
    assert len(ids) == 2
    assert run(env, "token", "revoke", ids[0]).returncode == 0
    r = run(env, "token", "revoke", "shared")  # one left alive under that name
    assert r.returncode == 0 and f"revoked token {ids[1]}" in r.stdout


@pytest.mark.parametrize("args,words", [
    (["token", "create", "--role", "viewer", "--name", "x" * 200], "a token name is at most 128 characters"),
])
def test_a_bad_option_value_is_a_usage_error(env, args, words):
    one_line_error(run(env, *args), 2, words)


def test_a_token_revoked_by_the_cli_gets_401_from_the_running_api(client, tmp_path):
    assert client.get("/predictions", "annotator").status_code == 200
    env = {**os.environ, "FISSURE_DATABASE_URL": client.store.url, "FISSURE_BLOB_URL": str(tmp_path / "blobs")}
    r = run(env, "token", "revoke", "annotator-user")
    assert r.returncode == 0, r.stderr
    refused = client.get("/predictions", "annotator")  # the app is not restarted
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json()["error"] == "unknown or revoked token"
    assert client.get("/predictions", "viewer").status_code == 200  # the others still work


def test_store_revoke_and_admin_check(store):
    from fissure.api.auth import authenticate, create_token

    assert not store.has_admin_token()
    value, row = create_token(store, "admin", "boss")
    assert store.has_admin_token() and authenticate(store, f"Bearer {value}").name == "boss"
    revoked, already = store.revoke_token(row.id)
    assert (revoked.id, revoked.revoked, already) == (row.id, True, False)
    assert store.revoke_token("boss")[1] is True  # again: already revoked, nothing changes
    assert not store.has_admin_token()
    assert [(t.name, t.revoked) for t in store.list_tokens()] == [("boss", True)]
    from fissure.api.auth import Unauthenticated

    with pytest.raises(Unauthenticated):
        authenticate(store, f"Bearer {value}")


def test_api_warns_when_the_store_has_tokens_but_no_admin(env, tmp_path, start, new_port):
    assert run(env, "token", "create", "--role", "annotator", "--name", "ana").returncode == 0
    port = new_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([FISSURE, "api", "--port", str(port)], env, tmp_path / "api.log", f"{url}/ping")
    try:
        warned = [line for line in proc.output().splitlines() if NO_ADMIN in line]
        assert len(warned) == 1 and "`fissure token create --role admin --name NAME`" in warned[0]
        assert TOKEN.findall(proc.output()) == []  # no admin token made: the store is not empty
    finally:
        proc.stop()
    assert run(env, "token", "create", "--role", "admin", "--name", "boss").returncode == 0
    proc = start([FISSURE, "api", "--port", str(port)], env, tmp_path / "api2.log", f"{url}/ping")
    try:
        assert NO_ADMIN not in proc.output()
    finally:
        proc.stop()
