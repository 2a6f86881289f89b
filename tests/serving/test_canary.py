"""The front's canary, driven by the local actuator: a challenger version beside the champion, its
share of requests, explicit versions, injected faults, promotion and rollback, on a real
`fissure serve` and a real MLflow store (the serving tests' own)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from fissure.promotion.actuators import ModelRef
from fissure.promotion.local import LocalActuator
from fissure.serving.canary import Fault

pytestmark = pytest.mark.slow
CLF = "crack-classifier"

REGISTER_V2 = """
import sys, torch
from fissure.models import build_model, default_spec
from fissure.models.io import _mlflow, log_model
mlflow = _mlflow()
mlflow.set_experiment("serving-tests")
spec = default_spec("classify", width=8)
torch.manual_seed(1)
with mlflow.start_run():
    log_model(build_model(spec).eval(), spec, registered_model_name=spec["name"])
print(max(int(v.version) for v in mlflow.MlflowClient().search_model_versions("name='crack-classifier'")))
"""


@pytest.fixture(scope="module")
def challenger(built_models) -> str:
    """A second classifier version in the serving tests' MLflow store."""
    _, _, env = built_models
    made = subprocess.run([sys.executable, "-c", REGISTER_V2], env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture
def actuator(canary_server, built_models, monkeypatch, tmp_path):
    base, _, env = built_models
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    act = LocalActuator(canary_server.url, base / "canary-routing.json", base / "canary-store", timeout=120, poll=0.2)
    yield act
    act.fault = None
    act.rollback(CLF)


def _infer(srv, png: bytes, path: str = f"/v2/models/{CLF}/infer"):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}]}
    return srv.post(path, json=body)


def _versions(srv, png: bytes, n: int) -> Counter:
    got = Counter()
    for _ in range(n):
        r = _infer(srv, png)
        got[r.json()["model_version"] if r.status_code == 200 else r.status_code] += 1
    return got


