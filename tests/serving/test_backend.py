"""The front's TorchServe client (fissure.serving.backend) against a real local HTTP server.

Not importing kserve here matters: its v2 protos and tritonclient's share the `inference`
namespace, and the other tests use tritonclient in this process."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from fissure.errors import Unavailable
from fissure.serving.backend import Backend, ts_error
from tests.conftest import free_port


async def _with_server(handler, body, **backend_kw):
    app = web.Application()
    app.router.add_post("/predictions/m", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    backend = Backend(f"http://127.0.0.1:{port}", **backend_kw)
    try:
        return await body(backend)
    finally:
        await backend.close()
        await runner.cleanup()


def test_backend_posts_bytes_and_reads_the_answer():
    seen = {}

    async def handler(request):
        seen["body"] = await request.read()
        seen["type"] = request.headers["Content-Type"]
        return web.json_response({"results": [{"label": "crack"}]}, headers={"X-Extra": "1"})

    async def body(backend):
        return await backend.post("/predictions/m", b"\x00FSR1", {"Content-Type": "application/x-test"})

    resp = asyncio.run(_with_server(handler, body))
    assert seen == {"body": b"\x00FSR1", "type": "application/x-test"}
    assert resp.status_code == 200 and resp.json() == {"results": [{"label": "crack"}]}
    assert resp.headers.get("content-type", "").startswith("application/json")  # case-insensitive
    assert resp.headers["x-extra"] == "1"


def test_backend_error_answer_gives_a_one_line_reason():
    async def handler(_request):
        return web.json_response({"code": 507, "message": "Worker died.\nstack trace..."}, status=507)

    async def body(backend):
        return await backend.post("/predictions/m", b"x", {})

    resp = asyncio.run(_with_server(handler, body))
    assert ts_error(resp) == (507, "Worker died.")


def test_backend_unreachable_is_a_503_not_a_traceback():
    backend = Backend(f"http://127.0.0.1:{free_port()}")

    async def call():
        try:
            await backend.post("/predictions/m", b"x", {})
        finally:
            await backend.close()

    with pytest.raises(Unavailable) as info:
        asyncio.run(call())
    assert info.value.http_status == 503 and info.value.message.startswith("TorchServe unreachable")


def _counting(statuses):
    """A handler answering the given statuses in turn; the list of calls is its .calls."""
    calls = []

    async def handler(request):
        calls.append(await request.read())
        status = statuses[min(len(calls), len(statuses)) - 1]
        return web.json_response({"code": status, "message": "busy" if status != 200 else "ok"}, status=status)

    handler.calls = calls
    return handler


def test_backend_retries_a_503_once_then_answers():
    handler = _counting([503, 200])
    resp = asyncio.run(_with_server(handler, lambda b: b.post("/predictions/m", b"x", {}), retry_pause=(0, 0.01)))
    assert resp.status_code == 200 and handler.calls == [b"x", b"x"]


def test_backend_gives_up_after_one_retry():
    handler = _counting([503, 503, 200])
    resp = asyncio.run(_with_server(handler, lambda b: b.post("/predictions/m", b"x", {}), retry_pause=(0, 0.01)))
    assert resp.status_code == 503 and len(handler.calls) == 2


def test_backend_does_not_retry_other_errors():
    handler = _counting([500, 200])
    resp = asyncio.run(_with_server(handler, lambda b: b.post("/predictions/m", b"x", {})))
    assert resp.status_code == 500 and len(handler.calls) == 1


def test_backend_timeout_is_a_one_line_503():
    async def slow(_request):
        await asyncio.sleep(2)
        return web.json_response({})

    async def call(backend):
        return await backend.post("/predictions/m", b"x", {})

    with pytest.raises(Unavailable, match=r"TorchServe did not answer within 0.3s"):
        asyncio.run(_with_server(slow, call, timeout=0.3))


def test_backend_sends_its_default_headers():
    seen = {}

    async def handler(request):
        seen.update(request.headers)
        return web.json_response({})

    asyncio.run(_with_server(handler, lambda b: b.post("/predictions/m", b"x", {"Content-Type": "a/b"}),
                             headers={"X-Fissure-Wire": "secret"}))
    assert seen["X-Fissure-Wire"] == "secret" and seen["Content-Type"] == "a/b"
