"""The issue's proof on the local stack: `fissure up` (tiny pipeline, real MLflow, Prometheus,
feedback API), Locust driving classifier traffic, then

1. a good challenger (the pipeline retrained on more data by `fissure retrain`) passes the gate
   and is promoted through every canary step by `fissure promote`; no request fails;
2. a bad one (trained on flipped labels) is stopped by the gate, and `fissure promote` refuses it;
3. one that only fails online (every challenger request aborted by an injected fault) is rolled
   back at the first step: the champion never failed a request, Locust's failures are exactly the
   challenger's answers, the alias did not move;

and the audit trail (MLflow tags, the API's pipeline events) says what happened.

The tiny models of different data predict different class mixes: this test's canary policy
leaves the mix and confidence checks wide open (tests/promotion/test_analysis.py proves them).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ..conftest import REPO_ROOT, TINY_PARAMS, free_ports

pytestmark = [pytest.mark.slow, pytest.mark.beside, pytest.mark.timeout(2400)]  # a stack, two trainings, two canaries

BIN = Path(sys.executable).parent
FISSURE = str(BIN / "fissure")
CLF = "crack-classifier"
# tests/conftest.py's tiny pipeline learns nothing in its one epoch (F1 0 for every version, so no
# gate could tell good from flipped); these classifier patches and epochs learn in ~40 s
LEARNS = {
    "prepare": {**TINY_PARAMS["prepare"], "count": 40, "size": 96, "patch_size": 48, "patch_stride": 24},
    "train_classifier": {**TINY_PARAMS["train_classifier"], "epochs": 10, "patience": 10, "size": 48, "lr": 0.01},
}
POLICY = {
    # ROC AUC: threshold-free, so a weak tiny model still ranks, and one trained on flipped labels ranks backwards
    "gate": {"metric": {"classify": "roc_auc", "segment": "dice"}, "tolerance": 0.1, "latency_ms": 1e5, "size_mb": 1e5, "latency_batches": 1, "latency_batch_size": 2},
    "canary": {"steps": [10, 50], "bake_seconds": 20, "poll_seconds": 5, "max_wait_seconds": 120,
               "analysis": {"min_requests": 8, "max_class_shift": 1.0, "max_confidence_shift": 1.0,
                            "max_latency_ratio": 4.0, "latency_slack_seconds": 0.25}},
}



class Traffic:
    """Locust's RestV2User on the classifier for as long as the block runs; stopped by SIGTERM
    (Locust writes its stats then). ``totals``: (requests, failures) from its CSV."""

    def __init__(self, rest: str, folder: Path, users: int = 4):
        sys.path.insert(0, str(REPO_ROOT))
        from loadtests import config, images

        images.prepare([config.SIZE_BY_NAME["thumb"]])
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, config.ENV_REST: rest, config.ENV_MODELS: CLF, config.ENV_SIZES: "thumb",
               "PYTHONUNBUFFERED": "1"}
        self.log = open(folder / "locust.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(config.LOCUSTFILE), "--headless", "-u", str(users),
             "-r", str(users), "-t", "1800s", "--csv", str(folder / "locust"), "--only-summary", "RestV2User"],
            env=env, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> tuple[int, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with open(self.folder / "locust_stats.csv") as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
        return int(row["Request Count"]), int(row["Failure Count"])


class Prom:
    def __init__(self, url: str):
        self.url = url

    def value(self, promql: str) -> float:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=30)
        assert r.status_code == 200, r.text[:300]
        result = r.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A detached stack of the tiny pipeline (both champions v1), its ports and environment."""
    from fissure.training.sandbox import copy_pipeline

    base = tmp_path_factory.mktemp("promotion-e2e")
    repo = copy_pipeline(REPO_ROOT, base / "repo", {**TINY_PARAMS, **LEARNS, **POLICY})
    names = ("http", "grpc", "mlflow", "api", "prom")
    ports = dict(zip(names, free_ports(len(names))))
    home = base / "home"
    env = dict(os.environ, FISSURE_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home}/mlflow.db",
               FISSURE_THREADS="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")

    def fissure(*a, timeout=900, **kw):
        return subprocess.run([FISSURE, *a], cwd=repo, env={**env, **kw}, capture_output=True, text=True,
                              timeout=timeout)

    up = fissure("up", "--detach", "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                 "--mlflow-port", str(ports["mlflow"]), "--api-port", str(ports["api"]),
                 "--prometheus-port", str(ports["prom"]))
    out = up.stdout + up.stderr
    try:
        assert up.returncode == 0, out[-4000:]
        admin = out.split("(shown once; `fissure token create` makes more):")[1].split()[0]
        api = f"http://127.0.0.1:{ports['api']}"
        made = httpx.post(f"{api}/tokens", json={"role": "pipeline", "name": "promotion-e2e"},
                          headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        assert made.status_code in (200, 201), made.text
        env.update(FISSURE_API_TOKEN=made.json()["token"])
        yield {"repo": repo, "ports": ports, "env": env, "fissure": fissure, "admin": admin, "api": api,
               "rest": f"http://127.0.0.1:{ports['http']}", "prom": Prom(f"http://127.0.0.1:{ports['prom']}"),
               "base": base}
    finally:
        fissure("down", timeout=120)


def _aliases(stack) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack["env"]["MLFLOW_TRACKING_URI"],
                                 registry_uri=stack["env"]["MLFLOW_TRACKING_URI"])
    return {a: str(v) for a, v in client.get_registered_model(CLF).aliases.items()}


