"""The landing page at `/`, served by a real MetricsServer and rendered by a real headless
Chromium: a screenshot (its pixels show the status colours) and the DOM (one row per table, one
cell per month, newest first, every cell naming its status, the lag and the proof age, the
links, and a table name with HTML in it shown as text). Also: `/` asks for the metrics
credentials and the probes do not, no Server header names Python, and `/metrics` has no
`_created` series.

`python -m tests.test_landing_page docs/images/landing-page.png` makes the README's screenshot.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import socket
import struct
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.metrics import DaemonView, Metrics
from exporter.page import STATUS_COLOURS, render_page
from exporter.server import MetricsServer
from exporter.webconfig import load_web_config
from reconciler.verdict import EXPORTED, Status
from tests.test_metrics_endpoint import get, web_config
from tests.waiting import tool

NOW = dt.datetime(2026, 11, 3, 9, 30, tzinfo=dt.UTC)
MONTHS = ("2026-10", "2026-09", "2026-08", "2026-07", "2026-06", "2026-05")
ODD = "<b>odd&table</b>"  # not a name the configuration allows; the page must still escape it
WINDOW = (1080, 660)  # the test's grid, with its third table
DOCS_WINDOW = (1080, 570)  # the README's two tables


@dataclass(frozen=True)
class Month:
    """A `MonthView` of the test's own."""

    labels: tuple[str, str]
    status: str = "in_sync"
    lag_seconds: float = 0.0
    proven_at: dt.datetime | None = None
    checked_at: dt.datetime | None = None
    delta_rows: int | None = 1_200_000
    postgres_rows: int | None = 1_200_000
    last_sync_at: dt.datetime | None = None
    duration_seconds: float | None = 0.4
    consecutive_failures: int = 0
    repair_failures: int = 0


def minutes_ago(minutes: float) -> dt.datetime:
    return NOW - dt.timedelta(minutes=minutes)


def grid_view(*, odd_table: bool) -> DaemonView:
    """Two tables over six months: one lagging month, one drifted month; with `odd_table`, a
    third table whose name holds HTML and whose months take the other statuses."""
    special: dict[tuple[str, str], Month] = {
        ("ranking_signal", "2026-10"): Month(
            ("ranking_signal", "2026-10"), "lagging", 14 * 60, minutes_ago(3), minutes_ago(1)
        ),
        ("composite_signal_daily", "2026-08"): Month(
            ("composite_signal_daily", "2026-08"),
            "drift",
            0,
            minutes_ago(26 * 60),
            minutes_ago(1),
            postgres_rows=1_199_997,
        ),
    }
    months = [
        special.get((table, ym), Month((table, ym), "in_sync", 0, minutes_ago(5 + 40 * i)))
        for table in ("ranking_signal", "composite_signal_daily")
        for i, ym in enumerate(MONTHS)
    ]
    if odd_table:
        others = ("missing", "orphaned", "error", "unknown", "in_sync", "drift")
        months += [
            Month((ODD, ym), status, 75, None if status == "unknown" else minutes_ago(2))
            for ym, status in zip(MONTHS, others, strict=True)
        ]
    return DaemonView(
        tuple(months),
        {"delta": True, "postgres": True},
        minutes_ago(0.5),
        leader=True,
        circuit_open=False,
        statuses=tuple(str(s) for s in EXPORTED),
        status_codes={str(s): s.code for s in Status.by_severity()},
    )


def page_of(view: DaemonView) -> Callable[[], str]:
    return lambda: render_page(view, version="1.2.3", ready=(True, "ready"), now=NOW)


