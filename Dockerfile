# syntax=docker/dockerfile:1
# fissure API/UI image: the fissure package, serving `fissure api` (the feedback API and web
# UI) on 8000; the Helm chart deploys it as fissure-api.
#   docker build -t ghcr.io/fissure/fissure-api:0.1.0 .
#   docker run -p 8000:8000 ghcr.io/fissure/fissure-api:0.1.0
# Without settings it keeps everything under /home/fissure/.fissure (SQLite, blobs); in a
# cluster FISSURE_DATABASE_URL (PostgreSQL), FISSURE_BLOB_URL (s3://) and
# FISSURE_INFERENCE_URL point it at the real services (docs/deploy-kubernetes.md).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" "torch>=2.5,<2.14"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
# [serve] brings fastapi, uvicorn, the store (SQLAlchemy, Alembic, psycopg) and the HTTP
# clients the API uses; s3fs (pinned to the fsspec the project resolves to) lets fsspec reach
# S3 for FISSURE_BLOB_URL=s3://..., which only a cluster needs, as dvc-s3 in the training image.
# The project itself: its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[serve]" "s3fs==2026.9.0" && pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 1000 fissure \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/fissure fissure
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/fissure
USER 1000:1000
WORKDIR /home/fissure
EXPOSE 8000
# `fissure api` binds to loopback unless told otherwise; a container is reached from outside
# its network namespace.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ping', timeout=4).status != 200)"]
CMD ["fissure", "api", "--host", "0.0.0.0", "--port", "8000"]
