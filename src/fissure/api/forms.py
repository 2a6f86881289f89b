"""Streamed request bodies with limits: multipart forms held in memory, never on disk.

Starlette's form parser spools files over 1 MiB to temporary files; uploads here stay in
memory (at most ``FISSURE_API_MAX_UPLOAD_BYTES`` per file, counted while the body streams in,
413 the moment a file goes over) and reach disk only as content-addressed blobs. The body as a
whole is capped by :class:`fissure.body_limit.BodyLimit`, which also refuses a declared ``Content-Length`` over
the cap before reading anything.
"""

from __future__ import annotations

import codecs
import logging
from urllib.parse import parse_qsl
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header


from fissure.errors import InputError, PayloadTooLarge, UnsupportedMediaType

FORM_OVERHEAD = 1024 * 1024  # multipart framing and the text fields, on top of the files
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
# The parser logs a WARNING with each MultipartParseError it raises, which read_form answers as a
# 400: without this, any client's garbled body is a line on stderr. Its errors still show.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


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
        self.ended = False  # the closing boundary was read
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

    def on_end(self) -> None:
        self.ended = True


async def read_form(request, max_file_bytes: int) -> Form:
    """Parse a multipart/form-data body as it streams in; files held in memory within the limit.

    A urlencoded body (fields only, ``curl -d verdict=correct``) is read too.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype == b"application/x-www-form-urlencoded":
        return _text_only(await _read_urlencoded(request))
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
        "on_header_end", "on_headers_finished", "on_end")}
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise InputError(f"malformed multipart body: {reason}") from None
    if not collector.ended:
        raise InputError(f"malformed multipart body: truncated, it ends before its closing boundary "
                         f"'--{boundary.decode('latin-1')[:70]}--'")
    return _text_only(collector.form)


def _text_only(form: Form) -> Form:
    """The form, when no text field holds a NUL byte (PostgreSQL's text cannot; no field means one)."""
    for name, value in form.fields.items():
        if "\x00" in value:
            raise InputError(f"form field {name[:40]!r} must not contain a NUL byte")
    return form


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
