"""The image's HEALTHCHECK: GET /healthz on the daemon's own metrics address.

The port comes from RECONCILER_DAEMON_METRICS_ADDR (the image sets it); when the web config
file (RECONCILER_DAEMON_WEB_CONFIG_FILE) turns TLS on, the probe speaks TLS without verifying
the certificate: it only asks the process on this host whether it is alive. /healthz needs no
credentials. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

DEFAULT_ADDR = "0.0.0.0:10742"


def main() -> int:
    port = os.environ.get("RECONCILER_DAEMON_METRICS_ADDR", DEFAULT_ADDR).rsplit(":", 1)[1]
    web_config = os.environ.get("RECONCILER_DAEMON_WEB_CONFIG_FILE", "")
    tls = False
    if web_config:
        with open(web_config, encoding="utf-8") as handle:
            tls = any(line.startswith("tls_server_config:") for line in handle)
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # localhost liveness only, never data
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
