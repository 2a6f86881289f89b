"""``fissure up`` / ``fissure down``: the local stack, run by honcho from ``.fissure/Procfile``.

``up``: make sure both registered models have a ``champion`` (else run ``dvc repro``), package
the champions into ``.fissure/serving/`` (again only when a champion's version changed), write
the Procfile (MLflow server + ``fissure serve`` with the chosen host and runtime + the feedback
API + Prometheus when installed, scraping them all: :mod:`fissure.observability.prometheus`), print the
URLs and a curl example, then run honcho in the foreground (Ctrl-C stops everything) or
detached (``--detach``: pid file ``.fissure/stack.pid``, logs in ``.fissure/logs/``, progress
printed until the stack is ready; ``fissure down`` stops it).

The stack binds to loopback unless told otherwise (``--host`` / ``FISSURE_HOST``). It only
launches processes: it imports nothing of the serving front.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from fissure import MODEL_NAMES
from fissure.errors import ConfigError, FissureError, NotFoundError, UsageError
from fissure.observability import prometheus
from fissure.settings import LOOPBACK, PORTS, artifact_root, settings, state_dir, tracking_uri

CHAMPION = "champion"
WILDCARDS = ("0.0.0.0", "::")


@dataclass
class StackOptions:
    http_port: int = PORTS["inference_rest"]
    grpc_port: int = PORTS["inference_grpc"]
    mlflow_port: int = PORTS["mlflow"]
    api_port: int = PORTS["api"]
    prometheus_port: int = PORTS["prometheus"]
    host: str = LOOPBACK
    runtime: str = "inprocess"
    batch_size: int = 8
    max_batch_delay: int = 10
    ready_timeout: float = 600.0
    # run Prometheus (when it is installed: `up` turns this off, with a hint, when it is not)
    prometheus: bool = True


def repo_root() -> Path:
    """The project checkout (where dvc.yaml lives): the cwd or one of its parents."""
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists():
            return p
    return here


def champions() -> dict[str, dict | None]:
    from fissure.models.io import resolve

    found = {}
    for name in MODEL_NAMES.values():
        try:
            found[name] = resolve(f"models:/{name}@{CHAMPION}")
        except NotFoundError:
            found[name] = None
    return found


TRAIN_STAGE = {"crack-classifier": "train_classifier", "crack-segmenter": "train_segmenter"}


def _dvc(dvc: str, args: list[str], root: Path) -> None:
    code = subprocess.call([dvc, *args], cwd=root)
    if code != 0:
        raise FissureError(f"`dvc {' '.join(args)}` failed (exit {code}); fix the pipeline and run `make up` again")


def ensure_champions(echo=print) -> dict[str, dict]:
    found = champions()
    missing = [n for n, v in found.items() if v is None]
    if missing:
        root = repo_root()
        if not (root / "dvc.yaml").exists():
            raise FissureError(f"no {CHAMPION} for {missing} and no dvc.yaml in {root} to train them")
        dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
        echo(f">> no {CHAMPION} for {', '.join(missing)}: running `dvc repro` in {root} (first run trains both models)")
        _dvc(dvc, ["repro"], root)
        found = champions()
        missing = [n for n, v in found.items() if v is None]
        if missing:
            # The pipeline was up to date (its outputs cached) but this tracking store never saw
            # the runs, e.g. after .fissure/ was deleted: retrain just those stages.
            stages = [TRAIN_STAGE[n] for n in missing]
            echo(f">> pipeline up to date but no {CHAMPION} in {tracking_uri()}: `dvc repro --force --single-item {' '.join(stages)}`")
            _dvc(dvc, ["repro", "--force", "--single-item", *stages], root)
            found = champions()
            missing = [n for n, v in found.items() if v is None]
        if missing:
            raise FissureError(f"`dvc repro` finished but {missing} still have no '{CHAMPION}' alias "
                               f"in {tracking_uri()}")
    return found


def package_champions(found: dict[str, dict], opts: StackOptions, echo=print) -> Path:
    """Package each champion into .fissure/serving unless that version is already there."""
    from fissure.serving.package import package

    out = state_dir() / "serving"
    record_path = out / "packaged.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for name, info in found.items():
        have = record.get(name, {})
        mar = out / "model-store" / f"{name}.mar"
        if mar.exists() and have.get("version") == info["version"] and have.get("run_id") == info["run_id"]:
            echo(f">> {name} v{info['version']} already packaged")
            continue
        echo(f">> packaging {name} v{info['version']} (champion) into {out}")
        package(f"models:/{name}@{CHAMPION}", out, name=name, batch_size=opts.batch_size,
                max_batch_delay=opts.max_batch_delay)
        record[name] = {"version": info["version"], "run_id": info["run_id"]}
        out.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2))
    return out




# The internal TorchServe ports and the variables `fissure serve` reads them from (settings()
# has no fields for them).
def ts_port(key: str) -> int:
    """An internal TorchServe port as `fissure serve` will use it (its FISSURE_TS_* setting)."""
    return getattr(settings(), "ts_" + key.removeprefix("torchserve_") + "_port")


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def client_host(host: str) -> str:
    """Where a client on this machine reaches a stack bound to ``host``."""
    return LOOPBACK if host == "0.0.0.0" else "::1" if host == "::" else host


def stack_ports(opts: StackOptions) -> list[tuple[int, str, str]]:
    """(port, bind address, what) of every port the stack will open."""
    ports = [(opts.http_port, opts.host, "inference REST"), (opts.grpc_port, opts.host, "inference gRPC"),
             (opts.mlflow_port, opts.host, "MLflow"), (opts.api_port, opts.host, "feedback API and UI")]
    if opts.prometheus:
        ports.append((opts.prometheus_port, opts.host, "Prometheus"))
    if opts.runtime == "torchserve":
        ports += [(ts_port("torchserve_metrics"), opts.host, "TorchServe metrics"),
                  (ts_port("torchserve_inference"), LOOPBACK, "TorchServe inference"),
                  (ts_port("torchserve_management"), LOOPBACK, "TorchServe management"),
                  (ts_port("torchserve_grpc_inference"), LOOPBACK, "TorchServe gRPC inference"),
                  (ts_port("torchserve_grpc_management"), LOOPBACK, "TorchServe gRPC management")]
    return ports


def _port_free(port: int, host: str) -> bool:
    """Whether ``host:port`` can be bound now; an address this machine does not have is a usage error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
            return True
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise UsageError(f"--host {host}: cannot listen there ({exc.strerror})") from None


