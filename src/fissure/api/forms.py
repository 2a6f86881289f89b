"""Streamed request bodies with limits: multipart forms held in memory, never on disk.

Starlette's form parser spools files over 1 MiB to temporary files; uploads here stay in
memory (at most ``FISSURE_API_MAX_UPLOAD_BYTES`` per file, counted while the body streams in,
413 the moment a file goes over) and reach disk only as content-addressed blobs. The body as a
whole is capped by :class:`BodyLimit`, which also refuses a declared ``Content-Length`` over
the cap before reading anything.
"""

from __future__ import annotations

import codecs
from urllib.parse import parse_qsl
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from starlette.exceptions import HTTPException

from fissure.errors import InputError, PayloadTooLarge, UnsupportedMediaType, status_of

FORM_OVERHEAD = 1024 * 1024  # multipart framing and the text fields, on top of the files
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)


class _Collector:
    def __init__(self, max_file_bytes: int, charset: str):
        self.form = Form()
        self.max_file_bytes = max_file_bytes
        self.charset = charset
        self.parts = 0
        self._reset()

    def _reset(self) -> None:
        self.header_name, self.header_value = b"", b""
        self.headers: dict[bytes, bytes] = {}
        self.data = bytearray()
        self.name, self.filename = "", None

    def on_part_begin(self) -> None:
        self._reset()
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InputError(f"more than {MAX_PARTS} form parts")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise InputError("a form part has no name (Content-Disposition)")
        self.name = options[b"name"].decode(self.charset, "replace")
        if b"filename" in options:
            self.filename = options[b"filename"].decode(self.charset, "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.data += data[start:end]
        if self.filename is not None and len(self.data) > self.max_file_bytes:
            raise PayloadTooLarge(f"file {self.name!r} is over {self.max_file_bytes} bytes "
                                  "(FISSURE_API_MAX_UPLOAD_BYTES)")
        if self.filename is None and len(self.data) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(f"form field {self.name!r} is over {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.filename is not None:
            ctype = self.headers.get(b"content-type", b"application/octet-stream").decode("latin-1").strip()
            self.form.files[self.name] = Upload(self.filename, ctype, bytes(self.data))
        else:
            self.form.fields[self.name] = self.data.decode(self.charset, "replace")


async def read_form(request, max_file_bytes: int) -> Form:
    """Parse a multipart/form-data body as it streams in; files held in memory within the limit.

    A urlencoded body (fields only, ``curl -d verdict=correct``) is read too.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype == b"application/x-www-form-urlencoded":
        return await _read_urlencoded(request)
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType(f"send multipart/form-data, not {ctype.decode('latin-1') or 'no content type'}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InputError("multipart/form-data without a boundary")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "utf-8"
    collector = _Collector(max_file_bytes, charset)
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end", "on_headers_finished")}
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise InputError(f"malformed multipart body: {reason}") from None
    return collector.form


async def _read_urlencoded(request) -> Form:
    limit = MAX_FIELD_BYTES * MAX_PARTS
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"form body is over {limit} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_PARTS)
    except ValueError:
        raise InputError(f"more than {MAX_PARTS} form fields") from None
    return Form(fields=dict(pairs))


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is a 413, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(send, PayloadTooLarge(f"request body of {int(declared)} bytes is over the "
                                                      f"{self.limit}-byte limit"))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # an HTTPException: FastAPI re-raises it from its own body reading (JSON bodies),
                    # where any other error would become a 400
                    raise HTTPException(413, f"request body is over the {self.limit}-byte limit")
            return message

        return await self.app(scope, limited_receive, send)


async def _error(send, exc) -> None:
    import json

    status, _, message = status_of(exc)
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
