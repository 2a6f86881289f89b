"""``fissure serve``: the KServe front over one of two model runtimes.

::

    runtime=torchserve (default)          runtime=inprocess
    REST :8080  gRPC :8081                REST :8080  gRPC :8081
          |  front (kserve Model)               |  front (kserve Model)
          |  decode, limits, wire frame         |  decode, limits
          v  loopback HTTP + token              v  AdaptiveBatcher (thread)
    TorchServe :8083 (metrics :8082)      ModelRuntime (same code as the handler)
          |  dynamic batch
          v  fissure handler -> ModelRuntime

Start order (torchserve): check the MARs and Java -> start TorchServe on loopback with a fresh
wire token -> wait until every model's workers are READY -> serve the front. SIGTERM/SIGINT
drain the front, then stop TorchServe's whole process group. If TorchServe dies, the front
stops and ``fissure serve`` exits 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import signal
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from fissure.errors import FissureError, PermissionDenied, Unavailable, UsageError
from fissure.serving.package import discover
from fissure.settings import LOOPBACK, settings
from fissure.serving.torchserve import TorchServe, TorchServePorts, check_ports, find_java, ping_healthy, workers_ready

log = logging.getLogger("fissure.serve")
HEALTH_PERIOD = 2.0


@dataclass
class ServeOptions:
    model_store: Path
    config: Path | None = None
    runtime: str = "torchserve"
    host: str = LOOPBACK
    http_port: int = 8080
    grpc_port: int = 8081
    ts_ports: TorchServePorts = field(default_factory=TorchServePorts)
    workdir: Path | None = None
    ready_timeout: float = 300.0
    models: list[str] = field(default_factory=list)  # served names; empty = every MAR
    # a canary's routing file (fissure.serving.canary; the local stack's promotion controller
    # writes it): challengers are loaded with the in-process runtime, whichever serves the champions
    routing_file: Path | None = None


def serve(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not settings().access_log:
        # one line per request otherwise (front access log, kserve timings, per-call gRPC lines)
        for name in ("uvicorn.access", "kserve.trace", "kserve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if opts.runtime not in ("torchserve", "inprocess"):
        raise UsageError(f"--runtime must be torchserve or inprocess, not {opts.runtime!r}")
    if not Path(opts.model_store).is_dir():
        raise FissureError(f"model store {opts.model_store} is not a directory")
    if opts.config and not Path(opts.config).is_file():
        raise FissureError(f"config file {opts.config} not found")
    mars = discover(Path(opts.model_store), opts.models)
    public = [(opts.http_port, opts.host, "--http-port"), (opts.grpc_port, opts.host, "--grpc-port")]
    owned_workdir = opts.workdir is None
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="fissure-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if opts.runtime == "inprocess":
            check_ports(public)
            return _serve_inprocess(opts, mars, workdir)
        find_java()
        return _serve_torchserve(opts, mars, workdir, public)
    finally:
        if owned_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _front(models, opts: ServeOptions, workdir: Path, **kw):
    from fissure.serving.front.server import FrontServer

    s = settings()
    loader = _inprocess_loader(workdir / "canary") if opts.routing_file is not None else None
    return FrontServer(models, opts.host, opts.http_port, opts.grpc_port,
                       repository_enabled=s.enable_repository_api, drain_seconds=s.drain_seconds,
                       routing_file=opts.routing_file, loader=loader, **kw)


def _inprocess_model(mar: dict, dest: Path, device):
    from fissure.serving.front.model import InProcessModel
    from fissure.serving.runtime import ModelRuntime

    _extract(mar["path"], dest)
    return InProcessModel(mar["served_name"], mar["meta"], mar["spec"], ModelRuntime.from_dir(dest, device=device))


def _inprocess_loader(root: Path):
    """``loader(name, mar)`` for a canary's versions: a checked MAR, in-process, on this pod's device."""
    import torch

    from fissure.serving.package import read_mar
    from fissure.serving.runtime import device_for

    device = device_for(0, torch.cuda.is_available())

    def load(name: str, mar: Path):
        found = {**read_mar(mar), "path": Path(mar)}
        if found["served_name"] != name:
            raise FissureError(f"{mar} serves {found['served_name']!r}, not {name!r}")
        return _inprocess_model(found, root / f"{name}-v{found['meta'].get('version')}", device)

    return load


def _serve_torchserve(opts: ServeOptions, mars: list[dict], workdir: Path, public) -> int:
    from fissure.serving import codec
    from fissure.serving.backend import Backend

    # The handler accepts internal frames only with this token: a client that reaches
    # TorchServe's port by another way cannot send one.
    token = secrets.token_urlsafe(24)
    ts = TorchServe(opts.model_store, opts.config, opts.ts_ports, opts.host, workdir,
                    env={codec.WIRE_TOKEN_ENV: token})
    check_ports(public + ts.port_checks())
    names = [m["served_name"] for m in mars]
    stop_requested = threading.Event()

    def early_stop(sig, _frame):
        stop_requested.set()
        raise KeyboardInterrupt

    old = {s: signal.signal(s, early_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ts.start()
        ts.wait_ready(names, opts.ready_timeout)
    except KeyboardInterrupt:
        ts.stop()
        return 0 if stop_requested.is_set() else 130
    except BaseException:
        ts.stop()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    log.info("TorchServe ready: %s", ", ".join(names))
    try:
        from fissure.serving.front.model import TorchServeModel

        backend = Backend(ts.inference, timeout=settings().backend_timeout)
        models = [TorchServeModel(m["served_name"], m["meta"], m["spec"], backend, token) for m in mars]
        for m in models:
            m.ready = True

        async def proxy(kind, name, body, ctype):
            from fastapi.responses import Response

            if codec.is_wire(body):
                raise PermissionDenied("internal frames are accepted from the front only")
            if ctype.startswith("application/x-www-form-urlencoded"):  # curl's default for --data-binary
                ctype = "application/octet-stream"
            resp = await backend.post(f"/{kind}/{name}", body, {"Content-Type": ctype})
            return Response(content=resp.content, status_code=resp.status_code,
                            media_type=resp.headers.get("content-type", "application/json"))

        async def health() -> str | None:
            """Poll TorchServe's /ping and each model's workers; the front's readiness follows."""
            while True:
                if not ts.alive() and not ts.stopping:
                    return f"TorchServe exited unexpectedly (code {ts.proc.returncode})"
                healthy = await _probe(backend, f"{ts.inference}/ping", ping_healthy)
                for m in models:
                    m.ready = healthy and await _probe(backend, f"{ts.management}/models/{m.name}", workers_ready)
                await asyncio.sleep(HEALTH_PERIOD)

        front = _front(models, opts, workdir, proxy=proxy, background=health)
        return _run(front, backend)
    finally:
        ts.stop()


