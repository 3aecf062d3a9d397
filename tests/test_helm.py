"""The Helm charts, rendered by Helm's own engine and checked three ways.

- Kubernetes: every rendered object validates against the API schemas of the
  newest Kubernetes version kubernetes-validate ships (strict: unknown fields
  fail), and ``helm lint --strict`` is clean.
- The sidecar: every ``CAPI_*`` variable the chart sets is a field of
  ``sidecar.config.Settings``; the config file the chart renders loads through
  ``load_settings`` with the Secret and ConfigMap projected as files, the way
  the kubelet would; the chart's values schema mirrors the settings model.
- The pod: a native sidecar (init container with ``restartPolicy: Always``),
  probes on the ops port, a locked-down security context, an outbox on a
  writable volume, a grace period that covers the drain budget.

Everything runs offline: helm-python-sdk embeds Helm's Go engine, and the
capi-sidecar library chart is vendored into a temporary copy of
example-storefront.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from sidecar.config import (
    DESTINATION_KEYS,
    DestinationSettings,
    Settings,
    load_settings,
    parse_address,
)
from sidecar.telemetry import tracer_provider_from_env

ROOT = Path(__file__).resolve().parent.parent
HELM_DIR = ROOT / "helm"
KUBE_VERSION = kubernetes_validate.latest_version()
RELEASE = "shop"
SIDECAR = "capi-sidecar"

# Objects of CRDs, for which Kubernetes itself has no schema.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

# What the kubelet would put in downward-API variables.
FIELD_REFS = {"status.podIP": "10.1.2.3", "metadata.name": "shop-7d9f",
              "metadata.namespace": "shop"}


# --- value sets ------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Values for example-storefront, and what the sidecar should end up with."""

    values: dict[str, Any]
    tokens: dict[str, str] = field(default_factory=dict)  # destination -> token
    app_secrets: dict[str, str] = field(default_factory=dict)
    write_key: str | None = None
    existing_secret: dict[str, str] = field(default_factory=dict)  # made by the operator

    @property
    def sidecar(self) -> dict[str, Any]:
        return dict(self.values.get(SIDECAR, {}))


def _with_sidecar(**sidecar: Any) -> dict[str, Any]:
    return {SIDECAR: sidecar}


ONE_DESTINATION = {"sandbox": False, "destinations": [{"name": "main", "pixel_id": "111"}]}

CASES = {
    "defaults": Case({}),
    "pvc": Case(_with_sidecar(outbox={
        "type": "persistentVolumeClaim",
        "persistentVolumeClaim": {"size": "5Gi", "storageClassName": "fast-ssd"},
    })),
    "existing-claim": Case(_with_sidecar(outbox={"type": "existingClaim",
                                                 "existingClaim": "shop-outbox"})),
    "existing-secret": Case(
        _with_sidecar(**ONE_DESTINATION, secret={"existingSecret": "shop-capi"},
                      auth={"writeKeySecretKey": "write-key"}),
        tokens={"main": "tok-main"},
        write_key="wk-123",
        existing_secret={"main.access-token": "tok-main", "write-key": "wk-123"},
    ),
    "destinations": Case(
        _with_sidecar(
            sandbox=False,
            config={"batch_size": 500, "concurrency": 8, "outbox_cap": 2_000_000,
                    "synchronous": "NORMAL", "lease_seconds": 90.5, "log_level": "DEBUG"},
            destinationDefaults={
                "default_currency": "EUR",
                "appSecretKey": "shared.app-secret",
                "property_mappings": {"properties.email": "properties.customer.email"},
            },
            destinations=[
                {"name": "main", "pixel_id": "111", "action_source": "website"},
                {"name": "eu", "pixel_id": "222", "accessTokenKey": "eu-token",
                 "appSecretKey": "eu.app-secret", "events_filter": ["Purchase", "AddToCart"],
                 "content_id_field": "product_id", "test_event_code": "TEST123",
                 "phone_field": "phone", "phone_default_region": "DE",
                 "graph_url": "http://graph-sandbox.staging.svc:8080",
                 "property_mappings": {"properties.total": "properties.revenue"}},
            ],
            secret={"create": True, "stringData": {
                "main.access-token": "tok-main", "eu-token": "tok-eu", "eu.app-secret": "shh",
                "shared.app-secret": "psst",
            }},
        ),
        tokens={"main": "tok-main", "eu": "tok-eu"},
        app_secrets={"main": "psst", "eu": "shh"},
    ),
    "geo-otel-podip": Case(
        _with_sidecar(
            **ONE_DESTINATION,
            secret={"create": True, "stringData": {"main.access-token": "tok-main"}},
            geoip={"enabled": True, "source": "persistentVolumeClaim", "claimName": "geoip"},
            otel={"enabled": True, "endpoint": "http://otel-collector.observability:4318",
                  "resourceAttributes": {"deployment.environment": "staging"}},
            ops={"port": 9790, "bind": "podIP"},
            extraEnv=[{"name": "TZ", "value": "UTC"}],
        ),
        tokens={"main": "tok-main"},
    ),
    "geo-image": Case(_with_sidecar(geoip={
        "enabled": True, "source": "image",
        "image": {"reference": "registry.example/geolite2-city:2026-01"},
    })),
    "metrics-off": Case(_with_sidecar(metrics={"enabled": False})),
    "service-monitor": Case(_with_sidecar(metrics={
        "scrapeAnnotations": False,
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
    })),
}


