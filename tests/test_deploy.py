"""What `deploy/` ships, checked with the tools that can run here (no container engine, no
cluster): every kustomization under deploy/ (the base and the example overlays, one of them
with the TLS and basic-auth component) builds and validates against the Kubernetes schemas
offline, the Prometheus Operator resources have the operator's shape, the parts agree with each
other and with the daemon's defaults, the docs quote these files rather than other text, the
systemd unit passes `systemd-analyze verify` and scores at most 2.0 in `systemd-analyze
security`, its user is created by sysusers, the Dockerfile passes hadolint and installs exactly
deploy/constraints.txt, which pins everything pyproject.toml needs, and the image's HEALTHCHECK
script answers right against a real metrics endpoint."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client import CollectorRegistry

from exporter.server import MetricsServer
from exporter.webconfig import load_web_config
from replicator.config import DEFAULT_METRICS_ADDR, load_settings
from tests.waiting import free_port, tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PORT = int(DEFAULT_METRICS_ADDR.rsplit(":", 1)[1])
UNIT = DEPLOY / "systemd" / "signal-reconciler.service"
COMPONENT = DEPLOY / "kubernetes" / "components" / "tls-basic-auth"
TLS_OVERLAY = DEPLOY / "kubernetes-overlays" / "example-tls"


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def kustomize_roots(kind: str) -> list[Path]:
    """Every directory under deploy/ whose kustomization file is of this kind."""
    found = []
    for path in sorted(DEPLOY.rglob("kustomization.y*ml")):
        if (yaml.safe_load(path.read_text()) or {}).get("kind", "Kustomization") == kind:
            found.append(path.parent)
    return found


KUSTOMIZATIONS = kustomize_roots("Kustomization")
COMPONENTS = kustomize_roots("Component")
NAMES = [path.relative_to(ROOT).as_posix() for path in KUSTOMIZATIONS]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`kubectl kustomize` of every kustomization under deploy/, by its path."""
    kubectl = tool("kubectl")
    rendered = {}
    for name, directory in zip(NAMES, KUSTOMIZATIONS, strict=True):
        done = run(kubectl, "kustomize", str(directory))
        assert done.returncode == 0, f"{name}: {done.stderr}"
        path = tmp_path_factory.mktemp("kustomize") / "rendered.yaml"
        path.write_text(done.stdout)
        rendered[name] = path
    return rendered


@pytest.fixture(params=NAMES)
def rendered(request: pytest.FixtureRequest, builds: dict[str, Path]) -> Path:
    return builds[request.param]


def resources(rendered: Path) -> dict[str, dict[str, Any]]:
    """A rendered kustomization, and the DSN Secret's example (kept out of the base so that
    applying it never overwrites the real Secret)."""
    found = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered.read_text()) if doc}
    assert "Secret" not in found
    found["Secret"] = yaml.safe_load((DEPLOY / "kubernetes" / "secret.example.yaml").read_text())
    return found


def test_the_base_the_overlays_and_the_component_are_all_found() -> None:
    assert DEPLOY / "kubernetes" in KUSTOMIZATIONS
    assert TLS_OVERLAY in KUSTOMIZATIONS and len(KUSTOMIZATIONS) >= 3
    assert COMPONENT in COMPONENTS


def test_every_component_is_built_by_an_overlay() -> None:
    """A component cannot be built alone: each must be used by a kustomization built here."""
    used = set()
    for directory in KUSTOMIZATIONS:
        document = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used |= {(directory / entry).resolve() for entry in document.get("components", [])}
    for component in COMPONENTS:
        assert component.resolve() in used, f"{component} is not used by any overlay"


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered: Path) -> None:
    validate = tool("kubernetes-validate")
    examples = [DEPLOY / "kubernetes" / "secret.example.yaml", COMPONENT / "secrets.example.yaml"]
    done = run(validate, "--strict", "-k", "1.37", str(rendered), *map(str, examples))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failed" not in done.stdout.lower()
    for kind in ("deployment", "service", "secret", "configmap", "serviceaccount"):
        assert re.search(rf"passed for resource {kind}/signal-reconciler", done.stdout), kind
    assert "poddisruptionbudget/signal-reconciler" in done.stdout
    # The validator does fail: a misspelt field is rejected.
    broken = rendered.with_name("broken.yaml")
    broken.write_text(rendered.read_text().replace("readinessProbe:", "readinesProbe:"))
    assert run(validate, "--strict", "-k", "1.37", str(broken)).returncode != 0


# The ServiceMonitor fields used here, as the Prometheus Operator's CRD defines them (operator
# 0.84.1, example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml): unknown
# fields are rejected, so a misspelt one fails here rather than being dropped by the API server.
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_STRING, _BOOLEAN = {"type": "string"}, {"type": "boolean"}
_TLS_VERSION = {"enum": ["TLS10", "TLS11", "TLS12", "TLS13"]}


