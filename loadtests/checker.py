"""Pass/fail of a load-test report: Locust's CSVs (and the memory samples of a soak) against
loadtests/thresholds.yaml. Plain Python: no Locust import.

``check_report(folder, thresholds, mode, scenarios)`` returns one line per breached threshold
(empty: passed); ``python -m loadtests.checker FOLDER --mode loadtest`` checks a finished
report again (exit 1 on a breach).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loadtests.config import SCENARIOS, THRESHOLDS

STATS, HISTORY, FAILURES, EXCEPTIONS = "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "locust_exceptions.csv"
MEMORY = "memory.csv"
AGGREGATED = "Aggregated"
FINAL = "final_"  # the locustfile's snapshot after every user stopped (Locust's own CSVs can miss the last second)


def report_file(folder: Path, name: str) -> Path:
    """``final_<x>.csv`` when the run wrote it, else Locust's ``locust_<x>.csv``."""
    final = folder / (FINAL + name.removeprefix("locust_"))
    return final if final.exists() else folder / name


# --------------------------------------------------------------------------- thresholds
@dataclass
class Thresholds:
    failure_ratio: float = 0.0
    min_requests: int = 1
    p95_ms: dict[str, float] = field(default_factory=dict)  # request-name pattern -> budget; first match wins
    modes: dict[str, dict] = field(default_factory=dict)    # mode -> {"p95": bool, "memory": bool}
    memory: dict = field(default_factory=dict)              # sample_seconds, growth_pct, growth_min_mb, window_fraction

    def judges(self, mode: str, what: str) -> bool:
        return bool(self.modes.get(mode, {}).get(what, False))

    def budget(self, name: str) -> float | None:
        for pattern, ms in self.p95_ms.items():
            if fnmatch.fnmatchcase(name, pattern):
                return float(ms)
        return None


