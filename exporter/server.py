"""The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` and `/readyz`, with TLS and
basic auth from a Prometheus web configuration file (`exporter.webconfig`).

`/healthz` and `/readyz` never ask for credentials: they are what a kubelet or a load balancer
probes, and they reveal nothing. Every connection gets a thread of its own, and the TLS handshake
happens there, under a timeout, so a client that connects and stalls delays nobody. `reload`
swaps the web configuration (a new password, a renewed certificate) for the next connection;
the listen address cannot change without a restart.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from exporter.webconfig import WebConfig

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds a client gets to finish the TLS handshake
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})


class MetricsAddressError(OSError):
    """The metrics address cannot be bound; the message names the address."""


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


class MetricsServer:
    """Serves the registry in a background thread until `stop()`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        ready: Callable[[], tuple[bool, str]],
        web: WebConfig | None = None,
        option_hint: str = "",
    ) -> None:
        server_ref: list[_Server] = []

        class Handler(BaseHTTPRequestHandler):
            timeout = IDLE_TIMEOUT
            protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes

            def do_HEAD(self) -> None:  # load balancers probe with HEAD
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, *, head: bool) -> None:
                self._head = head
                web = server_ref[0].web
                path = self.path.split("?", 1)[0]
                if path not in UNAUTHENTICATED and not web.authorized(*self._credentials()):
                    self._reply(
                        401,
                        b"Unauthorized\n",
                        "text/plain",
                        {"WWW-Authenticate": 'Basic realm="reconciler"'},
                    )
                    return
                if path == "/metrics":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    is_ready, why = ready()
                    self._reply(200 if is_ready else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

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

            def _reply(
                self,
                code: int,
                body: bytes,
                content_type: str,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in {**server_ref[0].web.headers, **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                if not self._head:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("http: " + format, *args)

        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), Handler)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise MetricsAddressError(
                exc.errno,
                f"cannot serve metrics on {where}: {exc.strerror or exc}"
                + (f" ({option_hint})" if option_hint else ""),
            ) from None
        self._server.web = web or WebConfig()
        server_ref.append(self._server)
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
        return f"{self.web.scheme}://{host}:{port}/metrics"

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