# --- rendering -------------------------------------------------------------


@dataclass
class Rendered:
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]

    @property
    def sidecar(self) -> dict[str, Any]:
        return _container(self.pod["spec"].get("initContainers", []), SIDECAR)

    @property
    def env(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.sidecar["env"]}


def _container(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [c for c in containers if c["name"] == name]
    assert len(matches) == 1, f"no container {name!r} in {[c['name'] for c in containers]}"
    return matches[0]


def _parse(manifests: dict[str, str]) -> Rendered:
    docs = [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return Rendered(docs)


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both charts copied, with capi-sidecar vendored as the storefront's dependency."""
    root = tmp_path_factory.mktemp("charts")
    shutil.copytree(HELM_DIR / SIDECAR, root / SIDECAR)
    shutil.copytree(HELM_DIR / "example-storefront", root / "example-storefront",
                    ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    shutil.copytree(HELM_DIR / SIDECAR, root / "example-storefront" / "charts" / SIDECAR)
    return root


@pytest.fixture(scope="module")
def storefront(charts: Path) -> Iterator[helm.Chart]:
    with helm.Chart.load(charts / "example-storefront") as chart:
        yield chart


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    return _parse(chart.render(copy.deepcopy(values), name=RELEASE, namespace="shop"))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest, storefront: helm.Chart) -> tuple[Case, Rendered]:
    chosen = CASES[request.param]
    return chosen, render(storefront, chosen.values)


# --- Helm and Kubernetes -----------------------------------------------------


def test_the_kubernetes_schemas_are_recent_enough_for_native_sidecars() -> None:
    major, minor = (int(part) for part in KUBE_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 29)


def test_the_storefront_vendors_the_capi_sidecar_chart_from_this_repository(
    charts: Path,
) -> None:
    (dep,) = helm.dependency_list(charts / "example-storefront")
    assert dep["name"] == SIDECAR
    assert dep["repository"] == "file://../capi-sidecar"
    assert dep["status"] in {"ok", "unpacked"}


@pytest.mark.parametrize("chart", [SIDECAR, "example-storefront"])
def test_helm_lint_is_clean(charts: Path, chart: str) -> None:
    report = helm.lint(charts / chart, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_helm_lint_is_clean_for_every_value_set(charts: Path, name: str) -> None:
    report = helm.lint(charts / "example-storefront", CASES[name].values, strict=True,
                       kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_rendered_object_is_valid_kubernetes(case: tuple[Case, Rendered]) -> None:
    _, rendered = case
    assert rendered.docs
    for doc in rendered.docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            assert doc["metadata"]["name"]
            assert doc["spec"]["selector"]["matchLabels"]
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} "
                        f"at {'.'.join(map(str, err.absolute_path))}")


def test_the_sidecar_is_a_native_sidecar_that_starts_before_the_app(
    case: tuple[Case, Rendered],
) -> None:
    _, rendered = case
    spec = rendered.pod["spec"]
    assert rendered.sidecar["restartPolicy"] == "Always"
    assert SIDECAR not in [c["name"] for c in spec["containers"]]
    # The kubelet starts the app only after the sidecar's startup probe passes.
    assert rendered.sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert [c["name"] for c in spec["containers"]] == ["storefront"]


def test_probes_use_the_ops_port_and_never_depend_on_meta(case: tuple[Case, Rendered]) -> None:
    _, rendered = case
    sidecar = rendered.sidecar
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    probes = {k: sidecar[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")
              if k in sidecar}
    assert {"startupProbe", "livenessProbe"} <= set(probes)
    for probe in probes.values():
        assert set(probe) - {"httpGet", "periodSeconds", "timeoutSeconds",
                             "failureThreshold"} == set()
        assert probe["httpGet"]["path"] in {"/healthz", "/readyz"}
        assert probe["httpGet"]["port"] in ports
        assert "host" not in probe["httpGet"]  # the pod IP, where the ops port listens
    ops_value = rendered.env["CAPI_OPS_LISTEN"]["value"].replace("$(POD_IP)",
                                                                 FIELD_REFS["status.podIP"])
    host, port = parse_address(ops_value)
    assert port == ports["capi-ops"]
    assert host in {"0.0.0.0", FIELD_REFS["status.podIP"]}
    assert parse_address(rendered.env["CAPI_LISTEN"]["value"])[0] == "127.0.0.1"


def test_the_sidecar_container_is_locked_down(case: tuple[Case, Rendered]) -> None:
    _, rendered = case
    sc = rendered.sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert rendered.sidecar["resources"]["limits"]["memory"]
    # Only the outbox and /tmp are writable; configuration and secrets are not.
    writable = {m["name"] for m in rendered.sidecar["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"capi-sidecar-outbox", "capi-sidecar-tmp"}
    for volume in rendered.pod["spec"]["volumes"]:
        assert volume.get("emptyDir", {}).get("medium") != "Memory", volume["name"]


def test_the_outbox_database_is_on_the_outbox_volume(case: tuple[Case, Rendered]) -> None:
    _, rendered = case
    (mount,) = [m for m in rendered.sidecar["volumeMounts"] if m["name"] == "capi-sidecar-outbox"]
    db_path = Path(rendered.env["CAPI_DB_PATH"]["value"])
    assert db_path.parent == Path(mount["mountPath"])


def test_every_capi_variable_the_chart_sets_is_a_setting(case: tuple[Case, Rendered]) -> None:
    _, rendered = case
    known = {f"CAPI_{name.upper()}" for name in Settings.model_fields} | {"CAPI_CONFIG"}
    names = {n for n in rendered.env if n.startswith("CAPI_")}
    assert {"CAPI_CONFIG", "CAPI_DB_PATH", "CAPI_LISTEN", "CAPI_OPS_LISTEN"} <= names
    assert names - known == set()


def test_the_grace_period_covers_the_drain_budget(case: tuple[Case, Rendered]) -> None:
    _, rendered = case
    grace = rendered.pod["spec"]["terminationGracePeriodSeconds"]
    budget = float(rendered.env["CAPI_DRAIN_BUDGET_SECONDS"]["value"])
    assert grace >= budget + 5


# --- the config reaches the sidecar ------------------------------------------


def _host(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _project_volumes(rendered: Rendered, case: Case, root: Path) -> None:
    """Write the ConfigMap and Secret items the sidecar mounts, as the kubelet does."""
    objects = {(d["kind"], d["metadata"]["name"]): d for d in rendered.docs}
    volumes = {v["name"]: v for v in rendered.pod["spec"]["volumes"]}
    for mount in rendered.sidecar["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        target = _host(root, mount["mountPath"])
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = objects[("ConfigMap", volume["configMap"]["name"])]["data"]
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            secret = objects.get(("Secret", name))
            data = secret["stringData"] if secret else case.existing_secret
        else:
            continue
        items = volume.get("configMap", volume.get("secret", {})).get("items")
        for item in items or [{"key": k, "path": k} for k in data]:
            (target / item["path"]).write_text(data[item["key"]] + "\n", encoding="utf-8")


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z0-9_]+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _container_env(rendered: Rendered, root: Path | None = None) -> dict[str, str]:
    """The sidecar's environment as the kubelet resolves it, paths moved under root."""
    env: dict[str, str] = {}
    for item in rendered.sidecar["env"]:
        if "valueFrom" in item:
            env[item["name"]] = FIELD_REFS[item["valueFrom"]["fieldRef"]["fieldPath"]]
            continue
        value = _expand(item["value"], env)
        env[item["name"]] = _move_paths(value, rendered, root) if root else value
    return env


def _move_paths(text: str, rendered: Rendered, root: Path) -> str:
    """Point every path under one of the sidecar's mounts at its copy under root."""
    mounts = sorted((m["mountPath"] for m in rendered.sidecar["volumeMounts"]), key=len,
                    reverse=True)
    pattern = r"(?<![\w/.-])(" + "|".join(map(re.escape, mounts)) + ")/"
    return re.sub(pattern, lambda m: f"{_host(root, m.group(1))}/", text)


def test_the_rendered_config_loads_through_the_settings_model(
    case: tuple[Case, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen, rendered = case
    _project_volumes(rendered, chosen, tmp_path)
    env = _container_env(rendered, tmp_path)
    config_file = Path(env.pop("CAPI_CONFIG"))
    config_file.write_text(_move_paths(config_file.read_text("utf-8"), rendered, tmp_path),
                           encoding="utf-8")
    for name in [n for n in os.environ if n.startswith(("CAPI_", "OTEL_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = load_settings(config_file=str(config_file))

    assert {d.name: d.token for d in settings.destinations} == chosen.tokens
    assert settings.needs_sandbox == (not chosen.tokens)
    secrets = {d.name: d.app_secret.get_secret_value()
               for d in settings.destinations if d.app_secret is not None}
    assert secrets == chosen.app_secrets
    write_key = settings.write_key.get_secret_value() if settings.write_key else None
    assert write_key == chosen.write_key
    assert settings.db_path.is_relative_to(tmp_path)
    for key, value in chosen.sidecar.get("config", {}).items():
        assert getattr(settings, key) == value


def test_destination_defaults_merge_under_each_destination(storefront: helm.Chart) -> None:
    rendered = render(storefront, CASES["destinations"].values)
    config = yaml.safe_load(rendered.one("ConfigMap")["data"]["config.yaml"])
    main, eu = config["destinations"]
    assert main["default_currency"] == eu["default_currency"] == "EUR"
    assert main["property_mappings"] == {"properties.email": "properties.customer.email"}
    assert eu["property_mappings"] == {"properties.email": "properties.customer.email",
                                       "properties.total": "properties.revenue"}
    assert "accessTokenKey" not in eu
    assert "appSecretKey" not in eu


def test_secret_items_are_exactly_the_keys_the_sidecar_reads(storefront: helm.Chart) -> None:
    rendered = render(storefront, CASES["destinations"].values)
    (volume,) = [v for v in rendered.pod["spec"]["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == rendered.one("Secret")["metadata"]["name"]
    assert sorted(i["key"] for i in volume["secret"]["items"]) == [
        "eu-token", "eu.app-secret", "main.access-token", "shared.app-secret"]


def test_a_sandbox_deployment_mounts_no_secret(storefront: helm.Chart) -> None:
    rendered = render(storefront, {})
    assert rendered.all("Secret") == []
    assert all("secret" not in v for v in rendered.pod["spec"]["volumes"])


# --- OpenTelemetry, GeoIP, metrics, storage ------------------------------------


@pytest.mark.parametrize(("name", "exports"), [("defaults", False), ("geo-otel-podip", True)])
def test_the_otel_environment_turns_tracing_on_only_when_enabled(
    storefront: helm.Chart, monkeypatch: pytest.MonkeyPatch, name: str, exports: bool
) -> None:
    env = _container_env(render(storefront, CASES[name].values))
    for var in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(var)
    for var, value in env.items():
        if var.startswith("OTEL_"):
            monkeypatch.setenv(var, value)
    provider = tracer_provider_from_env()
    try:
        assert (provider is not None) == exports
    finally:
        if provider is not None:
            provider.shutdown()
    if exports:
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
        assert "k8s.pod.name=shop-7d9f" in env["OTEL_RESOURCE_ATTRIBUTES"]
        assert "deployment.environment=staging" in env["OTEL_RESOURCE_ATTRIBUTES"]


@pytest.mark.parametrize(("name", "source"), [("geo-otel-podip", "persistentVolumeClaim"),
                                              ("geo-image", "image")])
def test_the_geoip_database_is_read_from_its_own_volume(
    storefront: helm.Chart, name: str, source: str
) -> None:
    rendered = render(storefront, CASES[name].values)
    db = Path(rendered.env["CAPI_GEOIP_DB"]["value"])
    (mount,) = [m for m in rendered.sidecar["volumeMounts"] if m["name"] == "capi-sidecar-geoip"]
    assert db.parent == Path(mount["mountPath"])
    assert mount["readOnly"] is True
    (volume,) = [v for v in rendered.pod["spec"]["volumes"] if v["name"] == "capi-sidecar-geoip"]
    assert source in volume


def test_without_geoip_no_database_is_configured(storefront: helm.Chart) -> None:
    rendered = render(storefront, {})
    assert "CAPI_GEOIP_DB" not in rendered.env
    assert "capi-sidecar-geoip" not in [v["name"] for v in rendered.pod["spec"]["volumes"]]


def test_metrics_on_by_default_are_announced_to_prometheus(storefront: helm.Chart) -> None:
    rendered = render(storefront, {})
    annotations = rendered.pod["metadata"]["annotations"]
    ports = {p["name"]: p["containerPort"] for p in rendered.sidecar["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["capi-ops"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert rendered.all("ServiceMonitor") == []


def test_metrics_off_means_no_scrape_annotations_and_no_service_monitor(
    storefront: helm.Chart,
) -> None:
    rendered = render(storefront, CASES["metrics-off"].values)
    assert not any(k.startswith("prometheus.io/") for k in rendered.pod["metadata"]["annotations"])
    assert rendered.all("ServiceMonitor") == []
    assert rendered.all("Service") == []


def test_the_service_monitor_reaches_the_sidecar_through_its_service(
    storefront: helm.Chart,
) -> None:
    rendered = render(storefront, CASES["service-monitor"].values)
    service, monitor = rendered.one("Service"), rendered.one("ServiceMonitor")
    pod_labels = rendered.pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in [p["name"] for p in rendered.sidecar["ports"]]
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert not any(k.startswith("prometheus.io/") for k in rendered.pod["metadata"]["annotations"])


def test_the_default_outbox_is_a_disk_backed_empty_dir(storefront: helm.Chart) -> None:
    rendered = render(storefront, {})
    (volume,) = [v for v in rendered.pod["spec"]["volumes"] if v["name"] == "capi-sidecar-outbox"]
    assert volume["emptyDir"] == {"sizeLimit": "1Gi"}
    assert rendered.all("PersistentVolumeClaim") == []
    assert "strategy" not in rendered.one("Deployment")["spec"]


@pytest.mark.parametrize(("name", "claim"), [("pvc", f"{RELEASE}-capi-sidecar"),
                                             ("existing-claim", "shop-outbox")])
def test_an_outbox_on_a_claim_runs_one_pod_at_a_time(
    storefront: helm.Chart, name: str, claim: str
) -> None:
    rendered = render(storefront, CASES[name].values)
    (volume,) = [v for v in rendered.pod["spec"]["volumes"] if v["name"] == "capi-sidecar-outbox"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    assert rendered.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    claims = [c["metadata"]["name"] for c in rendered.all("PersistentVolumeClaim")]
    assert claims == ([claim] if name == "pvc" else [])


def test_the_created_claim_is_kept_when_the_release_is_removed(storefront: helm.Chart) -> None:
    pvc = render(storefront, CASES["pvc"].values).one("PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["storageClassName"] == "fast-ssd"


STATEFULSET = """\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .Release.Name }}
spec:
  serviceName: {{ .Release.Name }}
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels:
        app: demo
        {{- include "capi-sidecar.podLabels" . | nindent 8 }}
      annotations:
        {{- include "capi-sidecar.podAnnotations" . | nindent 8 }}
    spec:
      terminationGracePeriodSeconds: {{ include "capi-sidecar.terminationGracePeriodSeconds" . }}
      initContainers:
        {{- include "capi-sidecar.initContainer" . | nindent 8 }}
      containers:
        - {name: app, image: "busybox:1.37"}
      volumes:
        {{- include "capi-sidecar.volumes" . | nindent 8 }}
  volumeClaimTemplates:
    {{- include "capi-sidecar.volumeClaimTemplate" . | nindent 4 }}
---
{{ include "capi-sidecar.manifests" . }}
"""


def test_a_statefulset_gets_one_outbox_claim_per_pod(tmp_path: Path, charts: Path) -> None:
    app = tmp_path / "stateful-app"
    (app / "templates").mkdir(parents=True)
    (app / "Chart.yaml").write_text(
        "apiVersion: v2\nname: stateful-app\nversion: 0.1.0\ndependencies:\n"
        "  - name: capi-sidecar\n    version: 0.1.0\n    repository: file://../capi-sidecar\n",
        encoding="utf-8")
    (app / "values.yaml").write_text(
        "capi-sidecar:\n  sandbox: true\n  outbox:\n    type: volumeClaimTemplate\n",
        encoding="utf-8")
    (app / "templates" / "statefulset.yaml").write_text(STATEFULSET, encoding="utf-8")
    shutil.copytree(charts / SIDECAR, app / "charts" / SIDECAR)
    with helm.Chart.load(app) as chart:
        rendered = _parse(chart.render({}, name=RELEASE, namespace="shop"))
    sts = rendered.one("StatefulSet")
    for doc in rendered.docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    (template,) = sts["spec"]["volumeClaimTemplates"]
    pod = sts["spec"]["template"]["spec"]
    mounts = [m["name"] for m in _container(pod["initContainers"], SIDECAR)["volumeMounts"]]
    volumes = [v["name"] for v in pod["volumes"]]
    assert template["metadata"]["name"] in mounts
    assert template["metadata"]["name"] not in volumes
    assert rendered.all("PersistentVolumeClaim") == []


# --- rolling on change -----------------------------------------------------------


def _annotations(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = render(chart, values).pod["metadata"]["annotations"]
    return annotations


def test_a_config_change_changes_the_pod_template(storefront: helm.Chart) -> None:
    base = _annotations(storefront, {})
    again = _annotations(storefront, {})
    changed = _annotations(storefront, _with_sidecar(config={"log_level": "DEBUG"}))
    key = "checksum/capi-sidecar-config"
    assert base[key] == again[key]
    assert base[key] != changed[key]


def test_a_token_change_in_the_created_secret_changes_the_pod_template(
    storefront: helm.Chart,
) -> None:
    values = CASES["destinations"].values
    rotated = copy.deepcopy(values)
    rotated[SIDECAR]["secret"]["stringData"]["main.access-token"] = "tok-main-2"
    key = "checksum/capi-sidecar-secret"
    assert _annotations(storefront, values)[key] != _annotations(storefront, rotated)[key]


# --- what the chart refuses ------------------------------------------------------


def _dest(**extra: Any) -> dict[str, Any]:
    return {"name": "main", "pixel_id": "111", **extra}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        pytest.param(_with_sidecar(outbx={}), "outbx", id="misspelt-top-level-key"),
        pytest.param(_with_sidecar(outbox={"type": "emptyDir", "mountPth": "/x"}), "mountPth",
                     id="misspelt-nested-key"),
        pytest.param(_with_sidecar(config={"batch_sise": 10}), "batch_sise",
                     id="misspelt-setting"),
        pytest.param(_with_sidecar(config={"db_path": "/x.db"}), "db_path",
                     id="setting-the-chart-owns"),
        pytest.param(_with_sidecar(ops={"port": "9790", "bind": "all"}), "/ops/port",
                     id="port-as-string"),
        pytest.param(_with_sidecar(terminationGracePeriodSeconds="30"),
                     "terminationGracePeriodSeconds", id="grace-as-string"),
        pytest.param(_with_sidecar(config={"batch_size": 1001}), "batch_size",
                     id="batch-size-over-meta-limit"),
        pytest.param(_with_sidecar(ops={"port": 9790, "bind": "everywhere"}), "bind",
                     id="unknown-enum-value"),
        pytest.param(_with_sidecar(destinations=[_dest(pixel_id=123456789012345)]), "pixel_id",
                     id="pixel-id-as-number"),
        pytest.param(_with_sidecar(destinations=[_dest(action_sorce="website")]),
                     "action_sorce", id="misspelt-destination-key"),
        pytest.param(_with_sidecar(destinations=[_dest(action_source="web")]), "action_source",
                     id="unknown-action-source"),
        pytest.param(_with_sidecar(outbox={"type": "hostPath", "mountPath": "/x"}), "type",
                     id="unknown-outbox-type"),
        pytest.param(_with_sidecar(extraEnv=[{"name": "CAPI_BATCH_SIZE", "value": "5"}]),
                     "extraEnv", id="capi-variable-through-extra-env"),
        pytest.param({"replicaCont": 2}, "replicaCont", id="misspelt-app-key"),
    ],
)
def test_the_values_schema_rejects(storefront: helm.Chart, values: dict[str, Any],
                                   complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        storefront.render(values, name=RELEASE)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        pytest.param(_with_sidecar(terminationGracePeriodSeconds=24), "at least",
                     id="grace-shorter-than-drain-budget-plus-margin"),
        pytest.param(_with_sidecar(shutdown={"drainBudgetSeconds": 20, "appStopSeconds": 10}),
                     "at least", id="grace-not-covering-app-stop"),
        pytest.param(_with_sidecar(sandbox=False), "no destinations", id="nowhere-to-deliver"),
        pytest.param(_with_sidecar(destinations=[_dest()]), "sandbox=true and destinations",
                     id="sandbox-and-destinations"),
        pytest.param(_with_sidecar(sandbox=False, destinations=[_dest()]),
                     "main.access-token", id="no-secret-for-the-token"),
        pytest.param(_with_sidecar(sandbox=False, destinations=[_dest()],
                                   secret={"create": True, "stringData": {"other": "x"}}),
                     "no value for the key", id="created-secret-missing-the-token"),
        pytest.param(_with_sidecar(sandbox=False, destinations=[_dest(), _dest(pixel_id="2")],
                                   secret={"existingSecret": "s"}),
                     "used twice", id="duplicate-destination-names"),
        pytest.param(_with_sidecar(secret={"create": True, "existingSecret": "s"}), "keep one",
                     id="two-secret-sources"),
        pytest.param(_with_sidecar(metrics={"enabled": False,
                                            "serviceMonitor": {"enabled": True}}),
                     "needs metrics.enabled", id="service-monitor-without-metrics"),
        pytest.param(_with_sidecar(ingest={"port": 9790}), "must differ", id="one-port-twice"),
        pytest.param(_with_sidecar(outbox={"type": "existingClaim", "mountPath": "/d"}),
                     "existingClaim", id="existing-claim-without-name"),
        pytest.param(_with_sidecar(geoip={"enabled": True}), "claimName",
                     id="geoip-without-source"),
        pytest.param({"replicaCount": 2, **CASES["pvc"].values}, "replicaCount",
                     id="two-replicas-on-one-claim"),
        pytest.param(_with_sidecar(outbox={"type": "volumeClaimTemplate", "mountPath": "/d"}),
                     "StatefulSet", id="claim-template-in-a-deployment"),
    ],
)
def test_the_templates_refuse(storefront: helm.Chart, values: dict[str, Any],
                              complaint: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(complaint)):
        storefront.render(values, name=RELEASE)


@pytest.mark.parametrize(("grace", "budget", "app_stop"), [(25, 20, 0), (31, 20, 6), (12, 7, 0)])
def test_a_grace_period_that_just_covers_shutdown_is_accepted(
    storefront: helm.Chart, grace: int, budget: int, app_stop: int
) -> None:
    rendered = render(storefront, _with_sidecar(
        terminationGracePeriodSeconds=grace,
        shutdown={"drainBudgetSeconds": budget, "appStopSeconds": app_stop}))
    assert rendered.pod["spec"]["terminationGracePeriodSeconds"] == grace
    assert rendered.env["CAPI_DRAIN_BUDGET_SECONDS"]["value"] == str(budget)


# --- the schema mirrors the settings model -------------------------------------

# Settings the chart sets itself (env) or writes as the destinations list.
CHART_OWNED = {"db_path", "listen", "ops_listen", "write_key_file", "geoip_db",
               "drain_budget_seconds", "destinations", "config_file"}
# Secrets only ever come from files.
INLINE_SECRETS = {"write_key", "access_token", "app_secret"}
DESTINATION_FILE_KEYS = {"access_token_file", "app_secret_file", "sandbox"}
CHART_ONLY_DESTINATION_KEYS = {"accessTokenKey", "appSecretKey"}
CONSTRAINTS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
               "pattern", "minLength", "maxLength")


@pytest.fixture(scope="module")
def sidecar_schema() -> dict[str, Any]:

    schema: dict[str, Any] = json.loads(
        (HELM_DIR / SIDECAR / "values.schema.json").read_text(encoding="utf-8"))
    return schema


def _constraints(prop: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in prop:  # Optional[...]: compare the non-null branch
        (prop,) = [p for p in prop["anyOf"] if p.get("type") != "null"]
    return {k: prop[k] for k in CONSTRAINTS if k in prop}


def test_the_config_keys_are_every_service_setting_the_chart_does_not_own(
    sidecar_schema: dict[str, Any],
) -> None:
    exposed = set(sidecar_schema["properties"]["config"]["properties"])
    expected = set(Settings.model_fields) - CHART_OWNED - INLINE_SECRETS - set(DESTINATION_KEYS)
    assert exposed == expected


def test_the_destination_keys_are_every_destination_setting(
    sidecar_schema: dict[str, Any],
) -> None:
    exposed = set(sidecar_schema["properties"]["destinations"]["items"]["properties"])
    expected = set(DestinationSettings.model_fields) - INLINE_SECRETS - DESTINATION_FILE_KEYS
    assert exposed - CHART_ONLY_DESTINATION_KEYS == expected


@pytest.mark.parametrize(("schema_path", "model"), [
    (("config",), Settings),
    (("destinations", "items"), DestinationSettings),
    (("destinationDefaults",), DestinationSettings),
])
def test_the_schema_constraints_match_the_settings_model(
    sidecar_schema: dict[str, Any], schema_path: tuple[str, ...], model: type[BaseModel]
) -> None:
    node = sidecar_schema
    for step in schema_path:
        node = node["properties"][step] if step != "items" else node["items"]
    model_props = model.model_json_schema()["properties"]
    checked = 0
    for key, prop in node["properties"].items():
        if key in CHART_ONLY_DESTINATION_KEYS:
            continue
        ours = _constraints(prop)
        theirs = _constraints(model_props[key])
        assert {k: ours.get(k) for k in theirs} == theirs, key
        checked += 1
    assert checked >= 10


def test_every_fixed_shape_object_in_the_schemas_refuses_unknown_keys() -> None:

    def walk(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                yield where
            for key, child in node.items():
                yield from walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                yield from walk(child, f"{where}/{i}")

    for chart in (SIDECAR, "example-storefront"):
        schema = json.loads((HELM_DIR / chart / "values.schema.json").read_text("utf-8"))
        assert list(walk(schema, chart)) == []


def test_the_chart_pins_the_sidecar_version_of_this_repository() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    chart = yaml.safe_load((HELM_DIR / SIDECAR / "Chart.yaml").read_text(encoding="utf-8"))
    values = yaml.safe_load((HELM_DIR / SIDECAR / "values.yaml").read_text(encoding="utf-8"))
    assert chart["type"] == "library"
    assert chart["appVersion"] == values["image"]["tag"] == project["version"]
