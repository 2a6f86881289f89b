"""In-cluster MLflow accepts its Service's names: the chart's MLFLOW_SERVER_ALLOWED_HOSTS given to a
real `mlflow server` (the installed MLflow 3), asked with the Host headers in-cluster clients send."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ..conftest import free_port

REPO = Path(__file__).resolve().parents[2]
HELM = Path.home() / ".cache" / "fissure" / "bin" / "helm"


def _chart_env(release: str, namespace: str) -> dict[str, str]:
    """The MLFLOW_* variables the chart gives MLflow's container (allowed hosts, job runner off)."""
    if not os.access(HELM, os.X_OK):
        subprocess.run(["make", "-s", "k8s-tools"], cwd=REPO, check=True, capture_output=True)
    out = subprocess.run([str(HELM), "template", release, str(REPO / "charts" / "fissure"), "--namespace", namespace,
                          "--kube-version", "1.33.0", "--show-only", "templates/mlflow.yaml"],
                         capture_output=True, text=True, check=True).stdout
    dep = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    return {k: v for k, v in env.items() if k.startswith("MLFLOW_SERVER_")}


def _status(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
def test_mlflow_accepts_the_service_names_and_refuses_others(tmp_path):
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **_chart_env("fissure", "ml")}
    log = open(tmp_path / "mlflow.log", "wb")
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
                             "--default-artifact-root", str(tmp_path / "art"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if _status(port, "localhost") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "mlflow.log").read_text()[-3000:]
            time.sleep(1)
        for host in ("fissure-mlflow:5000", "fissure-mlflow.ml:5000", "fissure-mlflow.ml.svc:5000",
                     "fissure-mlflow.ml.svc.cluster.local:5000", "fissure-mlflow.ml.svc", f"127.0.0.1:{port}"):
            assert _status(port, host) == 200, host
        for host in ("fissure-mlflow.other.svc:5000", "evil.example.com", "fissure-mlflow.ml.svc.evil.example"):
            assert _status(port, host) == 403, host  # the guard is on, and only these names pass
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
