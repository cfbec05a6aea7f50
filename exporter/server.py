"""The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` and `/readyz`, with
optional TLS and optional basic auth. Binds only where configured."""

from __future__ import annotations

import base64
import hmac
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

logger = logging.getLogger(__name__)


class MetricsServer:
    """Serves the registry in a background thread until `stop()`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        ready: Callable[[], tuple[bool, str]],
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        expected = None
        if basic_auth:
            token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            expected = f"Basic {token}"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if expected and not hmac.compare_digest(
                    self.headers.get("Authorization", ""), expected
                ):
                    self._reply(
                        401,
                        b"unauthorized\n",
                        "text/plain",
                        {"WWW-Authenticate": 'Basic realm="reconciler"'},
                    )
                    return
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    is_ready, why = ready()
                    self._reply(200 if is_ready else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

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
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("http: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        if tls_cert_file and tls_key_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert_file, tls_key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls_cert_file else "http"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{self.scheme}://{host}:{port}/metrics"

    def start(self) -> None:
        self._thread.start()
        logger.info("serving metrics on %s", self.url)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
