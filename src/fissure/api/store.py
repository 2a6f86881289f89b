"""The feedback store: predictions, feedback, tokens, retrain runs and pipeline events (SQLAlchemy 2).

One :class:`Store` per process, over a SQLAlchemy URL (``FISSURE_DATABASE_URL``): SQLite
under ``<home>/api.db`` by default (the embedded mode), PostgreSQL (``postgresql+psycopg://``)
in a cluster. The schema is Alembic's (:meth:`Store.migrate` runs ``upgrade head``).

Durability: every write is one transaction, committed before the API answers 2xx. SQLite runs
in WAL mode with ``synchronous=FULL`` (a commit survives a crash of the process and of the
machine) and write transactions start with ``BEGIN IMMEDIATE``, so concurrent writers queue on
the lock (``busy_timeout``) instead of failing when one upgrades a read snapshot. Blobs are
written before the row that references them (:mod:`fissure.api.blobs`).

Pipeline events (:class:`PipelineEvent`) are what the retraining pipeline and the promotion
controller record (``POST /pipeline/events`` or :func:`record_pipeline_event` in-process): the
ends of retraining runs, gate decisions, canary steps, promotions and rollbacks. The API's
``/metrics`` counts them and the feedback from the store (:meth:`Store.metric_counts`), so the
numbers survive restarts and every replica reports the same.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator,
                        UniqueConstraint, create_engine, event, exists, func, select, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

from fissure.api.blobs import Blobs
from fissure.errors import ConfigError, InputError, NotFoundError, Unavailable

VERDICTS = ("correct", "wrong")
RUN_STATES = ("queued", "running", "succeeded", "failed")
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATION_LOCK = 0x66697373  # PostgreSQL advisory lock key of Store.migrate ("fiss")

# Pipeline events: the kinds, the results each kind takes, and the action label of a champion change.
EVENT_KINDS = ("retrain", "gate", "canary", "promotion", "rollback")
EVENT_RESULTS = {"retrain": ("succeeded", "failed"), "gate": ("passed", "failed"), "canary": ("passed", "failed")}
CHAMPION_CHANGES = {"promotion": "promoted", "rollback": "rolled_back"}
EVENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # model names and versions: label values
MAX_EVENT_DETAILS = 16 * 1024  # bytes of JSON
MAX_EVENT_TEXT = 4000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone: stored as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            value = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Prediction(Base):
    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    image_media_type: Mapped[str] = mapped_column(String(64))
    image_height: Mapped[int] = mapped_column(Integer)
    image_width: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(16))
    output: Mapped[dict] = mapped_column(JSON)
    uncertainty: Mapped[float] = mapped_column(Float, index=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    flag: Mapped[str | None] = mapped_column(String(32))
    overlay_sha256: Mapped[str] = mapped_column(String(64))
    mask_sha256: Mapped[str | None] = mapped_column(String(64))
    heatmap_sha256: Mapped[str | None] = mapped_column(String(64))
    feedback: Mapped[list[Feedback]] = relationship(
        back_populates="prediction", order_by="Feedback.created_at", cascade="all, delete-orphan")


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("prediction_id", "user", name="uq_feedback_prediction_user"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    user: Mapped[str] = mapped_column(String(128))
    verdict: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(128))
    mask_sha256: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    prediction: Mapped[Prediction] = relationship(back_populates="feedback")


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class RetrainRun(Base):
    __tablename__ = "retrain_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    command: Mapped[str] = mapped_column(Text)
    log_path: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PipelineEvent(Base):
    """One step of the retraining pipeline, as its controller reported it.

    ``version`` is the version under test (gate, canary); a promotion or rollback moves the
    champion ``from_version`` -> ``to_version`` (a rollback's ``to_version`` is the version
    that serves again). ``weight`` is a canary step's share of traffic, in percent.
    """

    __tablename__ = "pipeline_events"
    __table_args__ = (Index("ix_pipeline_events_kind_model", "kind", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # also the order
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[str | None] = mapped_column(String(16))
    weight: Mapped[float | None] = mapped_column(Float)
    from_version: Mapped[str | None] = mapped_column(String(64))
    to_version: Mapped[str | None] = mapped_column(String(64))
    who: Mapped[str | None] = mapped_column(String(128))
    why: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict | None] = mapped_column(JSON)
    recorded_by: Mapped[str] = mapped_column(String(128))


@dataclass(frozen=True)
class MetricCounts:
    """What the API's /metrics reads from the store, in one read transaction."""

    feedback: list[tuple[str, str, str, int]]  # (model, version, verdict, count)
    events: list[tuple[str, str | None, str | None, int]]  # (kind, model, result, count)
    runs: list[tuple[str, int]]  # finished retrain_runs: (state, count)
    last_canary: dict[str, PipelineEvent]  # per model, its newest canary step
    last_change: dict[str, PipelineEvent]  # per model, its newest promotion or rollback


