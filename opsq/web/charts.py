"""Inline SVG charts, built on the server: the page needs no JavaScript and no CDN.

Each function returns a small SVG document as text (already escaped where it embeds
text) for the templates to insert with ``|safe``. Sizes are in CSS pixels; the SVGs
scale with ``viewBox``.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from opsq.engines.history.raw import PHASES, Sample
from opsq.engines.history.rollup import Acc

STATE_COLOURS = {
    "up": "#2da44e",
    "degraded": "#d4a72c",
    "down": "#cf222e",
    "unknown": "#8c959f",
}
PHASE_COLOURS = {
    "dns": "#8250df",
    "connect": "#0969da",
    "tls": "#1b7c83",
    "ttfb": "#bf8700",
    "transfer": "#fb8f44",
    "rest": "#afb8c1",
    "total": "#57606a",
}
LAYERS = (*PHASES, "rest", "total")
"""``rest``: latency the phases do not account for; ``total``: probes without phases."""


def sparkline(values: Sequence[float | None], width: int = 120, height: int = 22) -> str:
    """A polyline of the non-empty values (gaps break the line); empty when none."""
    present = [v for v in values if v is not None]
    if not present:
        return f'<svg class="spark" width="{width}" height="{height}" aria-hidden="true"></svg>'
    top = max(present) * 1.1 or 1.0
    step = width / max(len(values) - 1, 1)
    runs: list[list[str]] = [[]]
    for index, value in enumerate(values):
        if value is None:
            runs.append([])
            continue
        y = height - 1 - (value / top) * (height - 2)
        runs[-1].append(f"{index * step:.1f},{y:.1f}")
    lines = "".join(
        f'<polyline points="{" ".join(run)}"/>'
        if len(run) > 1
        else f'<circle cx="{run[0].split(",")[0]}" cy="{run[0].split(",")[1]}" r="1.2"/>'
        for run in runs
        if run
    )
    title = f"max {max(present) * 1000:.0f} ms"
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{title}</title><g>{lines}</g></svg>"
    )


def phase_chart(
    samples: Sequence[Sample],
    start: float,
    end: float,
    *,
    bins: int = 144,
    width: int = 900,
    height: int = 220,
) -> str:
    """Stacked areas of the mean time per phase in *bins* time slices (total latency
    when the probes report no phases, as TCP-less checks)."""
    span = max(end - start, 1.0)
    sums = [dict.fromkeys(LAYERS, 0.0) for _ in range(bins)]
    counts = [0] * bins
    for sample in samples:
        if sample.latency is None or not start <= sample.at <= end:
            continue
        index = min(int((sample.at - start) / span * bins), bins - 1)
        counts[index] += 1
        rest = sample.latency - sum(sample.phases.values())
        for name, seconds in sample.phases.items():
            sums[index][name] += seconds
        sums[index]["rest" if sample.phases else "total"] += max(rest, 0.0)
    used = [p for p in LAYERS if any(s[p] > 1e-6 for s in sums)]
    means = [{p: s[p] / c for p in used} if c else None for s, c in zip(sums, counts, strict=True)]
    top = max((sum(m.values()) for m in means if m), default=0.0) * 1.1 or 1.0
    plot_h, x_step = height - 36, width / bins
    layers, floor = [], [0.0] * bins
    for phase in used:
        upper = [floor[i] + (m[phase] if m else 0.0) for i, m in enumerate(means)]
        layers.append(
            _area(
                floor,
                upper,
                means,
                x_step=x_step,
                plot_h=plot_h,
                top=top,
                colour=PHASE_COLOURS[phase],
                name=phase,
            )
        )
        floor = upper
    legend = "".join(
        f'<rect x="{8 + i * 90}" y="{height - 14}" width="10" height="10" '
        f'fill="{PHASE_COLOURS[p]}"/><text x="{22 + i * 90}" y="{height - 5}">{escape(p)}</text>'
        for i, p in enumerate(used)
    )
    axis = f'<text x="4" y="12">{top * 1000:.0f} ms</text>' + "".join(
        f'<text x="{width * f:.0f}" y="{plot_h + 10:.0f}" text-anchor="{a}">{label}</text>'
        for f, a, label in (
            (0.0, "start", "-" + _ago(span)),
            (0.5, "middle", "-" + _ago(span / 2)),
            (1.0, "end", "now"),
        )
    )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="latency by phase">{"".join(layers)}{axis}{legend}</svg>'
    )


def _ago(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g}h"
    return f"{seconds / 60:.3g}m" if seconds >= 60 else f"{seconds:.0f}s"


def _area(
    lower: list[float],
    upper: list[float],
    present: list[dict[str, float] | None],
    *,
    x_step: float,
    plot_h: float,
    top: float,
    colour: str,
    name: str,
) -> str:
    """One stacked layer: polygons over the runs of slices that have data."""
    shapes, run = [], []
    for index in range(len(upper) + 1):
        if index < len(upper) and present[index] is not None:
            run.append(index)
            continue
        if run:
            # A step per slice, so a lone slice is a bar rather than a line.
            top_pts = [
                f"{x * x_step:.1f},{plot_h - upper[i] / top * plot_h:.1f}"
                for i in run
                for x in (i, i + 1)
            ]
            low_pts = [
                f"{x * x_step:.1f},{plot_h - lower[i] / top * plot_h:.1f}"
                for i in reversed(run)
                for x in (i + 1, i)
            ]
            shapes.append(f'<polygon points="{" ".join(top_pts + low_pts)}"/>')
            run = []
    return (
        f'<g fill="{colour}" fill-opacity="0.8"><title>{escape(name)}</title>{"".join(shapes)}</g>'
    )


def state_strip(
    samples: Sequence[Sample], start: float, end: float, *, width: int = 900, height: int = 18
) -> str:
    """The state after each run, as coloured slices from one run to the next."""
    span = max(end - start, 1.0)
    rects = []
    inside = [s for s in samples if start <= s.at <= end]
    index = 0
    while index < len(inside):  # one slice per run of the same state
        first, state = inside[index], inside[index].state
        while index + 1 < len(inside) and inside[index + 1].state == state:
            index += 1
        until = inside[index + 1].at if index + 1 < len(inside) else end
        x = (first.at - start) / span * width
        w = max((until - first.at) / span * width, 0.5)
        colour = STATE_COLOURS.get(state, STATE_COLOURS["unknown"])
        rects.append(
            f'<rect x="{x:.1f}" width="{w:.1f}" height="{height}" fill="{colour}">'
            f"<title>{escape(state)}</title></rect>"
        )
        index += 1
    return (
        f'<svg class="strip" viewBox="0 0 {width} {height}" preserveAspectRatio="none">'
        f'<rect width="{width}" height="{height}" fill="#eaeef2"/>{"".join(rects)}</svg>'
    )


def day_bars(days: Sequence[tuple[int, Acc | None]], width: int = 900, height: int = 34) -> str:
    """One bar per day coloured by that day's uptime (grey: no data), with a tooltip."""
    step = width / max(len(days), 1)
    bars = []
    for index, (day, acc) in enumerate(days):
        uptime = acc.uptime() if acc is not None else None
        colour = _uptime_colour(uptime)
        label = f"day {day}: " + ("no data" if uptime is None else f"{uptime * 100:.3f}% up")
        bars.append(
            f'<rect class="day" data-day="{day}" x="{index * step + 0.5:.1f}" width='
            f'"{max(step - 1.5, 1):.1f}" height="{height}" rx="1.5" fill="{colour}">'
            f"<title>{escape(label)}</title></rect>"
        )
    return f'<svg class="days" viewBox="0 0 {width} {height}">{"".join(bars)}</svg>'


def _uptime_colour(uptime: float | None) -> str:
    if uptime is None:
        return "#d0d7de"
    if uptime >= 0.9995:
        return STATE_COLOURS["up"]
    if uptime >= 0.99:
        return "#7fbf3f"
    if uptime >= 0.95:
        return STATE_COLOURS["degraded"]
    return STATE_COLOURS["down"]


def uptime_colour(uptime: float | None) -> str:
    return _uptime_colour(uptime)
