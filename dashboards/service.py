"""Service overview: is it up, is it fast? Traffic, errors, latency and the runtime, from the front."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm, dashboard as dm

from dashboards.common import (MV_LEGEND, NS_MODEL_VERSION, Board, mean, q, quantile, rate, ratio, role_join, sel,
                               stat_panel, thresholds, ts)
from fissure.observability.catalog import BATCH_SIZE, INFLIGHT, LATENCY, QUEUE, READY, REQUESTS

UID = "fissure-service"
MVP = "model, version, protocol"
MV = "model, version"
SERVER_ERRORS = 'code=~"5.."'
# The alerts' numbers (charts/fissure/files/prometheus/rules.yaml): 99.5% availability, p95 0.5 s.
SLO_ERROR_RATIO = 0.005
P95_BUDGET = 0.5
CLIENT_ERRORS = 'code=~"4.."'


def build():
    b = Board(UID, "fissure / service overview",
              "Is it up, is it fast: requests, errors, latency and batching in the serving front, "
              "per model, version and protocol (REST v1, REST v2, gRPC).")

    b.row("At a glance")
    b.add(stat_panel("Requests/s", "reqps"), q(f"sum(rate({sel(REQUESTS)}[$__rate_interval]))", "requests/s"),
          w=6, h=4)
    total = f"sum(rate({sel(REQUESTS)}[$__rate_interval]))"
    b.add(stat_panel("Server error ratio (5xx)", "percentunit",
                     steps=((None, "green"), (SLO_ERROR_RATIO, "orange"), (0.05, "red"))),
          q(f"(sum(rate({sel(REQUESTS, extra=SERVER_ERRORS)}[$__rate_interval])) or 0 * {total}) / {total}",
            "5xx ratio"), w=6, h=4,
          description="The SLO allows 0.5% of answers to be 5xx (amber from there).")
    b.add(stat_panel("p95 latency", "s", steps=((None, "green"), (P95_BUDGET / 2, "orange"), (P95_BUDGET, "red"))),
          q(quantile(0.95, LATENCY, ""), "p95"), w=6, h=4,
          description="Red over the 0.5 s budget of the latency alert.")
    b.add(stat_panel("Model ready", "none", text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
                     steps=((None, "red"), (1, "green")))
          .graph_mode(cm.BigValueGraphMode.NONE)
          .mappings([dm.ValueMap(options={"0": dm.ValueMappingResult(text="not ready", color="red"),
                                          "1": dm.ValueMappingResult(text="ready", color="green")})]),
          q(f"max by ({MV}) ({sel(READY)}){role_join(NS_MODEL_VERSION)}", "{{model}} v{{version}} ({{role}})"),
          w=6, h=4)

    b.row("Traffic and errors")
    b.add(ts("Requests/s by model version and protocol", "reqps"),
          q(rate(REQUESTS, MVP), MV_LEGEND + " {{protocol}}"))
    b.add(ts("Answers/s by HTTP status", "reqps", stacked=True),
          q(rate(REQUESTS, "code"), "{{code}}"),
          description="gRPC answers count under the HTTP status their error maps to.")
    b.add(ts("Server error ratio (5xx) by model version and protocol", "percentunit"),
          q(ratio(REQUESTS, MVP, SERVER_ERRORS), MV_LEGEND + " {{protocol}}"))
    b.add(ts("Client error ratio (4xx) by model version and protocol", "percentunit"),
          q(ratio(REQUESTS, MVP, CLIENT_ERRORS), MV_LEGEND + " {{protocol}}"),
          description="Bad input: undecodable images, wrong shapes, bodies over the limits.")

    b.row("Latency")
    b.add(ts("Latency p50 / p95 / p99 by model version", "s")
          .thresholds(thresholds((None, "green"), (P95_BUDGET, "red")))
          .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)),
          q(quantile(0.5, LATENCY, MV), "p50 " + MV_LEGEND),
          q(quantile(0.95, LATENCY, MV), "p95 " + MV_LEGEND),
          q(quantile(0.99, LATENCY, MV), "p99 " + MV_LEGEND),
          description="From parsed request to answer, in the front.")
    b.add(ts("p95 latency by protocol", "s"),
          q(quantile(0.95, LATENCY, "model, protocol"), "{{model}} {{protocol}}"))

    b.row("Runtime")
    b.add(ts("In-flight requests", "short"),
          q(f"sum by ({MV}) ({sel(INFLIGHT)})", MV_LEGEND), w=8)
    b.add(ts("Batch size (mean, p95)", "short"),
          q(mean(BATCH_SIZE, MV), "mean " + MV_LEGEND),
          q(quantile(0.95, BATCH_SIZE, MV), "p95 " + MV_LEGEND), w=8,
          description="Images per model call: how well the runtime merges concurrent requests.")
    b.add(ts("Queue time (p50, p95)", "s"),
          q(quantile(0.5, QUEUE, MV), "p50 " + MV_LEGEND),
          q(quantile(0.95, QUEUE, MV), "p95 " + MV_LEGEND), w=8,
          description="Wait before a request's model call starts.")
    b.add(ts("Model ready over time", "none", min_val=0, max_val=1.05, fill=0),
          q(f"max by ({MV}) ({sel(READY)})", MV_LEGEND), w=24, h=5,
          description="1 when the model answers inference, 0 while loading or draining.")
    return b.build()
