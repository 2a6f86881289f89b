"""Canary comparison: the champion and the challenger side by side, on the same axes.

Every comparison series carries ``role`` from ``fissure_model_info`` (joined on model and
version), so each panel draws the champion and the challenger of a model next to each other;
with no canary running it shows the champion alone. This dashboard has no version variable: it
compares whatever versions serve now.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from dashboards.common import (NS_MODEL, PSI_THRESHOLDS, ROLE_LEGEND, Board, info_table, mean, q, quantile, rate,
                               ratio, role_join, sel, stat_panel, thresholds, ts)
from fissure.observability.catalog import (CANARY_STEPS, CANARY_WEIGHT, CONFIDENCE, DISAGREEMENT, DRIFT_PSI,
                                           LATENCY, MODEL_INFO, PREDICTIONS, REQUESTS)

UID = "fissure-canary"
MV = "model, version"
JOIN = role_join(NS_MODEL)
SERVER_ERRORS = 'code=~"5.."'


def build():
    b = Board(UID, "fissure / canary comparison",
              "Champion vs challenger: traffic, errors, latency, confidence, class mix, drift and "
              "disagreement per role (fissure_model_info), with the canary's weight and steps.",
              version_var=False)

    b.row("Versions and canary")
    b.add(info_table("Served versions")
          .with_transformation(dm.DataTransformerConfig(
              id_val="organize", options={"excludeByName": {"Time": True, "Value": True},
                                          "indexByName": {"model": 0, "version": 1, "role": 2, "runtime": 3,
                                                          "run_id": 4}})),
          q(f"max by (model, version, role, runtime, run_id) ({sel(MODEL_INFO, matchers=NS_MODEL)})",
            instant=True, fmt="table"), w=12, h=6)
    b.add(stat_panel("Canary weight (challenger's share of traffic)", "percent",
                     steps=((None, "blue"),)),
          q(f"max by ({MV}) ({sel(CANARY_WEIGHT, matchers=NS_MODEL)})", "{{model}} v{{version}}"), w=6, h=6)
    b.add(stat_panel("Canary steps in the time range", "short"),
          q(f"sum by (result) (increase({sel(CANARY_STEPS, matchers=NS_MODEL)}[$__range]))", "{{result}}",
            instant=True), w=6, h=6)

    b.row("Traffic and errors")
    b.add(ts("Requests/s by role", "reqps"), q(rate(REQUESTS, MV, matchers=NS_MODEL) + JOIN, ROLE_LEGEND))
    b.add(ts("Server error ratio (5xx) by role", "percentunit"),
          q(f"({ratio(REQUESTS, MV, SERVER_ERRORS, matchers=NS_MODEL)}){JOIN}", ROLE_LEGEND))

    b.row("Latency")
    b.add(ts("p95 latency by role", "s"), q(quantile(0.95, LATENCY, MV, NS_MODEL) + JOIN, ROLE_LEGEND))
    b.add(ts("p99 latency by role", "s"), q(quantile(0.99, LATENCY, MV, NS_MODEL) + JOIN, ROLE_LEGEND))

    b.row("Behaviour")
    b.add(ts("Mean confidence by role", "percentunit", max_val=1, fill=0),
          q(f"({mean(CONFIDENCE, MV, NS_MODEL)}){JOIN}", ROLE_LEGEND))
    share = (f"{rate(PREDICTIONS, MV + ', label', matchers=NS_MODEL)} / on(model, version) group_left() "
             f"{rate(PREDICTIONS, MV, matchers=NS_MODEL)}")
    b.add(ts("Class mix by role", "percentunit", max_val=1, fill=0),
          q(f"({share}){JOIN}", ROLE_LEGEND + " {{label}}"))

    b.row("Drift and people")
    b.add(ts("Highest drift PSI by role", "short", fill=0).thresholds(thresholds(*PSI_THRESHOLDS)),
          q(f"max by ({MV}) ({sel(DRIFT_PSI, matchers=NS_MODEL)}){JOIN}", ROLE_LEGEND),
          description="The largest PSI over the drift features of each version.")
    b.add(ts("Feedback disagreement ratio by role", "percentunit", max_val=1, fill=0),
          q(f"max by ({MV}) ({sel(DISAGREEMENT, matchers=NS_MODEL)}){JOIN}", ROLE_LEGEND))

    b.row("Canary progress")
    b.add(ts("Canary weight", "percent", max_val=100, fill=20),
          q(f"max by ({MV}) ({sel(CANARY_WEIGHT, matchers=NS_MODEL)})", "{{model}} v{{version}}"))
    b.add(ts("Canary steps by result (total)", "short", stacked=True),
          q(f"sum by (model, result) ({sel(CANARY_STEPS, matchers=NS_MODEL)})", "{{model}} {{result}}"))
    return b.build()

