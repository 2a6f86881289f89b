"""`fissure retrain|gate|promote`: bad input and missing dependencies are one line and an exit code."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

FISSURE = str(Path(sys.executable).with_name("fissure"))


def _fissure(*args, env=None, cwd=None):
    import os

    return subprocess.run([FISSURE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(r):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    return lines[-1]


@pytest.mark.parametrize("args, code, text", [
    (["promote", "--model", "crack-classifier", "--steps", "50,10"], 2, "increasing"),
    (["promote", "--model", "crack-classifier", "--steps", "ten"], 2, "integers"),
    (["promote", "--model", "crack-classifier", "--actuator", "kserve-gateway", "--fault-abort-percent", "5"], 2,
     "--actuator local only"),
    (["promote", "--model", "nope"], 2, "nope"),
    (["gate", "--model", "crack-classifier", "--params", "missing.yaml"], 2, "not found"),
    (["retrain", "--min-feedback", "-1"], 2, "-1"),
])
def test_usage_errors(args, code, text, tmp_path):
    r = _fissure(*args, cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert text in r.stderr, r.stderr
    _one_line(r)


def test_a_bad_policy_in_params_names_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text("canary:\n  steps: [10, 50]\n  bake_seconds: -1\n")
    r = _fissure("gate", "--model", "crack-classifier", "--params", str(tmp_path / "params.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "canary.bake_seconds" in r.stderr, r.stderr


def test_promote_without_a_local_stack_says_so(tmp_path):
    r = _fissure("promote", "--model", "crack-classifier", cwd=tmp_path)
    assert r.returncode == 1 and "no local stack is running" in _one_line(r)


def test_gate_without_a_challenger_is_one_line(tmp_path):
    r = _fissure("gate", "--model", "crack-classifier", cwd=tmp_path)
    assert r.returncode == 1 and "crack-classifier@challenger" in _one_line(r), r.stderr


def test_unreachable_mlflow_stops_before_anything_changes(tmp_path):
    """The abort path still needs the front; a canary needs MLflow first: both fail in one line."""
    (tmp_path / ".fissure").mkdir()
    r = _fissure("gate", "--model", "crack-classifier", cwd=tmp_path,
                 env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"})
    assert r.returncode == 1, r.stderr
    _one_line(r)


def test_retrain_argo_without_a_cluster_is_one_line(tmp_path):
    r = _fissure("retrain", "--argo", cwd=tmp_path, env={"KUBECONFIG": str(tmp_path / "none")})
    assert r.returncode == 2 and "no Kubernetes cluster configured" in _one_line(r), r.stderr
