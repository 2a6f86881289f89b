"""What every fissure dashboard shares: variables, links, selectors, and panel helpers.

Metric names come from :mod:`fissure.observability.catalog` (``Metric.series``), never typed
here; the selectors use regex matchers so that the variables (and their All value ``.*``) work.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, common as cb, dashboard as db, heatmap
from grafana_foundation_sdk.builders import prometheus as prom, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm, dashboard as dm, heatmap as hm, prometheus as pm

from fissure.observability.catalog import MODEL_INFO, Metric

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "fissure"
MLFLOW_URL = "http://localhost:5000"  # `fissure up` and the chart's NOTES port-forward
ARGO_URL = "https://localhost:2746"  # kubectl -n argo port-forward svc/argo-server 2746:2746

# Selectors. Namespace is "local" on the local stack, the PodMonitor's namespace in a cluster.
NS = 'namespace=~"$namespace"'
NS_MODEL = NS + ', model=~"$model"'
NS_MODEL_VERSION = NS_MODEL + ', version=~"$version"'
RATE = "[$__rate_interval]"
RANGE = "[$__range]"


def sel(metric: Metric, suffix: str = "", matchers: str = NS_MODEL_VERSION, extra: str = "") -> str:
    """``fissure_x_total{namespace=~"$namespace", ...}``: a catalog series with the variables' matchers."""
    inner = matchers + (", " + extra if extra else "")
    return f"{metric.series}{suffix}{{{inner}}}"


def rate(metric: Metric, by: str, suffix: str = "", matchers: str = NS_MODEL_VERSION, extra: str = "") -> str:
    return f"sum by ({by}) (rate({sel(metric, suffix, matchers, extra)}{RATE}))"


def quantile(q: float, metric: Metric, by: str, matchers: str = NS_MODEL_VERSION) -> str:
    return f"histogram_quantile({q}, {rate(metric, 'le, ' + by if by else 'le', '_bucket', matchers)})"


def mean(metric: Metric, by: str, matchers: str = NS_MODEL_VERSION) -> str:
    """Mean of a histogram's observations over the rate window: rate(sum) / rate(count)."""
    return f"{rate(metric, by, '_sum', matchers)} / {rate(metric, by, '_count', matchers)}"


def ratio(metric: Metric, by: str, extra: str, matchers: str = NS_MODEL_VERSION) -> str:
    """Share of a counter's rate that matches ``extra`` (e.g. ``code=~"5.."``), 0 where none does.

    ``or 0 * total`` keeps a series at 0 when nothing matched: a panel without errors shows 0%,
    not "No data".
    """
    total = rate(metric, by, matchers=matchers)
    return f"({rate(metric, by, matchers=matchers, extra=extra)} or 0 * {total}) / {total}"


def role_join(matchers: str = NS_MODEL) -> str:
    """Suffix that adds the ``role`` label: ``* on(model, version) group_left(role) ...``.

    ``max by`` first: several pods (or a front and its restart) serving one version export the
    same info series, and a join needs one series per (model, version) on its right.
    """
    return (f" * on(model, version) group_left(role) "
            f"max by (model, version, role) ({MODEL_INFO.series}{{{matchers}}})")


MV_LEGEND = "{{model}} v{{version}}"
ROLE_LEGEND = "{{role}}: {{model}} v{{version}}"


def q(expr: str, legend: str = "", *, instant: bool = False, fmt: str | None = None) -> prom.Dataquery:
    query = prom.Dataquery().expr(expr).datasource(DATASOURCE).legend_format(legend or "__auto")
    if instant:
        query = query.instant()
    else:
        query = query.range()
    if fmt == "table":
        query = query.format(pm.PromQueryFormat.TABLE)
    elif fmt == "heatmap":
        query = query.format(pm.PromQueryFormat.HEATMAP)
    return query


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


# Green below 0.1, amber from 0.1 (a moderate shift), red from 0.25 (a significant shift): the
# usual reading of a population stability index, the same bounds the drift alert uses.
PSI_THRESHOLDS = ((None, "green"), (0.1, "orange"), (0.25, "red"))


