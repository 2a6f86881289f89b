"""The API's people and pipeline metrics, counted from its store at scrape time, on SQLite and on a
real PostgreSQL server: feedback per model version and the disagreement ratio, pipeline events
recorded through POST /pipeline/events (and in-process) and the counters and gauges they give,
the MLflow champion alias as an info metric (a real registry: a SQLite file and a real
`mlflow server`), and a scrape that answers while MLflow or the database is down.

/metrics is parsed with prometheus_client's own parser. The store collector's cache is set to 0 s
where a test needs every scrape to count again (one test checks the cache itself)."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, inspect, text

from fissure.api.store import PipelineEvent, Store, record_pipeline_event
from fissure.errors import InputError
from fissure.observability import catalog

REPO = Path(__file__).resolve().parents[2]
ROLES = ("viewer", "annotator", "admin", "pipeline")
CLS, SEG = "crack-classifier", "crack-segmenter"


def _load(path: Path, name: str):
    """tests/api/conftest.py as a module of its own: its PostgreSQL fixture and helpers, reused here."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


api_conftest = _load(REPO / "tests" / "api" / "conftest.py", "_fissure_api_conftest_for_metrics")
postgres = api_conftest.postgres  # the session's throwaway PostgreSQL server (a pytest fixture)
add_prediction, app_settings, Client, free_port = (api_conftest.add_prediction, api_conftest.app_settings,
                                                   api_conftest.Client, api_conftest.free_port)


# ---------------------------------------------------------------------------- fixtures and helpers

@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    return request.getfixturevalue("postgres").new_database()


class Apps:
    """API replicas over one database; each start() is a fresh process's app (its own registry)."""

    def __init__(self, db_url: str, tmp_path: Path):
        self.db_url, self.tmp_path = db_url, tmp_path
        self.tokens: dict[str, str] = {}
        self.opened: list = []

    def start(self, ttl: float = 0.0, champion_ttl: float = 0.0, **overrides):
        from fastapi.testclient import TestClient

        from fissure.api.app import create_app
        from fissure.api.auth import create_token

        cfg = app_settings(self.tmp_path, database_url=self.db_url, **overrides)
        store = Store(cfg.database_url, cfg.blob_url)
        store.migrate()
        if not self.tokens:
            self.tokens = {r: create_token(store, r, f"{r}-user")[0] for r in ROLES}
        app = create_app(cfg, store)
        app.state.metrics.store.ttl = ttl
        app.state.metrics.champions.ttl = champion_ttl
        tc = TestClient(app, raise_server_exceptions=False)
        tc.__enter__()
        self.opened.append((tc, store))
        return Client(tc, store, dict(self.tokens))

    def stop(self, client) -> None:
        for item in list(self.opened):
            if item[0] is client.http:
                item[0].__exit__(None, None, None)
                item[1].close()
                self.opened.remove(item)

    def close(self) -> None:
        for tc, store in self.opened:
            tc.__exit__(None, None, None)
            store.close()


@pytest.fixture
def apps(db_url, tmp_path):
    a = Apps(db_url, tmp_path)
    yield a
    a.close()


def scrape(client) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted (label, value) pairs: value}}; the answer must be 200."""
    r = client.get("/metrics", role=None)
    assert r.status_code == 200, r.text
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def series(metrics: dict, metric: catalog.Metric) -> dict[tuple, float]:
    """The samples of one catalog metric, keyed by its label values in the catalog's order."""
    return {tuple(dict(k)[label] for label in metric.labels): v for k, v in metrics.get(metric.series, {}).items()}


def judge(client, prediction_id: str, verdict: str, role: str = "annotator") -> None:
    r = client.post(f"/predictions/{prediction_id}/feedback", role=role, data={"verdict": verdict})
    assert r.status_code == 200, r.text


def post_event(client, body: dict, role: str = "pipeline"):
    return client.post("/pipeline/events", role=role, json=body)


