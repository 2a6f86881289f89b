"""Bearer tokens with roles, and a per-token rate limit.

Roles are ordered: viewer (predict, history) < annotator (+ feedback, export) < admin
(+ retrain, tokens, pipeline events). The ``pipeline`` role stands outside that order: a token
for the retraining pipeline and the promotion controller, which may record and read pipeline
events and nothing else. A token is shown once when it is made; the store keeps only its sha256,
looked up by that hash and compared with :func:`hmac.compare_digest`. The token's name is
the user feedback is recorded under (one feedback row per prediction and name), so a person's
second token answers as the same user.

The rate limit is a token bucket per API token (``FISSURE_API_RATE_LIMIT`` requests a minute,
bursts up to that many), kept in the process: each API replica counts on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass

from fissure.errors import FissureError, InputError

ROLES = ("viewer", "annotator", "admin")  # ordered: each may do what the ones before it may
PIPELINE = "pipeline"  # outside the order: pipeline events only (admin may do that too)
ALL_ROLES = ROLES + (PIPELINE,)
TOKEN_PREFIX = "fst_"


class Unauthenticated(FissureError):
    """No token, or one the store does not know (401)."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class RateLimited(FissureError):
    """Too many requests for this token (429); ``retry_after`` in whole seconds."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: str

    def allows(self, role: str) -> bool:
        if self.role == "admin" or self.role == role:
            return True
        if PIPELINE in (self.role, role):
            return False
        return ROLES.index(self.role) >= ROLES.index(role)


def check_role(role: str) -> str:
    if role not in ALL_ROLES:
        raise InputError(f"role must be one of {', '.join(ALL_ROLES)}; got {role!r}")
    return role


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def create_token(store, role: str, name: str | None = None, only_if_none: bool = False) -> tuple[str, object] | None:
    """Make a token: (the token, its row). ``only_if_none``: only in a store without tokens, else None."""
    check_role(role)
    token = new_token()
    name = (name or "").strip() or f"{role}-{secrets.token_hex(3)}"
    if len(name) > 128:
        raise InputError("a token name is at most 128 characters")
    add = store.add_first_token if only_if_none else store.add_token
    row = add(hash_token(token), role, name)
    return None if row is None else (token, row)


def authenticate(store, authorization: str | None) -> Principal:
    """The principal of an ``Authorization: Bearer <token>`` header, or Unauthenticated."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
    digest = hash_token(token.strip())
    row = store.token_by_hash(digest)
    if row is None or not hmac.compare_digest(row.hash, digest):
        raise Unauthenticated("unknown or revoked token")
    return Principal(token_id=row.id, name=row.name, role=row.role)


class RateLimiter:
    """Token buckets keyed by API token id: ``per_minute`` requests a minute, bursts of as many."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, now)
                wait = max(1, math.ceil((1.0 - level) / self.rate))
                raise RateLimited(f"rate limit of {int(self.capacity)} requests a minute reached for this token; "
                                  f"retry in {wait} s", retry_after=wait)
            self._buckets[key] = (level - 1.0, now)
