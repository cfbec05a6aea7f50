"""The landing page at `/`: what the daemon knows, for a person with a browser.

One self-contained HTML document (inline CSS, no script, nothing fetched from elsewhere): the
version, whether this instance leads, the readiness, and the month grid, one row per table and
one cell per month of the retention window, newest first. Every cell names its status in text
as well as colour, with the month's lag and the age of its last proof. Rendered from the same
`DaemonView` the collector exports, so the page and `/metrics` never disagree. Every text that
comes from the view is escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from html import escape

from exporter.metrics import DaemonView, MonthView

TITLE = "signal-reconciler"
# Background and text colour of each status's cells; the text names the status too.
STATUS_COLOURS: Mapping[str, tuple[str, str]] = {
    "in_sync": ("#b7e4c7", "#0b3d1f"),
    "unknown": ("#dee2e6", "#212529"),
    "lagging": ("#ffe066", "#3d2e00"),
    "missing": ("#ffc078", "#3d1f00"),
    "orphaned": ("#d0bfff", "#2b1a5c"),
    "drift": ("#ff8787", "#3d0000"),
    "error": ("#c92a2a", "#ffffff"),
}
OTHER_COLOURS = ("#f1f3f5", "#212529")  # a status this page does not know
LINKS = (
    ("metrics", "Metrics", "the Prometheus scrape endpoint"),
    ("healthz", "/healthz", "liveness"),
    ("readyz", "/readyz", "readiness"),
)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212529;background:#fff}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.2em 0 .4em}
nav a{margin-right:1em}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.8em 0}
dt{font-weight:600}dd{margin:0}
.not-ready{color:#c92a2a;font-weight:600}
table{border-collapse:separate;border-spacing:3px}
th{text-align:left;padding:.2em .5em;font-weight:600;white-space:nowrap}
td{padding:.35em .6em;border-radius:4px;min-width:7.5em;vertical-align:top}
td span{display:block;white-space:nowrap}
td .status{font-weight:700}
td.none{background:#fff;border:1px dashed #adb5bd;color:#868e96}
.legend span{display:inline-block;padding:.1em .5em;margin:.2em .3em 0 0;border-radius:4px}
""".strip()


def render_page(
    view: DaemonView,
    *,
    version: str,
    ready: tuple[bool, str],
    now: dt.datetime | None = None,
) -> str:
    """The landing page as one HTML document. `now` (default: the current time) dates the lag
    and proof ages."""
    now = now or dt.datetime.now(dt.UTC)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{TITLE}</title><style>{_status_css()}\n{CSS}</style></head><body>",
            f"<h1>{TITLE}</h1>",
            "<p>Delta Lake &rarr; Postgres reconciler: proves, month by month, that Postgres"
            " holds what Delta holds.</p>",
            _links(),
            _facts(view, version, ready, now),
            "<h2>Months</h2>",
            _summary(view),
            _grid(view, now),
            _legend(view),
            "</body></html>",
            "",
        ]
    )


def _status_css() -> str:
    """One rule per status (cells and legend swatches share them)."""
    colours = [*STATUS_COLOURS.items(), ("other", OTHER_COLOURS)]
    return "".join(f".s-{name}{{background:{bg};color:{fg}}}" for name, (bg, fg) in colours)


def _status_class(status: str) -> str:
    return f"s-{status}" if status in STATUS_COLOURS else "s-other"


def _links() -> str:
    links = " ".join(
        f'<a href="{href}" title="{escape(what)}">{escape(text)}</a>' for href, text, what in LINKS
    )
    return f"<nav>{links}</nav>"


