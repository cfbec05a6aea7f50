"""The Prometheus web configuration file, as exporter-toolkit reads it for every official
exporter (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md),
so one file serves this daemon and, say, postgres_exporter on the same host:

    tls_server_config:
      cert_file: /etc/reconciler/tls.crt
      key_file: /etc/reconciler/tls.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: /etc/reconciler/ca.crt
      min_version: TLS12                             # optional (TLS10 .. TLS13)
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt, as `htpasswd -nBC 10` writes

Written by hand because exporter-toolkit is Go; what it does that this does not (cipher suite
and curve lists, `client_allowed_sans`, inline `cert`/`key`) is refused with the key named rather
than silently ignored, since each is a security setting.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml


class WebConfigError(ValueError):
    """The web configuration file is unusable; the message names the file and the key."""


TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's RequestClientCert and RequireAnyClientCert accept a certificate without verifying it;
# Python's ssl module always verifies one it receives, so those two are refused.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version"}
_TLS_KEYS |= {"max_version"}
_UNSUPPORTED = {"cipher_suites", "curve_preferences", "prefer_server_cipher_order"}
_UNSUPPORTED |= {"client_allowed_sans", "cert", "key"}
# bcrypt reads at most 72 bytes of a password (bcrypt 5 refuses longer ones).
_BCRYPT_MAX = 72


@dataclass(frozen=True)
class WebConfig:
    """A loaded web configuration: a TLS context (None: plain HTTP), the users and headers."""

    path: str | None = None
    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    # Unknown users are checked against this hash, of the configured cost, so that timing does
    # not tell which users exist.
    decoy: bytes = b""
    _verified: dict[bytes, bool] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def authorized(self, user: str | None, password: str | None) -> bool:
        """True when no users are configured, or the pair matches a bcrypt hash. A successful
        check is remembered (as a digest of user, password and hash), as exporter-toolkit
        does, so that a scrape every 15 s does not pay bcrypt's deliberate slowness."""
        if not self.users:
            return True
        if user is None or password is None:
            return False
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join([user.encode(), password.encode(), hashed or b""]))
        with self._lock:
            if self._verified.get(key.digest()):
                return True
        candidate = password.encode()
        if len(candidate) > _BCRYPT_MAX:
            return False  # no bcrypt hash matches it; refused without bcrypt's ValueError
        try:
            ok = bcrypt.checkpw(candidate, hashed or self.decoy) and hashed is not None
        except ValueError:  # a hash bcrypt cannot read: no match, never a failed request
            return False
        if ok:
            with self._lock:
                if len(self._verified) > 64:
                    self._verified.clear()
                self._verified[key.digest()] = True
        return ok


def load_web_config(path: str | None) -> WebConfig:
    """The file at `path` (None: no TLS, no auth), every key checked, the certificates loaded."""
    if path is None:
        return WebConfig()
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(f"cannot read web config file {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise WebConfigError(f"web config file {path} is not valid YAML: {first}") from None
    if not isinstance(document, dict):
        raise WebConfigError(f"web config file {path} must be a mapping")
    _only(document, {"tls_server_config", "http_server_config", "basic_auth_users"}, path, "")
    tls = _tls(document.get("tls_server_config"), path)
    http = _mapping(document.get("http_server_config"), path, "http_server_config")
    _only(http, {"headers", "http2"}, path, "http_server_config.")
    headers = _mapping(http.get("headers"), path, "http_server_config.headers")
    users = _mapping(document.get("basic_auth_users"), path, "basic_auth_users")
    hashes: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(
                f"web config file {path}: basic_auth_users.{user} is not a bcrypt hash "
                "(make one with `htpasswd -nBC 10 USER` or python -c 'import bcrypt; ...')"
            )
        hashes[str(user)] = hashed.encode()
    decoy = b""
    if hashes:  # unknown users cost what known ones cost
        cost = int(next(iter(hashes.values())).split(b"$")[2])
        decoy = bcrypt.hashpw(b"decoy", bcrypt.gensalt(rounds=cost))
    return WebConfig(path, tls, hashes, {str(k): str(v) for k, v in headers.items()}, decoy)


def _only(section: Mapping[str, Any], allowed: set[str], path: str, prefix: str) -> None:
    for key in section:
        if key in _UNSUPPORTED:
            raise WebConfigError(
                f"web config file {path}: {prefix}{key} is not supported by this daemon"
            )
        if key not in allowed:
            raise WebConfigError(
                f"web config file {path}: unknown key {prefix}{key} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )


def _mapping(value: object, path: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"web config file {path}: {where} must be a mapping")
    return value


def _tls(value: object, path: str) -> ssl.SSLContext | None:
    section = _mapping(value, path, "tls_server_config")
    if not section:
        return None
    _only(section, _TLS_KEYS, path, "tls_server_config.")
    where = f"web config file {path}: tls_server_config"
    if not section.get("cert_file") or not section.get("key_file"):
        raise WebConfigError(f"{where} needs both cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key in ("min_version", "max_version"):
        if key in section:
            if section[key] not in TLS_VERSIONS:
                raise WebConfigError(
                    f"{where}.{key}: {section[key]!r} is not one of {', '.join(TLS_VERSIONS)}"
                )
            setattr(context, key, TLS_VERSIONS[section[key]])
    if "min_version" not in section:
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # exporter-toolkit's default
    try:
        context.load_cert_chain(section["cert_file"], section["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"{where}: cannot load cert_file/key_file: {exc}") from None
    auth = section.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(
            f"{where}.client_auth_type: {auth!r} is not one of {', '.join(CLIENT_AUTH)}"
        )
    context.verify_mode = CLIENT_AUTH[auth]
    ca = section.get("client_ca_file")
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not ca:
        raise WebConfigError(f"{where}: client_auth_type {auth} needs client_ca_file")
    if ca and auth == "NoClientCert":
        raise WebConfigError(f"{where}: client_ca_file needs a client_auth_type that verifies")
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{where}: cannot load client_ca_file: {exc}") from None
    return context