def _requests_by_version(srv) -> dict[tuple[str, str], float]:
    text = srv.get("/metrics").text
    out: dict = {}
    for m in re.finditer(r'^fissure_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("model") == CLF:
            key = (labels["version"], labels["code"])
            out[key] = out.get(key, 0) + float(m.group(2))
    return out


def test_challenger_gets_its_share_explicit_versions_and_promotion(canary_server, actuator, challenger, png_bytes,
                                                                   built_models):
    champion = built_models[1]["classifier"]["version"]
    actuator.prepare(ModelRef(CLF, champion), ModelRef(CLF, challenger))
    st = actuator.state(CLF)
    assert (st.champion_version, st.challenger_version, st.challenger_percent) == (champion, challenger, 0)
    assert _versions(canary_server, png_bytes, 20) == Counter({champion: 20})  # 0 %: none to the challenger

    actuator.set_weight(CLF, 50)
    got = _versions(canary_server, png_bytes, 120)
    assert set(got) == {champion, challenger}, got
    assert 25 <= got[challenger] <= 95, got  # binomial(120, 0.5): far outside this is a broken split
    # an explicit version is honoured whatever the split; one not served is a 404
    for _ in range(5):
        assert _infer(canary_server, png_bytes, f"/v2/models/{CLF}/versions/{challenger}/infer").json()[
            "model_version"] == challenger
    assert _infer(canary_server, png_bytes, f"/v2/models/{CLF}/versions/99/infer").status_code == 404
    # each version's requests are counted under its own version label; the challenger says its role
    counted = _requests_by_version(canary_server)
    assert counted.get((challenger, "200"), 0) >= got[challenger] + 5
    metrics = canary_server.get("/metrics").text
    assert re.search(rf'fissure_model_info\{{[^}}]*model="{CLF}"[^}}]*role="challenger"[^}}]*version="{challenger}"',
                     metrics) or re.search(rf'fissure_model_info\{{[^}}]*role="challenger"', metrics), metrics[:2000]
    meta = canary_server.get(f"/v2/models/{CLF}").json()
    assert meta["versions"] == [champion, challenger] and meta["parameters"]["canary_traffic_percent"] == 50

    actuator.promote(ModelRef(CLF, challenger))
    assert actuator.state(CLF).champion_version == challenger
    assert _versions(canary_server, png_bytes, 20) == Counter({challenger: 20})
    # put the original champion back for the other tests
    actuator.promote(ModelRef(CLF, champion))
    assert _versions(canary_server, png_bytes, 10) == Counter({champion: 10})


def test_injected_fault_fails_only_the_challengers_share_and_rollback_ends_it(canary_server, actuator, challenger,
                                                                             png_bytes, built_models):
    champion = built_models[1]["classifier"]["version"]
    before = _requests_by_version(canary_server)
    actuator.fault = Fault(abort_percent=100)
    actuator.prepare(ModelRef(CLF, champion), ModelRef(CLF, challenger))
    actuator.set_weight(CLF, 30)
    got = _versions(canary_server, png_bytes, 100)
    assert got[500] > 0 and got[champion] > 0 and challenger not in got, got
    after = _requests_by_version(canary_server)
    champion_5xx = sum(v for (ver, code), v in after.items() if ver == champion and code.startswith("5")) - \
        sum(v for (ver, code), v in before.items() if ver == champion and code.startswith("5"))
    challenger_5xx = sum(v for (ver, code), v in after.items() if ver == challenger and code.startswith("5")) - \
        sum(v for (ver, code), v in before.items() if ver == challenger and code.startswith("5"))
    assert champion_5xx == 0 and challenger_5xx == got[500], (before, after, got)

    actuator.rollback(CLF)
    assert actuator.state(CLF).challenger_version is None
    assert _versions(canary_server, png_bytes, 30) == Counter({champion: 30})


def test_a_broken_routing_file_or_challenger_leaves_the_champion_serving(canary_server, actuator, png_bytes,
                                                                         built_models, tmp_path):
    champion = built_models[1]["classifier"]["version"]
    actuator.routing_path.write_text("{ not json")
    time.sleep(2.5)  # two polls
    assert _versions(canary_server, png_bytes, 10) == Counter({champion: 10})
    # a challenger whose MAR does not exist: not loaded, no share, champion answers everything
    actuator.routing_path.write_text(json.dumps({"models": {CLF: {
        "challenger": {"version": "7", "mar": str(tmp_path / "missing.mar")}, "percent": 50}}}))
    time.sleep(2.5)
    assert _versions(canary_server, png_bytes, 20) == Counter({champion: 20})
    assert actuator.state(CLF).challenger_version is None
    assert "routing not applied" in canary_server.log.read_text()
    actuator.routing_path.unlink()
    with pytest.raises(Exception, match="no challenger"):
        actuator.set_weight(CLF, 10)
    httpx.get(canary_server.url + "/v2/health/ready").raise_for_status()


def test_prometheus_lost_mid_canary_rolls_back_and_says_so(canary_server, actuator, challenger, built_models,
                                                           png_bytes):
    """The controller with the real front and MLflow, but a Prometheus that is not there: the
    first evidence check fails, the challenger is removed, the champion serves 100 %, the
    aliases are untouched and the version says it was stopped."""
    import mlflow

    from fissure.errors import Unavailable
    from fissure.promotion.controller import CanaryPolicy, Controller, Registry

    import socket

    champion = built_models[1]["classifier"]["version"]
    uri = built_models[2]["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_model_version_tag(CLF, challenger, "gate", "passed")
    client.set_registered_model_alias(CLF, "challenger", challenger)
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    lines: list[str] = []
    ctl = Controller(actuator, f"http://127.0.0.1:{closed}", CanaryPolicy(steps=[10], bake_seconds=1, poll_seconds=0.5),
                     Registry(client), echo=lines.append)
    with pytest.raises(Unavailable, match="unreachable"):
        ctl.run(CLF)
    st = actuator.state(CLF)
    assert st.champion_version == champion and st.challenger_version is None
    assert any("STOPPED" in line and f"champion v{champion} serves 100%" in line for line in lines), lines
    assert str(client.get_model_version_by_alias(CLF, "champion").version) == champion
    assert client.get_model_version(CLF, challenger).tags["promotion"] == "stopped"
    assert _versions(canary_server, png_bytes, 10) == Counter({champion: 10})