@dataclass(frozen=True)
class PredictionFilter:
    model: str | None = None
    version: str | None = None
    verdict: str | None = None  # correct | wrong | none
    has_feedback: bool | None = None
    since: datetime | None = None
    until: datetime | None = None


def default_url() -> str:
    from fissure.settings import settings, state_dir

    return settings().database_url or f"sqlite:///{state_dir() / 'api.db'}"


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a URL>"


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"FISSURE_DATABASE_URL={url!r} is not a database URL") from None
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the one installed
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False,
                                                 "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # The driver's own transaction handling off: we issue BEGIN ourselves (below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("fissure_write") else "BEGIN")

    return engine


def unavailable(url: str, exc: Exception) -> Unavailable:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return Unavailable(f"database unavailable at {safe_url(url)}: {reason[0] if reason else type(exc).__name__}")


class Store:
    """The API's database and blobs. Thread-safe; one per process."""

    def __init__(self, url: str | None = None, blobs: Blobs | str | None = None):
        self.url = url or default_url()
        self.engine = _engine(self.url)
        self.dialect = self.engine.dialect.name
        self._writer = self.engine.execution_options(fissure_write=True)
        self.blobs = blobs if isinstance(blobs, Blobs) else Blobs(blobs)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ schema
    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                with self._writer.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        # replicas starting together on a new database: one migrates, the others wait
                        # for its commit and find nothing left to do (SQLite's writer lock does the same)
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                return
            except OperationalError as exc:
                # Connections switching a new SQLite file to WAL together can deadlock, and SQLite
                # then says "database is locked" at once instead of waiting out busy_timeout. The
                # migration is one transaction and idempotent: try it again.
                locked = self._writer.dialect.name == "sqlite" and "locked" in str(exc.orig)
                if not locked or time.monotonic() > deadline:
                    raise unavailable(self.url, exc) from None
                time.sleep(0.1)

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back on any error."""
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    # ------------------------------------------------------------------ tokens
    def add_token(self, token_hash: str, role: str, name: str) -> Token:
        with self.write() as s:
            row = Token(id=new_id(), hash=token_hash, role=role, name=name, created_at=utcnow(), revoked=False)
            s.add(row)
        return row

    def add_first_token(self, token_hash: str, role: str, name: str) -> Token | None:
        """Add this token only if the store has none yet (one transaction); None otherwise."""
        with self.write() as s:
            if s.scalar(select(func.count()).select_from(Token)):
                return None
            row = Token(id=new_id(), hash=token_hash, role=role, name=name, created_at=utcnow(), revoked=False)
            s.add(row)
        return row

    def token_by_hash(self, token_hash: str) -> Token | None:
        with self.read() as s:
            return s.scalar(select(Token).where(Token.hash == token_hash, Token.revoked.is_(False)))

    def count_tokens(self) -> int:
        with self.read() as s:
            return s.scalar(select(func.count()).select_from(Token))

    def list_tokens(self) -> list[Token]:
        """Every token, oldest first (revoked ones too)."""
        with self.read() as s:
            return list(s.scalars(select(Token).order_by(Token.created_at, Token.id)))

    def has_admin_token(self) -> bool:
        """Whether an unrevoked admin token exists."""
        with self.read() as s:
            return bool(s.scalar(select(exists().where(Token.role == "admin", Token.revoked.is_(False)))))

    def revoke_token(self, key: str) -> tuple[Token, bool]:
        """Revoke the token with id ``key``, or the one unrevoked token named ``key``: (its row, whether
        it was revoked already). Names are not unique (a person's tokens share one): a name with
        several unrevoked tokens is refused, revoke those by id. The API refuses it from the next request.
        """
        with self.write() as s:
            row = s.get(Token, key)
            if row is None:
                named = list(s.scalars(select(Token).where(Token.name == key).order_by(Token.created_at.desc())))
                if not named:
                    raise NotFoundError(f"no token with the id or name {key!r} (`fissure token list` shows them)")
                live = [t for t in named if not t.revoked]
                if len(live) > 1:
                    raise InputError(f"{len(live)} tokens are named {key!r} (ids {', '.join(t.id for t in live)}): "
                                     f"revoke them by id")
                row = live[0] if live else named[0]
            already = bool(row.revoked)
            row.revoked = True
        return row, already

    # ------------------------------------------------------------------ predictions
    def add_prediction(self, **fields) -> Prediction:
        """Insert one prediction; its blobs must be stored already."""
        with self.write() as s:
            row = Prediction(id=fields.pop("id", None) or new_id(),
                             created_at=fields.pop("created_at", None) or utcnow(), feedback=[], **fields)
            s.add(row)
        return row

    def get_prediction(self, prediction_id: str) -> Prediction:
        with self.read() as s:
            row = s.scalar(select(Prediction).options(selectinload(Prediction.feedback))
                           .where(Prediction.id == prediction_id))
        if row is None:
            raise NotFoundError(f"no prediction {prediction_id!r}")
        return row

    def list_predictions(self, filt: PredictionFilter, page: int = 1,
                         page_size: int = 20) -> tuple[list[Prediction], int]:
        """Newest first; (items of the page, total matching)."""
        query = select(Prediction)
        if filt.model:
            query = query.where(Prediction.model_name == filt.model)
        if filt.version:
            query = query.where(Prediction.model_version == filt.version)
        judged = exists().where(Feedback.prediction_id == Prediction.id)
        if filt.verdict == "none":
            query = query.where(~judged)
        elif filt.verdict:
            query = query.where(exists().where(Feedback.prediction_id == Prediction.id,
                                               Feedback.verdict == filt.verdict))
        if filt.has_feedback is not None:
            query = query.where(judged if filt.has_feedback else ~judged)
        if filt.since:
            query = query.where(Prediction.created_at >= filt.since)
        if filt.until:
            query = query.where(Prediction.created_at < filt.until)
        with self.read() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery()))
            items = list(s.scalars(query.options(selectinload(Prediction.feedback))
                                   .order_by(Prediction.created_at.desc(), Prediction.id.desc())
                                   .offset((page - 1) * page_size).limit(page_size)))
        return items, total

    def review_queue(self, model: str | None = None, limit: int = 20) -> list[Prediction]:
        """Predictions nobody judged yet, most uncertain first (then newest)."""
        query = select(Prediction).where(~exists().where(Feedback.prediction_id == Prediction.id))
        if model:
            query = query.where(Prediction.model_name == model)
        with self.read() as s:
            return list(s.scalars(query.options(selectinload(Prediction.feedback))
                                  .order_by(Prediction.uncertainty.desc(), Prediction.created_at.desc(),
                                            Prediction.id.desc()).limit(limit)))

    # ------------------------------------------------------------------ feedback
    def put_feedback(self, prediction_id: str, user: str, verdict: str, label: str | None = None,
                     mask_sha256: str | None = None, note: str | None = None) -> Feedback:
        """Insert or update the one feedback row of (prediction, user), in one transaction."""
        if verdict not in VERDICTS:
            raise InputError(f"verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}")
        now = utcnow()
        values = {"verdict": verdict, "label": label, "mask_sha256": mask_sha256, "note": note, "updated_at": now}
        with self.write() as s:
            if s.get(Prediction, prediction_id) is None:
                raise NotFoundError(f"no prediction {prediction_id!r}")
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(Feedback).values(id=new_id(), prediction_id=prediction_id, user=user, created_at=now,
                                           **values)
            stmt = stmt.on_conflict_do_update(index_elements=["prediction_id", "user"], set_=values)
            feedback_id = s.execute(stmt.returning(Feedback.id)).scalar_one()
        with self.read() as s:
            return s.get(Feedback, feedback_id)

    def get_feedback(self, feedback_id: str) -> Feedback:
        with self.read() as s:
            row = s.get(Feedback, feedback_id)
        if row is None:
            raise NotFoundError(f"no feedback {feedback_id!r}")
        return row

    def judged(self) -> list[tuple[Prediction, Feedback]]:
        """Every judged prediction with its latest feedback (by updated_at, then id), oldest first."""
        with self.read() as s:
            rows = s.scalars(select(Prediction).options(selectinload(Prediction.feedback))
                             .where(exists().where(Feedback.prediction_id == Prediction.id))
                             .order_by(Prediction.created_at, Prediction.id)).all()
        return [(p, max(p.feedback, key=lambda f: (f.updated_at, f.id))) for p in rows]

    # ------------------------------------------------------------------ retrain runs
    def add_run(self, command: str, log_path: str, requested_by: str, run_id: str | None = None) -> RetrainRun:
        with self.write() as s:
            row = RetrainRun(id=run_id or new_id(), state="queued", command=command, log_path=log_path,
                             requested_by=requested_by, created_at=utcnow())
            s.add(row)
        return row

    def update_run(self, run_id: str, **fields) -> None:
        with self.write() as s:
            row = s.get(RetrainRun, run_id)
            for key, value in fields.items():
                setattr(row, key, value)

    def get_run(self, run_id: str) -> RetrainRun:
        with self.read() as s:
            row = s.get(RetrainRun, run_id)
        if row is None:
            raise NotFoundError(f"no retrain run {run_id!r}")
        return row

    def fail_unfinished_runs(self, reason: str) -> list[RetrainRun]:
        """Mark queued/running runs failed (their process died with the API); returns them."""
        with self.write() as s:
            rows = list(s.scalars(select(RetrainRun).where(RetrainRun.state.in_(("queued", "running")))))
            for row in rows:
                row.state, row.finished_at = "failed", utcnow()
        for row in rows:
            try:
                with open(row.log_path, "a", encoding="utf-8") as log:
                    log.write(f"\n{reason}\n")
            except OSError:
                pass  # the log's folder is gone: the state says enough
        return rows

    # ------------------------------------------------------------------ pipeline events
    def record_event(self, kind: str, recorded_by: str, **fields) -> PipelineEvent:
        """Check and store one pipeline event (one transaction); InputError names what is wrong."""
        row = PipelineEvent(kind=kind, recorded_by=recorded_by, created_at=utcnow(), **_checked_event(kind, fields))
        with self.write() as s:
            s.add(row)
        return row

    def list_events(self, model: str | None = None, kind: str | None = None, page: int = 1,
                    page_size: int = 50) -> tuple[list[PipelineEvent], int]:
        """Newest first; (items of the page, total matching)."""
        query = select(PipelineEvent)
        if model:
            query = query.where(PipelineEvent.model == model)
        if kind:
            query = query.where(PipelineEvent.kind == kind)
        with self.read() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery()))
            items = list(s.scalars(query.order_by(PipelineEvent.id.desc())
                                   .offset((page - 1) * page_size).limit(page_size)))
        return items, total

    def metric_counts(self) -> MetricCounts:
        """Feedback by (model, version, verdict) and the pipeline's counts: a few GROUP BYs, one snapshot."""
        def newest(s: Session, kinds) -> dict[str, PipelineEvent]:
            ids = (select(func.max(PipelineEvent.id)).where(PipelineEvent.kind.in_(kinds))
                   .group_by(PipelineEvent.model))
            return {e.model: e for e in s.scalars(select(PipelineEvent).where(PipelineEvent.id.in_(ids)))}

        with self.read() as s:
            feedback = s.execute(select(Prediction.model_name, Prediction.model_version, Feedback.verdict,
                                        func.count())
                                 .join(Prediction, Prediction.id == Feedback.prediction_id)
                                 .group_by(Prediction.model_name, Prediction.model_version, Feedback.verdict)).all()
            events = s.execute(select(PipelineEvent.kind, PipelineEvent.model, PipelineEvent.result, func.count())
                               .group_by(PipelineEvent.kind, PipelineEvent.model, PipelineEvent.result)).all()
            runs = s.execute(select(RetrainRun.state, func.count())
                             .where(RetrainRun.state.in_(EVENT_RESULTS["retrain"]))
                             .group_by(RetrainRun.state)).all()
            return MetricCounts(feedback=[tuple(r) for r in feedback], events=[tuple(r) for r in events],
                                runs=[tuple(r) for r in runs], last_canary=newest(s, ("canary",)),
                                last_change=newest(s, tuple(CHAMPION_CHANGES)))

    # ------------------------------------------------------------------ blobs
    def referenced_blobs(self) -> set[str]:
        with self.read() as s:
            refs: set[str] = set()
            for col in (Prediction.image_sha256, Prediction.overlay_sha256, Prediction.mask_sha256,
                        Prediction.heatmap_sha256, Feedback.mask_sha256):
                refs.update(v for v in s.scalars(select(col).distinct()) if v)
        return refs

    def gc_blobs(self, older_than: float = 3600.0) -> list[str]:
        """Delete blobs no row references, older than ``older_than`` seconds; returns their names.

        The grace period protects a request in flight, which writes its blobs before its row.
        Crash leftovers (temporary files) older than the grace period go too.
        """
        listed = list(self.blobs.list())  # before reading references: a newer row keeps its blob
        refs = self.referenced_blobs()
        now = time.time()
        removed = []
        for digest, mtime in listed:
            # re-checked just before deleting: put() refreshes the time of a blob it stores again
            if digest not in refs and now - mtime >= older_than and self.blobs.age(digest) >= older_than:
                self.blobs.delete(digest)
                removed.append(digest)
        self.blobs.remove_temporaries(older_than)
        return removed


# ---------------------------------------------------------------------------- pipeline events

def _name(fields: dict, key: str, required: bool) -> str | None:
    value = fields.get(key)
    if value is None:
        if required:
            raise InputError(f"{key} is required")
        return None
    if not isinstance(value, str) or not EVENT_NAME.fullmatch(value):
        raise InputError(f"{key} must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit); "
                         f"got {str(value)[:80]!r}")
    return value


def _text(fields: dict, key: str, limit: int) -> str | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > limit or not _utf8(value):
        raise InputError(f"{key} must be text of at most {limit} characters, without NUL")
    return value.strip() or None


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")  # lone surrogates are valid JSON escapes but no database takes them
    except UnicodeEncodeError:
        return False
    return True


def _checked_event(kind: str, fields: dict) -> dict:
    """The columns of a valid event of ``kind`` from ``fields`` (those the kind does not take must be absent)."""
    if kind not in EVENT_KINDS:
        raise InputError(f"kind must be one of {', '.join(EVENT_KINDS)}; got {str(kind)[:40]!r}")
    allowed = {"retrain": {"model", "version", "result", "details"},
               "gate": {"model", "version", "result", "details"},
               "canary": {"model", "version", "result", "weight", "details"}}.get(
        kind, {"model", "from_version", "to_version", "who", "why", "details"})
    extra = sorted(k for k, v in fields.items() if v is not None and k not in allowed)
    if extra:
        raise InputError(f"a {kind} event takes no {', '.join(extra)}")
    out: dict = {"model": _name(fields, "model", kind != "retrain"), "details": None}
    if kind in EVENT_RESULTS:
        out["version"] = _name(fields, "version", kind != "retrain")
        result = fields.get("result")
        if result not in EVENT_RESULTS[kind]:
            raise InputError(f"a {kind} event's result is {' or '.join(EVENT_RESULTS[kind])}; got {str(result)[:40]!r}")
        out["result"] = result
    if kind == "canary":
        weight = fields.get("weight")
        if (not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight)
                or not 0 <= weight <= 100):
            raise InputError(f"a canary step's weight is the challenger's percent of traffic, 0-100; got {weight!r}")
        out["weight"] = float(weight)
    if kind in CHAMPION_CHANGES:
        out["from_version"] = _name(fields, "from_version", False)
        out["to_version"] = _name(fields, "to_version", True)
        out["who"] = _text(fields, "who", 128)
        out["why"] = _text(fields, "why", MAX_EVENT_TEXT)
    details = fields.get("details")
    if details is not None:
        if not isinstance(details, dict):
            raise InputError("details must be a JSON object")
        try:
            encoded = json.dumps(details, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
            raise InputError(f"details must be plain JSON (finite numbers, UTF-8 text): "
                             f"{str(exc).splitlines()[0][:120]}") from None
        if len(encoded) > MAX_EVENT_DETAILS:
            raise InputError(f"details must be at most {MAX_EVENT_DETAILS} bytes of JSON")
        out["details"] = details
    return out


def record_pipeline_event(kind: str, *, store: Store | None = None, recorded_by: str = "fissure",
                          **fields) -> PipelineEvent:
    """Record one pipeline event in-process (the promotion controller beside the API).

    ``store``: an open :class:`Store`; None opens the one of ``FISSURE_DATABASE_URL`` (migrated)
    for this call. Fields as ``POST /pipeline/events`` takes them, e.g.
    ``record_pipeline_event("promotion", model="crack-classifier", from_version="3", to_version="4",
    who="controller", why="canary passed 5 steps")``.
    """
    if store is not None:
        return store.record_event(kind, recorded_by, **fields)
    own = Store()
    try:
        own.migrate()
        return own.record_event(kind, recorded_by, **fields)
    finally:
        own.close()