def wait_for(check, what: str, timeout: float = 60.0):
    """Poll ``check()`` until it returns something truthy (the MLflow read runs in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not seen in {timeout:.0f}s: {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------- people

def test_feedback_from_two_versions_gives_counts_and_disagreement(apps):
    c = apps.start()
    v1 = [add_prediction(c.store, version="1", seed=i) for i in range(4)]
    v2 = [add_prediction(c.store, version="2", seed=10 + i) for i in range(2)]
    seg = add_prediction(c.store, task="segment", version="5", seed=20)
    add_prediction(c.store, version="3", seed=30)  # never judged: no series for it
    for p, verdict in zip(v1, ("correct", "correct", "wrong", "correct")):
        judge(c, p.id, verdict)
    judge(c, v1[0].id, "wrong", role="admin")  # a second person disagrees: a row of its own
    judge(c, v1[3].id, "wrong")  # the annotator changes their mind: still one row, now wrong
    for p in v2:
        judge(c, p.id, "wrong")
    judge(c, seg.id, "correct")

    m = scrape(c)
    assert series(m, catalog.FEEDBACK) == {
        (CLS, "1", "correct"): 2, (CLS, "1", "wrong"): 3,
        (CLS, "2", "wrong"): 2,
        (SEG, "5", "correct"): 1,
    }
    ratio = series(m, catalog.DISAGREEMENT)
    assert ratio.keys() == {(CLS, "1"), (CLS, "2"), (SEG, "5")}
    assert math.isclose(ratio[(CLS, "1")], 3 / 5) and ratio[(CLS, "2")] == 1.0 and ratio[(SEG, "5")] == 0.0
    # typed as the catalog says: a counter (so rate() works) and a gauge
    r = c.get("/metrics", role=None)
    assert "# TYPE fissure_feedback_total counter" in r.text
    assert "# TYPE fissure_feedback_disagreement_ratio gauge" in r.text


def test_feedback_counts_survive_a_restart_and_match_across_replicas(apps):
    c = apps.start()
    for i, verdict in enumerate(("correct", "wrong", "wrong")):
        judge(c, add_prediction(c.store, version="7", seed=i).id, verdict)
    before = series(scrape(c), catalog.FEEDBACK)
    assert before == {(CLS, "7", "correct"): 1, (CLS, "7", "wrong"): 2}

    apps.stop(c)
    restarted = apps.start()
    other = apps.start()  # a second replica on the same database
    assert series(scrape(restarted), catalog.FEEDBACK) == before
    judge(other, add_prediction(other.store, version="7", seed=9).id, "wrong")  # through the other replica
    after = {(CLS, "7", "correct"): 1, (CLS, "7", "wrong"): 3}
    assert series(scrape(restarted), catalog.FEEDBACK) == after == series(scrape(other), catalog.FEEDBACK)
    assert series(scrape(other), catalog.DISAGREEMENT) == {(CLS, "7"): 0.75}


def test_a_scrape_within_the_cache_time_does_not_query_the_store(apps):
    c = apps.start(ttl=3600)
    judge(c, add_prediction(c.store, seed=1).id, "wrong")
    statements: list[str] = []
    event.listen(c.store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    first = scrape(c)
    assert any("feedback" in s.lower() for s in statements)  # the first scrape counted
    statements.clear()
    judge(c, add_prediction(c.store, seed=2).id, "wrong")
    statements.clear()
    second = scrape(c)
    assert statements == []  # answered from the cache: no query at all
    assert series(second, catalog.FEEDBACK) == series(first, catalog.FEEDBACK) == {(CLS, "1", "wrong"): 1}
    c.http.app.state.metrics.store.ttl = 0  # the cache expires: the new feedback shows
    assert series(scrape(c), catalog.FEEDBACK) == {(CLS, "1", "wrong"): 2}


def test_the_old_per_process_feedback_counter_is_gone(apps):
    c = apps.start()
    judge(c, add_prediction(c.store).id, "correct")
    m = scrape(c)
    assert not any(name.startswith("fissure_api_feedback") for name in m)
    assert (CLS, "1", "correct") in series(m, catalog.FEEDBACK)


# ---------------------------------------------------------------------------- pipeline events

GATE = {"kind": "gate", "model": CLS, "version": "4", "result": "passed",
        "details": {"accuracy": 0.97, "threshold": 0.95, "champion_accuracy": 0.96}}


def test_posting_pipeline_events_needs_the_pipeline_or_admin_role(apps):
    c = apps.start()
    r = c.http.post("/pipeline/events", json=GATE)
    assert r.status_code == 401 and list(r.json()) == ["error"]
    r = c.http.post("/pipeline/events", json=GATE, headers={"Authorization": "Bearer fst_not-a-token"})
    assert r.status_code == 401 and "unknown or revoked token" in r.json()["error"]
    for role in ("viewer", "annotator"):
        r = post_event(c, GATE, role=role)
        assert r.status_code == 403 and r.json()["error"].startswith("this needs the pipeline role"), r.text
    # the pipeline token may do nothing else
    assert c.get("/predictions", role="pipeline").status_code == 403
    assert c.post("/retrain", role="pipeline").status_code == 403
    assert c.get("/pipeline/events", role=None).status_code == 401
    for role in ("pipeline", "admin"):
        r = post_event(c, GATE, role=role)
        assert r.status_code == 201, r.text
        assert r.json()["recorded_by"] == f"{role}-user" and r.json()["details"] == GATE["details"]
    assert c.get("/pipeline/events").json()["total"] == 2  # nothing refused was stored
    # viewers and the pipeline read them
    for role in ("viewer", "annotator", "pipeline", "admin"):
        assert c.get("/pipeline/events", role=role).status_code == 200


@pytest.mark.parametrize("body, words", [
    ({"kind": "gate", "model": CLS, "version": "4"}, "result"),
    ({"kind": "gate", "model": CLS, "version": "4", "result": "maybe"}, "result"),
    ({"kind": "promoted", "model": CLS, "to_version": "4"}, "kind"),
    ({"model": CLS, "to_version": "4"}, "kind"),
    ({"kind": "canary", "model": CLS, "version": "4", "weight": 150, "result": "passed"}, "weight"),
    ({"kind": "canary", "model": CLS, "version": "4", "weight": -1, "result": "passed"}, "weight"),
    ({"kind": "canary", "model": CLS, "version": "4", "result": "passed"}, "weight"),
    ({"kind": "canary", "model": CLS, "version": "4", "weight": True, "result": "passed"}, "weight"),
    ({"kind": "gate", "model": CLS, "version": 4, "result": "passed"}, "version"),
    ({"kind": "gate", "model": "crack classifier!", "version": "4", "result": "passed"}, "model"),
    ({"kind": "gate", "model": CLS, "version": "", "result": "passed"}, "version"),
    ({"kind": "promotion", "model": CLS}, "to_version"),
    ({"kind": "promotion", "model": CLS, "to_version": "4", "weight": 5}, "weight"),
    ({"kind": "rollback", "model": CLS, "to_version": "3", "who": "x" * 129}, "who"),
    ({"kind": "rollback", "model": CLS, "to_version": "3", "why": "a\x00b"}, "why"),
    ({"kind": "gate", "model": CLS, "version": "4", "result": "passed", "details": [1, 2]}, "details"),
    ({"kind": "retrain", "result": "succeeded", "details": {"log": "x" * 20_000}}, "16384 bytes"),
    ([], "request"),
])
def test_bad_pipeline_events_are_400_with_one_line(apps, body, words):
    c = apps.start()
    r = post_event(c, body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert list(r.json()) == ["error"] and "\n" not in message and words in message, message
    assert c.get("/pipeline/events").json()["total"] == 0


def test_a_body_that_is_not_json_is_400(apps):
    c = apps.start()
    r = c.http.post("/pipeline/events", content=b"{not json", headers={**c.as_("pipeline"),
                                                                       "Content-Type": "application/json"})
    assert r.status_code == 400 and list(r.json()) == ["error"]


def test_pipeline_events_give_the_pipeline_metrics(apps):
    c = apps.start(retrain_command="true")
    m = scrape(c)
    # before any event: the retrain states are there at 0, the rest has no series yet
    assert series(m, catalog.RETRAIN_RUNS) == {("succeeded",): 0, ("failed",): 0}
    for metric in (catalog.GATE_DECISIONS, catalog.CANARY_STEPS, catalog.PROMOTIONS, catalog.CANARY_WEIGHT,
                   catalog.CHAMPION):
        assert series(m, metric) == {}

    # the Argo workflow's runs, and one run of POST /retrain (counted from its own table)
    for result in ("succeeded", "succeeded", "failed"):
        r = post_event(c, {"kind": "retrain", "result": result, "details": {"workflow": "train-x"}})
        assert r.status_code == 201, r.text
    run = c.post("/retrain", role="admin").json()["id"]
    wait_for(lambda: c.get(f"/retrain/{run}", role="admin").json()["state"] == "succeeded", "the retrain run's end")
    for result in ("passed", "failed", "passed"):
        assert post_event(c, {**GATE, "result": result}).status_code == 201
    assert post_event(c, {**GATE, "model": SEG, "result": "failed"}).status_code == 201

    # a canary of crack-classifier 4 in progress: its last step's weight
    for weight, result in ((10, "passed"), (25.5, "passed")):
        assert post_event(c, {"kind": "canary", "model": CLS, "version": "4", "weight": weight,
                              "result": result}).status_code == 201
    # crack-segmenter 9's canary fails at 10 %
    assert post_event(c, {"kind": "canary", "model": SEG, "version": "9", "weight": 10,
                          "result": "failed"}).status_code == 201
    m = scrape(c)
    assert series(m, catalog.RETRAIN_RUNS) == {("succeeded",): 3, ("failed",): 1}
    assert series(m, catalog.GATE_DECISIONS) == {(CLS, "passed"): 2, (CLS, "failed"): 1, (SEG, "failed"): 1}
    assert series(m, catalog.CANARY_STEPS) == {(CLS, "passed"): 2, (SEG, "failed"): 1}
    assert series(m, catalog.CANARY_WEIGHT) == {(CLS, "4"): 25.5, (SEG, "9"): 10}
    assert series(m, catalog.PROMOTIONS) == {}

    # the classifier's canary is promoted, the segmenter's rolled back: both weights drop to 0
    assert post_event(c, {"kind": "promotion", "model": CLS, "from_version": "3", "to_version": "4",
                          "who": "promotion-controller", "why": "5 canary steps passed"}).status_code == 201
    assert post_event(c, {"kind": "rollback", "model": SEG, "from_version": "9", "to_version": "8",
                          "why": "error rate over budget at 10 %"}, role="admin").status_code == 201
    m = scrape(c)
    assert series(m, catalog.CANARY_WEIGHT) == {(CLS, "4"): 0, (SEG, "9"): 0}
    assert series(m, catalog.PROMOTIONS) == {(CLS, "promoted"): 1, (SEG, "rolled_back"): 1}
    # MLflow has no champion alias here: the champion is the one the last promotion or rollback left
    assert series(m, catalog.CHAMPION) == {(CLS, "4"): 1, (SEG, "8"): 1}

    # a new canary starts: its weight shows again
    assert post_event(c, {"kind": "canary", "model": CLS, "version": "5", "weight": 5,
                          "result": "passed"}).status_code == 201
    assert series(scrape(c), catalog.CANARY_WEIGHT) == {(CLS, "5"): 5, (SEG, "9"): 0}

    # GET /pipeline/events: newest first, filtered by model and kind
    page = c.get("/pipeline/events", params={"model": CLS, "kind": "canary"}).json()
    assert [(e["version"], e["weight"]) for e in page["items"]] == [("5", 5), ("4", 25.5), ("4", 10)]
    assert page["total"] == 3
    changes = c.get("/pipeline/events", params={"kind": "rollback"}).json()["items"]
    assert [(e["model"], e["from_version"], e["to_version"], e["recorded_by"]) for e in changes] == [
        (SEG, "9", "8", "admin-user")]
    everything = c.get("/pipeline/events", params={"page_size": 4}).json()
    assert everything["total"] == 13 and len(everything["items"]) == 4
    assert everything["items"][0]["kind"] == "canary" and everything["items"][1]["kind"] == "rollback"
    assert c.get("/pipeline/events", params={"kind": "nope"}).status_code == 400


def test_events_recorded_in_process_are_counted_too(apps, monkeypatch):
    c = apps.start()
    record_pipeline_event("gate", store=c.store, recorded_by="controller", model=SEG, version="2",
                          result="passed", details={"dice": 0.81})
    # without a store: the one of FISSURE_DATABASE_URL (as the promotion controller's process would)
    from fissure.settings import reload_settings

    monkeypatch.setenv("FISSURE_DATABASE_URL", apps.db_url)
    monkeypatch.setenv("FISSURE_BLOB_URL", str(apps.tmp_path / "blobs"))
    reload_settings()
    try:
        row = record_pipeline_event("promotion", model=SEG, to_version="2", who="controller")
        with pytest.raises(InputError, match="result"):
            record_pipeline_event("canary", model=SEG, version="2", weight=50)
    finally:
        monkeypatch.delenv("FISSURE_DATABASE_URL")
        monkeypatch.delenv("FISSURE_BLOB_URL")
        reload_settings()
    assert isinstance(row, PipelineEvent) and row.id and row.recorded_by == "fissure"
    m = scrape(c)
    assert series(m, catalog.GATE_DECISIONS) == {(SEG, "passed"): 1}
    assert series(m, catalog.PROMOTIONS) == {(SEG, "promoted"): 1}
    items = c.get("/pipeline/events", params={"model": SEG}).json()["items"]
    assert [(e["kind"], e["recorded_by"]) for e in items] == [("promotion", "fissure"), ("gate", "controller")]


def test_the_endpoints_are_in_the_openapi_spec(apps):
    spec = apps.start().get("/openapi.json", role=None).json()
    post = spec["paths"]["/pipeline/events"]["post"]
    assert {"201", "400", "401", "403", "429", "503"} <= set(post["responses"])
    assert "422" not in post["responses"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["discriminator"]["mapping"]) == {"retrain", "gate", "canary", "promotion", "rollback"}
    get = spec["paths"]["/pipeline/events"]["get"]
    assert {p["name"] for p in get["parameters"]} >= {"model", "kind", "page", "page_size"}
    roles = spec["components"]["schemas"]["TokenIn"]["properties"]["role"]["enum"]
    assert "pipeline" in roles


def test_a_method_the_path_lacks_is_405_naming_both_methods(apps):
    r = apps.start().http.request("OPTIONS", "/pipeline/events")
    assert r.status_code == 405 and list(r.json()) == ["error"]
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}


# ---------------------------------------------------------------------------- the champion, from MLflow

def _register(model: str, versions: int, champion: str | None, tmp_path: Path) -> None:
    """Versions of a registered model in the MLflow registry MLFLOW_TRACKING_URI names."""
    from mlflow import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]  # named: mlflow's process-wide URI may be another test's
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(model)
    (tmp_path / "model").mkdir(exist_ok=True)
    for _ in range(versions):
        client.create_model_version(model, source=str(tmp_path / "model"))
    if champion:
        client.set_registered_model_alias(model, "champion", champion)


def test_champion_info_comes_from_the_mlflow_alias(apps, tmp_path):
    from mlflow import MlflowClient

    _register(CLS, 3, "2", tmp_path)  # the per-test SQLite MLflow store (tests/conftest.py)
    _register(SEG, 1, None, tmp_path)  # registered, no champion yet
    c = apps.start()
    # MLflow's alias wins over the last promotion event; a model without an alias falls back to events
    assert post_event(c, {"kind": "promotion", "model": CLS, "to_version": "1"}).status_code == 201
    assert post_event(c, {"kind": "promotion", "model": SEG, "to_version": "6"}).status_code == 201
    wait_for(lambda: series(scrape(c), catalog.CHAMPION) == {(CLS, "2"): 1, (SEG, "6"): 1},
             "champion 2 from MLflow and 6 from the promotion event")
    MlflowClient().set_registered_model_alias(CLS, "champion", "3")
    MlflowClient().set_registered_model_alias(SEG, "champion", "1")
    wait_for(lambda: series(scrape(c), catalog.CHAMPION) == {(CLS, "3"): 1, (SEG, "1"): 1},
             "the moved aliases: classifier 3, segmenter 1")


def test_an_unreachable_mlflow_leaves_the_champion_out_and_the_scrape_answers(apps, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    c = apps.start()
    judge(c, add_prediction(c.store).id, "wrong")
    for _ in range(3):  # each scrape tries MLflow again (cache 0 s here)
        m = scrape(c)
        assert series(m, catalog.CHAMPION) == {}
        assert series(m, catalog.FEEDBACK) == {(CLS, "1", "wrong"): 1}
    # with a promotion on record, that is the champion while MLflow is away
    assert post_event(c, {"kind": "promotion", "model": CLS, "to_version": "4"}).status_code == 201
    assert series(scrape(c), catalog.CHAMPION) == {(CLS, "4"): 1}


@pytest.mark.slow
def test_champion_from_an_mlflow_server_stays_while_it_is_down(tmp_path, monkeypatch):
    """A real `mlflow server` (the cluster's case: the REST API); stopped, the last version it gave stays.
    The API's own database does not matter here: SQLite only."""
    backend = f"sqlite:///{tmp_path / 'server-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", backend)
    _register(CLS, 2, "2", tmp_path)
    apps = Apps(f"sqlite:///{tmp_path / 'api.db'}", tmp_path)
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    proc = api_conftest.start_process(
        [mlflow, "server", "--backend-store-uri", backend, "--default-artifact-root", str(tmp_path / "art"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        # as the chart runs it: no job runner (seven huey consumers otherwise)
        {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        tmp_path / "mlflow.log", f"http://127.0.0.1:{port}/health",
        timeout=300)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        c = apps.start()
        wait_for(lambda: series(scrape(c), catalog.CHAMPION) == {(CLS, "2"): 1}, "champion 2 over HTTP")
        proc.stop(signal.SIGTERM)
        for _ in range(3):  # MLflow is gone: every scrape (each reads MLflow again) is 200 with the last champion
            assert series(scrape(c), catalog.CHAMPION) == {(CLS, "2"): 1}
    finally:
        proc.stop(signal.SIGTERM)
        apps.close()


# ---------------------------------------------------------------------------- the store down

def test_a_scrape_answers_while_the_database_is_down(postgres, tmp_path):
    import psycopg

    apps = Apps(postgres.new_database(), tmp_path)
    try:
        c = apps.start()
        judge(c, add_prediction(c.store).id, "wrong")
        assert series(scrape(c), catalog.FEEDBACK) == {(CLS, "1", "wrong"): 1}
        db = c.store.engine.url.database
        admin = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        try:
            m = scrape(c)  # 200: the request metrics, without the store's series
            assert series(m, catalog.FEEDBACK) == {} and series(m, catalog.RETRAIN_RUNS) == {}
            assert catalog.API_REQUESTS.series in m
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        assert series(scrape(c), catalog.FEEDBACK) == {(CLS, "1", "wrong"): 1}
    finally:
        apps.close()


# ---------------------------------------------------------------------------- the migration

def test_migration_0002_upgrades_a_0001_database_and_matches_the_models(db_url, tmp_path):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from fissure.api.store import Base

    store = Store(db_url, str(tmp_path / "blobs"))
    cfg = Config()
    cfg.set_main_option("script_location", str(REPO / "src" / "fissure" / "api" / "migrations"))
    with store._writer.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    p = add_prediction(store)  # data written under the old schema
    store.put_feedback(p.id, "someone", "wrong")
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert "pipeline_events" in inspect(store.engine).get_table_names()
    assert store.metric_counts().feedback == [(CLS, "1", "wrong", 1)]
    first = store.record_event("gate", "t", model=CLS, version="1", result="passed")
    second = store.record_event("gate", "t", model=CLS, version="2", result="failed")
    assert second.id > first.id  # the id orders events on both backends
    store.close()
