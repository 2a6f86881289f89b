"""Real Locust runs (`python -m loadtests.run`, a subprocess) against a real `fissure serve
--runtime inprocess` and a real `fissure api` on free ports (conftest.py)."""

from __future__ import annotations

import base64
import csv
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtests import config, images

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def run_loadtest(stack, *args: str, env: dict | None = None, timeout: float = 420) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "loadtests.run", "--rest", stack.rest, "--grpc", stack.grpc, "--api", stack.api,
           "--quiet", *args]
    return subprocess.run(cmd, cwd=REPO, env={**stack.env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["Name"]: r for r in csv.DictReader(f)}


def test_the_12mp_photo_fits_every_limit_and_the_front_answers_it(front, tmp_path):
    size = config.SIZE_BY_NAME["12mp"]
    path = images.prepare([size], root=tmp_path)[size.name][0]
    data = path.read_bytes()
    assert images.check_limits(data) == []
    assert 1.5e6 < len(data) < 8e6  # a phone photo's weight, not a flat image's
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]}
    r = httpx.post(f"{front.url}/v2/models/crack-classifier/infer", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert {o["name"] for o in r.json()["outputs"]} >= {"label", "probabilities"}


def test_smoke_run_drives_every_scenario_without_failures(stack, tmp_path):
    out = tmp_path / "report"
    done = run_loadtest(stack, "--smoke", "--duration", "20s", "--users", "8", "--sizes", "thumb,vga",
                        "--pids", ",".join(map(str, stack.pids)), "--sample-seconds", "1", "--out", str(out),
                        env={config.ENV_PERSON_WAIT: "0.2,0.6"})
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{(out / 'locust.log').read_text()[-3000:]}"
    assert done.stdout.strip().splitlines()[-1].startswith(f"PASS: report in {out}")
    stats = rows(out / "final_stats.csv")
    for name, row in stats.items():
        assert int(row["Failure Count"]) == 0, (name, row)
    ok = {name: int(r["Request Count"]) - int(r["Failure Count"]) for name, r in stats.items()}
    for protocol in ("rest-v1", "rest-v2", "grpc"):  # both models over every protocol
        assert sum(n for name, n in ok.items() if name.startswith(f"{protocol} ")) > 0, (protocol, ok)
    assert stats["grpc crack-classifier"]["Type"] == "grpc"
    for step in ("api predict", "api overlay", "api feedback", "api history"):  # the people's whole flow
        assert ok.get(step, 0) > 0, (step, ok)
    assert (out / "final_exceptions.csv").read_text().strip() == "Count,Message,Traceback,Nodes"
    # the feedback landed in the API's store
    token = (Path(stack.env["FISSURE_HOME"]) / "loadtests" / "token").read_text().strip()
    judged = httpx.get(f"{stack.api}/predictions", params={"has_feedback": "true", "page_size": 1},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30).json()["total"]
    assert judged >= ok["api feedback"] > 0
    # memory of both stack processes over the run, and the report files
    with open(out / "memory.csv", newline="") as f:
        sampled = [r for r in csv.DictReader(f)]
    for pid, role in zip(stack.pids, ("fissure serve", "fissure api")):
        mine = [r for r in sampled if int(r["pid"]) == pid]
        assert len(mine) >= 10 and {r["role"] for r in mine} == {role} and all(int(r["rss_bytes"]) > 0 for r in mine)
    summary = (out / "summary.md").read_text()
    assert "**Result: PASS**" in summary and "| fissure serve |" in summary and "| api feedback |" in summary
    for name in ("report.png", "report.html", "locust_stats_history.csv"):
        assert (out / name).stat().st_size > 0, name


def test_failed_requests_fail_the_run_one_line_each(stack, tmp_path):
    out = tmp_path / "report"
    done = run_loadtest(stack, "--smoke", "--duration", "6s", "--users", "4", "--scenarios", "v2,grpc",
                        "--models", "no-such-model", "--sizes", "thumb", "--out", str(out))
    assert done.returncode == 1, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    v2 = next(line for line in fails if "'rest-v2 no-such-model'" in line)
    grpc = next(line for line in fails if "'grpc no-such-model'" in line)
    assert "HTTP 404" in v2 and "no-such-model" in v2
    assert "NOT_FOUND" in grpc
    assert any(line.startswith("FAIL failure ratio of 'Aggregated'") for line in fails)
    assert "**Result: FAIL**" in (out / "summary.md").read_text()


def test_a_stack_that_is_down_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "loadtests.run", "--smoke", "--rest", f"http://127.0.0.1:{port}",
                           "--scenarios", "v1", "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: the serving front is not ready at http://127.0.0.1:{port}/v2/health/ready; "
                                   "start the stack (`make up DETACH=1`) or pass its URL")
    assert not (tmp_path / "r").exists()
