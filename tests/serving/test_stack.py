"""`fissure up`/`down` pieces that need no running stack (the full stack is `make up`)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil
import pytest

from fissure.errors import ConfigError, FissureError, UsageError


def _lines(path):
    text = path.read_text()
    return (next(line for line in text.splitlines() if line.startswith("mlflow:")),
            next(line for line in text.splitlines() if line.startswith("serve:")))


def test_procfile_runs_mlflow_and_serve_on_loopback_with_torchserve_by_default(tmp_path):
    from fissure.stack import StackOptions, procfile

    path = procfile(StackOptions(http_port=18080, grpc_port=18081, mlflow_port=15000), tmp_path / "serving")
    assert path.parent.name == "fissure-home"  # under FISSURE_HOME (.fissure/ by default)
    mlflow, serve = _lines(path)
    assert "server --backend-store-uri sqlite:///" in mlflow and "--port 15000" in mlflow
    assert "--host 127.0.0.1" in mlflow
    assert " serve --model-store " in serve and "--http-port 18080" in serve and "--grpc-port 18081" in serve
    assert "--host 127.0.0.1" in serve and "--runtime inprocess" in serve
    api = [line for line in path.read_text().splitlines() if line.startswith("api:")]
    assert len(api) == 1 and " api --host 127.0.0.1 --port 8000" in api[0]


def test_procfile_passes_the_chosen_host_and_runtime(tmp_path):
    from fissure.stack import StackOptions, procfile

    mlflow, serve = _lines(procfile(StackOptions(host="0.0.0.0", runtime="inprocess"), tmp_path / "serving"))
    assert "--host 0.0.0.0" in mlflow
    assert "--host 0.0.0.0" in serve and "--runtime inprocess" in serve


def test_procfile_serve_line_is_accepted_by_fissure_serve(tmp_path):
    from fissure.cli.serve import serve
    from fissure.stack import StackOptions, procfile

    _, line = _lines(procfile(StackOptions(host="0.0.0.0", runtime="inprocess"), tmp_path / "serving"))
    args = shlex.split(line)[shlex.split(line).index("serve") + 1:]
    ctx = serve.make_context("serve", args)
    assert ctx.params["host"] == "0.0.0.0" and ctx.params["runtime"] == "inprocess"


def test_banner_shows_the_bound_host_and_no_warning_on_loopback():
    from fissure.stack import StackOptions, banner

    text = banner(StackOptions(runtime="torchserve"))
    assert "http://127.0.0.1:8080" in text and "http://127.0.0.1:8082/metrics" in text
    assert "WARNING" not in text


def test_banner_warns_once_when_the_stack_is_open_to_the_network():
    from fissure.stack import StackOptions, banner

    text = banner(StackOptions(host="0.0.0.0", http_port=18080))
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "all interfaces" in warnings[0]
    assert "inference REST (KServe v1/v2)  http://0.0.0.0:18080" in text
    assert "MLflow                         http://0.0.0.0:5000" in text
    # the examples use an address a client on this machine can reach
    assert "--url http://127.0.0.1:18080" in text and "curl -s http://127.0.0.1:18080/v1/" in text


def test_banner_of_the_inprocess_runtime_has_no_torchserve_metrics():
    from fissure.stack import StackOptions, banner

    text = banner(StackOptions(runtime="inprocess"))
    assert "runtime inprocess" in text and "TorchServe" not in text


def test_a_taken_port_is_found_on_the_chosen_host():
    from fissure.stack import StackOptions, check_ports

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(FissureError, match=rf"port {port} \(inference REST\) is already in use on 127.0.0.1"):
            check_ports(StackOptions(http_port=port, runtime="inprocess"))


@pytest.fixture
def fresh_settings():
    """Settings re-read from the (monkeypatched) environment, and again after the test."""
    from fissure.settings import reload_settings, settings

    yield reload_settings
    settings.cache_clear()


def test_torchserve_ports_are_checked_only_for_the_torchserve_runtime(monkeypatch, fresh_settings):
    from fissure.stack import StackOptions, check_ports

    free = []
    for _ in range(7):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free.append(s.getsockname()[1])
    for var, port in zip(["FISSURE_TS_INFERENCE_PORT", "FISSURE_TS_METRICS_PORT", "FISSURE_TS_GRPC_INFERENCE_PORT",
                          "FISSURE_TS_GRPC_MANAGEMENT_PORT"], free[3:]):
        monkeypatch.setenv(var, str(port))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setenv("FISSURE_TS_MANAGEMENT_PORT", str(s.getsockname()[1]))
        fresh_settings()
        opts = dict(http_port=free[0], grpc_port=free[1], mlflow_port=free[2])
        check_ports(StackOptions(runtime="inprocess", **opts))
        with pytest.raises(FissureError, match="TorchServe management"):
            check_ports(StackOptions(runtime="torchserve", **opts))


def test_a_bad_torchserve_port_variable_is_one_line(monkeypatch, fresh_settings):
    from fissure.stack import ts_port

    monkeypatch.setenv("FISSURE_TS_METRICS_PORT", "eighty")
    with pytest.raises(ConfigError, match="FISSURE_TS_METRICS_PORT='eighty': Input should be a valid integer"):
        fresh_settings()
        ts_port("torchserve_metrics")


def test_a_host_this_machine_does_not_have_is_a_usage_error():
    from fissure.stack import StackOptions, check_ports

    with pytest.raises(UsageError, match="--host 192.0.2.1: cannot listen there"):
        check_ports(StackOptions(host="192.0.2.1", runtime="inprocess"))


def test_up_with_a_foreign_host_fails_in_one_line_before_training(capsys):
    from fissure.cli import main

    assert main(["up", "--host", "192.0.2.1", "--runtime", "inprocess", "--detach"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fissure: error: --host 192.0.2.1: cannot listen there") and err.count("\n") == 1


def test_stack_imports_nothing_of_the_serving_front():
    code = "import sys, fissure.stack; print([m for m in sys.modules if m.startswith('fissure.serving')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- pid files -----------------------------------------------------------------------------


@pytest.fixture
def sleeper():
    """An unrelated live process that leads its own process group (as the stack's honcho does)."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_down_stops_the_stack_its_pid_file_names(sleeper):
    from fissure.stack import check_pid_file, down, write_pid_file

    write_pid_file(sleeper.pid)
    assert check_pid_file().state == "running"
    lines = []
    assert down(echo=lines.append) == 0
    assert lines == [f"stopped the stack (pid {sleeper.pid})"]
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def test_a_clock_step_does_not_make_the_stack_foreign(sleeper):
    """The pid file's identity is the kernel's start ticks, not create_time(): psutil adds the boot
    time, which the kernel derives from the wall clock, so a clock step between `fissure up` and
    `fissure down` would move it. Simulated here by moving psutil's cached boot time by 5 s."""
    import psutil._pslinux as pslinux
    from fissure.stack import check_pid_file, write_pid_file

    write_pid_file(sleeper.pid)
    saved = pslinux.BOOT_TIME
    pslinux.BOOT_TIME = (saved or psutil.boot_time()) + 5.0
    try:
        assert check_pid_file().state == "running"
    finally:
        pslinux.BOOT_TIME = saved


def test_the_pid_file_waits_for_the_argv_of_a_process_still_in_exec(sleeper, monkeypatch):
    """Popen returns when the child's exec has swapped its memory, a moment before the kernel sets
    the new argv, so /proc/PID/cmdline can read empty (CI, twice: the stack just started read as
    `foreign`). Simulated: the first two reads of the command line are empty."""
    from fissure.stack import check_pid_file, write_pid_file

    real = psutil.Process.cmdline
    reads = []

    def cmdline_mid_exec(self):
        reads.append(self.pid)
        return [] if len(reads) <= 2 else real(self)

    monkeypatch.setattr(psutil.Process, "cmdline", cmdline_mid_exec)
    write_pid_file(sleeper.pid)
    assert len(reads) >= 3
    monkeypatch.setattr(psutil.Process, "cmdline", real)
    assert check_pid_file().state == "running"


@pytest.mark.parametrize("form", ["identity of another process", "bare pid of an older fissure"])
def test_down_leaves_a_reused_pid_alone_and_says_so(sleeper, form):
    from fissure.stack import down, pid_file

    if form == "bare pid of an older fissure":
        pid_file().write_text(f"{sleeper.pid}\n")
    else:  # the stack that wrote it started earlier, with another command line
        started = psutil.Process(sleeper.pid).create_time() - 600
        pid_file().write_text(json.dumps({"pid": sleeper.pid, "started": started,
                                          "cmdline": [sys.executable, "-m", "honcho", "start"]}))
    lines = []
    assert down(echo=lines.append) == 0
    assert len(lines) == 1 and lines[0].startswith(f"left pid {sleeper.pid} alone: ")
    assert sleeper.poll() is None and psutil.Process(sleeper.pid).status() != psutil.STATUS_ZOMBIE
    assert not pid_file().exists()


def test_down_cleans_a_stale_pid_file():
    from fissure.stack import down, pid_file, write_pid_file

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    write_pid_file(proc.pid)
    proc.kill()
    proc.wait()
    lines = []
    assert down(echo=lines.append) == 0
    assert lines == ["no detached stack is running (removed a stale pid file)"]
    assert not pid_file().exists()


def test_down_without_a_stack_says_so():
    from fissure.stack import down

    lines = []
    assert down(echo=lines.append) == 0
    assert lines == ["no detached stack is running"]


def test_up_refuses_while_the_stack_runs(sleeper):
    from fissure.stack import StackOptions, up, write_pid_file

    write_pid_file(sleeper.pid)
    with pytest.raises(FissureError, match=rf"already running \(pid {sleeper.pid}\)"):
        up(StackOptions(), detach=True, echo=lambda *_: None)


def _torchserve_lookalike(tmpdir):
    """A process whose command line is that of a TorchServe with ``tmpdir`` as its temp dir."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "org.pytorch.serve.ModelServer",
                             f"-Djava.io.tmpdir={tmpdir}"], start_new_session=True)
    for _ in range(200):  # its argv is set a moment after Popen returns
        if psutil.Process(proc.pid).cmdline():
            break
        time.sleep(0.01)
    return proc


def test_leftover_torchserve_is_reaped_only_when_it_is_still_ours(sleeper):
    from fissure.settings import state_dir
    from fissure.stack import _reap_torchserve

    tmp = state_dir() / "serve" / "tmp"
    tmp.mkdir(parents=True)
    pid_path = tmp / ".model_server.pid"

    pid_path.write_text(str(sleeper.pid))  # the pid now belongs to something else
    assert _reap_torchserve() is False and sleeper.poll() is None

    leftover = _torchserve_lookalike(tmp)
    try:
        pid_path.write_text(str(leftover.pid))
        os.utime(pid_path, (0, 0))  # written long before this process started: a reused pid
        assert _reap_torchserve() is False and leftover.poll() is None
        pid_path.write_text(str(leftover.pid))
        assert _reap_torchserve() is True
        assert leftover.wait(timeout=10) == -signal.SIGTERM and not pid_path.exists()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_a_wall_clock_step_does_not_hide_a_leftover_torchserve(monkeypatch):
    """create_time() adds a boot time derived from the wall clock: after a clock step a fresh
    process can read as started after its own pid file (CI). The age on the boot clock cannot."""
    from fissure.settings import state_dir
    from fissure.stack import _reap_torchserve

    tmp = state_dir() / "serve" / "tmp"
    tmp.mkdir(parents=True)
    leftover = _torchserve_lookalike(tmp)
    try:
        (tmp / ".model_server.pid").write_text(str(leftover.pid))
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: time.time() + 30.0)
        assert _reap_torchserve() is True
        assert leftover.wait(timeout=10) == -signal.SIGTERM
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


# --- progress while a detached stack starts ------------------------------------------------


def test_last_log_line_is_the_last_meaningful_one(tmp_path):
    from fissure.stack import last_log_line

    log = tmp_path / "stack.log"
    assert last_log_line(log) == ""
    log.write_text("started\n\x1b[32mmlflow listening\x1b[0m\n\n   \n")
    assert last_log_line(log) == "mlflow listening"
    log.write_text("loading 10%\rloading 90%\r\n" + "x" * 300 + "\n")
    assert last_log_line(log, width=20) == "x" * 17 + "..."
    log.write_text("loading 10%\rloading 90%\n")
    assert last_log_line(log) == "loading 90%"


def test_plain_progress_prints_changes_and_every_five_seconds():
    from fissure.stack import WaitReport

    lines = []
    report = WaitReport(lines.append)
    report.waiting(["MLflow", "the inference front"], 0.2, "")
    report.waiting(["MLflow", "the inference front"], 1.2, "")  # nothing new: quiet
    report.waiting(["MLflow", "the inference front"], 2.2, "mlflow listening")
    report.ready("MLflow", 3.0)
    report.waiting(["the inference front"], 3.1, "mlflow listening")
    report.waiting(["the inference front"], 5.0, "mlflow listening")
    report.waiting(["the inference front"], 8.1, "mlflow listening")
    assert lines == [
        "   waiting for MLflow, the inference front (0s)",
        "   waiting for MLflow, the inference front (2s) | mlflow listening",
        ">> MLflow ready (3s)",
        "   waiting for the inference front (3s) | mlflow listening",
        "   waiting for the inference front (8s) | mlflow listening",
    ]


def test_readiness_waits_for_each_models_torchserve_workers_and_the_front():
    from fissure.stack import StackOptions, readiness_checks

    ts = [c.what for c in readiness_checks(StackOptions(runtime="torchserve", host="0.0.0.0"))]
    assert ts == ["MLflow", "TorchServe workers of crack-classifier", "TorchServe workers of crack-segmenter",
                  "the inference front", "the feedback API", "Prometheus"]
    inproc = readiness_checks(StackOptions(runtime="inprocess", host="0.0.0.0", http_port=18080, prometheus=False))
    assert [c.what for c in inproc] == ["MLflow", "the inference front", "the feedback API"]
    assert inproc[-2].url == "http://127.0.0.1:18080/v2/health/ready"
    assert inproc[-1].url == "http://127.0.0.1:8000/ping"


def test_torchserve_workers_are_ready_only_when_all_are():
    from fissure.stack import _workers_ready

    def described(*states):
        return httpx.Response(200, json=[{"modelName": "m", "workers": [{"status": s} for s in states]}])

    assert _workers_ready(described("READY", "READY"))
    assert not _workers_ready(described("READY", "UNLOADING"))
    assert not _workers_ready(described())
    assert not _workers_ready(httpx.Response(404, json={"code": 404}))


@pytest.fixture
def flaky_server():
    """/ok answers 200; /late answers 503 once, then 200."""
    calls = {"late": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            late = self.path == "/late"
            calls["late"] += late
            self.send_response(503 if late and calls["late"] == 1 else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wait_ready_reports_what_it_waits_for_and_the_log(flaky_server, sleeper, tmp_path):
    from fissure.stack import Check, WaitReport, wait_ready

    log = tmp_path / "stack.log"
    log.write_text("front: loading crack-segmenter\n")
    lines = []
    wait_ready(sleeper, [Check("MLflow", f"{flaky_server}/ok"), Check("the inference front", f"{flaky_server}/late")],
               log, timeout=60, report=WaitReport(lines.append))
    assert lines[0].startswith(">> MLflow ready")
    assert lines[1].startswith("   waiting for the inference front (")
    assert lines[1].endswith(") | front: loading crack-segmenter")
    assert lines[2].startswith(">> the inference front ready") and len(lines) == 3


def test_wait_ready_fails_with_the_last_log_line_when_the_stack_exits(tmp_path):
    from fissure.stack import Check, WaitReport, wait_ready

    log = tmp_path / "stack.log"
    log.write_text("serve: port 8080 is already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(FissureError, match=r"exited \(code 3\) .*last log line: serve: port 8080 is already in use"):
        wait_ready(proc, [Check("MLflow", "http://127.0.0.1:9/health")], log, timeout=60,
                   report=WaitReport(lambda *_: None))


def test_missing_champions_without_pipeline_is_one_clear_error(tmp_path, monkeypatch):
    from fissure.stack import ensure_champions

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FissureError, match="no champion for .*crack-classifier.* and no dvc.yaml"):
        ensure_champions(echo=lambda *_: None)


def test_failing_pipeline_is_one_clear_error(tmp_path, monkeypatch):
    from fissure import stack

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stack.subprocess, "call", lambda *a, **k: 3)
    with pytest.raises(FissureError, match=r"`dvc repro` failed \(exit 3\)"):
        stack.ensure_champions(echo=lambda *_: None)
