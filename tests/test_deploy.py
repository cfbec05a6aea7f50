"""What `deploy/` ships, checked with the tools that can run here (no container engine, no
cluster): the kustomize build validates against the Kubernetes schemas offline, its parts agree
with each other and with the daemon's defaults, the systemd unit passes `systemd-analyze
verify` and its user is created by sysusers, the Dockerfile passes hadolint, and the image's
HEALTHCHECK script answers right against a real metrics endpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from exporter.server import MetricsServer
from exporter.webconfig import load_web_config
from replicator.config import DEFAULT_METRICS_ADDR, load_settings
from tests.waiting import free_port, tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PORT = int(DEFAULT_METRICS_ADDR.rsplit(":", 1)[1])


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    done = run(tool("kubectl"), "kustomize", str(DEPLOY / "kubernetes"))
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("kustomize") / "rendered.yaml"
    path.write_text(done.stdout)
    return path


def resources(rendered: Path) -> dict[str, dict[str, Any]]:
    """The rendered base, and the DSN Secret's example (kept out of the base so that applying
    it never overwrites the real Secret)."""
    found = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered.read_text()) if doc}
    assert "Secret" not in found
    found["Secret"] = yaml.safe_load((DEPLOY / "kubernetes" / "secret.example.yaml").read_text())
    return found


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered: Path) -> None:
    validate = tool("kubernetes-validate")
    example = DEPLOY / "kubernetes" / "secret.example.yaml"
    done = run(validate, "--strict", "-k", "1.37", str(rendered), str(example))
    assert done.returncode == 0, done.stdout + done.stderr
    for kind in ("deployment", "service", "secret", "configmap", "serviceaccount"):
        assert re.search(rf"passed for resource {kind}/signal-reconciler", done.stdout), kind
    assert "poddisruptionbudget/signal-reconciler" in done.stdout
    # The validator does fail: a misspelt field is rejected.
    broken = rendered.with_name("broken.yaml")
    broken.write_text(rendered.read_text().replace("readinessProbe:", "readinesProbe:"))
    assert run(validate, "--strict", "-k", "1.37", str(broken)).returncode != 0


def test_the_operator_resources_have_the_operators_shape(rendered: Path, tmp_path: Path) -> None:
    """kubernetes-validate ships no schema for the Prometheus Operator's kinds (it warns and
    skips them), so their fields are checked here against the operator's v1 API, and the rules
    with promtool."""
    found = resources(rendered)
    monitor, rule = found["ServiceMonitor"], found["PrometheusRule"]
    for resource in (monitor, rule):
        assert resource["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(resource) == {"apiVersion", "kind", "metadata", "spec"}
        assert isinstance(resource["metadata"]["name"], str)
    assert set(monitor["spec"]) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    duration = re.compile(
        r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
    )
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert duration.match(endpoint["interval"]) and duration.match(endpoint["scrapeTimeout"])
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert duration.match(item["for"])
    spec = tmp_path / "rules.yml"
    spec.write_text(yaml.safe_dump(rule["spec"]))
    done = run(tool("promtool"), "check", "rules", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_manifests_agree_with_each_other_and_the_daemon(rendered: Path) -> None:
    found = resources(rendered)
    deployment, service = found["Deployment"], found["Service"]
    monitor, rule = found["ServiceMonitor"], found["PrometheusRule"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"].split(":")[0] == "signal-reconciler"
    assert container["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    assert env["RECONCILER_DAEMON_METRICS_ADDR"] == f"0.0.0.0:{PORT}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]
    # Non-root, read-only, no privileges.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"]
    assert pod["enableServiceLinks"] is False
    assert found["PodDisruptionBudget"]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The DSN comes from the Secret, as a file; the config from the generated ConfigMap.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "POSTGRES_DSN" not in env
    assert env["POSTGRES_DSN_FILE"] == f"{mounts['dsn']}/dsn"
    assert volumes["dsn"]["secret"]["secretName"] == found["Secret"]["metadata"]["name"]
    assert "dsn" in found["Secret"]["stringData"]
    assert env["RECONCILER_CONFIG"] == f"{mounts['config']}/reconciler.toml"
    assert volumes["config"]["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
    # The Service and the ServiceMonitor find the pods; the job label is what alerts select.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    selector = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text())["selector"]
    assert selector == f'job="{job}"'
    assert rule["spec"] == yaml.safe_load((ROOT / "alerts" / "reconciler.rules.yml").read_text())


def test_the_shipped_configuration_loads(rendered: Path, tmp_path: Path) -> None:
    """reconciler.toml and every variable the manifests and the unit set mean what they say."""
    found = resources(rendered)
    (container,) = found["Deployment"]["spec"]["template"]["spec"]["containers"]
    toml = tmp_path / "reconciler.toml"
    toml.write_text(found["ConfigMap"]["data"]["reconciler.toml"])
    dsn = tmp_path / "dsn"
    dsn.write_text(found["Secret"]["stringData"]["dsn"])
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(RECONCILER_CONFIG=str(toml), POSTGRES_DSN_FILE=str(dsn))
    settings = load_settings(environ=env)
    assert settings.daemon.metrics_addr == f"0.0.0.0:{PORT}" and settings.daemon.json_logs
    assert settings.postgres.azure_entra_auth
    assert settings.auto_repair.enabled is False  # off by default, as everywhere
    assert settings.require_dsn().target.endswith(":5432/ranking")
    assert settings.delta.root and settings.delta.root.startswith("abfss://")
    unit = (DEPLOY / "systemd" / "signal-reconciler.service").read_text()
    for name, value in re.findall(r"^Environment=(\w+)=(\S+)$", unit, flags=re.MULTILINE):
        if name.startswith("RECONCILER_") and name != "RECONCILER_CONFIG":
            load_settings(environ={name: value})


def test_the_systemd_unit_verifies_and_its_user_is_created(tmp_path: Path) -> None:
    analyze, sysusers = tool("systemd-analyze"), tool("systemd-sysusers")
    unit = (DEPLOY / "systemd" / "signal-reconciler.service").read_text()
    # No value carries a trailing comment: systemd would read it as part of the value.
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            assert " #" not in line and "\t#" not in line, line
    assert re.search(r"^User=signal-reconciler$", unit, flags=re.MULTILINE)
    # verify insists that ExecStart exists: point it at this checkout's installed script.
    installed = Path(sys.executable).with_name("reconciler")
    local = tmp_path / "signal-reconciler.service"
    local.write_text(unit.replace("/opt/signal-reconciler/bin/reconciler", str(installed)))
    done = run(analyze, "verify", str(local))
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    root = tmp_path / "root" / "etc"
    root.mkdir(parents=True)
    for name in ("passwd", "group"):
        (root / name).write_text(Path(f"/etc/{name}").read_text())
    done = run(
        sysusers,
        f"--root={tmp_path / 'root'}",
        "--dry-run",
        str(DEPLOY / "systemd" / "signal-reconciler.sysusers"),
    )
    assert done.returncode == 0, done.stderr
    assert "Creating user 'signal-reconciler'" in done.stdout + done.stderr


def test_the_dockerfile_passes_hadolint_and_runs_the_daemon_unprivileged() -> None:
    dockerfile = DEPLOY / "Dockerfile"
    done = run(tool("hadolint"), str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, flags=re.MULTILINE)
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["reconciler", "run"]' in text
    assert "HEALTHCHECK" in text and f"EXPOSE {PORT}" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source


def healthcheck(port: int, web_config: Path | None = None) -> int:
    env = {**os.environ, "RECONCILER_DAEMON_METRICS_ADDR": f"0.0.0.0:{port}"}
    if web_config is not None:
        env["RECONCILER_DAEMON_WEB_CONFIG_FILE"] = str(web_config)
    return run(sys.executable, str(DEPLOY / "healthcheck.py"), env=env).returncode


def test_the_image_healthcheck_probes_healthz(tmp_path: Path) -> None:
    assert healthcheck(free_port()) == 1  # nothing listens
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            tool("openssl"),
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "basic_auth_users:\n  prom: '$2b$04$abcdefghijklmnopqrstuu5Qq1C9tWqDqMxm2qp7B1.jH0B2zvO2'\n"
    )
    for config in (None, web):
        server = MetricsServer(
            CollectorRegistry(),
            "127.0.0.1",
            0,
            ready=lambda: (True, "ready"),
            web=load_web_config(str(config) if config else None),
        )
        server.start()
        try:
            assert healthcheck(server.address[1], config) == 0
        finally:
            server.stop()
