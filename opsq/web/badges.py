"""SVG badges for READMEs: ``state`` and ``uptime`` in the flat shields.io look.

Text widths are estimated (6.5 px per character of 11 px Verdana, as shields.io's
fallback does) so a badge needs no font metrics at run time.
"""

from __future__ import annotations

from html import escape

from opsq.web.charts import STATE_COLOURS, uptime_colour

NO_DATA = "\u2013"
"""An en dash where there is nothing to show."""
CHAR_PX = 6.5
PAD_PX = 10


def badge(label: str, value: str, colour: str) -> str:
    left = round(len(label) * CHAR_PX + PAD_PX)
    right = round(len(value) * CHAR_PX + PAD_PX)
    total = left + right
    label_e, value_e = escape(label), escape(value)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" '
        f'aria-label="{label_e}: {value_e}"><title>{label_e}: {value_e}</title>'
        f'<clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" '
        f'font-size="11"><text x="{left / 2}" y="14">{label_e}</text>'
        f'<text x="{left + right / 2}" y="14">{value_e}</text></g></svg>'
    )


def state_badge(label: str, state: str) -> str:
    return badge(label, state, STATE_COLOURS.get(state, STATE_COLOURS["unknown"]))


def uptime_badge(label: str, uptime: float | None) -> str:
    text = "no data" if uptime is None else format_percent(uptime)
    return badge(label, text, uptime_colour(uptime))


def format_percent(value: float | None) -> str:
    """``99.95%``; two decimals, three below 99.99% only when they say something."""
    if value is None:
        return NO_DATA
    percent = value * 100
    if percent == 100:
        return "100%"
    if percent >= 99.99:
        return f"{percent:.3f}%"
    return f"{percent:.2f}%"
