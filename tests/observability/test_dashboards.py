"""Grafana dashboards as code: the committed JSON is what dashboards/ builds, every query uses
catalog series with the variables' matchers, and every panel of every dashboard returns data
from a real Prometheus (which also draws the pictures).

The Prometheus here is Debian's /usr/bin/prometheus on a free port, scraping (every second) a
tiny exporter in this process that serves every catalog metric with plausible values, moving at
each scrape, so rates, quantiles, joins and heatmaps all have something to work on.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from fissure.errors import Unavailable, UsageError
from fissure.observability import catalog
from fissure.observability.grafana import DASHBOARDS, dashboard_files, default_variables, panel_queries, provision

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "fissure" / "files" / "prometheus" / "rules.yaml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
if str(REPO) not in sys.path:  # dashboards/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

import dashboards  # noqa: E402

from ..conftest import free_port

UIDS = {"fissure-service", "fissure-model-health", "fissure-canary", "fissure-pipeline"}
CLF, SEG = "crack-classifier", "crack-segmenter"


def load_all() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in dashboard_files()}


def raw_targets(board: dict):
    """(panel, target) for every query of a dashboard, rows' nested panels included."""
    for panel in board["panels"]:
        for p in [panel] + list(panel.get("panels") or []):
            for target in p.get("targets") or []:
                yield p, target


# --------------------------------------------------------------------------- source and JSON


def test_committed_json_is_what_the_source_builds():
    assert dashboards.stale() == [], "run make dashboards and commit charts/fissure/files/dashboards"
    assert {p.stem for p in dashboard_files()} == UIDS
    done = subprocess.run([sys.executable, "-m", "dashboards", "--check"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_sync_check_names_what_differs(tmp_path):
    dashboards.write(tmp_path)
    assert dashboards.stale(tmp_path) == []
    changed = tmp_path / "fissure-canary.json"
    changed.write_text(changed.read_text().replace("canary", "kanary"))
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "fissure-pipeline.json").unlink()
    assert dashboards.stale(tmp_path) == ["fissure-canary.json", "fissure-pipeline.json", "old.json"]
    done = subprocess.run([sys.executable, "-m", "dashboards", "--check", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "fissure-canary.json" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    dashboards.write(tmp_path)  # make dashboards repairs it, the stale file included
    assert dashboards.stale(tmp_path) == [] and not (tmp_path / "old.json").exists()


def test_stable_uids_ids_and_titles():
    for uid, board in load_all().items():
        assert board["uid"] == uid and board["title"].startswith("fissure / ")
        all_panels = [p for panel in board["panels"] for p in [panel] + list(panel.get("panels") or [])]
        ids = [p["id"] for p in all_panels]
        assert len(ids) == len(set(ids)) and 0 not in ids, uid
        titles = [p["title"] for p in all_panels if p["type"] != "row"]
        assert len(titles) == len(set(titles)), f"{uid}: panel titles must be unique (tests and pictures key on them)"
        for p in all_panels:
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (uid, p["title"])
            refs = [t["refId"] for t in p.get("targets") or []]
            assert refs and len(refs) == len(set(refs)) and all(refs), (uid, p["title"])
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (uid, p["title"], g)


def test_variables_and_links():
    for uid, board in load_all().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        wanted = ["namespace", "model"] + ([] if uid in ("fissure-canary", "fissure-pipeline") else ["version"])
        for name in wanted:
            v = variables[name]
            assert v["type"] == "query" and v["includeAll"] and v["multi"] and v["allValue"] == ".*", (uid, name)
            assert v["query"].startswith("label_values(fissure_model_info"), (uid, name)
        # each variable's choices are narrowed by the ones before it
        assert 'namespace=~"$namespace"' in variables["model"]["query"]
        if "version" in variables:
            assert 'model=~"$model"' in variables["version"]["query"]
        assert variables["mlflow_url"]["type"] == "textbox" and variables["mlflow_url"]["query"] == "http://localhost:5000"
        assert variables["argo_url"]["type"] == "textbox" and variables["argo_url"]["query"].startswith("https://")
        urls = {link["title"]: link.get("url") for link in board["links"]}
        assert urls["MLflow"] == "${mlflow_url}" and urls["Argo Workflows"].startswith("${argo_url}")
        assert next(link for link in board["links"] if link["type"] == "dashboards")["tags"] == ["fissure"]


# --------------------------------------------------------------------------- metric names

_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring",
             "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (not functions, labels, keywords or numbers)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", s):
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def selectors(expr: str) -> list[tuple[str, str]]:
    """(series name, matchers) of every ``name{...}`` in an expression."""
    return re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)\{([^}]*)\}", expr)


