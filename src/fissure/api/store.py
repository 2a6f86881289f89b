"""The feedback store: predictions, feedback, tokens and retrain runs (SQLAlchemy 2).

One :class:`Store` per process, over a SQLAlchemy URL (``FISSURE_DATABASE_URL``): SQLite
under ``<home>/api.db`` by default (the embedded mode), PostgreSQL (``postgresql+psycopg://``)
in a cluster. The schema is Alembic's (:meth:`Store.migrate` runs ``upgrade head``).

Durability: every write is one transaction, committed before the API answers 2xx. SQLite runs
in WAL mode with ``synchronous=FULL`` (a commit survives a crash of the process and of the
machine) and write transactions start with ``BEGIN IMMEDIATE``, so concurrent writers queue on
the lock (``busy_timeout``) instead of failing when one upgrades a read snapshot. Blobs are
written before the row that references them (:mod:`fissure.api.blobs`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator,
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
        try:
            with self._writer.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # replicas starting together on a new database: one migrates, the others wait
                    # for its commit and find nothing left to do (SQLite's writer lock does the same)
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise unavailable(self.url, exc) from None

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
