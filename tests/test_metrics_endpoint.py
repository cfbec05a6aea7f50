"""The metrics endpoint as an SRE deploys it: the Prometheus web configuration file (TLS, bcrypt
basic auth), unauthenticated probes, a stalled client that delays nobody, a reload that takes
the new password and certificate, and a bind error that says what to change."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Gauge

from exporter.server import MetricsAddressError, MetricsServer
from exporter.webconfig import WebConfigError, load_web_config
from reconciler.daemon import Daemon
from replicator.config import load_settings
from replicator.errors import InputError
from tests.waiting import tool

Serve = Callable[[Path | None], MetricsServer]


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            tool("openssl"),
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def web_config(path: Path, cert: Path | None, users: dict[str, str]) -> Path:
    lines = []
    if cert is not None:
        key = cert.with_suffix(".key")
        lines += ["tls_server_config:", f"  cert_file: {cert}", f"  key_file: {key}"]
    if users:
        lines.append("basic_auth_users:")
        for user, password in users.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            lines.append(f"  {user}: '{hashed}'")
    path.write_text("\n".join(lines) + "\n")
    return path


def get(
    url: str, auth: tuple[str, str] | None = None, cafile: Path | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("probe_value", "a value", registry=registry).set(7)
    return registry


@pytest.fixture
def serve(registry: CollectorRegistry) -> Iterator[Serve]:
    servers: list[MetricsServer] = []

    def start(path: Path | None) -> MetricsServer:
        server = MetricsServer(
            registry,
            "127.0.0.1",
            0,
            ready=lambda: (True, "ready"),
            web=load_web_config(str(path) if path else None),
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def base(server: MetricsServer) -> str:
    return server.url.removesuffix("/metrics")


def test_tls_and_bcrypt_basic_auth_from_the_web_config_file(serve: Serve, tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "first")
    server = serve(web_config(tmp_path / "web.yml", cert, {"prom": "s3cret"}))
    url = base(server)
    assert url.startswith("https://127.0.0.1:")
    assert get(f"{url}/metrics", cafile=cert)[0] == 401
    assert get(f"{url}/metrics", ("prom", "wrong"), cafile=cert)[0] == 401
    assert get(f"{url}/metrics", ("nobody", "s3cret"), cafile=cert)[0] == 401
    status, body = get(f"{url}/metrics", ("prom", "s3cret"), cafile=cert)
    assert status == 200 and "probe_value 7.0" in body
    # The probes a kubelet or load balancer sends carry no credentials and must not need them.
    assert get(f"{url}/healthz", cafile=cert) == (200, "ok\n")
    assert get(f"{url}/readyz", cafile=cert) == (200, "ready\n")
    with pytest.raises(OSError):  # plain HTTP is not served on a TLS port
        urllib.request.urlopen(f"{url.replace('https', 'http')}/healthz", timeout=5)


def test_a_stalled_client_delays_no_scrape(serve: Serve, tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "stall")
    server = serve(web_config(tmp_path / "web.yml", cert, {}))
    host, port = server.address
    stalled = [socket.create_connection((host, port)) for _ in range(3)]  # never say hello
    try:
        started = time.monotonic()
        for _ in range(5):
            assert get(f"{base(server)}/metrics", cafile=cert)[0] == 200
        assert time.monotonic() - started < 5  # not the handshake timeout of each staller
    finally:
        for sock in stalled:
            sock.close()


def test_reload_takes_the_new_password_and_certificate(serve: Serve, tmp_path: Path) -> None:
    old_cert, _ = make_cert(tmp_path, "old")
    new_cert, _ = make_cert(tmp_path, "new")
    path = web_config(tmp_path / "web.yml", old_cert, {"prom": "old-password"})
    server = serve(path)
    url = f"{base(server)}/metrics"
    assert get(url, ("prom", "old-password"), cafile=old_cert)[0] == 200
    server.reload(load_web_config(str(web_config(path, new_cert, {"prom": "new-password"}))))
    with pytest.raises(urllib.error.URLError):  # the old certificate is no longer presented
        get(url, ("prom", "new-password"), cafile=old_cert)
    assert get(url, ("prom", "old-password"), cafile=new_cert)[0] == 401
    assert get(url, ("prom", "new-password"), cafile=new_cert)[0] == 200
    # TLS can be turned off (or on) live too: only the address needs a restart.
    server.reload(load_web_config(None))
    assert get(url.replace("https", "http"))[0] == 200


def test_custom_headers_and_no_auth_without_users(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    server = serve(path)
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.headers["X-Frame-Options"] == "deny"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config:\n  cert_file: /nope.crt\n", "needs both cert_file and key_file"),
        (
            "tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n",
            "cannot load cert_file/key_file",
        ),
        ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom is not a bcrypt hash"),
        ("tls_config:\n  cert_file: x\n", "unknown key tls_config"),
        ("tls_server_config:\n  cipher_suites: [x]\n", "cipher_suites is not supported"),
        ("- a\n- b\n", "must be a mapping"),
        ("basic_auth_users: [\n", "not valid YAML"),
    ],
)
def test_a_bad_web_config_is_refused_with_the_key_named(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError, match=message) as refused:
        load_web_config(str(path))
    assert str(path) in str(refused.value)


def test_client_certificates_are_verified_when_required(serve: Serve, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "server")
    client_cert, client_key = make_cert(tmp_path, "client")
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {client_cert}\n"
        "  min_version: TLS12\n"
    )
    server = serve(path)
    without = ssl.create_default_context(cafile=str(cert))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        urllib.request.urlopen(server.url, timeout=5, context=without).read()
    with_cert = ssl.create_default_context(cafile=str(cert))
    with_cert.load_cert_chain(str(client_cert), str(client_key))
    with urllib.request.urlopen(server.url, timeout=5, context=with_cert) as response:
        assert response.status == 200


def test_the_bind_error_names_the_address_and_the_option(registry: CollectorRegistry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsAddressError) as refused:
            MetricsServer(
                registry,
                "127.0.0.1",
                port,
                ready=lambda: (True, ""),
                option_hint="set --metrics-addr or daemon.metrics_addr",
            )
    message = str(refused.value)
    assert f"cannot serve metrics on 127.0.0.1:{port}" in message
    assert "--metrics-addr" in message and "in use" in message.lower()


def test_head_probes_long_passwords_and_keep_alive(serve: Serve, tmp_path: Path) -> None:
    server = serve(web_config(tmp_path / "web.yml", None, {"prom": "s3cret"}))
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("HEAD", "/healthz")
        head = connection.getresponse()
        assert head.status == 200 and head.read() == b""
        # The same kept-alive connection: a GET after a HEAD gets its body.
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b"ok\n"
        token = base64.b64encode(b"prom:" + b"x" * 100).decode()  # past bcrypt's 72 bytes
        connection.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        refused = connection.getresponse()
        assert refused.status == 401
        refused.read()
    finally:
        connection.close()


def test_the_daemon_names_every_way_to_change_a_taken_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(
            dsn="postgresql://nobody@127.0.0.1:1/none",
            environ={"RECONCILER_DAEMON_METRICS_ADDR": f"127.0.0.1:{port}"},
        )
        daemon = Daemon(lambda: settings)
        with pytest.raises(InputError) as refused:
            daemon.serve_metrics()
    message = str(refused.value)
    assert f"cannot serve metrics on 127.0.0.1:{port}" in message
    for option in ("--metrics-addr", "daemon.metrics_addr", "RECONCILER_DAEMON_METRICS_ADDR"):
        assert option in message