def known_series() -> set[str]:
    names = catalog.series_names()
    if RULES.is_file():  # recording rules may be used too (another file; read when it exists)
        names |= {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    return names


def metric_of(series: str) -> catalog.Metric | None:
    """The catalog metric a series name belongs to; None for a recording rule's."""
    for m in catalog.ALL:
        if series == m.series or (m.kind == "histogram" and series in {m.name + x for x in ("_bucket", "_sum", "_count")}):
            return m
    return None


def test_metric_names_parser():
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{x=~"$x", y="by(z)"}[$__rate_interval]))) '
            '* on(model, version) group_left(role) max by (model) (b{n="1"}) or 0 * c_total{q="1e-3"} > bool 1e3')
    assert metric_names(expr) == {"a_bucket", "b", "c_total"}
    assert [name for name, _ in selectors(expr)] == ["a_bucket", "b", "c_total"]


def test_every_query_reads_catalog_series_with_the_variables():
    known = known_series()
    seen = set()
    for uid, board in load_all().items():
        variables = {v["name"] for v in board["templating"]["list"]}
        queries = [t["expr"] for _, t in raw_targets(board)] + [  # label_values(series, label): the series
            re.sub(r"^label_values\((.*), *\w+\)$", r"label_values(\1)", v["query"])
            for v in board["templating"]["list"] if v["type"] == "query"]
        for expr in queries:
            names = metric_names(expr)
            assert names, expr
            assert names <= known, f"{uid}: not in the catalog (or the rules): {names - known}"
            if expr == "label_values(fissure_model_info)":
                continue  # the namespace variable: the first, so nothing narrows it
            assert names == {n for n, _ in selectors(expr)}, f"{uid}: every series needs the variables' matchers: {expr}"
            seen |= names
            for name, matchers in selectors(expr):
                assert 'namespace=~"$namespace"' in matchers, (uid, expr)
                metric = metric_of(name)
                if metric is None or expr.startswith("label_values("):
                    continue  # a variable's own query narrows by the variables before it only
                for label in ("model", "version"):
                    if label in metric.labels and label in variables:
                        assert f'{label}=~"${label}"' in matchers, (uid, label, expr)
    # the dashboards cover every part of the catalog the issue asks for
    for metric in (catalog.REQUESTS, catalog.LATENCY, catalog.BATCH_SIZE, catalog.QUEUE, catalog.INFLIGHT,
                   catalog.READY, catalog.PREDICTIONS, catalog.CONFIDENCE, catalog.CRACK_AREA, catalog.DRIFT_PSI,
                   catalog.DISAGREEMENT, catalog.FEEDBACK, catalog.RETRAIN_RUNS, catalog.GATE_DECISIONS,
                   catalog.CANARY_STEPS, catalog.PROMOTIONS, catalog.CANARY_WEIGHT, catalog.CHAMPION,
                   catalog.MODEL_INFO, catalog.INPUT_MEGAPIXELS, catalog.INPUT_BRIGHTNESS, catalog.INPUT_CONTRAST,
                   catalog.INPUT_SHARPNESS):
        assert any(metric_of(n) is metric for n in seen), metric.name


