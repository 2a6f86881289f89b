"""The store on SQLite and on a real PostgreSQL server (the `db_url` fixture runs each test on both);
its blobs in a local folder and in a real MinIO server (the `blob_url` fixture)."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, text

from fissure.api.blobs import Blobs
from fissure.api.store import PredictionFilter, Store
from fissure.errors import InputError, NotFoundError


def test_migrate_creates_the_schema_and_is_idempotent(store):
    store.migrate()  # a second run changes nothing
    names = set(inspect(store.engine).get_table_names())
    assert {"predictions", "feedback", "tokens", "retrain_runs", "alembic_version"} <= names
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    uniques = inspect(store.engine).get_unique_constraints("feedback")
    assert any(set(u["column_names"]) == {"prediction_id", "user"} for u in uniques)


def test_sqlite_is_wal_with_full_sync(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'api.db'}", str(tmp_path / "blobs"))
    s.migrate()
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tmp_path / "api.db-wal").exists()


def test_feedback_is_one_row_per_prediction_and_user(store, make_prediction):
    p = make_prediction(store)
    first = store.put_feedback(p.id, "ana", "wrong", label="no_crack", note="shadow")
    again = store.put_feedback(p.id, "ana", "correct", note="looked again")
    other = store.put_feedback(p.id, "bo", "wrong")
    assert again.id == first.id and again.verdict == "correct" and again.note == "looked again"
    assert again.label is None  # a resubmission replaces the whole judgement
    assert again.created_at == first.created_at and again.updated_at >= first.updated_at
    assert other.id != first.id
    got = store.get_prediction(p.id)
    assert sorted((f.user, f.verdict) for f in got.feedback) == [("ana", "correct"), ("bo", "wrong")]
    with pytest.raises(NotFoundError):
        store.put_feedback("nope", "ana", "correct")
    with pytest.raises(InputError):
        store.put_feedback(p.id, "ana", "maybe")


def test_concurrent_resubmissions_leave_one_row(store, make_prediction):
    """Many threads judging the same prediction as the same user: one row, the last write's values."""
    p = make_prediction(store)
    errors = []

    def write(i):
        try:
            store.put_feedback(p.id, "ana", "wrong" if i % 2 else "correct", note=f"n{i}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fb = store.get_prediction(p.id).feedback
    assert len(fb) == 1 and fb[0].note in {f"n{i}" for i in range(16)}


def test_list_filters_pages_and_newest_first(store, make_prediction):
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [make_prediction(store, seed=i, version=str(1 + i % 2), created_at=t0 + timedelta(hours=i))
            for i in range(5)]
    seg = make_prediction(store, task="segment", created_at=t0 + timedelta(hours=10))
    store.put_feedback(rows[0].id, "ana", "correct")
    store.put_feedback(rows[1].id, "ana", "wrong", label="no_crack")
    store.put_feedback(rows[1].id, "bo", "correct")

    def ids(**kw):
        page = kw.pop("page", 1)
        size = kw.pop("page_size", 20)
        items, total = store.list_predictions(PredictionFilter(**kw), page, size)
        return [r.id for r in items], total

    assert ids() == ([seg.id] + [r.id for r in reversed(rows)], 6)
    assert ids(model="crack-segmenter") == ([seg.id], 1)
    assert ids(model="crack-classifier", version="2") == ([rows[3].id, rows[1].id], 2)
    assert ids(verdict="correct") == ([rows[1].id, rows[0].id], 2)
    assert ids(verdict="wrong") == ([rows[1].id], 1)
    assert ids(verdict="none")[1] == 4 and ids(has_feedback=False) == ids(verdict="none")
    assert ids(has_feedback=True) == ([rows[1].id, rows[0].id], 2)
    assert ids(since=t0 + timedelta(hours=2), until=t0 + timedelta(hours=4)) == ([rows[3].id, rows[2].id], 2)
    assert ids(page=2, page_size=4) == ([rows[1].id, rows[0].id], 6)
    assert ids(page=9, page_size=4) == ([], 6)
    got = store.get_prediction(rows[1].id)
    assert got.created_at == t0 + timedelta(hours=1) and got.created_at.tzinfo is not None


def test_review_queue_is_unjudged_most_uncertain_first(store, make_prediction):
    sure = make_prediction(store, seed=1, uncertainty=0.05)
    unsure = make_prediction(store, seed=2, uncertainty=0.95)
    middle = make_prediction(store, seed=3, uncertainty=0.5)
    judged = make_prediction(store, seed=4, uncertainty=0.99)
    seg = make_prediction(store, task="segment", seed=5, uncertainty=0.7)
    store.put_feedback(judged.id, "ana", "correct")
    assert [p.id for p in store.review_queue()] == [unsure.id, seg.id, middle.id, sure.id]
    assert [p.id for p in store.review_queue(model="crack-classifier", limit=2)] == [unsure.id, middle.id]


def test_tokens_first_token_and_lookup(store):
    assert store.add_first_token("a" * 64, "admin", "admin") is not None
    assert store.add_first_token("b" * 64, "admin", "admin") is None  # the store has one already
    assert store.count_tokens() == 1
    assert store.token_by_hash("a" * 64).role == "admin"
    assert store.token_by_hash("c" * 64) is None


def test_retrain_runs_and_recovery(store, tmp_path):
    log = tmp_path / "run.log"
    log.write_text("started\n")
    run = store.add_run("dvc repro", str(log), "admin")
    assert store.get_run(run.id).state == "queued"
    store.update_run(run.id, state="running")
    done = store.add_run("true", str(tmp_path / "other.log"), "admin")
    store.update_run(done.id, state="succeeded", exit_code=0)
    failed = store.fail_unfinished_runs("the API stopped")
    assert [r.id for r in failed] == [run.id]
    assert store.get_run(run.id).state == "failed" and store.get_run(done.id).state == "succeeded"
    assert "the API stopped" in log.read_text()
    with pytest.raises(NotFoundError):
        store.get_run("nope")


@pytest.fixture
def blob_store(db_url, blob_url):
    """A store on each database with its blobs in a local folder and in MinIO (s3://)."""
    s = Store(db_url, blob_url)
    s.migrate()
    yield s
    s.close()


def test_blobs_put_get_exists_delete(blob_url, images):
    blobs = Blobs(blob_url)
    data = images.png(seed=3)
    digest = blobs.put(data)
    assert digest == hashlib.sha256(data).hexdigest() and blobs.put(data) == digest  # stored once
    assert blobs.get(digest) == data and blobs.exists(digest)
    assert blobs.path(digest).endswith(f"/{digest[:2]}/{digest}")
    assert [name for name, _ in blobs.list()] == [digest]
    assert 0 <= blobs.age(digest) < 60
    blobs.delete(digest)
    blobs.delete(digest)  # deleting a missing blob is no error
    assert not blobs.exists(digest) and list(blobs.list()) == [] and blobs.age(digest) == 0
    with pytest.raises(NotFoundError, match="is missing from"):
        blobs.get(digest)
    with pytest.raises(NotFoundError, match="not a blob name"):
        blobs.get("../etc/passwd")


def test_gc_removes_only_unreferenced_blobs(blob_store, make_prediction, images):
    store = blob_store
    p = make_prediction(store, task="segment")
    corrected = store.blobs.put(images.mask(rows=slice(0, 3)))
    store.put_feedback(p.id, "ana", "wrong", mask_sha256=corrected)
    # a request that crashed after writing its blob and before its row, and a half-written temp file
    orphan = store.blobs.put(images.png(seed=99))
    tmp = store.blobs.path(orphan).rsplit("/", 1)[0] + "/.tmp-crashed"
    store.blobs.fs.pipe_file(tmp, b"half")
    assert store.gc_blobs(older_than=3600) == []  # within the grace period: a request may be in flight
    assert store.gc_blobs(older_than=0) == [orphan]
    assert not store.blobs.exists(orphan) and not store.blobs.fs.exists(tmp)
    for digest in (p.image_sha256, p.mask_sha256, corrected):
        assert store.blobs.exists(digest)


def test_blob_stored_again_is_fresh_again(store, images):
    """gc's grace period counts from the last put: a re-upload of old bytes is protected."""
    data = images.png(seed=7)
    digest = store.blobs.put(data)
    path = store.blobs.path(digest)
    old = time.time() - 7200
    import os

    os.utime(path, (old, old))
    assert store.blobs.age(digest) > 3600
    assert store.blobs.put(data) == digest
    assert store.blobs.age(digest) < 60
    assert store.gc_blobs(older_than=3600) == []


@pytest.mark.timeout(120)  # without the lock PostgreSQL's replicas could also block each other
def test_replicas_migrating_a_new_database_at_once_all_succeed(db_url, tmp_path):
    """Every API replica runs the migrations at start: on a new database they must queue, not race.
    SQLite: several new files, since replicas switching one to WAL together deadlock only sometimes
    (SQLite then answers "database is locked" at once, busy_timeout or not)."""
    from concurrent.futures import ThreadPoolExecutor

    urls = [db_url] if not db_url.startswith("sqlite") else [db_url.replace("api.db", f"api-{i}.db") for i in range(6)]
    for url in urls:
        stores = [Store(url, str(tmp_path / "blobs")) for _ in range(4)]
        try:
            with ThreadPoolExecutor(len(stores)) as pool:
                list(pool.map(lambda s: s.migrate(), stores))  # re-raises a replica's failure
            with stores[0].engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        finally:
            for s in stores:
                s.close()
