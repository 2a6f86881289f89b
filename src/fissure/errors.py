"""fissure's one error hierarchy, and the one place that maps errors to statuses.

Every failure a user can cause or meet is a :class:`FissureError` carrying a one-line message,
the HTTP status, the gRPC status code name and the CLI exit code that go with it. The CLI
prints ``fissure: error: <message>``; the servers answer ``{"error": <message>}`` (REST) or
abort with the gRPC code. Anything that is not a FissureError (or one of kserve's own errors,
mapped in :func:`status_of`) is a bug: a 500 / INTERNAL with no traceback text on the wire.

Exit codes follow click: 2 for usage errors (a bad flag, option or ``FISSURE_*`` value),
1 for everything that fails at run time.
"""

from __future__ import annotations


class FissureError(Exception):
    """A failure with a one-line explanation (a runtime failure unless a subclass says otherwise)."""

    http_status = 500
    grpc_code = "INTERNAL"
    exit_code = 1

    def __init__(self, message: str, http_status: int | None = None):
        message = str(message or type(self).__name__)
        super().__init__(message)
        self.message = message.splitlines()[0] if message.strip() else message
        if http_status is not None:
            self.http_status = int(http_status)

    def __str__(self) -> str:
        return self.message


class UsageError(FissureError):
    """The command line or a ``FISSURE_*`` setting is wrong (click's usage error: exit 2)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    exit_code = 2


class ConfigError(UsageError):
    """A setting (``FISSURE_*`` variable) has a value fissure cannot use."""


class InputError(FissureError):
    """The caller sent something unusable (bad image, wrong tensor shape, malformed JSON)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InputError):
    """A body, an image or a request over the configured limits."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(InputError):
    http_status = 415


class DataError(FissureError):
    """A dataset folder or a params file is empty, inconsistent or unreadable."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PermissionDenied(FissureError):
    """The operation exists but is switched off or not allowed for this caller."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFoundError(FissureError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class Unavailable(FissureError):
    """A backend (TorchServe, MLflow, ...) is down, not ready or failed: retry later."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class ServerError(FissureError):
    """A server answered a client call with an error; the message is its one-line reason."""


# HTTP status -> gRPC code name, for errors that only carry an HTTP status (a backend's answer).
_GRPC_OF_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED",
                 415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}

# kserve's own exceptions, by class name so that this module imports nothing heavy.
_KSERVE = {"ModelNotFound": 404, "ModelNotReady": 503, "InvalidInput": 400,
           "InferenceError": 500, "UnsupportedProtocol": 400, "ServerNotReady": 503,
           "ServerNotLive": 503, "NoModelReady": 503}


def grpc_code_of(http_status: int) -> str:
    if http_status in _GRPC_OF_HTTP:
        return _GRPC_OF_HTTP[http_status]
    return "INVALID_ARGUMENT" if 400 <= http_status < 500 else "INTERNAL"


def status_of(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, gRPC code name, one-line message) for any exception a server meets."""
    if isinstance(exc, FissureError):
        code = exc.grpc_code if exc.http_status == type(exc).http_status else grpc_code_of(exc.http_status)
        return exc.http_status, code, exc.message
    status = _KSERVE.get(type(exc).__name__)
    if status is not None:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return status, grpc_code_of(status), str(reason).splitlines()[0]
    status, detail = getattr(exc, "status_code", None), getattr(exc, "detail", None)
    if isinstance(status, int) and 400 <= status < 600 and isinstance(detail, str):  # Starlette's HTTPException
        return status, grpc_code_of(status), (detail.splitlines() or ["error"])[0]
    return 500, "INTERNAL", f"internal error: {type(exc).__name__}"
