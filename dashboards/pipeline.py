"""Pipeline runs: retraining, offline gate, canary steps, promotions and rollbacks, the champion.

The series come from the API (its store of runs and decisions); they carry no version label
(except the canary weight and the champion), so this dashboard has no version variable.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from dashboards.common import NS, NS_MODEL, RANGE, Board, q, sel, stat_panel, timeline, ts
from fissure.observability.catalog import (CANARY_STEPS, CANARY_WEIGHT, CHAMPION, GATE_DECISIONS, PROMOTIONS,
                                           RETRAIN_RUNS)

UID = "fissure-pipeline"


def build():
    b = Board(UID, "fissure / pipeline runs",
              "Retraining runs, offline gate decisions, canary steps, promotions and rollbacks, and which "
              "version is the champion (the MLflow alias), from the API.", version_var=False)

    b.row("Now")
    b.add(stat_panel("Champion now", "none", text_mode=cm.BigValueTextMode.NAME),
          q(f"max by (model, version) ({sel(CHAMPION, matchers=NS_MODEL)})", "{{model}} v{{version}}"),
          w=8, h=4, description="The version the MLflow alias champion points at.")
    b.add(stat_panel("Retraining runs in the time range", "short", text_mode=cm.BigValueTextMode.VALUE_AND_NAME),
          q(f"sum by (state) (increase({sel(RETRAIN_RUNS, matchers=NS)}{RANGE}))", "{{state}}", instant=True),
          w=8, h=4)
    b.add(stat_panel("Canary weight now", "percent", text_mode=cm.BigValueTextMode.VALUE_AND_NAME),
          q(f"max by (model, version) ({sel(CANARY_WEIGHT, matchers=NS_MODEL)})", "{{model}} v{{version}}"),
          w=8, h=4, description="Share of the model's traffic sent to the challenger.")

    b.row("Runs and decisions")
    b.add(ts("Retraining runs by state (total)", "short", stacked=True),
          q(f"sum by (state) ({sel(RETRAIN_RUNS, matchers=NS)})", "{{state}}"))
    b.add(ts("Offline gate decisions by result (total)", "short", stacked=True),
          q(f"sum by (model, result) ({sel(GATE_DECISIONS, matchers=NS_MODEL)})", "{{model}} {{result}}"))
    b.add(ts("Canary steps by result (total)", "short", stacked=True),
          q(f"sum by (model, result) ({sel(CANARY_STEPS, matchers=NS_MODEL)})", "{{model}} {{result}}"))
    b.add(ts("Promotions and rollbacks (total)", "short", stacked=True),
          q(f"sum by (model, action) ({sel(PROMOTIONS, matchers=NS_MODEL)})", "{{model}} {{action}}"))

    b.row("History")
    b.add(timeline("Champion version over time"),
          q(f"max by (model, version) ({sel(CHAMPION, matchers=NS_MODEL)})", "{{model}} v{{version}}"),
          w=24, h=6, description="Which version held the champion alias when.")
    return b.build()
