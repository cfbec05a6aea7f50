"""The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` and `/readyz`, a landing
page at `/`, with TLS and basic auth from a Prometheus web configuration file
(`exporter.webconfig`).

`/healthz` and `/readyz` never ask for credentials: they are what a kubelet or a load balancer
probes, and they reveal nothing. `/` asks for the same credentials as `/metrics`. Every
connection gets a thread of its own, and the TLS handshake happens there, under a timeout, so a
client that connects and stalls delays nobody. `reload` swaps the web configuration (a new
password, a renewed certificate) for the next connection; the listen address cannot change
without a restart.

The request handler is a module-level class bound to what it serves by `MetricsHandler.factory`,
as prometheus-client's own `MetricsHandler.factory(registry)` is; the web configuration lives on
the server, so that a reload reaches every handler.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Required, TypedDict, Unpack, cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from exporter.webconfig import WebConfig

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds a client gets to finish the TLS handshake
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})
SERVER_NAME = "signal-reconciler"  # the Server header: no Python or BaseHTTP version
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
# The landing page has inline CSS and nothing else: no script, no image, no request elsewhere.
PAGE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


class MetricsAddressError(OSError):
    """The metrics address cannot be bound; the message names the address."""


@dataclass(frozen=True)
class Endpoints:
    """What the handler serves: the registry on `/metrics`, the readiness on `/readyz`, and the
    landing page on `/` (None: `/` is a 404)."""

    registry: CollectorRegistry
    ready: Callable[[], tuple[bool, str]]
    page: Callable[[], str] | None = None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: Mapping[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    web: WebConfig

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away mid-answer (or any other failure of one request) is a log
        line, not a traceback on stderr."""
        logger.debug("request from %s failed", client_address[0], exc_info=True)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's own thread: the TLS handshake belongs here, not in the
        accept loop (`ThreadingMixIn.process_request_thread` calls this)."""
        tls = self.web.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            wrapped = tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            logger.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            wrapped.settimeout(IDLE_TIMEOUT)
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsHandler(BaseHTTPRequestHandler):
    """One connection's requests. Bind it to what it serves with `factory`."""

    timeout = IDLE_TIMEOUT
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes
    endpoints: ClassVar[Endpoints]
    server: _Server

    @classmethod
    def factory(cls, endpoints: Endpoints) -> type[MetricsHandler]:
        """A subclass that serves `endpoints` (prometheus-client's pattern)."""
        return cast(type[MetricsHandler], type(cls.__name__, (cls,), {"endpoints": endpoints}))

    def version_string(self) -> str:
        return SERVER_NAME

    def do_HEAD(self) -> None:  # load balancers probe with HEAD
        self._send(self._respond(), head=True)

    def do_GET(self) -> None:
        self._send(self._respond(), head=False)

    def _respond(self) -> Response:
        path = self.path.split("?", 1)[0]
        if path not in UNAUTHENTICATED and not self.server.web.authorized(*self._credentials()):
            return Response(
                401, b"Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="reconciler"'}
            )
        try:
            return self._route(path)
        except Exception:  # one failed answer, never a dropped connection without a word
            logger.exception("cannot answer %s", path)
            return Response(500, b"internal error (see the daemon's log)\n")

    def _route(self, path: str) -> Response:
        endpoints = self.endpoints
        if path == "/metrics":
            return Response(200, generate_latest(endpoints.registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            is_ready, why = endpoints.ready()
            return Response(200 if is_ready else 503, (why + "\n").encode())
        if path == "/" and endpoints.page is not None:
            return Response(200, endpoints.page().encode(), HTML, PAGE_HEADERS)
        return Response(404, b"not found\n")

    def _credentials(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            decoded = base64.b64decode(token, validate=True).decode()
            user, sep, password = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return (user, password) if sep else (None, None)

    def _send(self, response: Response, *, head: bool) -> None:
        """The response; the web config's headers come after the page's (an operator may
        override those) and before the 401's challenge."""
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        headers = dict(response.headers)
        challenge = headers.pop("WWW-Authenticate", None)
        headers.update(self.server.web.headers)
        if challenge is not None:
            headers["WWW-Authenticate"] = challenge
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("http: " + format, *args)


class ServerOptions(TypedDict, total=False):
    """The keyword arguments of `MetricsServer`: `ready` answers `/readyz`; `web` is the web
    configuration (default: no TLS, no auth); `option_hint` ends the bind error (which options
    set the address); `page` renders the landing page at `/` (default: none, `/` is a 404)."""

    ready: Required[Callable[[], tuple[bool, str]]]
    web: WebConfig | None
    option_hint: str
    page: Callable[[], str] | None


class MetricsServer:
    """Serves the registry (and the landing page, given `page`) in a background thread until
    `stop()`: `MetricsServer(registry, host, port, ready=..., web=..., option_hint=...,
    page=...)`."""

    def __init__(
        self, registry: CollectorRegistry, host: str, port: int, **options: Unpack[ServerOptions]
    ) -> None:
        endpoints = Endpoints(registry, options["ready"], options.get("page"))
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), MetricsHandler.factory(endpoints))
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            hint = options.get("option_hint", "")
            raise MetricsAddressError(
                exc.errno,
                f"cannot serve metrics on {where}: {exc.strerror or exc}"
                + (f" ({hint})" if hint else ""),
            ) from None
        self._server.web = options.get("web") or WebConfig()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def web(self) -> WebConfig:
        return self._server.web

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        where = f"[{host}]" if ":" in host else host
        return f"{self.web.scheme}://{where}:{port}/metrics"

    def reload(self, web: WebConfig) -> None:
        """The next connection uses `web` (TLS on or off, new certificate, new users)."""
        self._server.web = web
        logger.info("web configuration reloaded (%s)", web.path or "no TLS, no auth")

    def start(self) -> None:
        self._thread.start()
        logger.info("serving metrics on %s", self.url)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
