"""TorchServe as a supervised child process: its config, its logs, its start, readiness and stop.

Only :mod:`fissure.serving.serve` drives it. TorchServe listens on loopback only (inference,
management, its own gRPC); its Prometheus metrics listen on the serving host. The config is
the packaged ``config.properties`` reduced to the keys ``fissure package`` writes (a storage
URI is not trusted to switch on anything else), with this process's ports and model store.
TorchServe's model-management write API stays off: nothing in fissure registers models at run
time.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import httpx

from fissure.errors import FissureError
from fissure.settings import LOOPBACK, PORTS, settings

JAVA_HINT = "TorchServe needs Java 17: apt-get install openjdk-17-jre-headless"
log = logging.getLogger("fissure.serve")

# What `fissure package` writes into config.properties; anything else in a MAR's config is dropped.
PACKAGED_KEYS = frozenset({
    "model_snapshot", "load_models", "default_workers_per_model", "default_response_timeout",
    "job_queue_size", "max_request_size", "max_response_size", "metrics_mode", "enable_metrics_api",
    "install_py_dep_per_model", "number_of_gpu",
})


@dataclass
class TorchServePorts:
    inference: int = PORTS["torchserve_inference"]
    management: int = PORTS["torchserve_management"]
    metrics: int = PORTS["torchserve_metrics"]
    grpc_inference: int = PORTS["torchserve_grpc_inference"]
    grpc_management: int = PORTS["torchserve_grpc_management"]


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").exists():
        return str(Path(java_home, "bin", "java"))
    java = shutil.which("java")
    if not java:
        raise FissureError(JAVA_HINT)
    return java


def effective_config(packaged: Path | None, ports: TorchServePorts, model_store: Path, host: str,
                     workdir: Path) -> Path:
    """The packaged config.properties, reduced to PACKAGED_KEYS, with our addresses and store."""
    from fissure.serving.package import read_properties

    props = read_properties(packaged) if packaged else {}
    dropped = sorted(set(props) - PACKAGED_KEYS)
    if dropped:
        log.warning("ignoring TorchServe settings fissure does not write: %s", ", ".join(dropped))
    kept = {k: v for k, v in props.items() if k in PACKAGED_KEYS}
    kept.setdefault("load_models", "all")
    kept.update({
        "inference_address": f"http://{LOOPBACK}:{ports.inference}",
        "management_address": f"http://{LOOPBACK}:{ports.management}",
        "metrics_address": f"http://{host}:{ports.metrics}",
        "grpc_inference_address": LOOPBACK,
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_address": LOOPBACK,
        "grpc_management_port": str(ports.grpc_management),
        "model_store": str(Path(model_store).resolve()),
        # loopback-only APIs, reached by the front alone; no run-time model (un)registration
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        # TS_* variables come from the pod spec (trusted), e.g. the chart's TS_NUMBER_OF_GPU
        "enable_envvars_config": "true",
        "install_py_dep_per_model": "false",
    })
    path = workdir / "config.properties"
    path.write_text("# written by `fissure serve`\n" + "".join(f"{k}={v}\n" for k, v in kept.items()))
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
    cfg = settings()
    path = workdir / "log4j2.xml"
    path.write_text(LOG4J2.format(logs=escape(logs, {'"': "&quot;"}), metrics=escape(metrics, {'"': "&quot;"}),
                                  level=cfg.ts_log_level, access="info" if cfg.ts_access_log else "warn",
                                  model=cfg.ts_model_log_level))
    return path


def check_ports(ports: list[tuple[int, str, str]]) -> None:
    """Fail with one clear line before starting anything if a (port, host, flag) is taken."""
    for port, host, flag in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                raise FissureError(f"port {port} on {host} is already in use; pick another with {flag}") from None


class TorchServe:
    """TorchServe in the foreground as a child process group."""

    def __init__(self, model_store: Path, config: Path | None, ports: TorchServePorts, host: str,
                 workdir: Path, env: dict[str, str] | None = None):
        self.model_store = Path(model_store)
        self.config = config
        self.ports = ports
        self.host = host
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self.management = f"http://{LOOPBACK}:{ports.management}"
        self.inference = f"http://{LOOPBACK}:{ports.inference}"

    def port_checks(self) -> list[tuple[int, str, str]]:
        p = self.ports
        return [(p.inference, LOOPBACK, "--ts-inference-port"), (p.management, LOOPBACK, "--ts-management-port"),
                (p.metrics, self.host, "--ts-metrics-port"),
                (p.grpc_inference, LOOPBACK, "--ts-grpc-inference-port"),
                (p.grpc_management, LOOPBACK, "--ts-grpc-management-port")]

    def start(self) -> None:
        java = find_java()
        config = effective_config(self.config, self.ports, self.model_store, self.host, self.workdir)
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
            **self.extra_env,
        })
        env.pop("TS_CONFIG_FILE", None)
        log_config = write_log_config(self.workdir, env["LOG_LOCATION"], env["METRICS_LOCATION"])
        cmd = [sys.executable, "-c", "import sys; from ts.model_server import start; sys.exit(start())",
               "--start", "--foreground", "--ncs", "--disable-token-auth",
               "--log-config", str(log_config),
               "--model-store", str(self.model_store.resolve()), "--ts-config", str(config)]
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
                        if workers_ready(client.get(f"{self.management}/models/{name}")):
                            pending.discard(name)
                    except httpx.HTTPError:
                        pass
                if pending:
                    if time.monotonic() > deadline:
                        raise FissureError(f"TorchServe models not ready after {timeout:.0f}s: {sorted(pending)}; "
                                           f"see {self.logs}")
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


def workers_ready(resp) -> bool:
    """True when a management `GET /models/<name>` answer lists workers, all READY."""
    try:
        workers = resp.json()[0].get("workers", []) if resp.status_code == 200 else []
    except (ValueError, IndexError, KeyError, AttributeError, TypeError):
        return False
    return bool(workers) and all(w.get("status") == "READY" for w in workers)


def ping_healthy(resp) -> bool:
    """True when TorchServe's `/ping` says Healthy (it answers 500 "Unhealthy" otherwise)."""
    try:
        return resp.status_code == 200 and resp.json().get("status") == "Healthy"
    except (ValueError, AttributeError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
