"""The issue's proof, end to end on the local stack: `fissure up` with a real Prometheus, the
Locust scenarios drive traffic (the one-minute smoke: any failed request fails the build), then
the PromQL of every dashboard panel and every recording rule is run against that Prometheus and
must return data; the drift and disagreement series must move when shifted (dark, blurred)
images and "wrong" verdicts arrive.

The stack is the tiny pipeline of tests/conftest.py (trained by `fissure up`, ~2 minutes).
With FISSURE_PICTURES_OUT set, the dashboards are also drawn there from this Prometheus
(that is how docs/img/dashboards/ is made).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fissure.observability.grafana import DASHBOARDS, panel_queries
from fissure.observability.prometheus import RULES_FILE

pytestmark = [pytest.mark.slow, pytest.mark.beside]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FISSURE = str(BIN / "fissure")
sys.path.insert(0, str(REPO))  # loadtests/ is a top-level folder of the checkout

from loadtests.run import Options, run  # noqa: E402  (starts Locust in its own process)

from ..conftest import free_ports



class Prom:
    def __init__(self, url: str):
        self.url = url

    def query(self, promql: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        assert r.status_code == 200, f"{promql}: {r.text[:300]}"
        return r.json()["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait(self, promql: str, ok, timeout: float = 90.0):
        """The query's first value once ``ok(value)`` holds (scrapes and rule evaluations are every 5 s)."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            last = self.value(promql)
            if last is not None and ok(last):
                return last
            time.sleep(2)
        pytest.fail(f"{promql}: still {last} after {timeout:.0f}s")

    def wait_data(self, promql: str, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(2)


def _recording_rules() -> list[str]:
    groups = yaml.safe_load((REPO / RULES_FILE).read_text())["groups"]
    return [r["record"] for g in groups for r in g["rules"] if "record" in r]


def _smoke(ports: dict, token: str, **kw):
    result = run(Options(mode="smoke", rest=f"http://127.0.0.1:{ports['http']}", grpc=f"127.0.0.1:{ports['grpc']}",
                         api=f"http://127.0.0.1:{ports['api']}", token=token, quiet=True, **kw),
                 echo=lambda *_: None)
    summary = (result.folder / "summary.md").read_text() if (result.folder / "summary.md").exists() else ""
    assert result.code == 0 and result.locust_exit == 0, "\n".join(result.breaches) + "\n" + summary[-3000:]
    return result


def test_dashboards_and_rules_have_data_and_drift_and_disagreement_move(pipeline_copy, tmp_path):
    names = ("http", "grpc", "mlflow", "api", "prom", "ts_inf", "ts_mgmt", "ts_met", "ts_g1", "ts_g2")
    ports = dict(zip(names, free_ports(len(names))))
    env = dict(os.environ, FISSURE_THREADS="1", FISSURE_TS_INFERENCE_PORT=str(ports["ts_inf"]),
               FISSURE_TS_MANAGEMENT_PORT=str(ports["ts_mgmt"]), FISSURE_TS_METRICS_PORT=str(ports["ts_met"]),
               FISSURE_TS_GRPC_INFERENCE_PORT=str(ports["ts_g1"]),
               FISSURE_TS_GRPC_MANAGEMENT_PORT=str(ports["ts_g2"]),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    args = ["--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--mlflow-port",
            str(ports["mlflow"]), "--api-port", str(ports["api"]), "--prometheus-port", str(ports["prom"])]
    prom = Prom(f"http://127.0.0.1:{ports['prom']}")
    api = f"http://127.0.0.1:{ports['api']}"

    def fissure(*a, timeout=120):
        return subprocess.run([FISSURE, *a], cwd=pipeline_copy, env=env, capture_output=True, text=True,
                              timeout=timeout)

    try:
        up = fissure("up", "--detach", *args, timeout=900)
        out = up.stdout + up.stderr
        assert up.returncode == 0, out[-4000:]
        assert ">> Prometheus ready (" in out, out[-3000:]
        admin = out.split("(shown once; `fissure token create` makes more):")[1].split()[0]
        auth = {"Authorization": f"Bearer {admin}"}
        annotator = httpx.post(f"{api}/tokens", json={"role": "annotator", "name": "locust"}, headers=auth,
                               timeout=30)
        assert annotator.status_code == 201, annotator.text
        token = annotator.json()["token"]

        # every target is scraped, with the namespace the dashboards select on
        targets = prom.wait_data('up{namespace="local"} == 1')
        assert {t["metric"]["job"] for t in targets} >= {"fissure-front", "fissure-api", "prometheus"}, targets

        # the chart's rules are loaded (the pipeline copy has no charts/: they come from the checkout)
        assert httpx.get(f"{prom.url}/api/v1/rules", timeout=30).json()["data"]["groups"]

        # 1. the one-minute smoke: v1, v2, gRPC and people through the API, no failed request
        _smoke(ports, token)

        # 2. the drift and disagreement series, as Prometheus has them after normal traffic
        clf = 'model="crack-classifier"'
        psi = f'fissure_drift_psi{{{clf},feature="brightness"}}'
        prom.wait(f"sum(fissure_requests_total{{{clf}}})", lambda v: v > 0)
        items = prom.wait(f"fissure_drift_window_items{{{clf}}}", lambda v: v >= 50)
        psi_before = prom.wait(psi, lambda v: True)
        ratio = f"fissure_feedback_disagreement_ratio{{{clf}}}"
        ratio_before = prom.value(ratio) or 0.0

        # 3. shifted images and "wrong" verdicts, through the same Locust scenarios
        _smoke(ports, token, shift="dark", wrong_ratio=1.0, models=["crack-classifier"], duration="40s",
               users=10)
        psi_after = prom.wait(psi, lambda v: v > psi_before + 0.1)
        assert psi_after > 0.25, (psi_before, psi_after, items)  # a significant shift, as the alert reads it
        ratio_after = prom.wait(ratio, lambda v: v > ratio_before)
        rate1h = prom.wait(f"namespace_model_version:fissure_feedback_disagreement:ratio_rate1h{{{clf}}}",
                           lambda v: v > 0)
        assert ratio_after > ratio_before and rate1h > 0

        # 4. the pipeline's events, recorded as the promotion controller records them
        events = [
            {"kind": "retrain", "result": "succeeded", "model": "crack-classifier", "version": "2"},
            {"kind": "gate", "model": "crack-classifier", "version": "2", "result": "passed",
             "details": {"f1": 0.9}},
            {"kind": "canary", "model": "crack-classifier", "version": "2", "weight": 10.0, "result": "passed"},
            {"kind": "promotion", "model": "crack-classifier", "to_version": "2", "from_version": "1",
             "who": "test", "why": "canary passed"},
        ]
        for event in events:
            r = httpx.post(f"{api}/pipeline/events", json=event, headers=auth, timeout=30)
            assert r.status_code == 201, r.text
        prom.wait("sum(fissure_promotions_total)", lambda v: v >= 1)

        # 5. every panel of every dashboard, and every recording rule, returns data
        empty = []
        for path in sorted(DASHBOARDS.glob("*.json")):
            for dashboard, panel, ref, promql in panel_queries(path):
                if not prom.wait_data(promql, timeout=30):
                    empty.append(f"{dashboard} / {panel} / {ref}: {promql}")
        for record in _recording_rules():
            if not prom.wait_data(record, timeout=30):
                empty.append(f"recording rule {record}")
        assert not empty, "no data:\n" + "\n".join(empty)

        # the rules loaded and evaluated without errors
        groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=30).json()["data"]["groups"]
        broken = [r["name"] for g in groups for r in g["rules"] if r.get("health") not in ("ok", None)]
        assert groups and not broken, broken

        pictures = os.environ.get("FISSURE_PICTURES_OUT")
        if pictures:
            drawn = subprocess.run([sys.executable, "-m", "fissure.observability.pictures", "--prometheus",
                                    prom.url, "--out", pictures, "--window", "10m"],
                                   capture_output=True, text=True, timeout=600)
            assert drawn.returncode == 0, drawn.stderr
    finally:
        down = fissure("down")
    assert down.returncode == 0, down.stdout + down.stderr
