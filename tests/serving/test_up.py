"""`make up` end to end, as a newcomer runs it: in a fresh clone with no trained model,
`fissure up --detach` runs the DVC pipeline, packages both champions, serves them next to an
MLflow server on loopback only, printing what it waits for; `fissure predict` gets answers over
REST and gRPC; `fissure down` stops it all.
(The pipeline is the tiny one of tests/conftest.py so this takes about two minutes.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from ..conftest import free_ports

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FISSURE = str(BIN / "fissure")



def _listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _listen_addresses(ports: set[int]) -> dict[int, str]:
    """The local address each of ``ports`` listens on, from the kernel's socket table (no traffic)."""
    found = {}
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports:
            found[c.laddr.port] = c.laddr.ip.removeprefix("::ffff:")
    return found


def _run(args, cwd, env, timeout=120):
    return subprocess.run([FISSURE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _mlflow_job_runners(port: int) -> tuple[int, list[str]]:
    """How many `mlflow server ... --port PORT` processes run, and their job-runner descendants."""
    servers, jobs = 0, []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "server" in cmd and "--port" in cmd and str(port) in cmd and any(a.endswith("mlflow") for a in cmd):
            servers += 1
            try:
                jobs += [" ".join(c.cmdline()) for c in proc.children(recursive=True)
                         if any("huey" in a or "_job_runner" in a for a in c.cmdline())]
            except psutil.Error:  # a child that ended meanwhile
                pass
    return servers, jobs


def test_up_trains_packages_serves_and_down_stops_everything(pipeline_copy, images, tmp_path):
    http, grpc, mlflow, api, prom, ts_inf, ts_mgmt, ts_met, ts_g1, ts_g2 = free_ports(10)
    env = dict(os.environ, FISSURE_THREADS="1", FISSURE_TS_INFERENCE_PORT=str(ts_inf),
               FISSURE_TS_MANAGEMENT_PORT=str(ts_mgmt), FISSURE_TS_METRICS_PORT=str(ts_met),
               FISSURE_TS_GRPC_INFERENCE_PORT=str(ts_g1), FISSURE_TS_GRPC_MANAGEMENT_PORT=str(ts_g2),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--mlflow-port", str(mlflow), "--api-port", str(api),
             "--prometheus-port", str(prom)]
    try:
        up = _run(["up", "--detach", *ports], pipeline_copy, env, timeout=900)
        out = up.stdout + up.stderr
        assert up.returncode == 0, out[-4000:]
        assert "running `dvc repro`" in out  # no champion yet: the pipeline trained both models
        assert "packaging crack-classifier v1 (champion)" in out and "packaging crack-segmenter v1" in out
        assert f"http://127.0.0.1:{http}" in out and "curl -s" in out  # the banner with examples
        assert "WARNING: listening on" not in out  # loopback: nothing to warn about
        # the detached wait said what it waited for, and when each part came up
        assert "   waiting for " in out
        for part in ("MLflow", "the inference front", "the feedback API", "Prometheus"):  # the default runtime: in-process
            assert f">> {part} ready (" in out, part
        # bound to loopback only, as printed
        listening = _listen_addresses({http, grpc, mlflow, api, prom})
        assert listening == {p: "127.0.0.1" for p in (http, grpc, mlflow, api, prom)}, listening
        # the feedback UI, with the admin token printed once, predicting through this stack's front
        assert f"http://127.0.0.1:{api}/" in out and "admin token for the UI and API (shown once" in out
        token = out.split("(shown once; `fissure token create` makes more):")[1].split()[0]
        assert httpx.get(f"http://127.0.0.1:{api}/", timeout=10).status_code == 200
        img_bytes = images.png(seed=3, w=120, h=90)
        made = httpx.post(f"http://127.0.0.1:{api}/predict", headers={"Authorization": f"Bearer {token}"},
                          files={"file": ("crack.png", img_bytes, "image/png")}, data={"model": "crack-segmenter"},
                          timeout=60)
        assert made.status_code == 201, made.text
        assert made.json()["model_name"] == "crack-segmenter" and made.json()["model_version"] == "1"

        assert httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{mlflow}/health", timeout=10).status_code == 200
        # MLflow's server-side job runner (huey consumers) is off: fissure submits no MLflow jobs
        servers, jobs = _mlflow_job_runners(mlflow)
        assert servers, "the stack's MLflow server process"
        assert not jobs, jobs
        models = httpx.get(f"http://127.0.0.1:{mlflow}/api/2.0/mlflow/registered-models/search", timeout=10).json()
        assert {m["name"] for m in models["registered_models"]} == {"crack-classifier", "crack-segmenter"}

        img = tmp_path / "crack.png"
        img.write_bytes(images.png(seed=11, w=120, h=90))
        rest = _run(["predict", str(img), "--url", f"http://127.0.0.1:{http}", "--json"], pipeline_copy, env)
        assert rest.returncode == 0, rest.stderr
        results = json.loads(rest.stdout)
        assert {(r["model_name"], r["model_version"]) for r in results} == {("crack-classifier", "1"),
                                                                            ("crack-segmenter", "1")}
        g = _run(["predict", str(img), "--model", "crack-segmenter", "--protocol", "grpc",
                  "--grpc-url", f"127.0.0.1:{grpc}", "--url", f"http://127.0.0.1:{http}"], pipeline_copy, env)
        assert g.returncode == 0 and "of 120x90" in g.stdout, g.stdout + g.stderr

        again = _run(["up", "--detach", *ports], pipeline_copy, env)
        assert again.returncode != 0 and "already running" in again.stderr and "Traceback" not in again.stderr
    finally:
        down = _run(["down"], pipeline_copy, env, timeout=120)
    assert down.returncode == 0 and "stopped the stack" in down.stdout, down.stdout + down.stderr
    for port in (http, grpc, mlflow, api, prom, ts_inf, ts_mgmt, ts_met):
        assert not _listening(port), f"port {port} still open after fissure down"
    assert "no detached stack is running" in _run(["down"], pipeline_copy, env).stdout
