"""The local Prometheus of `fissure up`: its targets (one list), the generated config (promtool
checks it), the stack's wiring (Procfile, ports, readiness, banner), and a real Prometheus started
from that config on free ports that scrapes small real targets and loads the chart's rules.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fissure.errors import FissureError
from fissure.observability import catalog, prometheus

from ..conftest import free_ports

REPO = Path(__file__).resolve().parents[2]


def binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.fail(f"{name} not found: `make prometheus` installs Debian's prometheus")
    return found


def options(**kw):
    from fissure.stack import StackOptions

    http, grpc, mlflow, api, prom = free_ports(5)
    return StackOptions(**{"http_port": http, "grpc_port": grpc, "mlflow_port": mlflow, "api_port": api,
                           "prometheus_port": prom, "runtime": "inprocess", **kw})


# ------------------------------------------------------------------------------ the one list


def test_targets_are_every_component_with_a_job_each(monkeypatch):
    from fissure.settings import reload_settings, settings

    (ts_metrics,) = free_ports(1)
    monkeypatch.setenv("FISSURE_TS_METRICS_PORT", str(ts_metrics))
    reload_settings()
    try:
        opts = options(runtime="torchserve")
        found = {t.job: t.address for t in prometheus.targets(opts)}
        assert found == {"fissure-front": f"127.0.0.1:{opts.http_port}", "fissure-api": f"127.0.0.1:{opts.api_port}",
                         "torchserve": f"127.0.0.1:{ts_metrics}", "prometheus": f"127.0.0.1:{opts.prometheus_port}"}
    finally:
        settings.cache_clear()
    # TorchServe only with its runtime; a stack open to the network is still scraped on loopback
    wide = options(host="0.0.0.0")
    assert [t.job for t in prometheus.targets(wide)] == ["fissure-front", "fissure-api", "prometheus"]
    assert {t.address.rsplit(":", 1)[0] for t in prometheus.targets(wide)} == {"127.0.0.1"}
    assert {t.address.rsplit(":", 1)[0] for t in prometheus.targets(options(host="::"))} == {"[::1]"}


def test_config_scrapes_every_5s_with_namespace_local_and_the_rules():
    rules = prometheus.rules_file(REPO)
    assert rules == REPO / "charts" / "fissure" / "files" / "prometheus" / "rules.yaml"
    opts = options()
    cfg = prometheus.config(prometheus.targets(opts), [rules])
    assert cfg["global"] == {"scrape_interval": "5s", "scrape_timeout": "4s", "evaluation_interval": "5s"}
    assert cfg["rule_files"] == [str(rules)]
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    assert set(jobs) == {t.job for t in prometheus.targets(opts)}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert job["static_configs"][0]["labels"] == {"namespace": "local"}


# ------------------------------------------------------------------------------ the stack's wiring


def test_procfile_runs_prometheus_from_the_generated_config_which_promtool_accepts(tmp_path):
    from fissure.settings import state_dir
    from fissure.stack import procfile

    opts = options(host="0.0.0.0")
    text = procfile(opts, tmp_path / "serving").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("prometheus:")]
    args = shlex.split(line.removeprefix("prometheus: "))
    home = state_dir()
    assert args[0] == "exec" and Path(args[1]).name == "prometheus"
    assert f"--config.file={home / 'prometheus.yml'}" in args
    assert f"--storage.tsdb.path={home / 'prometheus'}" in args
    assert f"--web.listen-address=0.0.0.0:{opts.prometheus_port}" in args  # the stack's host

    cfg = yaml.safe_load((home / "prometheus.yml").read_text())
    assert [j["static_configs"][0]["targets"][0] for j in cfg["scrape_configs"]] == [
        f"127.0.0.1:{opts.http_port}", f"127.0.0.1:{opts.api_port}", f"127.0.0.1:{opts.prometheus_port}"]
    proc = subprocess.run([binary("promtool"), "check", "config", str(home / "prometheus.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout + proc.stderr

    without = procfile(options(prometheus=False), tmp_path / "serving").read_text()
    assert "prometheus:" not in without


def test_the_stack_checks_serves_and_shows_prometheus():
    from fissure.stack import banner, check_ports, readiness_checks

    opts = options(host="0.0.0.0")
    checks = {c.what: c.url for c in readiness_checks(opts)}
    assert checks["Prometheus"] == f"http://127.0.0.1:{opts.prometheus_port}/-/ready"
    assert f"Prometheus (5 s scrapes)       http://0.0.0.0:{opts.prometheus_port}" in banner(opts)
    quiet = options(prometheus=False)
    assert "Prometheus" not in banner(quiet) and "Prometheus" not in {c.what for c in readiness_checks(quiet)}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = options(prometheus_port=s.getsockname()[1])
        with pytest.raises(FissureError, match=rf"port {taken.prometheus_port} \(Prometheus\) is already in use"):
            check_ports(taken)
        check_ports(options(prometheus_port=taken.prometheus_port, prometheus=False))


def test_without_prometheus_installed_up_says_how_and_goes_on(monkeypatch, tmp_path):
    from fissure.stack import with_prometheus

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    monkeypatch.setattr(prometheus, "DEBIAN_BINARY", str(tmp_path / "no-prometheus"))
    said = []
    opts = with_prometheus(options(), said.append)
    assert opts.prometheus is False
    assert len(said) == 1 and "`make prometheus`" in said[0] and "apt-get install prometheus" in said[0]

    monkeypatch.undo()
    if prometheus.find():
        said.clear()
        assert with_prometheus(options(), said.append).prometheus is True and not said


def test_the_cli_takes_a_prometheus_port(monkeypatch):
    from fissure.cli.stack import up

    assert up.make_context("up", ["--prometheus-port", "19090"]).params["prometheus_port"] == 19090
    monkeypatch.setenv("FISSURE_PROMETHEUS_PORT", "19191")
    assert up.make_context("up", []).params["prometheus_port"] == 19191


# ------------------------------------------------------------------------------ a real Prometheus


class MetricsServer:
    """A tiny /metrics endpoint (prometheus-client text format) on a free loopback port."""

    def __init__(self, registry: CollectorRegistry):
        body = lambda: generate_latest(registry)  # noqa: E731

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                data = body()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _query(client: httpx.Client, base: str, promql: str) -> list[dict]:
    r = client.get(f"{base}/api/v1/query", params={"query": promql})
    r.raise_for_status()
    return r.json()["data"]["result"]


def _wait(what: str, check, deadline: float, proc: subprocess.Popen, log: Path):
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Prometheus exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            got = check()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus: no {what} before the deadline:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_prometheus_scrapes_the_stack_targets_and_loads_the_rules(tmp_path):
    # the front and the API, as small real endpoints exporting catalogue series
    front_reg, api_reg = CollectorRegistry(), CollectorRegistry()
    requests = Counter(catalog.REQUESTS.name, catalog.REQUESTS.help, catalog.REQUESTS.labels, registry=front_reg)
    ready = Gauge(catalog.READY.name, catalog.READY.help, catalog.READY.labels, registry=front_reg)
    feedback = Counter(catalog.FEEDBACK.name, catalog.FEEDBACK.help, catalog.FEEDBACK.labels, registry=api_reg)
    ready.labels("crack-classifier", "3").set(1)
    front, api = MetricsServer(front_reg), MetricsServer(api_reg)
    stop = threading.Event()

    def traffic():  # requests keep coming, so rates are not zero
        while not stop.is_set():
            requests.labels("crack-classifier", "3", "rest-v2", "200").inc(9)
            requests.labels("crack-classifier", "3", "grpc", "503").inc()
            feedback.labels("crack-classifier", "3", "wrong").inc()
            stop.wait(0.2)

    threading.Thread(target=traffic, daemon=True).start()

    opts = options(http_port=front.port, api_port=api.port)
    config = prometheus.write_config(tmp_path / "prometheus.yml", prometheus.targets(opts),
                                     [prometheus.rules_file(REPO)])
    check = subprocess.run([binary("promtool"), "check", "config", str(config)], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    log = tmp_path / "prometheus.log"
    cmd = prometheus.command(binary("prometheus"), config, tmp_path / "data", f"127.0.0.1:{opts.prometheus_port}")
    base = f"http://127.0.0.1:{opts.prometheus_port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "GOMAXPROCS": "2"})
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=5.0) as client:
            _wait("/-/ready", lambda: client.get(f"{base}/-/ready").status_code == 200, deadline, proc, log)

            # every target of the one list is up and labelled namespace="local"
            def all_up():
                active = client.get(f"{base}/api/v1/targets").json()["data"]["activeTargets"]
                return active if active and all(t["health"] == "up" for t in active) else None

            active = _wait("healthy targets", all_up, deadline, proc, log)
            assert {t["labels"]["job"] for t in active} == {"fissure-front", "fissure-api", "prometheus"}
            assert {t["labels"]["namespace"] for t in active} == {"local"}
            assert {t["scrapeInterval"] for t in active} == {"5s"}

            scraped = _wait("the front's requests", lambda: _query(
                client, base, 'fissure_requests_total{namespace="local", job="fissure-front", code="503"}'),
                deadline, proc, log)
            assert scraped[0]["metric"]["model"] == "crack-classifier" and scraped[0]["metric"]["version"] == "3"

            # the chart's rules are loaded, healthy, evaluated every 5 s
            groups = client.get(f"{base}/api/v1/rules").json()["data"]["groups"]
            assert {g["name"] for g in groups} == {"fissure-slis", "fissure-alerts"}
            assert {g["interval"] for g in groups} == {5}
            loaded = {r.get("name") for g in groups for r in g["rules"]}
            on_disk = yaml.safe_load(prometheus.rules_file(REPO).read_text())["groups"]
            assert loaded == {r.get("record") or r.get("alert") for g in on_disk for r in g["rules"]}

            # and recording rules produce series from the scraped data: 10% errors
            ratio = _wait("the error ratio", lambda: _query(
                client, base, 'namespace_model_version:fissure_request_errors:ratio_rate5m{namespace="local"}'),
                deadline, proc, log)
            assert abs(float(ratio[0]["value"][1]) - 0.1) < 0.02, ratio
            assert ratio[0]["metric"] == {"__name__": "namespace_model_version:fissure_request_errors:ratio_rate5m",
                                          "namespace": "local", "model": "crack-classifier", "version": "3"}
            wrong = _wait("the disagreement ratio", lambda: _query(
                client, base, "namespace_model_version:fissure_feedback_disagreement:ratio_rate1h"),
                deadline, proc, log)
            assert float(wrong[0]["value"][1]) == 1.0
            health = {r["name"]: r["health"] for g in client.get(f"{base}/api/v1/rules").json()["data"]["groups"]
                      for r in g["rules"]}
            assert set(health.values()) <= {"ok", "unknown"}, health
            # 10% errors burn the 99.5% SLO's budget 20x: the fast-burn page goes pending or firing
            burning = _wait("the fast-burn alert", lambda: [
                a for a in client.get(f"{base}/api/v1/alerts").json()["data"]["alerts"]
                if a["labels"]["alertname"] == "FissureErrorBudgetBurn1h"], deadline, proc, log)
            assert burning[0]["labels"]["namespace"] == "local" and burning[0]["labels"]["severity"] == "critical"
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        front.close()
        api.close()
