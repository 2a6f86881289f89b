"""The canary step's evidence against a real Prometheus (1 s scrapes) that scrapes a tiny exporter
whose champion and challenger series advance while the test runs: one model per scenario."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from fissure.errors import Unavailable
from fissure.observability import catalog
from fissure.promotion import StepPolicy, analyse
from tests.conftest import free_port  # below the ephemeral range (tests/conftest.py)

CHAMPION, CHALLENGER = "1", "2"
POLICY = StepPolicy(min_requests=100, min_verdicts=20)


class Exporter:
    """Catalogue series for champion and challenger of each scenario model, advanced every 0.1 s."""

    def __init__(self):
        reg = CollectorRegistry()
        self.requests = Counter(catalog.REQUESTS.name, catalog.REQUESTS.help, catalog.REQUESTS.labels, registry=reg)
        self.latency = Histogram(catalog.LATENCY.name, catalog.LATENCY.help, catalog.LATENCY.labels,
                                 buckets=catalog.LATENCY.buckets, registry=reg)
        self.predictions = Counter(catalog.PREDICTIONS.name, catalog.PREDICTIONS.help, catalog.PREDICTIONS.labels,
                                   registry=reg)
        self.confidence = Histogram(catalog.CONFIDENCE.name, catalog.CONFIDENCE.help, catalog.CONFIDENCE.labels,
                                    buckets=catalog.CONFIDENCE.buckets, registry=reg)
        self.feedback = Counter(catalog.FEEDBACK.name, catalog.FEEDBACK.help, catalog.FEEDBACK.labels, registry=reg)
        self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                data = generate_latest(reg)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._traffic, daemon=True).start()

    def serve(self, model, version, n=10, errors=0, seconds=0.02, crack=5, confidence=0.9, wrong=1, judged=4):
        for i in range(n):
            self.requests.labels(model, version, "rest-v2", "503" if i < errors else "200").inc()
            self.latency.labels(model, version, "rest-v2").observe(seconds)
            self.predictions.labels(model, version, "crack" if i < crack else "no_crack").inc()
            self.confidence.labels(model, version).observe(confidence)
        self.feedback.labels(model, version, "wrong").inc(wrong)
        self.feedback.labels(model, version, "correct").inc(judged - wrong)

    def _traffic(self):
        while not self.stop.is_set():
            for model in ("healthy", "errors", "slow", "mix", "quiet"):
                self.serve(model, CHAMPION)
            self.serve("healthy", CHALLENGER)
            self.serve("errors", CHALLENGER, errors=2)  # 20% 5xx
            self.serve("slow", CHALLENGER, seconds=0.2)  # 10x slower
            self.serve("mix", CHALLENGER, crack=9, confidence=0.55)  # 90% crack, unsure
            self.serve("quiet", CHALLENGER, n=0, wrong=0, judged=0)  # no traffic at all
            self.stop.wait(0.1)

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus not found: `make prometheus` installs Debian's prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    exporter = Exporter()
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "fissure-front", "static_configs": [
                  {"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"namespace": "local"}}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "GOMAXPROCS": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Prometheus exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus not ready before the deadline:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        exporter.close()


@pytest.fixture(scope="module")
def results(prometheus):
    """Every scenario judged at one instant, once the healthy one has enough traffic to pass."""
    base, proc, log = prometheus
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Prometheus exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        at = time.time()
        healthy = analyse(base, "healthy", CHAMPION, CHALLENGER, window="30s", policy=POLICY, at=at)
        if healthy.verdict == "pass":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the healthy challenger never passed: {healthy.model_dump_json(indent=1)}")
        time.sleep(0.5)
    out = {m: analyse(base, m, CHAMPION, CHALLENGER, window="30s", policy=POLICY, at=at)
           for m in ("errors", "slow", "mix", "quiet")}
    return {"healthy": healthy, **out}


def failed(result) -> set[str]:
    return {c.name for c in result.checks if c.passed is False}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_healthy_challenger_passes_with_its_numbers_and_promql(results):
    r = results["healthy"]
    assert r.verdict == "pass" and not failed(r)
    assert [c.name for c in r.checks] == ["traffic", "error_ratio", "latency", "class_mix", "confidence",
                                          "disagreement"]
    assert r.check("traffic").value >= POLICY.min_requests
    assert r.check("error_ratio").value == pytest.approx(0.0, abs=1e-9)
    assert r.check("class_mix").value == pytest.approx(0.0, abs=0.02)
    assert r.check("disagreement").passed is True  # enough verdicts: 25% wrong on both
    for c in r.checks:
        for role, promql in c.promql.items():
            assert role in ("champion", "challenger")
            assert f'version="{CHAMPION if role == "champion" else CHALLENGER}"' in promql
            assert 'model="healthy"' in promql and 'namespace=~".*"' in promql
    used = " ".join(q for c in r.checks for q in c.promql.values())
    for metric in (catalog.REQUESTS.series, catalog.LATENCY.name + "_bucket", catalog.PREDICTIONS.series,
                   catalog.CONFIDENCE.name + "_bucket", catalog.FEEDBACK.series):
        assert metric in used


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_more_5xx_fails_the_error_check(results):
    r = results["errors"]
    assert r.verdict == "fail" and failed(r) == {"error_ratio"}
    assert r.check("error_ratio").value == pytest.approx(0.2, abs=0.03)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_slower_challenger_fails_the_latency_check(results):
    r = results["slow"]
    assert r.verdict == "fail" and failed(r) == {"latency"}
    assert r.check("latency").value > r.check("latency").threshold


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_another_class_mix_fails_the_distribution_checks(results):
    r = results["mix"]
    assert r.verdict == "fail" and failed(r) == {"class_mix", "confidence"}
    assert r.check("class_mix").value == pytest.approx(0.4, abs=0.05)  # 50% -> 90% crack


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_too_little_traffic_is_insufficient_never_a_pass(results, prometheus):
    r = results["quiet"]
    assert r.verdict == "insufficient"
    assert r.check("traffic").passed is False and r.check("traffic").value == 0
    assert r.check("disagreement").passed is None  # no verdicts: skipped, not passed
    # a quiet period for both (a model nobody calls) is insufficient too
    base, _, _ = prometheus
    assert analyse(base, "nobody", CHAMPION, CHALLENGER, window="30s", policy=POLICY).verdict == "insufficient"
    # and another namespace selects nothing
    assert analyse(base, "healthy", CHAMPION, CHALLENGER, window="30s", policy=POLICY,
                   namespace="prod").verdict == "insufficient"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_query_prometheus_refuses_raises_unavailable(prometheus):
    base, _, _ = prometheus
    with pytest.raises(Unavailable, match="refused a query"):
        analyse(base, "healthy", CHAMPION, CHALLENGER, window="not-a-duration", policy=POLICY)


def test_prometheus_down_raises_unavailable():
    with pytest.raises(Unavailable, match="unreachable"):
        analyse(f"http://127.0.0.1:{free_port()}", "healthy", CHAMPION, CHALLENGER, timeout=2)


def test_the_policy_is_strict_about_its_keys():
    from pydantic import ValidationError

    assert StepPolicy.model_validate({"min_requests": 50}).min_requests == 50
    with pytest.raises(ValidationError):
        StepPolicy.model_validate({"min_request": 50})