def test_canary_joins_role_from_model_info():
    board = load_all()["fissure-canary"]
    joins = [t["expr"] for p, t in raw_targets(board) if "by role" in p["title"]]
    assert len(joins) >= 6
    for expr in joins:
        assert "* on(model, version) group_left(role) max by (model, version, role) (fissure_model_info{" in expr


def test_drift_panels_show_the_psi_thresholds():
    board = load_all()["fissure-model-health"]
    panels = {p["title"]: p for p, _ in raw_targets(board)}
    for title in ("Drift PSI by feature", "PSI now"):
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, 0.1, 0.25]
    assert "feature" in panels["Drift PSI by feature"]["targets"][0]["expr"]


# --------------------------------------------------------------------------- panel_queries


def test_panel_queries_expand_every_variable():
    board = load_all()["fissure-service"]
    queries = panel_queries(board)
    assert len(queries) == sum(1 for _ in raw_targets(board))
    for title, panel, ref, expr in queries:
        assert title == "fissure / service overview" and panel and ref
        assert "$" not in expr, expr
        assert 'model=~".*"' in expr and "[1m]" in expr or "rate(" not in expr
    chosen = panel_queries(DASHBOARDS / "fissure-service.json",
                           {"model": CLF, "version": "3", "__rate_interval": "5m"})
    assert all(f'model=~"{CLF}", version=~"3"' in e for *_, e in chosen)
    assert any("[5m]" in e for *_, e in chosen)


def test_panel_queries_spellings_and_errors():
    board = {"title": "t", "templating": {"list": [
        {"name": "model", "type": "query", "allValue": ".*"},
        {"name": "site", "type": "textbox", "query": "http://x"},
        {"name": "pick", "type": "custom", "current": {"value": ["b"]}}]},
        "panels": [{"type": "row", "title": "r", "collapsed": True, "panels": [
            {"title": "p", "targets": [
                {"refId": "A", "expr": 'a{m=~"${model}", n=~"[[model]]", o=~"${model:regex}", p="$pick"}[$__range]'},
                {"refId": "B", "expr": "hidden", "hide": True},
                {"refId": "C", "expr": 'label_replace(x, "y", "$1", "z", "(.*)")'}]}]}]}
    assert default_variables(board) == {"model": ".*", "site": "http://x", "pick": "b"}
    assert panel_queries(json.dumps(board)) == [
        ("t", "p", "A", 'a{m=~".*", n=~".*", o=~".*", p="b"}[1h]'),
        ("t", "p", "C", 'label_replace(x, "y", "$1", "z", "(.*)")')]
    board["panels"][0]["panels"][0]["targets"][0]["expr"] = "a{m=~\"$nope\"}"
    with pytest.raises(UsageError, match=r"unknown variable \$nope"):
        panel_queries(board)
    with pytest.raises(UsageError):
        panel_queries("/nonexistent/board.json")


# --------------------------------------------------------------------------- provisioning