class Board:
    """A dashboard builder that numbers panels and their queries (stable ids, refIds A, B, ...)."""

    def __init__(self, uid: str, title: str, description: str, *, version_var: bool = True):
        self.next_id = 1
        self.dashboard = (
            db.Dashboard(title).uid(uid).description(description).tags([TAG])
            .editable().timezone("browser").refresh("30s").time("now-1h", "now")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .timepicker(db.TimePicker().refresh_intervals(["5s", "10s", "30s", "1m", "5m", "15m"]))
        )
        for variable in variables(version_var):
            self.dashboard = self.dashboard.with_variable(variable)
        for link in links():
            self.dashboard = self.dashboard.link(link)

    def row(self, title: str) -> "Board":
        self.dashboard = self.dashboard.with_row(db.Row(title).id(self._id()))
        return self

    def add(self, panel, *queries: prom.Dataquery, w: int = 12, h: int = 8, description: str = "") -> "Board":
        panel = panel.id(self._id()).datasource(DATASOURCE).span(w).height(h)
        if description:
            panel = panel.description(description)
        for i, query in enumerate(queries):
            panel = panel.with_target(query.ref_id(chr(ord("A") + i)))
        self.dashboard = self.dashboard.with_panel(panel)
        return self

    def build(self):
        return self.dashboard.build()

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def variables(version_var: bool = True) -> list:
    """datasource, namespace, model, version (chained label_values, All = ``.*``), link URLs."""

    def query_var(name: str, label: str, query: str) -> db.QueryVariable:
        return (db.QueryVariable(name).label(label).datasource(DATASOURCE)
                .query(query)
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.NATURAL_ASC)
                .multi(True).include_all(True).all_value(".*")
                .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))

    # Choices come from the front's info series: every served version has one.
    out = [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query_var("namespace", "Namespace", f"label_values({MODEL_INFO.series}, namespace)"),
        query_var("model", "Model", f'label_values({MODEL_INFO.series}{{{NS}}}, model)'),
    ]
    if version_var:
        out.append(query_var("version", "Version", f"label_values({MODEL_INFO.series}{{{NS_MODEL}}}, version)"))
    out += [
        db.TextBoxVariable("mlflow_url").label("MLflow URL").default_value(MLFLOW_URL)
        .current(dm.VariableOption(selected=True, text=MLFLOW_URL, value=MLFLOW_URL)),
        db.TextBoxVariable("argo_url").label("Argo UI URL").default_value(ARGO_URL)
        .current(dm.VariableOption(selected=True, text=ARGO_URL, value=ARGO_URL)),
    ]
    return out


def links() -> list[db.DashboardLink]:
    return [
        db.DashboardLink("fissure dashboards").type(dm.DashboardLinkType.DASHBOARDS).tags([TAG])
        .as_dropdown(True).include_vars(True).keep_time(True),
        db.DashboardLink("MLflow").type(dm.DashboardLinkType.LINK).url("${mlflow_url}")
        .icon("external link").tooltip("Runs, registered models and their aliases").target_blank(True),
        db.DashboardLink("Argo Workflows").type(dm.DashboardLinkType.LINK).url("${argo_url}/workflows")
        .icon("external link").tooltip("Retraining workflows (train, gate, canary)").target_blank(True),
    ]


# ---------------------------------------------------------------------------------------- panels
def legend_bottom() -> cb.VizLegendOptions:
    return (cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM))


def ts(title: str, unit: str, *, stacked: bool = False, min_val: float | None = 0,
       max_val: float | None = None, fill: int = 10) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).unit(unit).legend(legend_bottom()).fill_opacity(fill)
             .line_width(1).show_points(cm.VisibilityMode.NEVER).span_nulls(False))
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(60)
    return panel


def stat_panel(title: str, unit: str, *, text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO,
               steps=((None, "green"),)) -> stat.Panel:
    return (stat.Panel().title(title).unit(unit).thresholds(thresholds(*steps))
            .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.AREA)
            .text_mode(text_mode)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def gauge_bars(title: str, unit: str, steps, *, min_val: float = 0, max_val: float | None = None) -> bargauge.Panel:
    panel = (bargauge.Panel().title(title).unit(unit).min(min_val).thresholds(thresholds(*steps))
             .display_mode(cm.BarGaugeDisplayMode.GRADIENT).orientation(cm.VizOrientation.HORIZONTAL)
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if max_val is not None:
        panel = panel.max(max_val)
    return panel


def heat(title: str, unit: str) -> heatmap.Panel:
    """A heatmap of a Prometheus histogram's buckets (format heatmap: Grafana de-accumulates them)."""
    return (heatmap.Panel().title(title).calculate(False)
            .y_axis(heatmap.YAxisConfig().unit(unit))
            .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME)
                   .scheme("Oranges").steps(64).scale(hm.HeatmapColorScale.EXPONENTIAL)
                   .exponent(0.5))
            .show_value(cm.VisibilityMode.NEVER).hide_legend())


def info_table(title: str) -> table.Panel:
    return table.Panel().title(title).cell_height(cm.TableCellHeight.SM)


def timeline(title: str) -> statetimeline.Panel:
    return (statetimeline.Panel().title(title).show_value(cm.VisibilityMode.NEVER)
            .merge_values(True).row_height(0.8).legend(legend_bottom()))


__all__ = ["Board", "q", "sel", "rate", "quantile", "mean", "ratio", "role_join", "ts",
           "stat_panel", "gauge_bars", "heat", "info_table", "timeline", "thresholds", "PSI_THRESHOLDS",
           "NS", "NS_MODEL", "NS_MODEL_VERSION", "RANGE", "MV_LEGEND", "ROLE_LEGEND"]
