"""The feedback loop's API (``fissure api``): predictions through the serving front, people's
verdicts and corrections, kept durably, exported as training data. See docs/feedback.md.

Modules: ``app`` (the FastAPI app and its routes), ``store`` (SQLAlchemy models, the Store),
``migrations/`` (Alembic), ``blobs`` (content-addressed files over fsspec), ``auth`` (tokens,
roles, rate limit), ``inference`` (the serving front over OIP v2), ``forms`` (streamed uploads
with limits), ``export`` (the dataset layouts prepare reads), ``retrain`` (background runs),
``metrics`` (Prometheus), ``ui`` (the web pages).
"""