def load_thresholds(path: str | Path = THRESHOLDS) -> Thresholds:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {"failure_ratio", "min_requests", "p95_ms", "modes", "memory"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    memory = {"sample_seconds": 10.0, "growth_pct": 10.0, "growth_min_mb": 25.0, "window_fraction": 0.1,
              **(raw.get("memory") or {})}
    return Thresholds(failure_ratio=float(raw.get("failure_ratio", 0.0)), min_requests=int(raw.get("min_requests", 1)),
                      p95_ms={str(k): float(v) for k, v in (raw.get("p95_ms") or {}).items()},
                      modes=raw.get("modes") or {}, memory=memory)


# --------------------------------------------------------------------------- Locust's CSVs
@dataclass
class Row:
    type: str
    name: str
    requests: int
    failures: int
    median: float | None
    p95: float | None
    p99: float | None
    rps: float

    @property
    def ok(self) -> int:
        return self.requests - self.failures


def _num(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # "N/A" when nothing was measured
        return None


def read_stats(path: Path) -> list[Row]:
    with open(path, newline="") as f:
        return [Row(r["Type"], r["Name"], int(r["Request Count"]), int(r["Failure Count"]),
                    _num(r.get("50%")), _num(r.get("95%")), _num(r.get("99%")), _num(r.get("Requests/s")) or 0.0)
                for r in csv.DictReader(f)]


def read_failures(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_exceptions(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _ms(value: float) -> str:
    return f"{value:.0f} ms"


def check_stats(rows: list[Row], th: Thresholds, mode: str, scenarios: list[str] | None = None,
                failures: list[dict] | None = None, exceptions: list[dict] | None = None) -> list[str]:
    """One line per breach: failure ratio, p95 budgets (when the mode judges them), scenarios
    without successful requests, and exceptions raised in the load generator's users."""
    breaches = []
    per_name = [r for r in rows if r.name != AGGREGATED]
    total = next((r for r in rows if r.name == AGGREGATED), None)
    if total is None or total.requests == 0:
        breaches.append("no requests were made (is the stack up? see locust.log in the report folder)")
    first_error = {}
    for f in failures or []:
        first_error.setdefault(f.get("Name", ""), f"{f.get('Error', '')} ({f.get('Occurrences', '?')}x)")
    for r in per_name + ([total] if total else []):
        if r.requests and r.failures / r.requests > th.failure_ratio:
            why = f"; first error: {first_error[r.name]}" if r.name in first_error else ""
            breaches.append(f"failure ratio of '{r.name}': {r.failures}/{r.requests} = "
                            f"{100 * r.failures / r.requests:.2f}% > {100 * th.failure_ratio:g}%{why}")
    if th.judges(mode, "p95"):
        for r in per_name:
            budget = th.budget(r.name)
            if budget is not None and r.p95 is not None and r.p95 > budget:
                breaches.append(f"p95 of '{r.name}': {_ms(r.p95)} > budget {_ms(budget)}")
    for scenario in scenarios or []:
        prefix = SCENARIOS[scenario][2]
        ok = sum(r.ok for r in per_name if r.name.startswith(prefix))
        if ok < th.min_requests:
            breaches.append(f"scenario {scenario} ({SCENARIOS[scenario][0]}): {ok} successful requests "
                            f"< {th.min_requests}")
    for e in exceptions or []:
        breaches.append(f"exception in the load generator ({e.get('Count', '?')}x): "
                        f"{(e.get('Message') or '').strip().splitlines()[0][:200] if (e.get('Message') or '').strip() else '?'}")
    return breaches


# --------------------------------------------------------------------------- memory (soak)
@dataclass
class Growth:
    pid: int
    role: str
    top: bool
    samples: int
    start_mb: float
    mid_mb: float
    end_mb: float
    peak_mb: float
    exited: bool

    @property
    def growth_mb(self) -> float:
        return self.end_mb - self.mid_mb

    @property
    def growth_pct(self) -> float:
        return 100.0 * self.growth_mb / self.mid_mb if self.mid_mb else 0.0


def read_memory(path: Path) -> dict[int, dict]:
    """{pid: {"role", "top", "t": [...], "time": [...], "rss": [...] (bytes)}} from the sampler's CSV."""
    procs: dict[int, dict] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            p = procs.setdefault(int(r["pid"]), {"role": r["role"], "top": r["top"] == "1", "t": [], "time": [],
                                                 "rss": []})
            p["t"].append(float(r["elapsed_s"]))
            p["time"].append(float(r.get("time") or 0.0))
            p["rss"].append(int(r["rss_bytes"]))
    return procs


def memory_growth(procs: dict[int, dict], window_fraction: float = 0.1) -> list[Growth]:
    """Each process's RSS at the run's midpoint and end: medians over a window of
    ``window_fraction`` of the run after the midpoint and before the end (one sample is noise)."""
    if not procs:
        return []
    t0 = min(p["t"][0] for p in procs.values())
    t1 = max(p["t"][-1] for p in procs.values())
    mid = t0 + (t1 - t0) / 2
    window = max((t1 - t0) * window_fraction, 1e-9)
    out = []
    for pid, p in sorted(procs.items(), key=lambda kv: (not kv[1]["top"], kv[1]["role"], kv[0])):
        t, rss = p["t"], [v / 2**20 for v in p["rss"]]
        at_mid = [v for s, v in zip(t, rss) if mid <= s <= mid + window] or [v for s, v in zip(t, rss) if s >= mid][:1]
        at_end = [v for s, v in zip(t, rss) if s >= t1 - window]
        step = statistics.median([b - a for a, b in zip(t, t[1:])]) if len(t) > 1 else 0.0
        exited = t[-1] < t1 - max(2 * step, 1e-9)
        out.append(Growth(pid, p["role"], p["top"], len(t), rss[0],
                          statistics.median(at_mid) if at_mid else rss[-1],
                          statistics.median(at_end) if at_end else rss[-1], max(rss), exited))
    return out


def check_memory(growth: list[Growth], th: Thresholds) -> list[str]:
    """A process whose RSS grew over the second half beyond the bound (both the percentage and
    the MB floor: a small process's few MB are noise), or a main stack process that exited."""
    pct, floor = float(th.memory["growth_pct"]), float(th.memory["growth_min_mb"])
    breaches = []
    for g in growth:
        if g.exited:
            if g.top:
                breaches.append(f"memory: {g.role} (pid {g.pid}) exited during the run")
            continue
        if g.growth_pct > pct and g.growth_mb > floor:
            breaches.append(f"memory of {g.role} (pid {g.pid}): RSS grew {g.growth_pct:.1f}% "
                            f"({g.mid_mb:.0f} -> {g.end_mb:.0f} MB) over the second half > {pct:g}% "
                            f"(and > {floor:g} MB)")
    if not growth:
        breaches.append("memory: no stack process was sampled (no running stack found; pass --pids)")
    return breaches


# --------------------------------------------------------------------------- a whole report
def check_report(folder: str | Path, th: Thresholds, mode: str, scenarios: list[str] | None = None) -> list[str]:
    folder = Path(folder)
    stats = report_file(folder, STATS)
    if not stats.exists():
        return [f"no Locust statistics in {folder} (Locust did not run; see {folder / 'locust.log'})"]
    breaches = check_stats(read_stats(stats), th, mode, scenarios, read_failures(report_file(folder, FAILURES)),
                           read_exceptions(report_file(folder, EXCEPTIONS)))
    if th.judges(mode, "memory"):
        if (folder / MEMORY).exists():
            breaches += check_memory(memory_growth(read_memory(folder / MEMORY), th.memory["window_fraction"]), th)
        else:
            breaches.append(f"memory: no samples ({folder / MEMORY} is missing)")
    return breaches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.checker", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a report folder (.fissure/loadtests/<timestamp>-<mode>)")
    p.add_argument("--mode", choices=["smoke", "loadtest", "soak"], default="loadtest")
    p.add_argument("--thresholds", type=Path, default=THRESHOLDS)
    p.add_argument("--scenarios", default="", help="comma list of scenarios that must have succeeded")
    args = p.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    breaches = check_report(args.folder, load_thresholds(args.thresholds), args.mode, scenarios)
    for line in breaches:
        print(f"FAIL {line}")
    if not breaches:
        print(f"PASS {args.folder}")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