async def _probe(backend, url: str, check) -> bool:
    try:
        return check(await backend.get(url))
    except Unavailable:
        return False


def _serve_inprocess(opts: ServeOptions, mars: list[dict], workdir: Path) -> int:
    import torch

    from fissure.serving.runtime import device_for, set_threads

    threads = set_threads()
    device = device_for(0, torch.cuda.is_available())  # the pod's first GPU when it has one
    models = []
    for m in mars:
        model = _inprocess_model(m, workdir / "models" / m["served_name"], device)
        model.ready = True
        models.append(model)
    log.info("in-process runtime ready on %s (%d torch threads): %s", device, threads,
             ", ".join(m.name for m in models))
    return _run(_front(models, opts, workdir), None)


def _extract(mar: Path, dest: Path) -> None:
    """The model files of a checked MAR (see package.read_mar) into ``dest``."""
    from fissure.serving.runtime import META_FILE, SPEC_FILE, WEIGHTS_FILE

    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as zf:
        for name in (WEIGHTS_FILE, SPEC_FILE, META_FILE):
            if name in zf.namelist():
                (dest / name).write_bytes(zf.read(name))


def _run(front, backend) -> int:
    # Everything imported so far (torch, kserve, mlflow: millions of objects) lives as long as
    # the process; frozen, the collector stops walking it. Unfrozen, full collections paused
    # every request in flight for 100-200 ms a few times a minute under load (p99 x2).
    gc.freeze()

    async def main():
        try:
            return await front.serve()
        finally:
            if backend is not None:
                await backend.close()

    return asyncio.run(main())
