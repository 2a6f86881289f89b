"""Model health: is it still right? What the model predicts, how sure it is, what it is shown
(input statistics and their drift from the training profile) and what people say about it."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common as cm

from dashboards.common import (MV_LEGEND, PSI_THRESHOLDS, RANGE, Board, gauge_bars, heat, mean, q, quantile, rate,
                               sel, stat_panel, thresholds, ts)
from fissure.observability.catalog import (CONFIDENCE, CRACK_AREA, DISAGREEMENT, DRIFT_PSI, DRIFT_WINDOW, FEEDBACK,
                                           INPUT_BRIGHTNESS, INPUT_CONTRAST, INPUT_MEGAPIXELS, INPUT_SHARPNESS,
                                           PREDICTIONS)

UID = "fissure-model-health"
MV = "model, version"
DISAGREEMENT_SPIKE = 0.2  # the disagreement alert's threshold (charts/fissure/files/prometheus/rules.yaml)


def build():
    b = Board(UID, "fissure / model health",
              "Is it still right: class mix, confidence, crack area, input statistics, drift (PSI against "
              "the profile saved with the model at training time) and people's disagreement, per model version.")

    b.row("Predictions")
    share = (f"{rate(PREDICTIONS, MV + ', label')} / on(model, version) group_left() {rate(PREDICTIONS, MV)}")
    b.add(ts("Class mix (share of predictions)", "percentunit", stacked=True, max_val=1),
          q(share, MV_LEGEND + " {{label}}"),
          description="Classifier: the predicted class; segmenter: crack or no_crack per image.")
    b.add(gauge_bars("Predictions in the time range by outcome", "short", ((None, "blue"),)),
          q(f"sum by ({MV}, label) (increase({sel(PREDICTIONS)}{RANGE}))", MV_LEGEND + " {{label}}", instant=True))

    b.row("Confidence and crack area")
    b.add(heat("Confidence distribution", "percentunit"),
          q(rate(CONFIDENCE, "le", "_bucket"), "{{le}}", fmt="heatmap"),
          description="Per image: top-class probability (classifier), mean max(p, 1-p) over pixels (segmenter).")
    b.add(ts("Confidence (mean, p10)", "percentunit", max_val=1),
          q(mean(CONFIDENCE, MV), "mean " + MV_LEGEND),
          q(quantile(0.1, CONFIDENCE, MV), "p10 " + MV_LEGEND),
          description="p10: nine images in ten are at least this sure.")
    b.add(heat("Crack area ratio distribution", "percentunit"),
          q(rate(CRACK_AREA, "le", "_bucket"), "{{le}}", fmt="heatmap"),
          description="Share of an image's pixels segmented as crack (segmenter only).")
    b.add(ts("Crack area ratio (mean, p95)", "percentunit"),
          q(mean(CRACK_AREA, MV), "mean " + MV_LEGEND),
          q(quantile(0.95, CRACK_AREA, MV), "p95 " + MV_LEGEND))

    b.row("Inputs")
    for metric, title, unit in ((INPUT_MEGAPIXELS, "Input size (mean megapixels)", "short"),
                                (INPUT_BRIGHTNESS, "Input brightness (mean grey level)", "percentunit"),
                                (INPUT_CONTRAST, "Input contrast (mean grey-level std)", "short"),
                                (INPUT_SHARPNESS, "Input sharpness (mean |Laplacian|)", "short")):
        b.add(ts(title, unit, fill=0), q(mean(metric, MV), MV_LEGEND), w=6, h=7)

    b.row("Drift")
    psi = f"max by ({MV}, feature) ({sel(DRIFT_PSI)})"
    b.add(ts("Drift PSI by feature", "short", fill=0)
          .thresholds(thresholds(*PSI_THRESHOLDS))
          .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED_AND_AREA)),
          q(psi, MV_LEGEND + " {{feature}}"),
          description="Population stability index of recent inputs and confidences against the training "
                      "profile: under 0.1 stable, 0.1-0.25 moderate shift, over 0.25 significant shift.")
    b.add(gauge_bars("PSI now", "short", PSI_THRESHOLDS, max_val=0.5),
          q(psi, "{{model}} v{{version}} {{feature}}", instant=True), w=6)
    b.add(stat_panel("Drift window (images)", "short"),
          q(f"max by ({MV}) ({sel(DRIFT_WINDOW)})", MV_LEGEND), w=6,
          description="Images the PSI is computed over; a PSI over few images is noisy.")

    b.row("People")
    b.add(ts("Feedback disagreement ratio (wrong / judged)", "percentunit", max_val=1, fill=0)
          .thresholds(thresholds((None, "green"), (DISAGREEMENT_SPIKE, "red")))
          .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)),
          q(f"max by ({MV}) ({sel(DISAGREEMENT)})", MV_LEGEND),
          description="Over all stored feedback for the model version (the API's store); the "
                      "disagreement alert fires over 20%.")
    b.add(ts("Judged predictions by verdict (total)", "short", stacked=True),
          q(f"sum by ({MV}, verdict) ({sel(FEEDBACK)})", MV_LEGEND + " {{verdict}}"),
          description="Totals from the API's store: correct and wrong verdicts per model version.")
    return b.build()
