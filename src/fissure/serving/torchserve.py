"""``fissure serve``: TorchServe as a child process plus the KServe front, in one process tree.

Start order: check Java -> write the effective TorchServe config (ports from flags/env) ->
start ``torchserve --foreground`` in its own process group -> wait until every MAR's workers
are READY -> register one front model per MAR -> run kserve.ModelServer (REST + gRPC).
SIGTERM/SIGINT stop the front, then TorchServe (its whole process group: java and the
Python workers). If TorchServe dies, the front stops and ``fissure serve`` exits non-zero.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fissure.errors import FissureError
from fissure.serving.package import read_mar, read_properties
from fissure.settings import PORTS

JAVA_HINT = "TorchServe needs Java 17: apt-get install openjdk-17-jre-headless"
log = logging.getLogger("fissure.serve")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass
class ServeOptions:
    model_store: Path
    config: Path | None = None
    http_port: int = PORTS["inference_rest"]
    grpc_port: int = PORTS["inference_grpc"]
    ts_inference_port: int = 8083
    ts_management_port: int = PORTS["torchserve_management"]
    ts_metrics_port: int = PORTS["torchserve_metrics"]
    ts_grpc_inference_port: int = 7070
    ts_grpc_management_port: int = 7071
    workdir: Path | None = None
    ready_timeout: float = 300.0
    grpc_threads: int = 8
    models: list[str] = field(default_factory=list)  # served names; empty = every MAR


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").exists():
        return str(Path(java_home, "bin", "java"))
    java = shutil.which("java")
    if not java:
        raise FissureError(JAVA_HINT)
    return java


def effective_config(opts: ServeOptions, workdir: Path) -> Path:
    """The packaged config.properties with this process's ports and model store."""
    lines = Path(opts.config).read_text().splitlines() if opts.config else []
    overrides = {
        "inference_address": f"http://127.0.0.1:{opts.ts_inference_port}",
        "management_address": f"http://127.0.0.1:{opts.ts_management_port}",
        "metrics_address": f"http://0.0.0.0:{opts.ts_metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(opts.ts_grpc_inference_port),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(opts.ts_grpc_management_port),
        "model_store": str(Path(opts.model_store).resolve()),
        "disable_token_authorization": "true",
        "install_py_dep_per_model": "false",
    }
    if not any(line.strip().startswith("model_snapshot=") for line in lines):
        overrides.setdefault("load_models", "all")
    out, seen = [], set()
    for line in lines:
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in overrides:
            out.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            out.append(line)
    out += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    path = workdir / "config.properties"
    path.write_text("\n".join(out) + "\n")
    return path


LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<!-- written by `fissure serve`: TorchServe's default layout, but no per-request DEBUG lines
     (they cost latency and CPU on every request). FISSURE_TS_LOG_LEVEL=info|debug brings them back,
     FISSURE_TS_ACCESS_LOG=1 turns the access log on, FISSURE_TS_MODEL_LOG_LEVEL=info shows the
     workers' per-request lines. -->
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/></Console>
    <RollingFile name="access_log" fileName="{logs}/access_log.log" filePattern="{logs}/access_log.%d{{dd-MMM}}.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} - %m%n"/><Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies><DefaultRolloverStrategy max="5"/></RollingFile>
    <RollingFile name="model_log" fileName="{logs}/model_log.log" filePattern="{logs}/model_log.%d{{dd-MMM}}.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/><Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies><DefaultRolloverStrategy max="5"/></RollingFile>
    <RollingFile name="model_metrics" fileName="{metrics}/model_metrics.log" filePattern="{metrics}/model_metrics.%d{{dd-MMM}}.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} - %m%n"/><Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies><DefaultRolloverStrategy max="5"/></RollingFile>
    <RollingFile name="ts_log" fileName="{logs}/ts_log.log" filePattern="{logs}/ts_log.%d{{dd-MMM}}.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/><Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies><DefaultRolloverStrategy max="5"/></RollingFile>
    <RollingFile name="ts_metrics" fileName="{metrics}/ts_metrics.log" filePattern="{metrics}/ts_metrics.%d{{dd-MMM}}.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} - %m%n"/><Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies><DefaultRolloverStrategy max="5"/></RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{access}"><AppenderRef ref="access_log"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="MODEL_LOG" level="{model}"><AppenderRef ref="model_log"/></Logger>
    <Logger name="MODEL_METRICS" level="info"><AppenderRef ref="model_metrics"/></Logger>
    <Logger name="org.apache" level="off"/>
    <Logger name="org.pytorch.serve" level="{level}"><AppenderRef ref="ts_log"/></Logger>
    <Logger name="TS_METRICS" level="info"><AppenderRef ref="ts_metrics"/></Logger>
    <Root level="info"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def write_log_config(workdir: Path, logs: str, metrics: str) -> Path:
    from xml.sax.saxutils import escape

    level = os.environ.get("FISSURE_TS_LOG_LEVEL", "warn").lower()
    access = "info" if os.environ.get("FISSURE_TS_ACCESS_LOG", "") not in ("", "0", "false") else "warn"
    path = workdir / "log4j2.xml"
    path.write_text(LOG4J2.format(logs=escape(logs, {'"': "&quot;"}), metrics=escape(metrics, {'"': "&quot;"}),
                                  level=escape(level), access=access,
                                  model=escape(os.environ.get("FISSURE_TS_MODEL_LOG_LEVEL", "warn").lower())))
    return path


class TorchServe:
    """TorchServe in the foreground as a child process group."""

    def __init__(self, opts: ServeOptions, workdir: Path):
        self.opts = opts
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self.management = f"http://127.0.0.1:{opts.ts_management_port}"
        self.inference = f"http://127.0.0.1:{opts.ts_inference_port}"

    def check_ports(self) -> None:
        """Fail with one clear line before starting anything if a port is taken."""
        import socket

        o = self.opts
        ports = [(o.http_port, "0.0.0.0", "--http-port"), (o.grpc_port, "0.0.0.0", "--grpc-port"),
                 (o.ts_inference_port, "127.0.0.1", "--ts-inference-port"),
                 (o.ts_management_port, "127.0.0.1", "--ts-management-port"),
                 (o.ts_metrics_port, "0.0.0.0", "--ts-metrics-port"),
                 (o.ts_grpc_inference_port, "127.0.0.1", "--ts-grpc-inference-port"),
                 (o.ts_grpc_management_port, "127.0.0.1", "--ts-grpc-management-port")]
        for port, host, flag in ports:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    raise FissureError(f"port {port} is already in use; pick another with {flag}") from None

    def start(self) -> None:
        java = find_java()
        self.check_ports()
        config = effective_config(self.opts, self.workdir)
        tmp = self.workdir / "tmp"
        logs = self.workdir / "logs"
        tmp.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("LOG_LOCATION", str(logs))  # the image sets its own
        env.setdefault("METRICS_LOCATION", str(logs))
        env.update({
            # a private temp dir: TorchServe's pid file lives there, so several servers can coexist
            "TMPDIR": str(tmp), "TEMP": str(tmp),
            "JAVA_HOME": env.get("JAVA_HOME") or str(Path(java).resolve().parents[1]),
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("TS_CONFIG_FILE", None)
        log_config = write_log_config(self.workdir, env["LOG_LOCATION"], env["METRICS_LOCATION"])
        cmd = [sys.executable, "-c", "import sys; from ts.model_server import start; sys.exit(start())",
               "--start", "--foreground", "--ncs", "--disable-token-auth", "--enable-model-api",
               "--log-config", str(log_config),
               "--model-store", str(Path(self.opts.model_store).resolve()), "--ts-config", str(config)]
        log.info("starting TorchServe (logs in %s)", env["LOG_LOCATION"])
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.workdir, start_new_session=True)

    @property
    def logs(self) -> Path:
        return Path(os.environ.get("LOG_LOCATION") or self.workdir / "logs")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        with httpx.Client(timeout=5.0) as client:
            while pending:
                if not self.alive():
                    raise FissureError(f"TorchServe exited (code {self.proc.returncode}) before its models were ready; "
                                       f"see its log above or in {self.logs}")
                for name in sorted(pending):
                    try:
                        r = client.get(f"{self.management}/models/{name}")
                        if r.status_code == 200:
                            workers = r.json()[0].get("workers", [])
                            if workers and all(w.get("status") == "READY" for w in workers):
                                pending.discard(name)
                    except (httpx.HTTPError, ValueError, IndexError, KeyError):
                        pass
                if pending:
                    if time.monotonic() > deadline:
                        raise FissureError(f"TorchServe models not ready after {timeout:.0f}s: {sorted(pending)}; "
                                           f"see {self.workdir / 'logs'}")
                    time.sleep(0.5)

    def stop(self, timeout: float = 3.0) -> None:
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.proc.poll() is None or _group_alive(self.proc.pid)):
                time.sleep(0.2)
            if self.proc.poll() is not None and not _group_alive(self.proc.pid):
                break
        log.info("TorchServe stopped")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def discover(model_store: Path, only: list[str]) -> list[dict]:
    mars = sorted(Path(model_store).glob("*.mar"))
    if not mars:
        raise FissureError(f"no .mar files in {model_store}; run `fissure package` first")
    found = [read_mar(p) for p in mars]
    if only:
        names = {f["served_name"] for f in found}
        missing = sorted(set(only) - names)
        if missing:
            raise FissureError(f"model(s) {missing} not in {model_store} (has {sorted(names)})")
        found = [f for f in found if f["served_name"] in only]
    return found


