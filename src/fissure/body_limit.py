"""The request-body cap both HTTP servers (the inference front, the feedback API) put in front of
everything: a body over the limit is a 413 ``{"error": ...}`` before it is all read, whether its
``Content-Length`` declares it or it streams past the limit (chunked, or a lying header)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    """Raised from ``receive()`` once the body passes the limit. An HTTPException because FastAPI
    re-raises those from its own body parsing (JSON bodies), where any other error becomes a 400;
    the apps' HTTPException handlers answer it as ``{"error": ...}``."""

    def __init__(self, reason: str):
        super().__init__(413, reason)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes; ``setting`` names the knob in
    the message (``FISSURE_MAX_BODY_BYTES``)."""

    def __init__(self, app, limit: int, setting: str = ""):
        self.app = app
        self.limit = limit
        self.setting = setting

    def reason(self, declared: int | None = None) -> str:
        size = f" of {declared} bytes" if declared is not None else ""
        knob = f" ({self.setting})" if self.setting else ""
        return f"request body{size} is over the {self.limit}-byte limit{knob}"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _refuse(send, self.reason(int(declared)))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.reason())
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge as exc:  # read outside a route (another middleware): nobody answered yet
            await _refuse(send, exc.detail)


async def _refuse(send, reason: str) -> None:
    body = json.dumps({"error": reason}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
