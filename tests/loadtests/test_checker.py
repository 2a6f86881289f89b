"""The load tests' checker on crafted Locust CSVs and memory samples: what passes, what breaches."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import config
from loadtests.checker import (Thresholds, check_memory, check_report, check_stats, load_thresholds, main,
                               memory_growth, read_memory, read_stats)

REPO = Path(__file__).resolve().parents[2]
# Locust 2.x's own header (locust_stats.csv and the final_stats.csv the locustfile writes)
STATS_HEADER = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
                "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
                "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
EVERY_SCENARIO = list(config.SCENARIOS)


def stats_csv(path: Path, rows: list[tuple[str, str, int, int, float]]) -> Path:
    """rows: (type, name, requests, failures, p95 ms); an Aggregated row is added."""
    def line(kind, name, n, f, p95):
        pct = [p95 * 0.5, p95 * 0.6, p95 * 0.7, p95 * 0.8, p95 * 0.9, p95, p95, p95, p95, p95, p95]
        return [kind, name, n, f, p95 * 0.5, p95 * 0.6, 1, p95, 100, n / 60, f / 60, *pct]

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(STATS_HEADER)
        for r in rows:
            w.writerow(line(*r))
        w.writerow(line("", "Aggregated", sum(r[2] for r in rows), sum(r[3] for r in rows),
                        max((r[4] for r in rows), default=0)))
    return path


def healthy(p95: float = 50) -> list[tuple]:
    return [("POST", "rest-v1 crack-classifier", 120, 0, p95), ("POST", "rest-v2 crack-segmenter", 40, 0, p95),
            ("grpc", "grpc crack-classifier", 90, 0, p95), ("grpc", "grpc crack-classifier 12MP", 5, 0, 600),
            ("POST", "api predict", 30, 0, p95), ("POST", "api feedback", 20, 0, p95),
            ("GET", "api history", 10, 0, p95)]


@pytest.fixture
def th() -> Thresholds:
    return load_thresholds()


def test_the_shipped_thresholds_budget_every_request_the_locustfile_names(th):
    names = [config.request_name(proto, m, s) for proto in ("rest-v1", "rest-v2", "grpc")
             for m in config.MODELS for s in config.SIZES]
    names += ["api predict", "api predict 12MP", "api overlay", "api feedback", "api history"]
    assert th.failure_ratio == 0
    missing = [n for n in names if th.budget(n) is None]
    assert not missing, f"no p95 budget for {missing}"
    # the 12 MP requests and the segmenter have budgets of their own, larger than the classifier's
    assert th.budget("rest-v2 crack-classifier") < th.budget("rest-v2 crack-segmenter")
    assert th.budget("grpc crack-classifier") < th.budget("grpc crack-classifier 12MP")
    assert th.budget("api predict") != th.budget("api history")
    assert th.judges("soak", "memory") and th.judges("loadtest", "p95") and not th.judges("smoke", "p95")


def test_a_clean_run_passes(tmp_path, th):
    rows = read_stats(stats_csv(tmp_path / "locust_stats.csv", healthy()))
    assert check_stats(rows, th, "loadtest", EVERY_SCENARIO) == []
    assert check_report(tmp_path, th, "loadtest", EVERY_SCENARIO) == []


def test_one_failed_request_breaches_the_failure_ratio(tmp_path, th):
    rows = healthy()
    rows[1] = ("POST", "rest-v2 crack-segmenter", 40, 1, 50)
    stats_csv(tmp_path / "locust_stats.csv", rows)
    (tmp_path / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        "POST,rest-v2 crack-segmenter,HTTP 503: model not ready,1,,\n")
    breaches = check_report(tmp_path, th, "smoke", EVERY_SCENARIO)
    assert len(breaches) == 2, breaches  # the request name, and the total
    assert breaches[0].startswith("failure ratio of 'rest-v2 crack-segmenter': 1/40 = 2.50% > 0%")
    assert "HTTP 503: model not ready (1x)" in breaches[0]
    assert breaches[1].startswith("failure ratio of 'Aggregated': 1/")


def test_a_ratio_under_a_looser_bound_passes(tmp_path, th):
    rows = healthy()
    rows[0] = ("POST", "rest-v1 crack-classifier", 1000, 1, 50)
    th.failure_ratio = 0.01
    assert check_stats(read_stats(stats_csv(tmp_path / "s.csv", rows)), th, "loadtest") == []


def test_p95_over_budget_breaches_the_load_test_not_the_smoke(tmp_path, th):
    budget = th.budget("grpc crack-classifier")
    rows = healthy()
    rows[2] = ("grpc", "grpc crack-classifier", 90, 0, budget + 1)
    parsed = read_stats(stats_csv(tmp_path / "s.csv", rows))
    assert check_stats(parsed, th, "loadtest") == [
        f"p95 of 'grpc crack-classifier': {budget + 1:.0f} ms > budget {budget:.0f} ms"]
    assert check_stats(parsed, th, "smoke") == []  # the smoke judges errors only
    rows[2] = ("grpc", "grpc crack-classifier", 90, 0, budget)  # at the budget: inside it
    assert check_stats(read_stats(stats_csv(tmp_path / "s.csv", rows)), th, "loadtest") == []


def test_a_scenario_without_successful_requests_breaches(tmp_path, th):
    rows = [r for r in healthy() if not r[1].startswith("grpc ")]
    breaches = check_stats(read_stats(stats_csv(tmp_path / "s.csv", rows)), th, "smoke", EVERY_SCENARIO)
    assert breaches == ["scenario grpc (GrpcUser): 0 successful requests < 1"]
    assert check_stats(read_stats(stats_csv(tmp_path / "s.csv", [])), th, "smoke")[0].startswith("no requests")


def test_an_exception_in_the_load_generator_breaches(tmp_path, th):
    stats_csv(tmp_path / "locust_stats.csv", healthy())
    with open(tmp_path / "locust_exceptions.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Count", "Message", "Traceback", "Nodes"],
                                  [3, "KeyError('outputs')\nmore", "Traceback ...", "local"]])
    assert check_report(tmp_path, th, "smoke") == ["exception in the load generator (3x): KeyError('outputs')"]


def test_the_final_snapshot_wins_over_lockusts_last_periodic_csv(tmp_path, th):
    """Locust rewrites its CSV every second, not after the last requests: final_stats.csv does."""
    stats_csv(tmp_path / "locust_stats.csv", healthy())
    last = healthy()
    last[0] = ("POST", "rest-v1 crack-classifier", 121, 1, 50)
    stats_csv(tmp_path / "final_stats.csv", last)
    assert any("'rest-v1 crack-classifier': 1/121" in b for b in check_report(tmp_path, th, "smoke"))


def test_no_statistics_at_all_is_one_line(tmp_path, th):
    assert check_report(tmp_path, th, "smoke") == [
        f"no Locust statistics in {tmp_path} (Locust did not run; see {tmp_path / 'locust.log'})"]


# ---------------------------------------------------------------------------- memory


def memory_csv(path: Path, series: dict[tuple[int, str, int], list[float]], every: float = 10.0) -> Path:
    """series: (pid, role, top) -> RSS in MB per sample (None: not sampled then)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["elapsed_s", "time", "pid", "role", "top", "rss_bytes"])
        n = max(len(v) for v in series.values())
        for i in range(n):
            for (pid, role, top), values in series.items():
                if i < len(values) and values[i] is not None:
                    w.writerow([i * every, 1_800_000_000 + i * every, pid, role, top, int(values[i] * 2**20)])
    return path