def chromium(url: str, profile: Path, *args: str) -> subprocess.Popen[bytes]:
    """A headless Chromium on `url`, with `profile` (a fresh directory) as its profile."""
    return subprocess.Popen(
        [
            tool("chromium", "chromium-browser"),
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"),
            *("--no-first-run", "--disable-background-networking", "--disable-component-update"),
            *("--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars"),
            *("--force-device-scale-factor=1", f"--user-data-dir={profile}", *args, url),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[bytes], timeout: float = 60) -> bytes:
    """Chromium's standard output once it exits (0, else the test fails with its stderr)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


def screenshot(
    url: str, profile: Path, path: Path, window: tuple[int, int] = WINDOW
) -> subprocess.Popen[bytes]:
    width, height = window
    return chromium(url, profile, f"--screenshot={path}", f"--window-size={width},{height}")


# -- a PNG decoder, enough for Chromium's screenshots (8-bit RGB or RGBA, not interlaced) -----
def png_pixels(data: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """Width, height and how many pixels have each RGB colour."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, bytearray(), b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * channels
    previous, colours = bytearray(stride), Counter[tuple[int, int, int]]()
    for y in range(height):
        start = y * (stride + 1)
        row = unfilter(
            raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
        )
        pixels = zip(row[0::channels], row[1::channels], row[2::channels], strict=True)
        colours.update(pixels)
        previous = row
    return width, height, colours


def unfilter(kind: int, row: bytearray, up: bytearray, bpp: int) -> bytearray:
    if kind == 1:  # Sub
        for i in range(bpp, len(row)):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 2:  # Up
        row = bytearray((a + b) & 0xFF for a, b in zip(row, up, strict=True))
    elif kind == 3:  # Average
        for i in range(len(row)):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + up[i]) >> 1)) & 0xFF
    elif kind == 4:  # Paeth
        for i in range(len(row)):
            a, b = (row[i - bpp] if i >= bpp else 0), up[i]
            c = up[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return row


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour.lstrip("#"), 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


# -- reading the DOM Chromium dumps -----------------------------------------------------------
@dataclass
class Cell:
    attrs: dict[str, str]
    spans: list[str] = field(default_factory=list)


@dataclass
class Dom(HTMLParser):
    """The page's grid (header months, then each body row's name and cells), its links, every
    element's tag and its whole text."""

    months: list[str] = field(default_factory=list)
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    text: list[str] = field(default_factory=list)
    _where: list[str] = field(default_factory=list)
    _href: str | None = None

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {key: value or "" for key, value in attrs}
        self.tags.add(tag)
        self._where.append(tag)
        if tag == "tr" and "tbody" in self._where:
            self.rows.append(("", []))
        elif tag == "td" and self.rows:
            self.rows[-1][1].append(Cell(named))
        elif tag == "a":
            self._href = named.get("href", "")

    def handle_endtag(self, tag: str) -> None:
        while self._where and self._where.pop() != tag:
            pass
        if tag == "a":
            self._href = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        where = self._where[-1] if self._where else ""
        if self._href is not None:
            self.links[data] = self._href
        elif where == "th" and "thead" in self._where and data != "table":
            self.months.append(data)
        elif where == "th" and self.rows:
            self.rows[-1] = (self.rows[-1][0] + data, self.rows[-1][1])
        elif where == "span" and self.rows and self.rows[-1][1] and "td" in self._where:
            self.rows[-1][1][-1].spans.append(data)


@dataclass(frozen=True)
class Browsed:
    url: str
    png: bytes
    dom: str


@pytest.fixture(scope="module")
def browsed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browsed]:
    view = grid_view(odd_table=True)
    server = MetricsServer(
        CollectorRegistry(), "127.0.0.1", 0, ready=lambda: (True, "ready"), page=page_of(view)
    )
    server.start()
    try:
        url = server.url.removesuffix("metrics")
        png = tmp_path_factory.mktemp("shot") / "page.png"
        # Both browsers at once (half the wall time), each with a fresh profile.
        shooting = screenshot(url, tmp_path_factory.mktemp("profile"), png)
        dom = finish(chromium(url, tmp_path_factory.mktemp("profile"), "--dump-dom")).decode()
        finish(shooting)
        yield Browsed(url, png.read_bytes(), dom)
    finally:
        server.stop()