def _version_tags(stack, version: str) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack["env"]["MLFLOW_TRACKING_URI"],
                                 registry_uri=stack["env"]["MLFLOW_TRACKING_URI"])
    return dict(client.get_model_version(CLF, version).tags)


def _served_version(stack) -> str:
    return httpx.get(f"{stack['rest']}/v2/models/{CLF}", timeout=10).json()["versions"][0]


def _fivexx(stack, version: str) -> float:
    return stack["prom"].value(f'sum(fissure_requests_total{{model="{CLF}",version="{version}",code=~"5.."}}) '
                               f'or vector(0)')


def test_good_promoted_bad_stopped_by_gate_online_failure_rolled_back(stack):
    fissure, repo = stack["fissure"], stack["repo"]
    assert _served_version(stack) == "1" and _aliases(stack)["champion"] == "1"

    # 0. the feedback-count trigger: nobody judged anything yet, so nothing is trained
    quiet = fissure("retrain", "--min-feedback", "5")
    assert quiet.returncode == 0 and "nothing to do: 0 new judged feedback items" in quiet.stdout, quiet.stdout[-2000:]
    assert _aliases(stack) == {"champion": "1", "challenger": "1"}

    # 1. more data -> retrain -> gate passes -> canary through every step -> champion
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["count"] = 2 * params["prepare"]["count"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.monotonic()
    retrain = fissure("retrain", "--model", CLF, "--out", str(stack["base"] / "retrain.json"))
    assert retrain.returncode == 0, (retrain.stdout + retrain.stderr)[-4000:]
    decision = json.loads((stack["base"] / "retrain.json").read_text())["decisions"][CLF]
    assert decision["passed"] and decision["challenger_version"] == "2", decision
    tags = _version_tags(stack, "2")
    assert tags["gate"] == "passed" and tags["parent.champion"] == "1" and tags["init"] == "scratch"
    assert tags["git.commit"] != "unknown" and tags["params.hash"] and tags["dvc.data_hash"]

    traffic = Traffic(stack["rest"], stack["base"] / "locust-good")
    try:
        time.sleep(5)
        promote = fissure("promote", "--model", CLF, "--out", str(stack["base"] / "good.json"), timeout=600)
    finally:
        requests, failures = traffic.stop()
    out = promote.stdout + promote.stderr
    assert promote.returncode == 0, out[-4000:]
    outcome = json.loads((stack["base"] / "good.json").read_text())
    assert outcome["result"] == "promoted" and [s["percent"] for s in outcome["steps"]] == [10, 50], outcome
    assert all(s["verdict"] == "pass" for s in outcome["steps"])
    assert requests > 100 and failures == 0, (requests, failures)
    assert _aliases(stack)["champion"] == "2" and "challenger" not in _aliases(stack)
    assert _served_version(stack) == "2"
    assert _version_tags(stack, "2")["promotion"] == "promoted"
    print(f"retrain -> promoted champion: {time.monotonic() - started:.0f} s")

    # 2. flipped labels: the gate refuses, promote will not canary it
    data = repo / "data" / "prepared" / "classify"
    flipped = stack["base"] / "flipped"
    for split in ("train", "val", "test"):
        shutil.copytree(data / split / "crack", flipped / split / "no_crack")
        shutil.copytree(data / split / "no_crack", flipped / split / "crack")
    trained = fissure("train", "--task", "classify", "--data", str(flipped), "--params", "params.yaml", "--register")
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    gate = fissure("gate", "--model", CLF, "--out", str(stack["base"] / "flipped.json"))
    assert gate.returncode == 3, (gate.stdout + gate.stderr)[-3000:]
    refused = json.loads((stack["base"] / "flipped.json").read_text())
    assert refused["challenger_version"] == "3" and not refused["passed"]
    assert any(r.startswith("gate set roc_auc") for r in refused["reasons"]), refused["reasons"]
    assert _version_tags(stack, "3")["gate"] == "failed"
    blocked = fissure("promote", "--model", CLF)
    assert blocked.returncode == 1 and "has not passed the offline gate" in blocked.stderr, blocked.stderr
    assert _served_version(stack) == "2"

    # 3. good offline, failing online: rolled back at the first step; the champion never fails
    trained = fissure("train", "--task", "classify", "--data", "data/prepared/classify", "--params", "params.yaml",
                      "--register")
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    gate = fissure("gate", "--model", CLF)
    assert gate.returncode == 0, (gate.stdout + gate.stderr)[-3000:]
    champion_5xx = _fivexx(stack, "2")
    traffic = Traffic(stack["rest"], stack["base"] / "locust-faulty")
    try:
        time.sleep(5)
        promote = fissure("promote", "--model", CLF, "--fault-abort-percent", "100",
                          "--out", str(stack["base"] / "faulty.json"), timeout=600)
    finally:
        requests, failures = traffic.stop()
    out = promote.stdout + promote.stderr
    assert promote.returncode == 3, out[-4000:]
    outcome = json.loads((stack["base"] / "faulty.json").read_text())
    assert outcome["result"] == "rolled_back" and len(outcome["steps"]) == 1 and outcome["steps"][0]["percent"] == 10
    assert "error_ratio" in outcome["reason"], outcome["reason"]
    assert _aliases(stack)["champion"] == "2" and _served_version(stack) == "2"
    assert httpx.get(f"{stack['rest']}/v2/models/{CLF}", timeout=10).json()["versions"] == ["2"]
    time.sleep(6)  # one more scrape
    assert _fivexx(stack, "2") == champion_5xx  # the champion failed no request
    challenger_5xx = _fivexx(stack, "4")
    assert 0 < failures <= requests * 0.3, (requests, failures)  # only the canary's 10 %, with sampling noise
    assert failures <= challenger_5xx + 1, (failures, challenger_5xx)  # every failure was the challenger's
    assert _version_tags(stack, "4")["promotion"] == "rolled_back"

    # the audit trail in the API: gate decisions, canary steps, the promotion and the rollback
    events = httpx.get(f"{stack['api']}/pipeline/events", params={"page_size": 100},
                       headers={"Authorization": f"Bearer {stack['admin']}"}, timeout=30).json()["items"]
    kinds = [(e["kind"], e.get("result"), e.get("to_version")) for e in events if e["model"] == CLF]
    assert ("promotion", None, "2") in kinds and ("rollback", None, "2") in kinds, kinds
    assert ("gate", "failed", None) in kinds and ("gate", "passed", None) in kinds, kinds
    assert sum(1 for k in kinds if k[0] == "canary") == 3, kinds
