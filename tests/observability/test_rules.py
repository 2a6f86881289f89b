"""The Prometheus rules (charts/fissure/files/prometheus/rules.yaml): promtool checks and unit
tests them, every alert has a test that fires and one that stays quiet, every recording rule is
evaluated by a test, every series comes from the metric catalogue, every alert is actionable.

`make rules-check` runs the same promtool commands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fissure.observability import catalog
from fissure.observability.prometheus import RULES_FILE, metric_names

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / RULES_FILE
TESTS = sorted((Path(__file__).resolve().parent / "rules").glob("*.yaml"))
RUNBOOK = re.compile(r"^https://github\.com/fissure/fissure/blob/main/docs/observability\.md#[a-z0-9-]+$")


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.fail("promtool not found: `make prometheus` installs Debian's prometheus (promtool comes with it)")
    return found


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def records() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def unit_tests() -> list[dict]:
    return [t for path in TESTS for t in yaml.safe_load(path.read_text())["tests"]]


def test_promtool_check_rules():
    proc = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_unit_tests_pass():
    assert TESTS, "no promtool unit tests in tests/observability/rules/"
    for path in TESTS:
        assert yaml.safe_load(path.read_text())["rule_files"] == [str(Path("../../..") / RULES_FILE)], path
    proc = subprocess.run([promtool(), "test", "rules", *map(str, TESTS)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.stdout.count("SUCCESS") == len(TESTS), proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_test():
    fires, quiet = set(), set()
    for case in unit_tests():
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = set(alerts())
    assert len(names) >= 10
    missing = {name: [kind for kind, seen in (("firing", fires), ("not firing", quiet)) if name not in seen]
               for name in names}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"alerts without a promtool unit test: {missing}"
    assert not (fires | quiet) - names, f"tests of alerts that do not exist: {(fires | quiet) - names}"


def test_every_recording_rule_is_evaluated_by_a_test():
    tested = set()
    for case in unit_tests():
        for t in case.get("promql_expr_test", []):
            tested |= metric_names(t["expr"])
    assert not records() - tested, f"recording rules no promql_expr_test reads: {sorted(records() - tested)}"


def test_rules_use_only_catalogued_series():
    known = catalog.series_names() | records()
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule.get('alert') or rule.get('record')}: no series found in its expression"
        unknown = used - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} uses series not in catalog.py: {unknown}"


def test_series_names_are_read_from_expressions():
    # the check above is only as good as this reader
    expr = ('sum by (namespace, le) (rate(fissure_request_duration_seconds_bucket{code=~"5..", model!="x"}[5m] '
            'offset 1h)) / on (namespace) group_left () a:b:rate5m > bool 0.5 and ignoring (feature) '
            'fissure_drift_psi >= 1e3 unless histogram_quantile(0.9, rate(y_bucket[5m:30s])) or NaN')
    assert metric_names(expr) == {"fissure_request_duration_seconds_bucket", "a:b:rate5m", "fissure_drift_psi",
                                  "y_bucket"}
    assert "fissure_request_seconds_total" not in catalog.series_names()


def test_recording_rules_keep_namespace_model_version():
    for rule in rules():
        if "record" in rule:
            assert rule["record"].startswith("namespace_model_version:"), rule["record"]
            assert re.search(r"\b(by \(namespace, model, version(, le)?\))", rule["expr"]), rule["record"]


def test_every_alert_says_how_bad_what_and_where_to_look():
    for name, rule in alerts().items():
        assert name.startswith("Fissure"), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        notes = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(notes), name
        assert RUNBOOK.match(notes["runbook_url"]), f"{name}: {notes['runbook_url']}"
        assert "{{ $labels.model }}" in notes["summary"], name


def test_burn_rate_alerts_follow_the_workbook():
    # SLO 99.5% (budget 0.005): (long window, short window, burn rate, severity)
    expected = {"FissureErrorBudgetBurn1h": ("1h", "5m", "14.4", "critical"),
                "FissureErrorBudgetBurn6h": ("6h", "30m", "6", "critical"),
                "FissureErrorBudgetBurn1d": ("1d", "2h", "3", "warning"),
                "FissureErrorBudgetBurn3d": ("3d", "6h", "1", "warning")}
    found = alerts()
    for name, (long, short, burn, severity) in expected.items():
        expr = " ".join(found[name]["expr"].split())
        assert expr == (f"namespace_model_version:fissure_request_errors:ratio_rate{long} > ({burn} * 0.005) "
                        f"and namespace_model_version:fissure_request_errors:ratio_rate{short} > ({burn} * 0.005)")
        assert found[name]["labels"]["severity"] == severity
    assert "99.5%" in RULES.read_text()