def _key_selector() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": _STRING, "key": _STRING, "optional": _BOOLEAN},
        "required": ["key"],
        "additionalProperties": False,
    }


_SECRET_OR_CONFIGMAP = {
    "type": "object",
    "properties": {"secret": _key_selector(), "configMap": _key_selector()},
    "additionalProperties": False,
}
ENDPOINT_SCHEMA = {
    "type": "object",
    "properties": {
        "port": _STRING,
        "path": _STRING,
        "interval": {"type": "string", "pattern": DURATION},
        "scrapeTimeout": {"type": "string", "pattern": DURATION},
        "scheme": {"enum": ["http", "https"]},
        "tlsConfig": {
            "type": "object",
            "properties": {
                "ca": _SECRET_OR_CONFIGMAP,
                "caFile": _STRING,
                "cert": _SECRET_OR_CONFIGMAP,
                "certFile": _STRING,
                "keySecret": _key_selector(),
                "keyFile": _STRING,
                "insecureSkipVerify": _BOOLEAN,
                "serverName": _STRING,
                "minVersion": _TLS_VERSION,
                "maxVersion": _TLS_VERSION,
            },
            "additionalProperties": False,
        },
        "basicAuth": {
            "type": "object",
            "properties": {"username": _key_selector(), "password": _key_selector()},
            "required": ["username", "password"],
            "additionalProperties": False,
        },
    },
    "required": ["port"],
    "additionalProperties": False,
}
SERVICEMONITOR_SPEC_SCHEMA = {
    "type": "object",
    "properties": {
        "jobLabel": _STRING,
        "selector": {"type": "object"},
        "namespaceSelector": {"type": "object"},
        "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT_SCHEMA},
    },
    "required": ["endpoints", "selector"],
    "additionalProperties": False,
}


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
    jsonschema.validate(monitor["spec"], SERVICEMONITOR_SPEC_SCHEMA)
    duration = re.compile(DURATION)
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