def flat_then(n: int, start: float, end_growth: float = 0.0) -> list[float]:
    """A warm-up jump in the first tenth, then flat, then ``end_growth`` MB added linearly over the second half."""
    out = []
    for i in range(n):
        v = start * (0.5 if i < n // 10 else 1.0)
        if i >= n // 2:
            v += end_growth * (i - n // 2) / (n - 1 - n // 2)
        out.append(v)
    return out


def test_memory_flat_after_warm_up_passes(tmp_path, th):
    path = memory_csv(tmp_path / "memory.csv", {(10, "fissure serve", 1): flat_then(180, 900),
                                                 (11, "fissure api", 1): flat_then(180, 400, end_growth=20)})
    growth = memory_growth(read_memory(path), th.memory["window_fraction"])
    assert [g.role for g in growth] == ["fissure api", "fissure serve"]
    assert check_memory(growth, th) == []  # +20 MB on the API: over 0 % but under the MB floor
    serve = next(g for g in growth if g.role == "fissure serve")
    assert serve.start_mb == pytest.approx(450) and serve.mid_mb == pytest.approx(900) and serve.growth_pct == 0


def test_memory_growth_over_the_bound_breaches_the_soak(tmp_path, th):
    stats_csv(tmp_path / "locust_stats.csv", healthy())
    memory_csv(tmp_path / "memory.csv", {(10, "fissure serve", 1): flat_then(180, 900, end_growth=200),
                                          (12, "torchserve worker", 0): flat_then(180, 300)})
    breaches = check_report(tmp_path, th, "soak", EVERY_SCENARIO)
    assert len(breaches) == 1, breaches
    assert breaches[0].startswith("memory of fissure serve (pid 10): RSS grew ")
    assert "over the second half > 10%" in breaches[0]
    growth = memory_growth(read_memory(tmp_path / "memory.csv"))
    pct = next(g for g in growth if g.pid == 10).growth_pct
    assert 15 < pct < 23  # the end window's median, not its last sample (+22 %)
    assert check_report(tmp_path, th, "loadtest", EVERY_SCENARIO) == []  # only the soak judges memory


def test_a_main_process_that_exits_breaches_a_child_does_not(tmp_path, th):
    path = memory_csv(tmp_path / "memory.csv", {(10, "fissure serve", 1): flat_then(100, 900),
                                                 (11, "fissure api", 1): flat_then(60, 400),
                                                 (12, "torchserve worker", 0): flat_then(50, 300)})
    breaches = check_memory(memory_growth(read_memory(path)), th)
    assert breaches == ["memory: fissure api (pid 11) exited during the run"]


def test_a_soak_without_samples_breaches(tmp_path, th):
    stats_csv(tmp_path / "locust_stats.csv", healthy())
    assert check_report(tmp_path, th, "soak") == [f"memory: no samples ({tmp_path / 'memory.csv'} is missing)"]


# ---------------------------------------------------------------------------- the CLI


def test_checker_cli_exit_codes(tmp_path, th, capsys):
    stats_csv(tmp_path / "locust_stats.csv", healthy())
    assert main([str(tmp_path), "--mode", "smoke", "--scenarios", "v1,v2,grpc,api"]) == 0
    assert capsys.readouterr().out.startswith("PASS")
    bad = tmp_path / "strict.yaml"
    bad.write_text("failure_ratio: 0\np95_ms:\n  'grpc *': 10\nmodes:\n  loadtest: {p95: true}\n")
    assert main([str(tmp_path), "--thresholds", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["FAIL p95 of 'grpc crack-classifier': 50 ms > budget 10 ms",
                   "FAIL p95 of 'grpc crack-classifier 12MP': 600 ms > budget 10 ms"]


def test_checker_runs_as_a_module_without_locust(tmp_path):
    """The checker (and the runner) never import Locust: gevent would patch the caller's process."""
    stats_csv(tmp_path / "locust_stats.csv", healthy())
    code = ("import sys, runpy; sys.argv = ['checker', sys.argv[1], '--mode', 'smoke'];"
            "import loadtests.run, loadtests.report, loadtests.memory;"
            "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'imported locust';"
            "runpy.run_module('loadtests.checker', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PASS")
