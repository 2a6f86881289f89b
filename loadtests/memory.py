"""RSS of the stack's processes over a run, sampled with psutil from a thread of the runner.

The processes are the detached local stack (``fissure up --detach``: honcho, whose pid file
:func:`fissure.stack.check_pid_file` verifies) with all its descendants (MLflow, ``fissure
serve`` and, on the TorchServe runtime, its Java server and Python workers, ``fissure api``), or
the pids given with ``--pids`` and their descendants. Rows go to ``memory.csv``:
``elapsed_s,time,pid,role,top,rss_bytes`` (``time``: Unix seconds, as Locust's history) (``top``: a root or one of its direct children, the
stack's main processes).
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path

import psutil

COLUMNS = ["elapsed_s", "time", "pid", "role", "top", "rss_bytes"]


def stack_roots() -> list[int]:
    """The running detached stack's pid ([] when there is none, or the pid file names another process)."""
    from fissure.stack import check_pid_file

    found = check_pid_file()
    return [found.pid] if found.state == "running" and found.pid else []


def role_of(cmdline: list[str], name: str = "") -> str:
    """What a process of the stack is, from its command line."""
    cmd = " ".join(cmdline)
    words = [os.path.basename(w) for w in cmdline]
    if "org.pytorch.serve.ModelServer" in cmd:
        return "torchserve (java)"
    if "model_service_worker" in cmd:
        return "torchserve worker"
    if "honcho" in cmd:
        return "honcho (stack)"
    if "fissure" in words:
        sub = words[words.index("fissure") + 1] if words.index("fissure") + 1 < len(words) else ""
        return f"fissure {sub}".strip()
    if any(w == "mlflow" for w in words) or "mlflow.server" in cmd:
        return "mlflow server"
    if "uvicorn" in cmd or "gunicorn" in cmd or "waitress" in cmd:
        return "mlflow worker" if "mlflow" in cmd else "web worker"
    if "prometheus" in words[:1]:
        return "prometheus"
    return name or (words[0] if words else "?")


class MemorySampler:
    """Samples every ``every`` seconds until :meth:`stop`; a new descendant joins when it appears."""

    def __init__(self, roots: list[int], out: Path, every: float = 10.0):
        self.roots, self.out, self.every = list(roots), Path(out), float(every)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._start = 0.0
        self._roles: dict[int, tuple[str, bool]] = {}
        self.samples = 0

    def __enter__(self) -> MemorySampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._start = time.monotonic()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()  # the last point is the run's end

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def processes(self) -> list[tuple[psutil.Process, bool]]:
        found, seen = [], set()
        for pid in self.roots:
            try:
                root = psutil.Process(pid)
                tree = [(root, True)] + [(c, c.ppid() == pid) for c in root.children(recursive=True)]
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            for proc, top in tree:
                if proc.pid not in seen:
                    seen.add(proc.pid)
                    found.append((proc, top))
        return found

    def sample(self) -> None:
        now, wall = round(time.monotonic() - self._start, 3), round(time.time(), 3)
        rows = []
        for proc, top in self.processes():
            try:
                rss = proc.memory_info().rss
                if proc.pid not in self._roles:  # the role is fixed at first sight (a pid's cmdline can change at exec)
                    self._roles[proc.pid] = (role_of(proc.cmdline(), proc.name()), top)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            role, first_top = self._roles[proc.pid]
            rows.append([now, wall, proc.pid, role, int(first_top), rss])
        with open(self.out, "a", newline="") as f:
            csv.writer(f).writerows(rows)
        self.samples += 1