def test_the_screenshot_shows_the_status_colours(browsed: Browsed) -> None:
    assert 5_000 < len(browsed.png) < 2_000_000
    width, height, colours = png_pixels(browsed.png)
    assert (width, height) == WINDOW
    present = {
        name
        for name, (background, _) in STATUS_COLOURS.items()
        if colours[rgb(background)] > 500  # a cell is some 100 x 50 pixels
    }
    assert {"in_sync", "drift", "lagging", "error"} <= present, present


def test_the_dom_has_the_month_grid_with_statuses_in_text(browsed: Browsed) -> None:
    dom = Dom()
    dom.feed(browsed.dom)
    assert dom.months == list(MONTHS)  # newest first
    assert [name for name, _ in dom.rows] == ["ranking_signal", "composite_signal_daily", ODD]
    for name, cells in dom.rows:
        assert len(cells) == len(MONTHS), name
        for cell in cells:
            status = cell.attrs["data-status"]
            assert status in STATUS_COLOURS and f"s-{status}" in cell.attrs["class"]
            assert cell.spans[0] == status  # named in text, not by colour alone
            assert cell.spans[1].startswith("lag ") and cell.spans[2].startswith("proved ")
    grid = {name: cells for name, cells in dom.rows}
    assert grid["ranking_signal"][0].spans == ["lagging", "lag 14 min", "proved 3 min ago"]
    assert grid["composite_signal_daily"][2].spans == ["drift", "lag 0 s", "proved 26 h ago"]
    assert grid[ODD][3].spans == ["unknown", "lag 75 s", "proved never"]
    assert {s for cells in grid.values() for c in cells for s in c.spans[:1]} == set(STATUS_COLOURS)
    # The table name is text: no <b> element, and the serialised DOM escapes it.
    assert "b" not in dom.tags and "&lt;b&gt;odd&amp;table&lt;/b&gt;" in browsed.dom
    text = " ".join(" ".join(dom.text).split())
    assert "version 1.2.3" in text and "leader yes" in text and "readiness ready" in text
    assert "11 of 18 months in sync; worst: error." in text


def test_the_links_lead_to_the_endpoints(browsed: Browsed) -> None:
    dom = Dom()
    dom.feed(browsed.dom)
    targets = {text: urllib.parse.urljoin(browsed.url, href) for text, href in dom.links.items()}
    assert targets == {
        "Metrics": f"{browsed.url}metrics",
        "/healthz": f"{browsed.url}healthz",
        "/readyz": f"{browsed.url}readyz",
    }
    assert [get(target)[0] for target in targets.values()] == [200, 200, 200]


def test_the_page_escapes_what_the_view_holds() -> None:
    view = grid_view(odd_table=False)
    month = Month(("t", "2026-10"), 'we<ird"', lag_seconds=3 * 86400)
    odd = DaemonView((month,), {"<src>": False}, None, False, True, ())
    page = render_page(odd, version="<v>", ready=(False, "<why>"), now=NOW)
    for raw in ('we<ird"', "<src>", "<v>", "<why>"):
        assert raw not in page
    assert 'class="s-other" data-status="we&lt;ird&quot;"' in page and "lag 3 d" in page
    assert "not ready: &lt;why&gt;" in page and "auto-repair suspended" in page
    assert "proved never" in page and "last cycle</dt><dd>never" in page
    assert "<script" not in render_page(view, version="1", ready=(True, "ready"), now=NOW)