def check_ports(opts: StackOptions) -> None:
    for port, host, what in stack_ports(opts):
        if not _port_free(port, host):
            raise FissureError(f"port {port} ({what}) is already in use on {host}; "
                               f"stop what uses it (`fissure down`?)")


def procfile(opts: StackOptions, serving: Path) -> Path:
    home = state_dir()
    fissure = shutil.which("fissure") or str(Path(sys.executable).with_name("fissure"))
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    q = shlex.quote
    lines = [
        f"mlflow: exec {q(mlflow)} server --backend-store-uri {q(tracking_uri())} "
        f"--default-artifact-root {q(artifact_root())} --host {q(opts.host)} --port {opts.mlflow_port} --workers 1",
        f"serve: exec {q(fissure)} serve --model-store {q(str(serving / 'model-store'))} "
        f"--config {q(str(serving / 'config' / 'config.properties'))} --host {q(opts.host)} "
        f"--runtime {q(opts.runtime)} --http-port {opts.http_port} --grpc-port {opts.grpc_port} "
        f"--workdir {q(str(home / 'serve'))} --routing-file {q(str(routing_file()))}",
        f"api: exec {q(fissure)} api --host {q(opts.host)} --port {opts.api_port}",
    ]
    prom = prometheus_line(opts) if opts.prometheus else None
    if prom:
        lines.append(prom)
        lines += grafana_lines(opts)
    path = home / "Procfile"
    path.write_text("# written by `fissure up`; do not edit\n" + "\n".join(lines) + "\n")
    return path


def routing_file() -> Path:
    """The canary routing the stack's front follows (fissure.serving.canary); `up` starts
    without a canary, `fissure promote --actuator local` writes it."""
    return state_dir() / "serving" / "routing.json"


def urls_file() -> Path:
    return state_dir() / "stack.json"


def stack_urls() -> dict[str, str]:
    """Where the running stack's parts answer (written by `up`), for clients such as `fissure promote`."""
    try:
        return json.loads(urls_file().read_text())
    except (OSError, ValueError):
        return {}


def prometheus_url(opts: StackOptions) -> str:
    return f"http://{_url_host(client_host(opts.host))}:{opts.prometheus_port}"