def _facts(view: DaemonView, version: str, ready: tuple[bool, str], now: dt.datetime) -> str:
    is_ready, why = ready
    leader = (
        "yes: this instance compares the months (and repairs them, with auto-repair on)"
        if view.leader
        else "no: a follower, showing the leader's findings"
    )
    readiness = (
        '<dd class="ready">ready</dd>'
        if is_ready
        else f'<dd class="not-ready">not ready: {escape(why)}</dd>'
    )
    sources = ", ".join(
        f"{escape(name)} {'up' if up else 'down'}" for name, up in sorted(view.sources_up.items())
    )
    cycle = "never" if view.last_cycle is None else f"{_age(view.last_cycle, now)} ago"
    circuit = "open: auto-repair suspended (too many months drift)" if view.circuit_open else ""
    rows = [
        ("version", f"<dd>{escape(version)}</dd>"),
        ("leader", f"<dd>{leader}</dd>"),
        ("readiness", readiness),
        ("last cycle", f"<dd>{cycle}</dd>"),
        ("sources", f"<dd>{sources or 'not probed yet'}</dd>"),
    ]
    if circuit:
        rows.append(("auto-repair", f'<dd class="not-ready">{circuit}</dd>'))
    return "<dl>" + "".join(f"<dt>{name}</dt>{value}" for name, value in rows) + "</dl>"


def _summary(view: DaemonView) -> str:
    if not view.months:
        return "<p>No months yet: the first cycle has not ended.</p>"
    in_sync = sum(1 for month in view.months if month.status == "in_sync")
    text = f"{in_sync} of {len(view.months)} months in sync"
    worst = max((month.status for month in view.months), key=lambda s: _severity(view, s))
    if worst != "in_sync":
        text += f"; worst: {escape(worst)}"
    return f'<p class="summary">{text}.</p>'


def _grid(view: DaemonView, now: dt.datetime) -> str:
    if not view.months:
        return ""
    by_label = {month.labels: month for month in view.months}
    tables = list(dict.fromkeys(table for table, _ in by_label))
    months = sorted({year_month for _, year_month in by_label}, reverse=True)
    head = "".join(f'<th scope="col">{escape(year_month)}</th>' for year_month in months)
    lines = [f'<table class="grid"><thead><tr><th scope="col">table</th>{head}</tr></thead>']
    lines.append("<tbody>")
    for table in tables:
        cells = "".join(_cell(by_label.get((table, ym)), now) for ym in months)
        lines.append(f'<tr><th scope="row">{escape(table)}</th>{cells}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _cell(month: MonthView | None, now: dt.datetime) -> str:
    if month is None:
        return '<td class="none"><span class="status">not tracked</span></td>'
    table, year_month = month.labels
    proof = "never" if month.proven_at is None else f"{_age(month.proven_at, now)} ago"
    checked = "never" if month.checked_at is None else f"{_age(month.checked_at, now)} ago"
    rows = " / ".join(
        f"{side} {'-' if count is None else f'{count:,}'}"
        for side, count in (("delta", month.delta_rows), ("postgres", month.postgres_rows))
    )
    hint = f"{table} {year_month}: checked {checked}; rows {rows}"
    status = escape(month.status)
    return (
        f'<td class="{_status_class(month.status)}" data-status="{status}"'
        f' title="{escape(hint)}">'
        f'<span class="status">{status}</span>'
        f'<span class="lag">lag {_duration(month.lag_seconds)}</span>'
        f'<span class="proof">proved {proof}</span></td>'
    )


def _legend(view: DaemonView) -> str:
    order = sorted(
        STATUS_COLOURS, key=lambda name: view.status_codes.get(name, len(STATUS_COLOURS))
    )
    swatches = "".join(f'<span class="s-{name}">{name}</span>' for name in order)
    return f'<p class="legend">Statuses, best to worst: {swatches}</p>'


def _severity(view: DaemonView, status: str) -> int:
    """The view's code of `status` (worse is higher); without codes, this page's order."""
    if status in view.status_codes:
        return view.status_codes[status]
    known = list(STATUS_COLOURS)
    return known.index(status) if status in known else len(known)


def _age(moment: dt.datetime, now: dt.datetime) -> str:
    return _duration((now - moment).total_seconds())


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"
