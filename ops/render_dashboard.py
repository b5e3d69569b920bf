#!/usr/bin/env python3
"""Render a Grafana dashboard of this repository as a PNG, from any Prometheus, without Grafana.

Every panel's queries are run against the Prometheus HTTP API (range queries for time series and stat
sparklines, instant queries for the stat value and bar gauges) and drawn with matplotlib where the dashboard's
grid puts the panel, in Grafana's dark colours. It makes the README's picture from a real run
(``tests/ops/live_stack.py``), and works against the docker-compose Prometheus as well::

    pip install matplotlib          # the only dependency besides the standard library
    python ops/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 30 --out overview.png

Grafana variables: ``$__rate_interval`` (``--rate-interval``), ``$__interval`` (the step), ``$__range``
(the whole range), ``$namespace`` and any other template variable (``--var name=value``, default ``.*``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DASHBOARD = REPO / "helm" / "mpesa-b2c" / "dashboards" / "mpesa-b2c-overview.json"

BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
GRID = "#2a2d33"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d"]
# Fixed colours for the label values operators read most, so "failed" is always red.
NAMED = {
    "completed": "#73bf69",
    "paid": "#73bf69",
    "success rate": "#73bf69",
    "accepted": "#5794f2",
    "failed": "#f2495c",
    "rejected": "#ff780a",
    "unknown": "#b877d9",
    "received": "#8ab8ff",
    "sending": "#f2cc0c",
}
THRESHOLD_COLOURS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "blue": "#5794f2"}
ROW_UNITS = 0.4  # inches per Grafana grid row


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as answer:  # noqa: S310
            body = json.load(answer)
        if body.get("status") != "success":
            raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
        return body["data"]["result"]

    def instant(self, expr: str, at: float) -> list[dict[str, Any]]:
        result = self._get("query", {"query": expr, "time": at})
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(
            "query_range", {"query": expr, "start": start, "end": end, "step": step}
        )
        return result


@dataclass(frozen=True)
class Source:
    """A dashboard's queries over one time range, Grafana variables substituted."""

    prom: Prometheus
    start: float
    end: float
    step: float
    variables: dict[str, str]

    def range(self, expr: str) -> list[dict[str, Any]]:
        return self.prom.range(substitute(expr, self.variables), self.start, self.end, self.step)

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return self.prom.instant(substitute(expr, self.variables), self.end)


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


def substitute(expr: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise SystemExit(f"undefined variable ${name} in {expr} (give it with --var {name}=...)")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def legend(target: dict[str, Any], labels: dict[str, str]) -> str:
    text = target.get("legendFormat") or ""
    if not text:
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or target.get("refId", "")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), text)


def formatter(field: dict[str, Any]) -> Any:  # noqa: C901 - one branch per Grafana unit, mirroring Grafana's own formatting
    unit = str(field.get("unit", "short"))
    decimals = field.get("decimals")

    def short(value: float) -> str:
        for size, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " K")):
            if abs(value) >= size:
                return f"{value / size:.{1 if decimals is None else decimals}f}{suffix}"
        if decimals is not None:
            return f"{value:.{decimals}f}"
        if float(value).is_integer():
            return f"{value:.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"

    def fmt(value: float) -> str:
        if value is None or math.isnan(value):
            return "No data"
        if unit == "percentunit":
            return f"{value * 100:.{1 if decimals is None else decimals}f}%"
        if unit == "s":
            if abs(value) >= 3600:
                return f"{value / 3600:.1f} h"
            if abs(value) >= 60:
                return f"{value / 60:.1f} min"
            if abs(value) >= 1 or value == 0:
                return f"{value:.{1 if decimals is None else decimals}f} s"
            return f"{value * 1000:.0f} ms"
        if unit.startswith("suffix:"):
            return f"{short(value)}{unit.split(':', 1)[1]}"
        return short(value)

    return fmt


def colour_for(name: str, index: int) -> str:
    return NAMED.get(name, PALETTE[index % len(PALETTE)])


Anchor = tuple[float, float, float]  # a legend's lower left corner (figure fraction) and its width (inches)


@dataclass(frozen=True)
class Layout:
    """Where things go, in inches (Grafana's grid: 24 columns, rows of ROW_UNITS)."""

    width: float
    height: float
    header: float
    gap: float = 0.05

    def fraction(self, left: float, bottom: float, width: float, height: float) -> tuple[float, float, float, float]:
        return (left / self.width, bottom / self.height, width / self.width, height / self.height)

    def cell(self, grid: dict[str, int]) -> tuple[float, float, float, float]:
        """(left, bottom, width, height) of a panel in inches."""
        column = self.width / 24
        left = grid["x"] * column + self.gap
        top = self.height - self.header - grid["y"] * ROW_UNITS - self.gap
        return (
            left,
            top - grid["h"] * ROW_UNITS + 2 * self.gap,
            grid["w"] * column - 2 * self.gap,
            grid["h"] * ROW_UNITS - 2 * self.gap,
        )