def test_provision_writes_datasource_dashboards_and_ini(tmp_path):
    ini = provision(tmp_path / "grafana", "http://127.0.0.1:19090/", port=3123)
    prov = tmp_path / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "fissure.yaml").read_text())["datasources"]
    assert ds == [{"name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
                   "url": "http://127.0.0.1:19090", "isDefault": True, "editable": False,
                   "jsonData": {"timeInterval": "5s", "httpMethod": "POST"}}]
    (provider,) = yaml.safe_load((prov / "dashboards" / "fissure.yaml").read_text())["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]) == DASHBOARDS.resolve()
    assert {p.stem for p in Path(provider["options"]["path"]).glob("*.json")} == UIDS
    text = ini.read_text()
    assert f"provisioning = {prov}" in text and "http_port = 3123" in text and "http_addr = 127.0.0.1" in text
    assert f"default_home_dashboard_path = {DASHBOARDS.resolve() / 'fissure-service.json'}" in text
    with pytest.raises(UsageError, match="Prometheus URL"):
        provision(tmp_path / "g2", "localhost:9090")
    with pytest.raises(UsageError, match="no dashboard JSON"):
        provision(tmp_path / "g3", "http://127.0.0.1:1", dashboards=tmp_path)


# --------------------------------------------------------------------------- a real Prometheus


LABEL_VALUES = {
    "model": (CLF, SEG), "version": ("1", "2"), "protocol": catalog.PROTOCOLS, "code": ("200", "400", "503"),
    "label": ("crack", "no_crack"), "feature": catalog.DRIFT_FEATURES, "verdict": catalog.VERDICTS,
    "state": ("succeeded", "failed"), "result": ("passed", "failed"), "action": ("promoted", "rolled_back"),
    "role": ("champion", "challenger"), "runtime": ("inprocess",), "run_id": ("r1",), "method": ("POST",),
    "route": ("/v1/predict",), "status": ("200",),
}


def label_sets(metric: catalog.Metric) -> list[dict]:
    out = []
    for combo in itertools.product(*(LABEL_VALUES[name] for name in metric.labels)):
        labels = dict(zip(metric.labels, combo))
        # version 1 is the champion, version 2 the challenger (at a 10% canary)
        if "role" in labels and labels["role"] != ("champion" if labels["version"] == "1" else "challenger"):
            continue
        if metric is catalog.CHAMPION and labels["version"] != "1":
            continue
        out.append(labels)
    return out


class Exporter:
    """Every catalog metric on a free port; each scrape moves the counters and histograms."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry, self.rng, self.lock = CollectorRegistry(), random.Random(13), threading.Lock()
        self.metrics = []
        for m in catalog.ALL:
            kind = {"counter": Counter, "histogram": Histogram}.get(m.kind, Gauge)
            kwargs = {"buckets": m.buckets} if m.kind == "histogram" else {}
            self.metrics.append((m, kind(m.name, m.help, m.labels, registry=self.registry, **kwargs)))
        self.tick()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                from prometheus_client import generate_latest

                exporter.tick()
                body = generate_latest(exporter.registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tick(self):
        rng = self.rng
        with self.lock:
            for m, instrument in self.metrics:
                for labels in label_sets(m):
                    child = instrument.labels(**labels)
                    if m.kind == "counter":
                        if labels.get("code", "200") == "503" and rng.random() < 0.7:
                            continue
                        child.inc(rng.randint(1, 5))
                    elif m.kind == "histogram":
                        for _ in range(3):
                            child.observe(rng.choice(m.buckets[: max(2, len(m.buckets) // 2)]) * rng.uniform(0.3, 1))
                    else:
                        child.set(self.gauge(m, labels))

    def gauge(self, m: catalog.Metric, labels: dict) -> float:
        if m in (catalog.READY, catalog.MODEL_INFO, catalog.CHAMPION):
            return 1
        if m is catalog.CANARY_WEIGHT:
            return 10 if labels["version"] == "2" else 0
        if m is catalog.DRIFT_WINDOW:
            return 500
        if m is catalog.DRIFT_PSI:
            return self.rng.uniform(0.0, 0.35)
        if m is catalog.INFLIGHT:
            return self.rng.randint(0, 4)
        return self.rng.uniform(0.02, 0.3)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """Debian's Prometheus scraping the exporter every second; yields its URL once rates work."""
    if not Path(PROMETHEUS).is_file():
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    exporter = Exporter()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "fissure", "static_configs": [
                  {"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"namespace": "test"}}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:  # ready, and at least 5 scrapes in: a rate over them is defined
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
            try:
                r = httpx.get(f"{url}/api/v1/query", params={"query": "count_over_time(fissure_model_ready[1m])"})
                result = r.json()["data"]["result"] if r.status_code == 200 else []
                if result and min(float(x["value"][1]) for x in result) >= 5:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the exporter in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        exporter.close()


def _query(url: str, expr: str) -> list:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr})
    assert r.status_code == 200, (expr, r.text)
    return r.json()["data"]["result"]


@pytest.mark.slow
def test_every_panel_query_returns_data_from_prometheus(prometheus):
    for path in dashboard_files():
        for title, panel, ref, expr in panel_queries(path, {"__range": "30s"}):
            assert _query(prometheus, expr), f"{title} / {panel} / {ref} is empty: {expr}"


@pytest.mark.slow
def test_variables_narrow_every_panel(prometheus):
    """Picking a model (and a version) leaves only its series wherever a result has those labels."""
    for path in dashboard_files():
        chosen = {"model": SEG, "__range": "30s"}
        if "version" in default_variables(json.loads(path.read_text())):
            chosen["version"] = "2"
        for title, panel, ref, expr in panel_queries(path, chosen):
            result = _query(prometheus, expr)
            assert result, f"{title} / {panel} / {ref}"
            for item in result:
                assert item["metric"].get("model", SEG) == SEG, (panel, item["metric"])
                assert item["metric"].get("version", chosen.get("version", "2")) == chosen.get("version", "2") \
                    or "version" not in chosen, (panel, item["metric"])


@pytest.mark.slow
def test_pictures_from_prometheus(prometheus, tmp_path):
    from PIL import Image

    from fissure.observability.pictures import render

    pictures = render(prometheus, tmp_path, window=40, step=1)
    assert {p.path.name for p in pictures} == {f"{uid}.png" for uid in UIDS}
    for p in pictures:
        assert p.errors == [] and p.empty == [], (p.dashboard, p.errors, p.empty)
        assert p.panels >= 8
        assert p.path.stat().st_size > 40_000
        with Image.open(p.path) as image:
            assert image.width == 2200 and image.height > 800
            colours = image.convert("RGB").resize((440, image.height // 5)).getcolors(1_000_000)
        assert len(colours) > 200, f"{p.path.name} looks blank"

    # a model nobody serves: every panel says "No data" and the picture says so
    (empty,) = render(prometheus, tmp_path / "none", dashboards=DASHBOARDS / "fissure-service.json",
                      window=40, step=1, variables={"model": "no-such-model"})
    assert empty.errors == [] and len(empty.empty) == empty.panels


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fissure.observability.pictures", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_pictures_cli(prometheus, tmp_path):
    done = _cli("--prometheus", prometheus, "--out", str(tmp_path), "--window", "40s", "--step", "2s",
                "--dashboards", str(DASHBOARDS / "fissure-pipeline.json"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fissure-pipeline.png").stat().st_size > 20_000
    assert "wrote" in done.stdout and "fissure-pipeline.png" in done.stdout

    done = _cli("--prometheus", prometheus, "--out", str(tmp_path), "--window", "40s",
                "--dashboards", str(DASHBOARDS / "fissure-pipeline.json"), "--var", "model=nope")
    assert done.returncode == 1 and "panels have no data" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_pictures_cli_errors(tmp_path):
    done = _cli("--help")
    assert done.returncode == 0 and "--prometheus" in done.stdout and "--window" in done.stdout

    port = free_port()  # nothing listens there
    done = _cli("--prometheus", f"http://127.0.0.1:{port}", "--out", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith(f"pictures: error: Prometheus at http://127.0.0.1:{port} is unreachable")
    assert len(done.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())

    for bad in (["--window", "soon"], ["--var", "model"], ["--prometheus", "localhost:9090"]):
        done = _cli(*bad, "--out", str(tmp_path))
        assert done.returncode == 2 and done.stderr.startswith("pictures: error:"), (bad, done.stderr)

    from fissure.observability.pictures import render

    with pytest.raises(Unavailable):
        render(f"http://127.0.0.1:{port}", tmp_path)