def serve(opts: ServeOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if os.environ.get("FISSURE_ACCESS_LOG", "") in ("", "0", "false"):
        # one line per request otherwise (front access log, kserve timings, proxied calls)
        for name in ("httpx", "uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not Path(opts.model_store).is_dir():
        raise FissureError(f"model store {opts.model_store} is not a directory")
    if opts.config and not Path(opts.config).is_file():
        raise FissureError(f"config file {opts.config} not found")
    find_java()
    mars = discover(Path(opts.model_store), opts.models)
    owned_workdir = opts.workdir is None
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="fissure-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ts = TorchServe(opts, workdir)
    stop_requested = threading.Event()

    def early_stop(sig, _frame):
        stop_requested.set()
        raise KeyboardInterrupt

    old = {s: signal.signal(s, early_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ts.start()
        ts.wait_ready([m["served_name"] for m in mars], opts.ready_timeout)
    except KeyboardInterrupt:
        ts.stop()
        return 130 if not stop_requested.is_set() else 0
    except BaseException:
        ts.stop()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    log.info("TorchServe ready: %s", ", ".join(m["served_name"] for m in mars))
    code = 0
    try:
        code = run_front(opts, ts, mars)
    finally:
        ts.stop()
        if owned_workdir:
            shutil.rmtree(workdir / "tmp", ignore_errors=True)
    return code


def run_front(opts: ServeOptions, ts: TorchServe, mars: list[dict]) -> int:
    from fissure.serving.app import build_server

    server, models = build_server(opts, ts, mars)
    exit_code = {"code": 0}

    def watch():
        while not server_stopped.is_set():
            if not ts.alive() and not ts.stopping:
                log.error("TorchServe exited unexpectedly (code %s); stopping", ts.proc.returncode)
                exit_code["code"] = 1
                os.kill(os.getpid(), signal.SIGTERM)
                return
            server_stopped.wait(1.0)

    server_stopped = threading.Event()
    threading.Thread(target=watch, name="torchserve-watch", daemon=True).start()
    # Everything imported so far (torch, kserve, mlflow: millions of objects) lives as long as
    # the process; frozen, the collector stops walking it. Unfrozen, full collections paused
    # every request in flight for 100-200 ms a few times a minute under load (p99 x2).
    gc.freeze()
    try:
        server.start(models)
    finally:
        server_stopped.set()
    return exit_code["code"]