# Inner margins (left, right, top, bottom) in inches around the plot of each panel type.
MARGINS = {"timeseries": (0.95, 0.15, 0.4, 0.68), "bargauge": (1.05, 0.15, 0.45, 0.12), "stat": (0.08, 0.08, 0.4, 0.06)}


def panel_axes(fig: Figure, layout: Layout, panel: dict[str, Any]) -> tuple[Axes, Anchor]:
    """Draw the panel's frame and title; return the plot axes and where its legend goes."""
    left, bottom, width, height = layout.cell(panel["gridPos"])
    frame = fig.add_axes(layout.fraction(left, bottom, width, height))
    frame.set_facecolor(PANEL)
    frame.set_xticks([])
    frame.set_yticks([])
    for spine in frame.spines.values():
        spine.set_color(BORDER)
    frame.text(
        0.12 / width,
        1 - 0.22 / height,
        panel["title"],
        color=TEXT,
        fontsize=10.5,
        fontweight="bold",
        va="center",
        transform=frame.transAxes,
    )
    m_left, m_right, m_top, m_bottom = MARGINS[panel["type"]]
    ax = fig.add_axes(
        layout.fraction(left + m_left, bottom + m_bottom, width - m_left - m_right, height - m_top - m_bottom)
    )
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=8.5, length=0)
    anchor = ((left + 0.12) / layout.width, (bottom + 0.05) / layout.height, width - 0.24)
    return ax, anchor


def draw_row(fig: Figure, layout: Layout, panel: dict[str, Any]) -> None:
    top = layout.height - layout.header - panel["gridPos"]["y"] * ROW_UNITS
    fig.text(
        0.12 / layout.width, (top - 0.24) / layout.height, panel["title"], color=TEXT, fontsize=12, fontweight="bold"
    )