def prometheus_line(opts: StackOptions) -> str | None:
    """Prometheus's Procfile entry (None when it is not installed: `up` has said so); writes its
    config (.fissure/prometheus.yml) from the stack's targets, with the chart's rules. Storage:
    .fissure/prometheus/."""
    home = state_dir()
    binary = prometheus.find()
    if binary is None:
        return None
    rules = prometheus.rules_file(repo_root())
    config = prometheus.write_config(home / "prometheus.yml", prometheus.targets(opts), [rules] if rules else [])
    return prometheus.procfile_line(binary, config, home / "prometheus",
                                    f"{_url_host(opts.host)}:{opts.prometheus_port}")


def with_prometheus(opts: StackOptions, echo=print) -> StackOptions:
    """``opts`` as `up` runs them: without Prometheus, and one line saying how to add it, when it
    is not installed."""
    if opts.prometheus and prometheus.find() is None:
        echo(f">> {prometheus.INSTALL_HINT}")
        return dataclasses.replace(opts, prometheus=False)
    return opts


def grafana_lines(opts: StackOptions) -> list[str]:
    """Grafana, where ``grafana-server`` is installed: provisioned with Prometheus and the chart's
    dashboards by :func:`fissure.observability.grafana.provision` (on loopback, port 3000)."""
    server = shutil.which("grafana-server")
    if server is None:
        return []
    from fissure.observability import grafana

    ini = grafana.provision(state_dir() / "grafana", prometheus_url(opts))
    return [f"grafana: exec {shlex.quote(server)} --homepath /usr/share/grafana --config {shlex.quote(str(ini))}"]


def banner(opts: StackOptions) -> str:
    shown = _url_host(opts.host)
    rest = f"http://{_url_host(client_host(opts.host))}:{opts.http_port}"
    url_flag = "" if rest == settings().url else f" --url {rest}"
    metrics = (f"  TorchServe metrics             http://{shown}:{ts_port('torchserve_metrics')}/metrics\n"
               if opts.runtime == "torchserve" else "")
    prom = f"  Prometheus (5 s scrapes)       http://{shown}:{opts.prometheus_port}\n" if opts.prometheus else ""
    return f"""
fissure stack (runtime {opts.runtime})
  inference REST (KServe v1/v2)  http://{shown}:{opts.http_port}
  inference gRPC (KServe v2)     {shown}:{opts.grpc_port}
{metrics}  MLflow                         http://{shown}:{opts.mlflow_port}
  feedback UI and API            http://{shown}:{opts.api_port}/  (OpenAPI at /docs)
{prom}{exposure_warning(opts.host)}
try it (any JPEG/PNG):
  fissure predict image.jpg{url_flag}
  curl -s {rest}/v1/models/crack-classifier:predict -H 'Content-Type: application/json' \\
       -d "{{\\"instances\\": [{{\\"b64\\": \\"$(base64 -w0 image.jpg)\\"}}]}}"
  curl -s {rest}/v2/models/crack-segmenter/infer -H 'Content-Type: application/json' \\
       -d "{{\\"inputs\\": [{{\\"name\\": \\"image\\", \\"datatype\\": \\"BYTES\\", \\"shape\\": [1], \\"data\\": [\\"$(base64 -w0 image.jpg)\\"]}}]}}"
"""


def exposure_warning(host: str) -> str:
    """A warning line (with its newline) when ``host`` is reachable from other machines, else ''."""
    if is_loopback(host):
        return ""
    where = "all interfaces" if is_wildcard(host) else host
    return (f"  WARNING: listening on {where}: anyone who can reach this machine can call the models "
            f"and MLflow, without authentication\n")


# --- pid files -----------------------------------------------------------------------------
# A pid alone can name another process once ours is gone (pids are reused), so the stack's
# pid file also records the process's start time and command line; nothing is signalled
# unless the live process still matches them.


def pid_file() -> Path:
    return state_dir() / "stack.pid"