def test_the_page_asks_for_the_metrics_credentials_the_probes_do_not(tmp_path: Path) -> None:
    web = load_web_config(str(web_config(tmp_path / "web.yml", None, {"prom": "s3cret"})))
    view = grid_view(odd_table=False)
    server = MetricsServer(
        CollectorRegistry(), "127.0.0.1", 0, ready=lambda: (False, "no cycle"), web=web,
        page=page_of(view),
    )  # fmt: skip
    server.start()
    try:
        host, port = server.address
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("GET", "/")
        refused = connection.getresponse()
        assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
        refused.read()
        token = base64.b64encode(b"prom:s3cret").decode()
        connection.request("GET", "/", headers={"Authorization": f"Basic {token}"})
        page = connection.getresponse()
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "script-src" not in page.headers["Content-Security-Policy"]  # none needed
        assert "ranking_signal" in page.read().decode()
        connection.request("HEAD", "/", headers={"Authorization": f"Basic {token}"})
        head = connection.getresponse()
        assert head.status == 200 and head.read() == b""
        connection.close()
        base = server.url.removesuffix("/metrics")
        assert get(f"{base}/healthz") == (200, "ok\n")
        assert get(f"{base}/readyz") == (503, "no cycle\n")
        assert get(f"{base}/nope", ("prom", "s3cret"))[0] == 404
    finally:
        server.stop()


def test_without_a_page_the_root_is_not_found() -> None:
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0, ready=lambda: (True, "ready"))
    server.start()
    try:
        assert get(server.url.removesuffix("metrics")) == (404, "not found\n")
    finally:
        server.stop()


def test_a_page_that_fails_is_a_500_and_the_server_serves_on() -> None:
    def broken() -> str:
        raise RuntimeError("the view is not ready")

    server = MetricsServer(
        CollectorRegistry(), "127.0.0.1", 0, ready=lambda: (True, "ready"), page=broken
    )
    server.start()
    try:
        base = server.url.removesuffix("metrics")
        assert get(base)[0] == 500
        assert get(f"{base}healthz") == (200, "ok\n")
    finally:
        server.stop()


def raw_request(address: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n\r\n", 1)[0]


def test_no_server_header_names_python(tmp_path: Path) -> None:
    web = load_web_config(str(web_config(tmp_path / "web.yml", None, {"prom": "s3cret"})))
    server = MetricsServer(
        CollectorRegistry(), "127.0.0.1", 0, ready=lambda: (True, "ready"), web=web,
        page=page_of(grid_view(odd_table=False)),
    )  # fmt: skip
    server.start()
    token = base64.b64encode(b"prom:s3cret").decode()
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
        "Connection: close\r\n\r\n"
        for path in ("/", "/metrics", "/healthz", "/readyz", "/nope")
    ]
    requests += [
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # 401
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",  # 501
        "GET / HTTP/1.1\r\n" + "X-A: b\r\n" * 101 + "\r\n",  # 431, from http.server itself
    ]
    try:
        heads = [raw_request(server.address, r.encode()).decode() for r in requests]
    finally:
        server.stop()
    statuses = [head.split()[1] for head in heads]
    assert statuses == ["200", "200", "200", "200", "404", "401", "501", "431"]
    for head in heads:
        servers = [line for line in head.split("\r\n") if line.lower().startswith("server:")]
        assert servers == ["Server: signal-reconciler"], head


def test_metrics_has_no_created_series() -> None:
    view = grid_view(odd_table=False)
    metrics = Metrics(lambda: view, "1.2.3")
    metrics.declare_tables(["ranking_signal"])
    metrics.checks.labels(table="ranking_signal").inc()
    metrics.check_duration.labels(table="ranking_signal").observe(0.3)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0, ready=lambda: (True, "ready"))
    server.start()
    try:
        status, body = get(server.url)
    finally:
        server.stop()
    assert status == 200
    assert 'reconciler_checks_total{table="ranking_signal"} 1.0' in body
    assert "reconciler_check_duration_seconds_count" in body
    assert "_created" not in body


def main(target: str) -> None:
    """Writes the screenshot of the two-table grid the README shows."""
    server = MetricsServer(
        CollectorRegistry(),
        "127.0.0.1",
        0,
        ready=lambda: (True, "ready"),
        page=page_of(grid_view(odd_table=False)),
    )
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            url = server.url.removesuffix("metrics")
            finish(screenshot(url, Path(profile), Path(target).resolve(), DOCS_WINDOW))
    finally:
        server.stop()
    print(f"{target}: {Path(target).stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/images/landing-page.png")