def test_the_servicemonitor_schema_rejects_misspelt_fields() -> None:
    endpoint = {"port": "metrics", "scheme": "https", "tlsConfig": {"serverName": "x"}}
    jsonschema.validate({"selector": {}, "endpoints": [endpoint]}, SERVICEMONITOR_SPEC_SCHEMA)
    for wrong in (
        {"port": "metrics", "scheme": "HTTPS"},
        {"port": "metrics", "tlsConfig": {"server_name": "x"}},
        {"port": "metrics", "tlsConfig": {"ca": {"secret": {"name": "x"}}}},
        {"port": "metrics", "basicAuth": {"user": {"name": "x", "key": "u"}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"selector": {}, "endpoints": [wrong]}, SERVICEMONITOR_SPEC_SCHEMA)


def test_the_manifests_agree_with_each_other_and_the_daemon(rendered: Path) -> None:
    found = resources(rendered)
    deployment, service = found["Deployment"], found["Service"]
    monitor, rule = found["ServiceMonitor"], found["PrometheusRule"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"].split(":")[0].rsplit("/", 1)[-1] == "signal-reconciler"
    assert container["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    assert env["RECONCILER_DAEMON_METRICS_ADDR"] == f"0.0.0.0:{PORT}"
    # HTTPS with a web config file (the TLS component), else the default, HTTP.
    scheme = "HTTPS" if "RECONCILER_DAEMON_WEB_CONFIG_FILE" in env else "HTTP"
    probes = {
        name: dict(container[name]["httpGet"]) for name in ("livenessProbe", "readinessProbe")
    }
    for probe in probes.values():
        assert probe.pop("scheme", "HTTP") == scheme
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "metrics"}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "metrics"}
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


def test_the_tls_component_turns_on_tls_and_basic_auth_everywhere(
    builds: dict[str, Path], tmp_path: Path
) -> None:
    """The TLS overlay differs from the one it extends by the component's patches only; the
    daemon reads the mounted file, the probes speak HTTPS, the ServiceMonitor scrapes over
    https with the CA and the credentials of the Secrets the example shows, and those
    examples agree with each other (the bcrypt hash in web.yml is the scrape password's)."""
    plain = resources(builds["deploy/kubernetes-overlays/example"])
    found = resources(builds[TLS_OVERLAY.relative_to(ROOT).as_posix()])
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
        assert container[probe]["httpGet"]["path"] in {"/healthz", "/readyz"}
    web = mounts["web-config"]
    assert web["readOnly"] is True
    assert env["RECONCILER_DAEMON_WEB_CONFIG_FILE"] == f"{web['mountPath']}/web.yml"
    # Its own directory: not inside another mount (the ConfigMap's is read-only), none in it.
    for other in mounts.values():
        if other is not web:
            assert not Path(web["mountPath"]).is_relative_to(other["mountPath"]), other
            assert not Path(other["mountPath"]).is_relative_to(web["mountPath"]), other
    files = {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in volumes["web-config"]["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    secrets = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((COMPONENT / "secrets.example.yaml").read_text())
    }
    assert files["web.yml"] == ("signal-reconciler-web-config", "web.yml")
    assert set(files) == {"web.yml", "tls.crt", "tls.key"}
    # The ServiceMonitor: https, the CA and the name to verify, the credentials.
    (endpoint,) = found["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": files["tls.crt"][0], "key": "ca.crt"}
    assert endpoint["tlsConfig"]["serverName"] == found["Service"]["metadata"]["name"]
    auth = endpoint["basicAuth"]
    scrape = secrets[auth["username"]["name"]]["stringData"]
    assert auth["password"]["name"] == auth["username"]["name"]
    user, password = scrape[auth["username"]["key"]], scrape[auth["password"]["key"]]
    # Nothing else changed: the plain overlay plus these patches is the TLS overlay.
    (before,) = plain["ServiceMonitor"]["spec"]["endpoints"]
    assert {k: v for k, v in endpoint.items() if k not in {"scheme", "tlsConfig", "basicAuth"}} == (
        before
    )
    assert found["Service"] == plain["Service"] and found["ConfigMap"] == plain["ConfigMap"]
    # The example web.yml loads (with a real certificate where the pod has the Secret's) and
    # lets exactly the example's user in.
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            tool("openssl"),
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=signal-reconciler", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    text = secrets[files["web.yml"][0]]["stringData"]["web.yml"]
    assert f"{web['mountPath']}/tls.crt" in text and f"{web['mountPath']}/tls.key" in text
    config = tmp_path / "web.yml"
    config.write_text(text.replace(web["mountPath"], str(tmp_path)))
    loaded = load_web_config(str(config))
    assert loaded.scheme == "https" and set(loaded.users) == {user}
    assert loaded.authorized(user, password) and not loaded.authorized(user, password + "x")
    settings = load_settings(environ={"RECONCILER_DAEMON_WEB_CONFIG_FILE": str(config)})
    assert settings.daemon.web_config_file == str(config)


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


def test_the_systemd_unit_scores_at_most_2_in_systemd_analyze_security() -> None:
    """`systemd-analyze security --offline=true` (systemd 250 and later) on the unit file: the
    overall exposure at most 2.0, with what the daemon needs left on."""
    analyze = tool("systemd-analyze")
    version = re.search(r"systemd (\d+)", run(analyze, "--version").stdout)
    if version is None or int(version[1]) < 250:
        message = "systemd-analyze security --offline needs systemd 250 or later"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = run(analyze, "security", "--offline=true", "--no-pager", str(UNIT))
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert exposure is not None, done.stdout + done.stderr
    assert float(exposure[1]) <= 2.0, done.stdout
    threshold = run(analyze, "security", "--offline=true", "--threshold=20", str(UNIT))
    assert threshold.returncode == 0, threshold.stdout
    unit = UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, flags=re.MULTILINE))
    assert settings["ProtectProc"] == "invisible"
    assert re.search(r"^SystemCallFilter=@system-service$", unit, flags=re.MULTILINE)
    assert settings["MemoryMax"] == "1G"  # a 20M-row deep check peaks at about 530 MiB
    # numba's JIT makes written memory executable: MemoryDenyWriteExecute would break it.
    assert "MemoryDenyWriteExecute" not in settings
    # The kernel's cache is in the service's own writable cache directory.
    environment = dict(re.findall(r"^Environment=(\w+)=(\S+)$", unit, flags=re.MULTILINE))
    cache = Path("/var/cache") / settings["CacheDirectory"]
    assert Path(environment["NUMBA_CACHE_DIR"]).is_relative_to(cache)
    assert "AF_INET AF_INET6 AF_UNIX" in settings["RestrictAddressFamilies"]


