"""Pictures of the Grafana dashboards, drawn with matplotlib from a real Prometheus.

No Grafana server is installable here, so this draws what Grafana would show: for every exported
dashboard (``charts/fissure/files/dashboards/*.json``) one PNG with its panels laid out on the
same 24-column grid, each panel's queries run against Prometheus over a time window
(``query_range``; instant queries for bar gauges and tables), with titles, units, legends and
thresholds. A panel without data says "No data", as in Grafana; a query Prometheus rejects is
drawn in red and makes the command fail.

    python -m fissure.observability.pictures --prometheus http://localhost:9090 --out docs/img/dashboards
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import click

from fissure.errors import FissureError, ServerError, UsageError
from fissure.observability.prometheus import Prometheus, Series
from fissure.observability.grafana import BUILTINS, DASHBOARDS, dashboard_files, default_variables, expand, load

# Grafana's dark theme, so a picture reads like the dashboard.
BG, PANEL_BG, BORDER, TEXT, MUTED, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9f", "#24292e"
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
           "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c", "#6d1f62", "#584477",
           "#96d98d", "#ffee52", "#c0d8ff", "#ffb357", "#ff7383", "#a352cc")
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a", "blue": "#5794f2",
         "purple": "#b877d9", "text": TEXT, "transparent": "none"}

FIG_WIDTH_IN = 22.0  # 24 grid columns
UNIT_H_IN = 0.42  # one grid row: Grafana's 30 px cell + 8 px margin at ~90 px a column
GAP_IN = 0.08
MAX_POINTS = 240
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass
class Picture:
    path: Path
    dashboard: str
    panels: int = 0
    empty: list = field(default_factory=list)  # panel titles with no data
    errors: list = field(default_factory=list)  # "panel: message" for queries Prometheus rejected


# ------------------------------------------------------------------------------------- units
def _si(v: float) -> str:
    a = abs(v)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if a >= limit:
            return f"{v / limit:.3g}{suffix}"
    return f"{v:.3g}" if a >= 0.001 or v == 0 else f"{v:.2e}"


def fmt(v: float, unit: str | None) -> str:
    """A value the way Grafana's unit shows it (the units these dashboards use)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    unit = unit or "short"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit == "percent":
        return f"{v:.3g}%"
    if unit == "s":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        if a < 60:
            return f"{v:.3g} s"
        return f"{v / 60:.3g} min"
    if unit == "reqps":
        return f"{_si(v)} req/s"
    if unit == "none":
        return f"{v:.4g}"
    return _si(v)


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` from the series; ``__auto``/empty: the labels."""
    if not template or template == "__auto":
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        name = labels.get("__name__", "")
        return name + ("{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}" if shown else "") \
            or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(labels.get(m.group(1), "")), template).strip()


def color_of(name: str) -> str:
    return NAMED.get(name, name or TEXT)


def threshold_color(value: float, steps: Sequence[Mapping]) -> str:
    color = TEXT
    for step in steps or []:
        if step.get("value") is None or (not math.isnan(value) and value >= step["value"]):
            color = color_of(step.get("color", ""))
    return color


def mapped(value: float, mappings: Sequence[Mapping]) -> tuple[str, str] | None:
    """(text, colour) of a value mapping that matches, as Grafana's value-to-text mappings."""
    for mapping in mappings or []:
        if mapping.get("type") != "value":
            continue
        for key, result in (mapping.get("options") or {}).items():
            try:
                hit = float(key) == value
            except ValueError:
                hit = False
            if hit:
                return result.get("text") or key, color_of(result.get("color", ""))
    return None


# ------------------------------------------------------------------------------------ drawing
def _duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
    if not m:
        raise UsageError(f"not a duration: {text!r} (e.g. 90s, 30m, 6h)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]


def _prom_duration(seconds: float) -> str:
    return f"{max(int(round(seconds)), 1)}s"


class Renderer:
    def __init__(self, prom: Prometheus, start: float, end: float, step: float, values: Mapping[str, str]):
        self.prom, self.start, self.end, self.step, self.values = prom, start, end, step, values

    # queries -------------------------------------------------------------------------------
    def run(self, panel: Mapping, picture: Picture, *, instant: bool | None = None) -> list[Series]:
        out = []
        for target in panel.get("targets") or []:
            if target.get("hide") or not target.get("expr"):
                continue
            where = f"{panel.get('title')} / {target.get('refId')}"
            expr = expand(target["expr"], self.values, where)
            try:
                if instant if instant is not None else target.get("instant") and not target.get("range"):
                    series = self.prom.instant(expr, self.end)
                else:
                    series = self.prom.range(expr, self.start, self.end, self.step)
            except ServerError as exc:
                picture.errors.append(f"{where}: {exc}")
                continue
            for s in series:
                s.name = legend(target.get("legendFormat", ""), s.labels)
            out += series
        return out

    # one panel -----------------------------------------------------------------------------
    def panel(self, fig, rect, panel: Mapping, picture: Picture) -> None:
        from matplotlib.patches import FancyBboxPatch

        left, bottom, width, height = rect
        fig.add_artist(FancyBboxPatch((left, bottom), width, height, boxstyle="round,pad=0,rounding_size=0.002",
                                      transform=fig.transFigure, facecolor=PANEL_BG, edgecolor=BORDER, lw=0.8,
                                      zorder=-10))  # under the panel's axes
        fig.text(left + 0.006, bottom + height - 0.16 / self.fig_h, panel.get("title", ""), color=TEXT,
                 fontsize=9.5, fontweight="bold", va="center", ha="left")
        kind = panel.get("type")
        errors_before = len(picture.errors)
        draw = {"timeseries": self.timeseries, "stat": self.stat, "bargauge": self.bargauge,
                "heatmap": self.heatmap, "table": self.table, "state-timeline": self.timeline}.get(kind)
        if draw is None:
            self._message(fig, rect, f"({kind} panels are not drawn)", MUTED)
            return
        has_data = draw(fig, rect, panel, picture)
        if len(picture.errors) > errors_before:
            self._message(fig, rect, "Query error: " + picture.errors[-1].split(": ", 1)[-1][:120], NAMED["red"])
        elif not has_data:
            picture.empty.append(panel.get("title", ""))
            self._message(fig, rect, "No data", MUTED)

    def _message(self, fig, rect, text, color):
        left, bottom, width, height = rect
        fig.text(left + width / 2, bottom + height / 2, text, color=color, fontsize=10, ha="center", va="center",
                 wrap=True)

    def _inner(self, fig, rect, *, top_in=0.34, bottom_in=0.1, left_in=0.1, right_in=0.12):
        left, bottom, width, height = rect
        return fig.add_axes([left + left_in / FIG_WIDTH_IN, bottom + bottom_in / self.fig_h,
                             max(width - (left_in + right_in) / FIG_WIDTH_IN, 0.01),
                             max(height - (top_in + bottom_in) / self.fig_h, 0.01)])

    @staticmethod
    def _style(ax):
        ax.set_facecolor(PANEL_BG)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(colors=MUTED, labelsize=7.5, length=0)
        ax.grid(True, color=GRID, lw=0.6)
        ax.set_axisbelow(True)

    def _legend_rows(self, names: Sequence[str], width_frac: float) -> tuple[int, int]:
        ncol = max(1, int(width_frac * FIG_WIDTH_IN / 2.6))
        rows = min(math.ceil(len(names) / ncol), 5)
        return ncol, rows

    def timeseries(self, fig, rect, panel, picture) -> bool:
        import matplotlib.dates as mdates
        import numpy as np
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        series = [s for s in self.run(panel, picture, instant=False) if any(not math.isnan(v) for v in s.v)]
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        custom = defaults.get("custom") or {}
        unit = defaults.get("unit")
        ncol, rows = self._legend_rows([s.name for s in series], rect[2])
        ax = self._inner(fig, rect, bottom_in=0.3 + 0.17 * rows, left_in=0.75)
        self._style(ax)
        self._time_axis(ax, rect)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit)))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        if not series:
            ax.set_yticks([])
            return False
        stacked = (custom.get("stacking") or {}).get("mode") in ("normal", "percent")
        fill = float(custom.get("fillOpacity", 0) or 0) / 100
        colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
        handles = []
        if stacked:
            grid = np.arange(self.start, self.end + self.step / 2, self.step)
            ys = []
            for s in series:
                y = np.zeros(len(grid))
                idx = np.clip(np.round((np.array(s.t) - self.start) / self.step).astype(int), 0, len(grid) - 1)
                y[idx] = np.nan_to_num(np.array(s.v))
                ys.append(y)
            x = [self._dt(t) for t in grid]
            handles = ax.stackplot(x, ys, colors=colors, alpha=max(fill, 0.35), lw=0.8, edgecolor="none")
        else:
            # Grafana fills under every series; past a few, fills only muddy the lines
            fill = fill * 0.6 if len(series) <= 4 else 0
            for s, c in zip(series, colors):
                x, y = self._broken(s)
                (line,) = ax.plot(x, y, color=c, lw=1.3)
                if fill:
                    ax.fill_between(x, y, color=c, alpha=fill, lw=0)
                handles.append(line)
        self._thresholds(ax, defaults, custom)
        lo, hi = defaults.get("min"), defaults.get("max")
        ymin, ymax = ax.get_ylim()
        ax.set_ylim(lo if lo is not None else ymin, hi if hi is not None else ymax)
        if lo is not None and hi is None and ax.get_ylim()[1] <= lo:
            ax.set_ylim(lo, lo + 1)
        names = [s.name for s in series]
        shown = rows * ncol
        if len(names) > shown:
            handles, names = handles[:shown - 1], names[:shown - 1] + [f"+{len(series) - shown + 1} more"]
            handles.append(Line2D([], [], color="none"))
        ax.legend(handles, names, loc="upper left", bbox_to_anchor=(0, -0.22 / (ax.get_position().height * self.fig_h)),
                  ncol=ncol, fontsize=7.2, frameon=False, labelcolor=TEXT, handlelength=1.2, columnspacing=1.2,
                  borderaxespad=0)
        return True

    def _thresholds(self, ax, defaults, custom):
        mode = (custom.get("thresholdsStyle") or {}).get("mode", "off")
        steps = (defaults.get("thresholds") or {}).get("steps") or []
        if mode == "off" or not steps:
            return
        bounds = [s for s in steps if s.get("value") is not None]
        top = max(ax.get_ylim()[1], max((s["value"] for s in bounds), default=0) * 1.15)
        ax.set_ylim(ax.get_ylim()[0], top)
        for i, step in enumerate(bounds):
            color = color_of(step.get("color", ""))
            ax.axhline(step["value"], color=color, lw=1, ls="--" if "dashed" in mode else "-", alpha=0.9)
            if "area" in mode:
                upper = bounds[i + 1]["value"] if i + 1 < len(bounds) else top
                ax.axhspan(step["value"], upper, color=color, alpha=0.08, lw=0)

    def stat(self, fig, rect, panel, picture) -> bool:
        series = [s for s in self.run(panel, picture, instant=None) if any(not math.isnan(v) for v in s.v)]
        if not series:
            return False
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        options = panel.get("options") or {}
        unit, steps = defaults.get("unit"), (defaults.get("thresholds") or {}).get("steps")
        text_mode = options.get("textMode", "auto")
        left, bottom, width, height = rect
        top = bottom + height - 0.3 / self.fig_h  # under the title
        n = len(series)
        width_in = width * FIG_WIDTH_IN
        cols = min(n, max(1, int(width_in / 1.7)))
        rows = math.ceil(n / cols)
        cell_w, cell_h = width / cols, (top - bottom) / rows
        cell_w_in, cell_h_in = cell_w * FIG_WIDTH_IN, cell_h * self.fig_h
        show_name = text_mode in ("name", "value_and_name") or (text_mode == "auto" and n > 1)
        for i, s in enumerate(series):
            value = [v for v in s.v if not math.isnan(v)][-1]
            hit = mapped(value, defaults.get("mappings"))
            text, color = hit if hit else (fmt(value, unit), threshold_color(value, steps))
            cx = left + cell_w * (i % cols + 0.5)
            cell_bottom = top - cell_h * (i // cols + 1)
            if text_mode == "name":
                text, show_name = s.name, False
            # as large as the cell allows: ~0.62 em per character, the value over ~half the cell's height
            size = max(min(30, cell_w_in * 72 / (0.62 * max(len(text), 3)) * 0.85,
                           cell_h_in * 72 * (0.42 if show_name else 0.55)), 7)
            if options.get("graphMode") == "area" and len(s.t) > 1 and text_mode != "name":
                spark = fig.add_axes([cx - cell_w / 2 + 0.002, cell_bottom + 0.003, cell_w - 0.004, cell_h * 0.35],
                                     zorder=-5)
                spark.fill_between(s.t, s.v, color=color, alpha=0.18, lw=0)
                spark.plot(s.t, s.v, color=color, lw=1, alpha=0.8)
                spark.set_axis_off()
                spark.set_xlim(self.start, self.end)
            y = cell_bottom + cell_h * (0.45 if show_name else 0.5)
            fig.text(cx, y, text, color=color, fontsize=size, ha="center", va="center", fontweight="bold")
            if show_name:
                most = max(int(cell_w_in * 72 / (7.5 * 0.6)), 4)
                name = s.name if len(s.name) <= most else s.name[: most - 1] + "…"
                fig.text(cx, cell_bottom + cell_h * 0.85, name, color=TEXT, fontsize=7.5, ha="center", va="center")
        return True

    def bargauge(self, fig, rect, panel, picture) -> bool:
        series = [s for s in self.run(panel, picture, instant=None) if any(not math.isnan(v) for v in s.v)]
        if not series:
            return False
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        unit, steps = defaults.get("unit"), (defaults.get("thresholds") or {}).get("steps")
        series = series[:24]
        values = [[v for v in s.v if not math.isnan(v)][-1] for s in series]
        lo = defaults.get("min", 0) or 0
        hi = defaults.get("max")
        hi = max(values + [hi or 0]) if hi is None or max(values) > hi else hi
        hi = hi if hi > lo else lo + 1
        ax = self._inner(fig, rect, left_in=min(2.4, rect[2] * FIG_WIDTH_IN * 0.42), right_in=0.8, bottom_in=0.12)
        ax.set_facecolor(PANEL_BG)
        ax.set_axis_off()
        ys = list(range(len(series)))[::-1]
        ax.barh(ys, [hi - lo] * len(series), left=lo, color="#22252b", height=0.62)
        ax.barh(ys, [v - lo for v in values], left=lo, color=[threshold_color(v, steps) for v in values], height=0.62)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.6, len(series) - 0.4)
        font = max(min(8.0, ax.get_position().height * self.fig_h * 72 / len(series) * 0.7), 5.0)
        for y, s, v in zip(ys, series, values):
            ax.text(lo - (hi - lo) * 0.02, y, s.name, color=TEXT, fontsize=font, ha="right", va="center")
            ax.text(hi + (hi - lo) * 0.02, y, fmt(v, unit), color=threshold_color(v, steps), fontsize=font + 0.5,
                    ha="left", va="center", fontweight="bold")
        return True

    def heatmap(self, fig, rect, panel, picture) -> bool:
        import matplotlib.dates as mdates
        import numpy as np
        from matplotlib.colors import PowerNorm
        from matplotlib.ticker import FixedLocator, FuncFormatter

        series = [s for s in self.run(panel, picture, instant=False) if "le" in s.labels]
        if not series or not any(not math.isnan(v) for s in series for v in s.v):
            return False
        unit = ((panel.get("options") or {}).get("yAxis") or {}).get("unit")
        series.sort(key=lambda s: float(s.labels["le"]))
        grid = np.arange(self.start, self.end + self.step / 2, self.step)
        cumulative = np.full((len(series), len(grid)), np.nan)
        for i, s in enumerate(series):
            idx = np.clip(np.round((np.array(s.t) - self.start) / self.step).astype(int), 0, len(grid) - 1)
            cumulative[i, idx] = s.v
        counts = np.diff(np.vstack([np.zeros((1, len(grid))), cumulative]), axis=0)  # de-accumulate buckets
        counts = np.clip(counts, 0, None)
        ax = self._inner(fig, rect, bottom_in=0.32, left_in=0.75)
        self._style(ax)
        ax.grid(False)
        edges = [self._dt(t - self.step / 2) for t in grid] + [self._dt(grid[-1] + self.step / 2)]
        masked = np.ma.masked_invalid(np.where(counts > 0, counts, np.nan))
        ax.pcolormesh(mdates.date2num(edges), np.arange(len(series) + 1), masked, cmap="Oranges",
                      norm=PowerNorm(0.5), shading="flat")
        bounds = [s.labels["le"] for s in series]
        labels = [("+Inf" if b in ("+Inf", "Inf") else fmt(float(b), unit)) for b in bounds]
        step = max(1, math.ceil(len(labels) / max(2, int(rect[3] * self.fig_h / 0.22))))
        ax.yaxis.set_major_locator(FixedLocator([i + 1 for i in range(0, len(labels), step)]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: labels[int(v) - 1] if 1 <= int(v) <= len(labels) else ""))
        ax.set_ylim(0, len(series))
        self._time_axis(ax, rect)
        return True

    def table(self, fig, rect, panel, picture) -> bool:
        series = self.run(panel, picture, instant=True)
        if not series:
            return False
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        hidden, order = {}, {}  # Grafana's "organize fields" transformation: hidden columns, their order
        for transformation in panel.get("transformations") or []:
            if transformation.get("id") == "organize":
                hidden.update((transformation.get("options") or {}).get("excludeByName") or {})
                order.update((transformation.get("options") or {}).get("indexByName") or {})
        columns = sorted({k for s in series for k in s.labels if k != "__name__" and not hidden.get(k)},
                         key=lambda c: (order.get(c, len(order)), c))
        with_value = not hidden.get("Value")
        rows = [[s.labels.get(c, "") for c in columns] + ([fmt(s.v[-1], defaults.get("unit"))] if with_value else [])
                for s in series[:14]]
        ax = self._inner(fig, rect, top_in=0.36, bottom_in=0.08)
        ax.set_axis_off()
        table = ax.table(cellText=rows, colLabels=columns + (["Value"] if with_value else []), loc="upper left",
                         cellLoc="left", colLoc="left", edges="horizontal")
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
        for (r, _c), cell in table.get_celld().items():
            cell.set_edgecolor(BORDER)
            cell.set_facecolor(PANEL_BG)
            cell.get_text().set_color(TEXT if r else MUTED)
            cell.set_height(min(0.16 / (ax.get_position().height * self.fig_h), 1 / (len(rows) + 1)))
        return True

    def timeline(self, fig, rect, panel, picture) -> bool:
        import matplotlib.dates as mdates
        import numpy as np

        series = [s for s in self.run(panel, picture, instant=False) if any(v > 0 for v in s.v if not math.isnan(v))]
        if not series:
            return False
        width_in = min(2.2, rect[2] * FIG_WIDTH_IN * 0.25)
        ax = self._inner(fig, rect, left_in=width_in, bottom_in=0.3)
        self._style(ax)
        ax.grid(False)
        for i, s in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            t = np.array(s.t)
            on = np.array([not math.isnan(v) and v > 0 for v in s.v])
            spans, begin = [], None
            for k in range(len(t)):
                if on[k] and begin is None:
                    begin = t[k]
                if begin is not None and (not on[k] or k == len(t) - 1):
                    stop = t[k] if not on[k] else t[k] + self.step
                    spans.append((mdates.date2num(self._dt(begin)),
                                  mdates.date2num(self._dt(stop)) - mdates.date2num(self._dt(begin))))
                    begin = None
            ax.broken_barh(spans, (len(series) - 1 - i - 0.4, 0.8), color=color, alpha=0.85)
        ax.set_yticks(range(len(series)))
        ax.set_yticklabels([s.name for s in series][::-1], color=TEXT)
        ax.set_ylim(-0.6, len(series) - 0.4)
        self._time_axis(ax, rect)
        return True

    # helpers -------------------------------------------------------------------------------
    def _broken(self, s: Series):
        """x (datetimes) and y with a NaN wherever samples are missing, so a line breaks over a gap
        (a restarted process, a target down) instead of bridging it."""
        x, y = [], []
        for k, (t, v) in enumerate(zip(s.t, s.v)):
            if k and t - s.t[k - 1] > 2.5 * self.step:
                x.append(self._dt((t + s.t[k - 1]) / 2))
                y.append(float("nan"))
            x.append(self._dt(t))
            y.append(v)
        return x, y

    def _time_axis(self, ax, rect):
        """UTC clock ticks at a round interval, about one per 1.6 inches of panel."""
        import matplotlib.dates as mdates
        from matplotlib.ticker import FixedLocator

        most = max(2, int(rect[2] * FIG_WIDTH_IN / 1.6))
        span = self.end - self.start
        every = next((s for s in NICE_STEPS if span / s <= most), NICE_STEPS[-1])
        first = math.ceil(self.start / every) * every
        ticks = [t for t in (first + k * every for k in range(int((self.end - first) // every) + 1))
                 if t - self.start > 0.03 * span]  # none under the y axis' labels
        ax.xaxis_date(tz=timezone.utc)
        ax.set_xlim(self._dt(self.start), self._dt(self.end))
        ax.xaxis.set_major_locator(FixedLocator([mdates.date2num(self._dt(t)) for t in ticks]))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if every < 60 else "%H:%M", tz=timezone.utc))

    @staticmethod
    def _dt(t: float) -> datetime:
        return datetime.fromtimestamp(float(t), tz=timezone.utc)

    # one dashboard -------------------------------------------------------------------------
    def dashboard(self, dashboard: Mapping, path: Path) -> Picture:
        from matplotlib.figure import Figure

        picture = Picture(path=path, dashboard=dashboard.get("title", path.stem))
        layout = _layout(dashboard)
        rows = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in layout), default=1)
        header_in = 0.75
        self.fig_h = header_in + rows * UNIT_H_IN + 0.2
        fig = Figure(figsize=(FIG_WIDTH_IN, self.fig_h), dpi=100, facecolor=BG)
        window = (f"{self._dt(self.start):%Y-%m-%d %H:%M} to {self._dt(self.end):%H:%M} UTC, "
                  f"step {_prom_duration(self.step)}")
        chosen = ", ".join(f"{k}={'All' if v == '.*' else v}" for k, v in self.values.items()
                           if not k.startswith("__") and k not in ("datasource",) and not k.endswith("_url"))
        fig.text(0.006, 1 - 0.3 / self.fig_h, picture.dashboard, color=TEXT, fontsize=15, fontweight="bold",
                 va="center")
        fig.text(0.994, 1 - 0.3 / self.fig_h, f"{window}   {chosen}", color=MUTED, fontsize=9, ha="right",
                 va="center")
        for p in layout:
            g = p["gridPos"]
            x_in = g["x"] * FIG_WIDTH_IN / 24 + GAP_IN / 2
            w_in = g["w"] * FIG_WIDTH_IN / 24 - GAP_IN
            y_in = header_in + g["y"] * UNIT_H_IN + GAP_IN / 2
            h_in = g["h"] * UNIT_H_IN - GAP_IN
            rect = (x_in / FIG_WIDTH_IN, 1 - (y_in + h_in) / self.fig_h, w_in / FIG_WIDTH_IN, h_in / self.fig_h)
            if p.get("type") == "row":
                fig.text(rect[0], rect[1] + rect[3] * 0.35, ("▸ " if p.get("collapsed") else "") + p.get("title", ""),
                         color=TEXT, fontsize=11.5, fontweight="bold", va="center")
                continue
            picture.panels += 1
            self.panel(fig, rect, p, picture)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, facecolor=BG, dpi=100)
        return picture


def _layout(dashboard: Mapping) -> list[dict]:
    """Top-level panels as Grafana shows them: a collapsed row is its header only."""
    return [p for p in dashboard.get("panels") or [] if p.get("gridPos")]


def render(prometheus_url: str, out: str | Path, *, dashboards: str | Path | Sequence[Path] = DASHBOARDS,
           window: float = 1800, end: float | None = None, step: float | None = None,
           variables: Mapping[str, str] | None = None, scrape_interval: float = 5, timeout: float = 15.0) -> list[Picture]:
    """Draw each dashboard into ``out/<uid>.png`` from the Prometheus at ``prometheus_url``.

    The window is ``window`` seconds up to ``end`` (now); ``step`` defaults to window/240.
    ``$__rate_interval`` is what Grafana would use (at least 4 scrape intervals and one minute,
    so short bursts read as rates); ``$__range`` is the window. ``variables`` overrides the
    dashboards' defaults (All). Raises :class:`~fissure.errors.Unavailable` when Prometheus
    cannot be reached; panels whose queries fail are listed in each :class:`Picture`'s errors.
    """
    if isinstance(dashboards, (str, Path)) and Path(dashboards).is_dir():
        files = dashboard_files(dashboards)
    elif isinstance(dashboards, (str, Path)):
        files = [Path(dashboards)]
    else:
        files = [Path(p) for p in dashboards]
    if not files:
        raise UsageError(f"no dashboard JSON in {dashboards}")
    if window <= 0:
        raise UsageError("the window must be longer than 0 s")
    end = float(end if end is not None else time.time())
    step = float(step or max(1.0, round(window / MAX_POINTS)))
    start = end - window
    rate_interval = max(60.0, 4 * scrape_interval, step + scrape_interval)
    builtins = {**BUILTINS, "__rate_interval": _prom_duration(rate_interval), "__interval": _prom_duration(step),
                "__interval_ms": str(int(step * 1000)), "__range": _prom_duration(window),
                "__range_s": str(int(window)), "__range_ms": str(int(window * 1000))}
    prom = Prometheus(prometheus_url, timeout)
    try:
        prom.check()
        pictures = []
        for file in files:
            dashboard = load(file)
            values = {**builtins, **default_variables(dashboard), **(variables or {})}
            name = (dashboard.get("uid") or file.stem) + ".png"
            pictures.append(Renderer(prom, start, end, step, values).dashboard(dashboard, Path(out) / name))
        return pictures
    finally:
        prom.close()


# ------------------------------------------------------------------------------------------ CLI
def _parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"\w+", name):
            raise UsageError(f"--var wants NAME=VALUE, not {pair!r}")
        out[name] = value
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--prometheus", "prometheus_url", default="http://localhost:9090", show_default=True,
              help="Prometheus to query (the local stack's, or a port-forward).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/img/dashboards"),
              show_default=True, help="Folder for one PNG per dashboard (<uid>.png).")
@click.option("--dashboards", type=click.Path(exists=True, path_type=Path), default=DASHBOARDS,
              show_default="charts/fissure/files/dashboards", help="A dashboard JSON file or a folder of them.")
@click.option("--window", default="30m", show_default=True, help="How far back to draw (90s, 30m, 6h).")
@click.option("--end", "end", default=None, help="End of the window, unix seconds (default: now).")
@click.option("--step", default=None, help="Resolution (default: window/240, at least 1s).")
@click.option("--var", "pairs", multiple=True, metavar="NAME=VALUE",
              help="Set a dashboard variable (repeatable), e.g. --var model=crack-classifier. Default: All.")
@click.option("--allow-empty", is_flag=True, help="Exit 0 even when some panels have no data.")
def cli(prometheus_url, out, dashboards, window, end, step, pairs, allow_empty):
    """Draw each Grafana dashboard's panels from a real Prometheus into PNGs (matplotlib).

    Exits 1 when Prometheus cannot be reached, when a query fails, or (unless --allow-empty)
    when a panel has no data.
    """
    try:
        end_s = float(end) if end is not None else None
    except ValueError:
        raise UsageError(f"--end wants unix seconds, not {end!r}") from None
    pictures = render(prometheus_url, out, dashboards=dashboards, window=_duration(window), end=end_s,
                      step=_duration(step) if step else None, variables=_parse_vars(pairs))
    failed = []
    for p in pictures:
        status = f"{p.panels} panels"
        if p.empty:
            status += f", no data in: {'; '.join(p.empty)}"
        if p.errors:
            status += f", {len(p.errors)} failed queries"
        click.echo(f"pictures: wrote {p.path} ({status})")
        failed += p.errors
    if failed:
        raise ServerError(f"{len(failed)} queries failed, first: {failed[0]}")
    if not allow_empty and any(p.empty for p in pictures):
        raise FissureError(f"{sum(len(p.empty) for p in pictures)} panels have no data (see above; --allow-empty "
                           "to accept)")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="python -m fissure.observability.pictures", standalone_mode=False)
    except FissureError as exc:
        click.echo(f"pictures: error: {exc}", err=True)
        return 2 if isinstance(exc, UsageError) else 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
