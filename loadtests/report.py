"""What a run leaves besides Locust's CSV and HTML: ``report.png`` (latency, throughput and each
stack process's memory over time) and ``summary.md`` (tables ready to paste into
docs/benchmarks.md). Plain Python with matplotlib (Agg): no Locust import, no display.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from loadtests.checker import (AGGREGATED, HISTORY, MEMORY, STATS, Thresholds, memory_growth, read_memory,
                               read_stats, report_file)

PLOT = "report.png"
SUMMARY = "summary.md"


def _num(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_history(path: Path) -> dict[str, dict[str, list]]:
    """{request name: {"t": [...], "users", "rps", "fps", "p50", "p95", "p99"}} from the stats history CSV."""
    out: dict[str, dict[str, list]] = {}
    if not path.exists():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            s = out.setdefault(r["Name"], {k: [] for k in ("t", "users", "rps", "fps", "p50", "p95", "p99")})
            s["t"].append(int(r["Timestamp"]))
            s["users"].append(int(r["User Count"]))
            s["rps"].append(_num(r["Requests/s"]))
            s["fps"].append(_num(r["Failures/s"]))
            for k, col in (("p50", "50%"), ("p95", "95%"), ("p99", "99%")):
                s[k].append(_num(r.get(col)))
    return out


def plot(folder: Path, title: str) -> Path | None:
    """Latency percentiles, requests/s with failures/s, and RSS per stack process, over minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(folder / HISTORY)
    total = history.get(AGGREGATED)
    if not total or not total["t"]:
        return None
    t0 = total["t"][0]
    minutes = [(t - t0) / 60 for t in total["t"]]
    procs = read_memory(folder / MEMORY) if (folder / MEMORY).exists() else {}
    fig, axes = plt.subplots(3 if procs else 2, 1, figsize=(11, 9 if procs else 6.5), sharex=True)
    ax = axes[0]
    for k, style in (("p50", "-"), ("p95", "-"), ("p99", ":")):
        pts = [(m, v) for m, v in zip(minutes, total[k]) if v]  # 0 / N/A: nothing in the window
        if pts:
            ax.plot(*zip(*pts), style, label=f"{k} (all requests, last 10 s)")
    for name, s in sorted(history.items()):
        if name == AGGREGATED or name.endswith("12MP"):
            continue
        pts = [((t - t0) / 60, v) for t, v in zip(s["t"], s["p95"]) if v]
        if pts:
            ax.plot(*zip(*pts), lw=0.6, alpha=0.6, label=f"p95 {name}")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=3, loc="upper left")
    ax.set_title(title, fontsize=10)
    ax = axes[1]
    ax.plot(minutes, [v or 0 for v in total["rps"]], label="requests/s")
    ax.plot(minutes, [v or 0 for v in total["fps"]], "r", label="failures/s")
    ax.set_ylabel("per second")
    ax.grid(True, alpha=0.3)
    users = ax.twinx()
    users.plot(minutes, total["users"], "k--", lw=0.8, label="users")
    users.set_ylabel("users")
    lines = ax.get_legend_handles_labels()
    more = users.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    if procs:
        ax = axes[2]
        for pid, p in sorted(procs.items(), key=lambda kv: kv[1]["role"]):
            # on Locust's clock: the sampler starts before Locust has loaded its images
            pts = [((t - t0) / 60, v / 2**20) for t, v in zip(p["time"], p["rss"]) if t >= t0]
            if pts:
                ax.plot(*zip(*pts), label=f"{p['role']} [{pid}]")
        ax.set_ylabel("RSS (MB)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    axes[-1].set_xlabel("minutes since start")
    fig.tight_layout()
    out = folder / PLOT
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _f(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def summary(folder: Path, *, mode: str, title: str, command: str, targets: dict[str, str], users: int,
            duration: str, scenarios: list[str], th: Thresholds, breaches: list[str], started: datetime,
            load_at_start: float | None, notes: list[str] | None = None, sample_seconds: float | None = None) -> Path:
    """summary.md: the run, its per-request table, memory (when sampled) and the verdict."""
    stats = report_file(folder, STATS)
    rows = read_stats(stats) if stats.exists() else []
    sample_seconds = sample_seconds or float(th.memory["sample_seconds"])
    judge_p95 = th.judges(mode, "p95")
    lines = [f"### {title}", "",
             f"Taken {started.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {_cpu()}, {os.cpu_count()} cores, "
             f"Python {sys.version.split()[0]}" + (f", load average at start {load_at_start:.1f}" if load_at_start is not None else "")
             + ".", "",
             f"Command: `{command}` ({users} users, {duration}, scenarios {', '.join(scenarios)}; "
             f"targets: " + ", ".join(f"{k} {v}" for k, v in targets.items()) + ").", ""]
    lines += [*(notes or []), ""] if notes else []
    lines += ["| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms | p95 budget ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        budget = th.budget(r.name) if r.name != AGGREGATED else None
        over = judge_p95 and budget is not None and r.p95 is not None and r.p95 > budget
        name = f"**{r.name}**" if r.name == AGGREGATED else r.name
        lines.append(f"| {name} | {r.requests} | {r.failures} | {r.rps:.2f} | {_f(r.median)} | "
                     f"{_f(r.p95)}{' (over)' if over else ''} | {_f(r.p99)} | {_f(budget)} |")
    if (folder / MEMORY).exists():
        growth = memory_growth(read_memory(folder / MEMORY), th.memory["window_fraction"])
        lines += ["", f"Memory (RSS, MB) of the stack's processes, sampled every {sample_seconds:g} s; "
                      f"bound: growth over the second half of the run at most {th.memory['growth_pct']:g} % "
                      f"(or {th.memory['growth_min_mb']:g} MB)"
                      + ("" if th.judges(mode, "memory") else " (reported, judged only by the soak)") + ".", "",
                  "| process | pid | start | midpoint | end | peak | growth, second half |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for g in growth:
            grown = "exited" if g.exited else f"{g.growth_pct:+.1f} % ({g.growth_mb:+.0f} MB)"
            lines.append(f"| {g.role} | {g.pid} | {g.start_mb:.0f} | {g.mid_mb:.0f} | {g.end_mb:.0f} | "
                         f"{g.peak_mb:.0f} | {grown} |")
    if (folder / PLOT).exists():
        lines += ["", f"![latency, throughput and memory over time]({PLOT})"]
    lines += ["", "**Result: PASS**" if not breaches else "**Result: FAIL**"]
    lines += [f"- {b}" for b in breaches]
    out = folder / SUMMARY
    out.write_text("\n".join(lines) + "\n")
    return out


def now() -> datetime:
    return datetime.now(timezone.utc)