def test_the_dockerfile_passes_hadolint_and_runs_the_daemon_unprivileged() -> None:
    dockerfile = DEPLOY / "Dockerfile"
    done = run(tool("hadolint"), str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    # Every stage on the same base, named by digest.
    bases = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(bases) == 2 and len(set(bases)) == 1, bases
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", bases[0])
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["reconciler", "run"]' in text
    assert "HEALTHCHECK" in text and f"EXPOSE {PORT}" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
    # Exactly the pinned versions, no resolution, checked; the project without its deps.
    commands = re.sub(r"\s*\\\n\s*", " ", text)
    assert "pip install --no-cache-dir --no-deps --requirement deploy/constraints.txt" in commands
    assert re.search(r'pip install [^&]*--no-deps --no-build-isolation "\.\[azure\]"', commands)
    assert "pip check" in commands
    # The contract kernel compiled at build, in the runtime stage, into the runtime cache.
    runtime = commands[commands.rindex("FROM ") :]
    cache = re.search(r"NUMBA_CACHE_DIR=(\S+)", runtime)
    assert cache is not None and cache[1] == "/opt/reconciler/numba-cache"
    compile_at = runtime.index("python -m replicator.contract.kernel")
    assert runtime.index("COPY --from=build") < runtime.index("NUMBA_CACHE_DIR") < compile_at
    assert compile_at < runtime.index("USER 10001")
    assert (ROOT / "replicator" / "contract" / "kernel.py").exists()


def _make_constraints() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_constraints", DEPLOY / "make_constraints.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_constraints_pin_every_runtime_dependency() -> None:
    """deploy/constraints.txt (what the image installs, with --no-deps) pins `==` every runtime
    dependency of pyproject.toml and of the [azure] extra, and everything they need in turn (as
    this venv's metadata says), the build backend, and nothing else: no test or benchmark tool,
    not the project. `python deploy/make_constraints.py` writes it from the tested venv."""
    make = _make_constraints()
    lines = [
        line
        for line in (DEPLOY / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pins: dict[str, str] = {}
    for line in lines:
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and not requirement.marker, line
        pins[canonicalize_name(requirement.name)] = specifier.version
    assert len(pins) == len(lines)
    fix = "run python deploy/make_constraints.py"
    roots = make.project_requirements()
    needed = set(make.runtime_closure(roots)) | {"setuptools"}
    assert needed - set(pins) == set(), f"not pinned: {sorted(needed - set(pins))}; {fix}"
    assert set(pins) - needed == set(), f"not needed: {sorted(set(pins) - needed)}; {fix}"
    assert "signal-reconciler" not in pins
    # The pins satisfy pyproject.toml's ranges (and the build backend its build-system).
    for requirement in roots:
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for line in pyproject["build-system"]["requires"]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) in pins:
            assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)])
    # Test-only tools stay out, even those the closure could reach by accident.
    for tool_name in ("pytest", "ruff", "mypy", "hypothesis", "kubernetes-validate"):
        assert tool_name not in pins


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


def deploy_section() -> str:
    """docs/operations.md's "Deploying the daemon", up to its Prometheus subsection."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("## Deploying the daemon\n")
    return text[start : text.index("### Prometheus, Alertmanager, Grafana\n", start)]


FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
KUSTOMIZE_KEYS = re.compile(
    r"^(kind: (Kustomization|Component)|resources:|components:|patches:|configMapGenerator:)",
    re.MULTILINE,
)


def test_the_docs_quote_the_deploy_files_they_show() -> None:
    """A manifest in the deployment docs is a file under deploy/, quoted whole after a first
    line naming it; kustomize text that is not a quote fails (it rotted once: an overlay that
    patched a Secret the base does not have). Every deploy/ path the section names exists."""
    section = deploy_section()
    quoted = set()
    for block in FENCE.findall(section):
        first, _, rest = block.partition("\n")
        named = re.fullmatch(r"# (deploy/\S+)", first)
        if named is None:
            assert not KUSTOMIZE_KEYS.search(block), f"not a quote of a deploy/ file:\n{block}"
            continue
        assert (ROOT / named[1]).read_text() == rest, f"{named[1]} differs from the docs"
        quoted.add(named[1])
    overlays = {
        p.relative_to(ROOT).as_posix() for p in KUSTOMIZATIONS if "overlays" in p.as_posix()
    }
    assert {f"{overlay}/kustomization.yaml" for overlay in overlays} <= quoted
    for path in re.findall(r"`(deploy/[^`\s]*)`", section):
        assert (ROOT / path.rstrip("/")).exists(), path


def test_the_docs_say_where_the_systemd_unit_listens() -> None:
    """The systemd section states the daemon's default address and how to change it, with
    variables that mean what it says."""
    section = deploy_section()
    systemd = section[section.index("### systemd") :]
    assert f"`{DEFAULT_METRICS_ADDR}`" in systemd
    (block,) = (b for b in FENCE.findall(systemd) if b.startswith("# /etc/signal-reconciler/env"))
    env = dict(line.split("=", 1) for line in block.splitlines()[1:] if line.strip())
    settings = load_settings(environ=env)
    assert settings.daemon.metrics_addr == f"0.0.0.0:{PORT}"
    assert settings.daemon.web_config_file == "/etc/signal-reconciler/web.yml"
    assert "metrics_addr" in systemd and "NUMBA_CACHE_DIR" in systemd
    unit = UNIT.read_text()
    cache = re.search(r"^Environment=NUMBA_CACHE_DIR=(\S+)$", unit, flags=re.MULTILINE)
    assert cache is not None and f"NUMBA_CACHE_DIR={cache[1]}" in systemd
