"""Retrain runs: ``POST /retrain`` queues one, a worker thread runs them one at a time.

A run is ``FISSURE_RETRAIN_COMMAND`` (default ``fissure retrain``: the feedback export into
``data/feedback``, ``dvc repro``, the gate; ``fissure retrain --argo`` in a cluster) in a shell, in the API's working directory (the repository, for the default),
as its own process group; its output goes to ``<home>/retrain/<id>.log``. The request only
records the run and returns: the work is never inside it. States: queued -> running ->
succeeded | failed (exit code kept). Runs that were queued or running when the API stopped are
marked failed at the next start (their process went with the API).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from fissure.api.store import RetrainRun, Store, new_id, utcnow

LOG_TAIL_BYTES = 4096


def log_tail(path: str, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of a log, from a line start when it was cut."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    if size > max_bytes and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    return data.decode("utf-8", "replace")


class Retrainer:
    def __init__(self, store: Store, command: str, log_dir: Path, cwd: Path | None = None):
        self.store = store
        self.command = command
        self.log_dir = Path(log_dir)
        self.cwd = cwd
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        # close() and the start of a command exclude each other: a run marked running always has
        # its process in _proc by the time close() looks (else close() found none to stop)
        self._start_lock = threading.Lock()
        self._closing = False

    def recover(self) -> None:
        self.store.fail_unfinished_runs("fissure api stopped while this run was queued or running")

    def submit(self, requested_by: str) -> RetrainRun:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        run_id = new_id()
        with self._lock:
            run = self.store.add_run(self.command, str(self.log_dir / f"{run_id}.log"), requested_by, run_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="fissure-retrain", daemon=True)
                self._thread.start()
            self._queue.put(run.id)
        return run

    def _work(self) -> None:
        while (run_id := self._queue.get()) is not None and not self._closing:
            self._run(run_id)

    def _run(self, run_id: str) -> None:
        run = self.store.get_run(run_id)
        env = dict(os.environ)
        # the default command runs `fissure` and `dvc`: those of this interpreter's environment
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        proc = None
        with open(run.log_path, "ab") as log:
            with self._start_lock:
                if self._closing:
                    return  # stays queued; the next start marks it failed
                self.store.update_run(run_id, state="running", started_at=utcnow())
                log.write(f"$ {run.command}\n".encode())
                log.flush()
                try:
                    proc = self._proc = subprocess.Popen(["/bin/sh", "-c", run.command], cwd=self.cwd, env=env,
                                                         stdin=subprocess.DEVNULL, stdout=log,
                                                         stderr=subprocess.STDOUT, start_new_session=True)
                except OSError as exc:
                    log.write(f"could not start the command: {exc}\n".encode())
            try:
                code = proc.wait() if proc is not None else 127
            finally:
                self._proc = None
        self.store.update_run(run_id, state="succeeded" if code == 0 else "failed", exit_code=code,
                              finished_at=utcnow())

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker: the running command's process group gets SIGTERM, then SIGKILL; runs
        still queued stay queued (the next start marks them failed)."""
        with self._start_lock:
            self._closing = True
            proc = self._proc
        self._queue.put(None)
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._thread is not None:
            self._thread.join(timeout=timeout)