def draw_timeseries(ax: Axes, anchor: Anchor, panel: dict[str, Any], data: Source) -> None:
    start, end = data.start, data.end
    field = panel.get("fieldConfig", {}).get("defaults", {})
    fmt = formatter(field)
    lines = 0
    for target in panel["targets"]:
        for series in data.range(target["expr"]):
            points = [(datetime.fromtimestamp(float(t)), float(v)) for t, v in series["values"]]
            points = [(t, v) for t, v in points if not math.isnan(v)]
            if not points:
                continue
            name = legend(target, series["metric"])
            times, values = zip(*points, strict=True)
            colour = colour_for(name, lines)
            ax.plot(times, values, color=colour, linewidth=1.3, label=name)
            ax.fill_between(times, values, color=colour, alpha=0.08)
            lines += 1
    if lines == 0:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
    left, right = (mdates.date2num(datetime.fromtimestamp(t)) for t in (start, end))  # type: ignore[no-untyped-call]
    ax.set_xlim(left, right)
    if field.get("min") == 0:
        ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    ticks = time_ticks(start, end, most=max(3, panel["gridPos"]["w"] // 2))
    ax.set_xticks([mdates.date2num(datetime.fromtimestamp(t)) for t in ticks])  # type: ignore[no-untyped-call]
    clock = "%H:%M:%S" if any(t % 60 for t in ticks) else "%H:%M"
    ax.set_xticklabels([f"{datetime.fromtimestamp(t):{clock}}" for t in ticks])
    ax.grid(color=GRID, linewidth=0.6)
    if lines:
        labels = ax.get_legend_handles_labels()[1]
        widest = max(0.5 + 0.062 * len(label) for label in labels)  # inches at 8 pt: handle + text
        ax.legend(
            loc="lower left",
            bbox_to_anchor=anchor[:2],
            bbox_transform=ax.figure.transFigure,
            fontsize=8,
            frameon=False,
            labelcolor=TEXT,
            ncol=max(1, min(lines, int(anchor[2] // widest))),
            handlelength=1.2,
            borderaxespad=0,
            columnspacing=1.2,
        )


def time_ticks(start: float, end: float, most: int) -> list[float]:
    """Tick times at round multiples (15 s ... 1 d), at most ``most`` of them."""
    for interval in (15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if (end - start) / interval <= most:
            break
    first = math.ceil(start / interval) * interval
    return [float(t) for t in range(int(first), int(end) + 1, interval)]


def _threshold_colour(field: dict[str, Any], value: float) -> str:
    colour = "green"
    for step in field.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            colour = step["color"]
    return THRESHOLD_COLOURS.get(colour, colour)


def draw_stat(ax: Axes, anchor: Anchor, panel: dict[str, Any], data: Source) -> None:
    field = panel.get("fieldConfig", {}).get("defaults", {})
    expr = panel["targets"][0]["expr"]
    result = data.instant(expr)
    value = float(result[0]["value"][1]) if result else float("nan")
    colour = _threshold_colour(field, value) if not math.isnan(value) else MUTED
    spark = data.range(expr)
    if spark:
        points = [(datetime.fromtimestamp(float(t)), float(v)) for t, v in spark[0]["values"]]
        points = [(t, v) for t, v in points if not math.isnan(v)]
        if len(points) > 1:
            times, values = zip(*points, strict=True)
            ax.fill_between(times, values, color=colour, alpha=0.18, linewidth=0)
            ax.plot(times, values, color=colour, alpha=0.6, linewidth=1)
            low, high = min(values), max(values)
            ax.set_ylim(low - 0.05 * (high - low or 1), high + 1.6 * (high - low or 1))
    ax.text(
        0.5,
        0.55,
        formatter(field)(value),
        color=colour,
        fontsize=24,
        fontweight="bold",
        ha="center",
        va="center",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def draw_bargauge(ax: Axes, anchor: Anchor, panel: dict[str, Any], data: Source) -> None:
    field = panel.get("fieldConfig", {}).get("defaults", {})
    fmt = formatter(field)
    bars: list[tuple[str, float]] = []
    for target in panel["targets"]:
        for sample in data.instant(target["expr"]):
            value = float(sample["value"][1])
            if not math.isnan(value):
                bars.append((legend(target, sample["metric"]), value))
    bars.sort(key=lambda bar: -bar[1])
    if not bars:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    names = [name for name, _ in bars][::-1]
    values = [value for _, value in bars][::-1]
    colours = [colour_for(name, i) for i, name in enumerate(names)]
    ax.barh(names, values, color=colours, height=0.6)
    top = max(values) or 1
    for index, value in enumerate(values):
        ax.text(value + top * 0.02, index, fmt(value), color=TEXT, va="center", fontsize=8.5)
    ax.set_xlim(0, top * 1.2)
    ax.set_xticks([])
    ax.tick_params(axis="y", labelcolor=TEXT, labelsize=8.5)


DRAW = {"timeseries": draw_timeseries, "stat": draw_stat, "bargauge": draw_bargauge}


def render(
    dashboard: dict[str, Any],
    prom: Prometheus,
    *,
    start: float,
    end: float,
    rate_interval: str,
    extra: dict[str, str],
    out: Path,
) -> None:
    step = max(1.0, round((end - start) / 240))
    env = {
        "__rate_interval": rate_interval,
        "__interval": f"{int(step)}s",
        "__range": f"{int(end - start)}s",
        "namespace": ".*",
    }
    for variable in dashboard.get("templating", {}).get("list", []):
        env.setdefault(variable["name"], ".*")
    env.update(extra)
    panels = list(walk(dashboard["panels"]))
    total_rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    layout = Layout(width=16.0, height=total_rows * ROW_UNITS + 0.6, header=0.6)
    fig = plt.figure(figsize=(layout.width, layout.height), facecolor=BACKGROUND)
    when = f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M} to {datetime.fromtimestamp(end):%H:%M}"
    baseline = 1 - 0.32 / layout.height
    fig.text(0.12 / layout.width, baseline, dashboard["title"], color=TEXT, fontsize=15, fontweight="bold")
    note = f"{when} · real Prometheus data, drawn by ops/render_dashboard.py"
    fig.text(1 - 0.12 / layout.width, baseline, note, color=MUTED, fontsize=9, ha="right")
    for panel in panels:
        if panel["type"] == "row":
            draw_row(fig, layout, panel)
            continue
        draw = DRAW.get(panel["type"])
        if draw is None:
            print(f"skipping panel {panel['title']!r} of type {panel['type']}", file=sys.stderr)
            continue
        ax, anchor = panel_axes(fig, layout, panel)
        draw(ax, anchor, panel, Source(prom, start, end, step, env))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor=BACKGROUND)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD, help="dashboard JSON (default: overview)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--minutes", type=float, default=30.0, help="range ending now (default 30)")
    parser.add_argument("--start", type=float, help="range start, Unix seconds (instead of --minutes)")
    parser.add_argument("--end", type=float, help="range end, Unix seconds (default now)")
    parser.add_argument("--rate-interval", default="1m", help="value of $__rate_interval (default 1m)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a template variable")
    args = parser.parse_args(argv)
    end = args.end or time.time()
    start = args.start or end - args.minutes * 60
    extra = dict(item.split("=", 1) for item in args.var)
    dashboard = json.loads(args.dashboard.read_text())
    render(
        dashboard,
        Prometheus(args.prometheus),
        start=start,
        end=end,
        rate_interval=args.rate_interval,
        extra=extra,
        out=args.out,
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
