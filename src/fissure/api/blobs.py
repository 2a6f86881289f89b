"""Content-addressed blobs (images, overlays, masks, heatmaps, corrected masks) over fsspec.

A blob's name is the sha256 of its bytes (``<root>/<ab>/<abcdef...>``), so the same image is
stored once and a name always means the same bytes. The store writes a blob *before* the row
that references it: a crash in between leaves an unreferenced blob, which
:meth:`fissure.api.store.Store.gc_blobs` removes later, never a row without its bytes.

``FISSURE_BLOB_URL`` picks the place: a local folder (default ``<home>/blobs``) or any fsspec
URL, e.g. ``s3://bucket/prefix`` with the usual ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for
MinIO). On a local folder a blob is written to a temporary name, fsynced and renamed, so a
reader never sees half a blob and an acknowledged write survives a power cut.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import fsspec

from fissure.errors import ConfigError, NotFoundError

_SHA = re.compile(r"^[0-9a-f]{64}$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_url() -> str:
    from fissure.settings import settings, state_dir

    return settings().blob_url or str(state_dir() / "blobs")


class Blobs:
    """put/get/delete by sha256 under one fsspec root."""

    def __init__(self, url: str | None = None):
        self.url = url or default_url()
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except ImportError as exc:  # e.g. s3:// without s3fs
            raise ConfigError(f"FISSURE_BLOB_URL={self.url!r}: {str(exc).splitlines()[0]}") from None
        except ValueError as exc:
            raise ConfigError(f"FISSURE_BLOB_URL={self.url!r}: {str(exc).splitlines()[0]}") from None
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    def path(self, digest: str) -> str:
        if not _SHA.match(digest or ""):
            raise NotFoundError(f"not a blob name: {digest!r}")
        return f"{self.root.rstrip('/')}/{digest[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its sha256; durable when this returns."""
        digest = sha256(data)
        path = self.path(digest)
        if self.local:
            try:
                os.utime(path)  # stored already: fresh again, so gc's grace period covers this request
            except FileNotFoundError:
                _write_local(path, data)
        else:
            self.fs.pipe_file(path, data)  # an object store has no cheap touch: rewrite the same bytes
        return digest

    def age(self, digest: str) -> float:
        """Seconds since the blob was last stored (0 when it is missing)."""
        try:
            return time.time() - _mtime(self.fs.info(self.path(digest)))
        except FileNotFoundError:
            return 0.0

    def get(self, digest: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(digest))
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from {self.url}") from None

    def exists(self, digest: str) -> bool:
        return self.fs.exists(self.path(digest))

    def delete(self, digest: str) -> None:
        try:
            self.fs.rm_file(self.path(digest))
        except FileNotFoundError:
            pass

    def list(self) -> Iterator[tuple[str, float]]:
        """Every blob as (sha256, modification time in epoch seconds)."""
        for path, mtime in self._files():
            name = path.rsplit("/", 1)[-1]
            if _SHA.match(name):
                yield name, mtime

    def remove_temporaries(self, older_than: float) -> int:
        """Remove temporary files a crash left behind (older than ``older_than`` seconds)."""
        removed = 0
        for path, mtime in self._files():
            if path.rsplit("/", 1)[-1].startswith(".tmp-") and time.time() - mtime >= older_than:
                try:
                    self.fs.rm_file(path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _files(self) -> Iterator[tuple[str, float]]:
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            yield path, _mtime(info)


def _mtime(info: dict) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return time.time()  # unknown: treat as new, so gc's grace period keeps it


def _write_local(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself
    finally:
        os.close(dfd)