def _start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` in clock ticks since boot (/proc/PID/stat field 22), or
    None without /proc. Unlike create_time() it does not move with the wall clock: create_time()
    adds the boot time, which the kernel derives from the clock, so a clock step would make one
    process read as another."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _age(pid: int) -> float:
    """Seconds since `pid` started, on the kernel's boot clock (immune to wall-clock steps,
    like the ticks above); from create_time() only without /proc."""
    ticks = _start_ticks(pid)
    try:
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        uptime = None
    if ticks is None or uptime is None:
        return time.time() - psutil.Process(pid).create_time()
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def _identity(pid: int) -> dict | None:
    """Start time (wall clock and kernel ticks) and command line of a live pid, None when it is gone."""
    try:
        proc = psutil.Process(pid)
        return {"pid": pid, "started": proc.create_time(), "ticks": _start_ticks(pid), "cmdline": proc.cmdline()}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def write_pid_file(pid: int) -> None:
    found = _identity(pid)
    # Popen returns once the child's exec has swapped its memory, a moment before the kernel
    # sets the new argv: /proc/PID/cmdline can still read empty then, and recording that made
    # the stack read as `foreign` later (CI, twice). Wait (at most 2 s) for the real one.
    deadline = time.monotonic() + 2.0
    while found is not None and not found["cmdline"] and time.monotonic() < deadline:
        time.sleep(0.01)
        found = _identity(pid)
    if found is None:
        raise FissureError(f"the stack (pid {pid}) exited as it started; see {state_dir() / 'logs'}")
    pid_file().write_text(json.dumps(found) + "\n")


@dataclass
class PidCheck:
    """What the pid file names: ``running`` (our stack), ``none`` (no file), ``stale`` (its
    process is gone) or ``foreign`` (its pid is now another process, or cannot be verified)."""

    state: str
    pid: int | None = None
    detail: str = ""


def check_pid_file() -> PidCheck:
    try:
        text = pid_file().read_text()
    except FileNotFoundError:
        return PidCheck("none")
    try:
        recorded = json.loads(text)
        pid = int(recorded["pid"])
    except (ValueError, TypeError, KeyError):
        recorded = None
        pid = int(text) if text.strip().isdigit() else None  # an older fissure wrote the bare pid
    if pid is None:
        return PidCheck("stale")
    try:
        now = _identity(pid)
    except psutil.AccessDenied:
        return PidCheck("foreign", pid, "it is another user's process")
    if now is None:
        return PidCheck("stale", pid)
    if recorded is None:
        return PidCheck("foreign", pid, "the pid file does not say which process it was")
    started, ticks = recorded.get("started"), recorded.get("ticks")
    if isinstance(ticks, int) and now["ticks"] is not None:
        same_start = ticks == now["ticks"]
    else:  # a pid file of an older fissure, or no /proc: create_time() is in whole seconds of boot time
        same_start = isinstance(started, (int, float)) and abs(now["started"] - started) <= 1.0
    if not same_start or now["cmdline"] != recorded.get("cmdline"):
        return PidCheck("foreign", pid, f"it is now another process (`{shlex.join(now['cmdline'])[:60]}`)")
    return PidCheck("running", pid)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _group_running(pgid: int) -> bool:
    """Whether a process of the group still runs (a zombie only waits for its parent to reap it)."""
    if not _signal_group(pgid, 0):
        return False
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


def _stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM a process group, SIGKILL it if it outlives ``timeout`` seconds."""
    if pgid == os.getpgrp():  # never our own group (a pid file can only name another one)
        raise FissureError(f"refusing to signal process group {pgid}: it is fissure's own")
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_running(pgid):
            return
        time.sleep(0.2)
    _signal_group(pgid, signal.SIGKILL)


def _reap_torchserve() -> bool:
    """Safety net: stop a TorchServe left behind by a killed `fissure serve` of this stack.

    TorchServe writes its java pid to ``<serve workdir>/tmp/.model_server.pid``. That process
    (with its group: the launcher and the Python workers) is stopped only when it is still a
    TorchServe whose temp dir is this one, that started before the pid file was written, and
    that no live `fissure serve` of this workdir supervises any more.
    """
    pid_path = state_dir() / "serve" / "tmp" / ".model_server.pid"
    try:
        pid = int(pid_path.read_text().strip())
        file_age = time.time() - pid_path.stat().st_mtime
        found = _identity(pid)
        # Ages, not timestamps: create_time() moves with the wall clock (CI saw a step make a
        # fresh TorchServe read as started after its own pid file).
        ours = (found is not None and "org.pytorch.serve.ModelServer" in found["cmdline"]
                and f"-Djava.io.tmpdir={pid_path.parent}" in found["cmdline"]
                and _age(pid) >= file_age - 1.0)
        if ours and any(str(pid_path.parent.parent) in p.cmdline() for p in psutil.Process(pid).parents()):
            return False  # a running stack's own TorchServe, not a leftover
    except (OSError, ValueError, psutil.Error):
        return False
    if not ours:
        pid_path.unlink(missing_ok=True)
        return False
    try:
        _stop_group(os.getpgid(pid), timeout=5.0)
    except ProcessLookupError:
        pass
    pid_path.unlink(missing_ok=True)
    return True


# --- readiness -----------------------------------------------------------------------------


@dataclass
class Check:
    """One thing a detached start waits for: ``url`` answers and ``ready`` accepts the answer."""

    what: str
    url: str
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200


def _workers_ready(r: httpx.Response) -> bool:
    """TorchServe's describe-model answer: every worker of the model is READY."""
    try:
        workers = r.json()[0]["workers"] if r.status_code == 200 else []
    except (ValueError, LookupError, TypeError):
        return False
    return bool(workers) and all(w.get("status") == "READY" for w in workers)


def readiness_checks(opts: StackOptions) -> list[Check]:
    """MLflow, then (TorchServe runtime) each model's workers, then the inference front, the
    API and Prometheus."""
    host = _url_host(client_host(opts.host))
    checks = [Check("MLflow", f"http://{host}:{opts.mlflow_port}/health")]
    if opts.runtime == "torchserve":
        mgmt = f"http://{LOOPBACK}:{ts_port('torchserve_management')}"
        checks += [Check(f"TorchServe workers of {name}", f"{mgmt}/models/{name}", _workers_ready)
                   for name in MODEL_NAMES.values()]
    checks.append(Check("the inference front", f"http://{host}:{opts.http_port}/v2/health/ready"))
    checks.append(Check("the feedback API", f"http://{host}:{opts.api_port}/ping"))
    if opts.prometheus:
        checks.append(Check("Prometheus", f"http://{host}:{opts.prometheus_port}/-/ready"))
    return checks


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_log_line(path: Path, width: int = 120) -> str:
    """The last non-blank line of a log (its last carriage-return segment, no colours), shortened."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        line = _ANSI.sub("", line.split("\r")[-1]).strip()
        if line:
            return line if len(line) <= width else line[: width - 3] + "..."
    return ""


class WaitReport:
    """Progress of a detached start: a live status line on a terminal; otherwise plain lines,
    printed when the state or the log's last line changes and at least every ``every`` seconds."""

    def __init__(self, echo: Callable[[str], object], live: bool = False, every: float = 5.0):
        self.echo, self.every = echo, every
        self.status = None
        if live:
            from rich.console import Console

            self.console = Console(highlight=False)
            self.status = self.console.status("starting", spinner="dots")
            self.status.start()
        self.last: tuple[tuple, float] | None = None

    def ready(self, what: str, elapsed: float) -> None:
        self._print(f">> {what} ready ({elapsed:.0f}s)")

    def waiting(self, pending: list[str], elapsed: float, log_line: str) -> None:
        text = f"waiting for {', '.join(pending)} ({elapsed:.0f}s)" + (f" | {log_line}" if log_line else "")
        if self.status is not None:
            from rich.text import Text

            self.status.update(Text(text))  # log lines are not rich markup
            return
        key = (tuple(pending), log_line)
        if self.last is None or self.last[0] != key or elapsed - self.last[1] >= self.every:
            self.echo("   " + text)
            self.last = (key, elapsed)

    def _print(self, line: str) -> None:
        if self.status is not None:
            self.console.print(line, markup=False)
        else:
            self.echo(line)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()


def wait_ready(proc: subprocess.Popen, checks: list[Check], log_path: Path, timeout: float,
               report: WaitReport) -> None:
    """Poll ``checks`` once a second until all pass, reporting progress; fail if ``proc`` exits
    or ``timeout`` seconds pass."""
    start = time.monotonic()
    pending = list(checks)
    with httpx.Client(timeout=2.0) as client:
        while pending:
            elapsed = time.monotonic() - start
            if proc.poll() is not None:
                raise FissureError(f"the stack exited (code {proc.returncode}) before it was ready; "
                                   f"last log line: {last_log_line(log_path) or '(none)'}; see {log_path}")
            if elapsed > timeout:
                raise FissureError(f"the stack is not ready after {timeout:.0f}s (still waiting for "
                                   f"{', '.join(c.what for c in pending)}); see {log_path} (`fissure down` stops it)")
            for check in list(pending):
                try:
                    ok = check.ready(client.get(check.url))
                except httpx.HTTPError:
                    ok = False
                if ok:
                    pending.remove(check)
                    report.ready(check.what, elapsed)
            if pending:
                report.waiting([c.what for c in pending], elapsed, last_log_line(log_path))
                time.sleep(1.0)


# --- up / down -----------------------------------------------------------------------------


def up(opts: StackOptions, detach: bool = False, echo=print, live: bool = False) -> int:
    """Start the stack; ``live`` shows the detached wait as a status line (a terminal)."""
    running = check_pid_file()
    if running.state == "running":
        raise FissureError(f"a detached stack is already running (pid {running.pid}); `fissure down` first")
    pid_file().unlink(missing_ok=True)
    if opts.runtime == "torchserve":
        from fissure.serving.torchserve import find_java

        find_java()
    opts = with_prometheus(opts, echo)
    check_ports(opts)
    found = ensure_champions(echo)
    serving = package_champions(found, opts, echo)
    routing_file().unlink(missing_ok=True)  # a canary of an earlier stack is over: champions only
    proc_path = procfile(opts, serving)
    honcho = [sys.executable, "-m", "honcho", "start", "-f", str(proc_path), "-d", str(repo_root()), "--no-prefix"]
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    token = admin_token_once()
    host = _url_host(client_host(opts.host))
    # MLflow 3's server otherwise starts a job runner with seven huey consumers (~1.7 GB, and CPU
    # at every start) for GenAI jobs fissure never submits; a user's own setting wins
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           **os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "PYTHONUNBUFFERED": "1",
           # the API calls the front and links to MLflow on this stack's ports
           "FISSURE_INFERENCE_URL": f"http://{host}:{opts.http_port}", "FISSURE_MLFLOW_URL": f"http://{host}:{opts.mlflow_port}",
           **({"FISSURE_PROMETHEUS_URL": prometheus_url(opts)} if opts.prometheus else {})}
    urls_file().write_text(json.dumps({
        "inference_url": env["FISSURE_INFERENCE_URL"], "mlflow_url": env["FISSURE_MLFLOW_URL"],
        "api_url": f"http://{host}:{opts.api_port}", "grpc_url": f"{host}:{opts.grpc_port}",
        **({"prometheus_url": env["FISSURE_PROMETHEUS_URL"]} if opts.prometheus else {})}, indent=2) + "\n")
    token_line = f"\nadmin token for the UI and API (shown once; `fissure token create` makes more):\n  {token}\n" if token else ""
    if not detach:
        echo(banner(opts) + token_line + "\nCtrl-C stops the stack.\n")
        proc = subprocess.Popen(honcho[:-1], env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return proc.wait()
        finally:
            _reap_torchserve()
    log_path = logs / "stack.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(honcho, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    write_pid_file(proc.pid)
    echo(f">> stack starting in the background (pid {proc.pid}, log {log_path})")
    report = WaitReport(echo, live=live)
    try:
        wait_ready(proc, readiness_checks(opts), log_path, opts.ready_timeout, report)
    except FissureError:
        if proc.poll() is not None:
            pid_file().unlink(missing_ok=True)
            _reap_torchserve()
        raise
    finally:
        report.close()
    echo(banner(opts) + token_line + "\n`fissure down` (or `make down`) stops it.")
    return 0


def admin_token_once() -> str | None:
    """An admin token for a feedback store that has none yet (printed once by `up`), else None."""
    from fissure.api.auth import create_token
    from fissure.api.store import Store

    store = Store()
    store.migrate()
    made = create_token(store, "admin", "admin", only_if_none=True)
    return made[0] if made else None


def down(timeout: float = 30.0, echo=print) -> int:
    found = check_pid_file()
    if found.state != "running":
        pid_file().unlink(missing_ok=True)
        reaped = " (stopped a leftover TorchServe)" if _reap_torchserve() else ""
        if found.state == "foreign":
            echo(f"left pid {found.pid} alone: {pid_file()} named it but {found.detail}; "
                 f"removed the pid file{reaped}")
        else:
            stale = " (removed a stale pid file)" if found.state == "stale" else ""
            echo("no detached stack is running" + stale + reaped)
        return 0
    # honcho was started in a session of its own: its pid is the group of every stack process
    _stop_group(found.pid, timeout)
    _reap_torchserve()
    pid_file().unlink(missing_ok=True)
    echo(f"stopped the stack (pid {found.pid})")
    return 0
