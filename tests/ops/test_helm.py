"""The Helm chart, rendered offline with Helm's own engine (helm-python-sdk, no cluster, no network).

Four releases are rendered: the default values, the minimum a production install needs, production with
every option on, and staging with the simulator and every option on. Their native objects go through
`kubernetes-validate --strict`, the custom resources through the JSON schemas in tests/data/k8s-schemas,
everything through yamllint; then the shape that matters is asserted: hardened pods, probes, labels, grace
period, secret refs. The default release renders but must not be able to start: its pods' environment, fed
to the real settings loader, is refused with every missing variable named.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.support.data import K8S_SCHEMAS
from worker.errors import ConfigError
from worker.settings import DEMO_DEFAULTED, load_settings

from .conftest import (
    CHART,
    DASHBOARDS,
    JOBS,
    RULES,
    YAMLLINT_HAND,
    YAMLLINT_RENDERED,
    require_tool,
    run,
    yamllint,
)

helm.disable_logging()

RELEASE = "pay"
NAMESPACE = "payouts"
PREFIX = f"{RELEASE}-mpesa-b2c"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
SECRET_VALUES = (
    "sp-secret-value",
    "initiator-secret-value",
    "amqp-secret-value",
    "db-secret-value",
    "callback-token-secret-value",
)

MINIMAL: dict[str, Any] = {
    "mpesa": {
        "url": "https://gw.example.invalid:18423/mminterface/request",
        "spId": "654321",
        "serviceId": "654321000",
        "shortcode": "654321",
        "initiatorName": "payroll",
    },
    "secrets": {
        "spPassword": "sp-secret-value",
        "initiatorPassword": "initiator-secret-value",
        "amqpUrl": "amqps://payouts:amqp-secret-value@rabbitmq.example.invalid:5671/payouts",
        "databaseUrl": "postgresql://payouts:db-secret-value@pg.example.invalid:5432/payouts",
        "callbackToken": "callback-token-secret-value",
    },
    "certificate": {"pem": CERT},
}

MONITORING: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "additionalLabels": {"release": "kube-prometheus-stack"},
        "utilityBalanceMinKes": 250000,
        "extraGroups": [{"name": "site", "rules": [{"alert": "SiteExtra", "expr": "vector(1) > 2"}]}],
    },
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Payments"}},
}

PRODUCTION_ALL: dict[str, Any] = {
    **copy.deepcopy(MINIMAL),
    "certificate": {"existingSecret": "mpesa-certificate", "key": "cert.pem"},
    "image": {"repository": "registry.example.invalid/mpesa-b2c", "digest": "sha256:" + "a" * 64},
    "env": {"B2C_COMMAND_QUEUE": "payouts.commands.ke", "B2C_CONCURRENCY": "8", "B2C_LOG_LEVEL": "INFO"},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "host": "b2c.example.com",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    },
    "worker": {
        "keda": {"enabled": True, "maxReplicaCount": 6},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "payments", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "networkPolicy": {
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "callbacksFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}],
        "egress": {
            "enabled": True,
            "rules": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 18423}]}],
        },
    },
    "metrics": MONITORING,
}

STAGING_ALL: dict[str, Any] = {
    "mpesa": {"spId": "107031", "serviceId": "107031000", "shortcode": "600000", "initiatorName": "staging"},
    "secrets": {"existingSecret": "payouts-staging-secrets"},
    "certificate": {"existingConfigMap": "sandbox-certificate"},
    "simulator": {
        "enabled": True,
        "privateKey": {"existingSecret": "simulator-key"},
        "env": {"B2C_SIM_BALANCE": "5000000"},
    },
    "worker": {"autoscaling": {"enabled": True, "maxReplicas": 4}},
    "extraEnv": [{"name": "TZ", "value": "Africa/Nairobi"}],
    "serviceAccount": {"annotations": {"example.com/role": "payouts"}},
    "metrics": MONITORING,
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "minimal": MINIMAL,
    "production-all": PRODUCTION_ALL,
    "staging-all": STAGING_ALL,
}
CUSTOM = {
    "ServiceMonitor": "servicemonitor_v1.json",
    "PrometheusRule": "prometheusrule_v1.json",
    "ScaledObject": "scaledobject_v1alpha1.json",
}


def render_all(values: dict[str, Any] | None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        rendered: dict[str, str] = chart.render(values=values or None, name=RELEASE, namespace=NAMESPACE)
    return rendered


def render(values: dict[str, Any] | None) -> dict[str, str]:
    return {n: text for n, text in render_all(values).items() if not n.endswith("NOTES.txt") and text.strip()}


def notes(values: dict[str, Any] | None) -> str:
    return next(text for name, text in render_all(values).items() if name.endswith("NOTES.txt"))


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def render_error(values: dict[str, Any] | None) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def merged(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return values


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
    rendered = render(SCENARIOS[request.param])
    return request.param, rendered, documents(rendered)


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return documents(render(PRODUCTION_ALL))


@pytest.fixture(scope="module")
def staging() -> list[dict[str, Any]]:
    return documents(render(STAGING_ALL))


def kind(docs: list[dict[str, Any]], kind_: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind_]


def one(docs: list[dict[str, Any]], kind_: str, name: str) -> dict[str, Any]:
    found = [d for d in kind(docs, kind_) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind_}/{name}: {len(found)} found"
    return found[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in kind(docs, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", f"{PREFIX}-config")["data"]
    return data


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_environment(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    """The environment a container of this Deployment starts with (the chart's own Secret, not an existing one)."""
    (container,) = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            environment.update(one(docs, "Secret", source["secretRef"]["name"])["stringData"])
    environment.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return environment


def refused_variables(environment: dict[str, str]) -> set[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environment)
    return set(caught.value.variable.split(", "))


# --- what refuses to render ------------------------------------------------------------------------


def test_default_values_render_a_release_that_refuses_to_start() -> None:
    docs = documents(render(None))
    derived = {"B2C_RESULT_URL", "B2C_QUEUE_TIMEOUT_URL"}
    for component in ("worker", "callbacks"):
        environment = pod_environment(docs, f"{PREFIX}-{component}")
        assert environment["B2C_DEMO_DEFAULTS"] == "false"
        assert refused_variables(environment) == set(DEMO_DEFAULTED) - derived
    text = notes(None)
    assert "NOT READY TO RUN" in text
    for value in ("mpesa.url", "mpesa.shortcode", "secrets.databaseUrl", "secrets.callbackToken", "certificate"):
        assert f"  - {value}" in text


def test_a_complete_release_starts_with_its_own_values(tmp_path: Path) -> None:
    docs = documents(render(MINIMAL))
    environment = pod_environment(docs, f"{PREFIX}-worker")
    settings = load_settings(environment)
    assert settings.mpesa.url == MINIMAL["mpesa"]["url"]
    assert settings.mpesa.shortcode == MINIMAL["mpesa"]["shortcode"]
    assert settings.mpesa.initiator_name == MINIMAL["mpesa"]["initiatorName"]
    assert settings.ledger.database_url == MINIMAL["secrets"]["databaseUrl"]
    assert settings.receiver.callback_token.reveal() == MINIMAL["secrets"]["callbackToken"]
    assert "NOT READY" not in notes(MINIMAL)


@pytest.mark.parametrize(
    ("missing", "named", "variable"),
    [
        ("mpesa__url", "mpesa.url", "B2C_MPESA_URL"),
        ("mpesa__spId", "mpesa.spId", "B2C_SP_ID"),
        ("mpesa__serviceId", "mpesa.serviceId", "B2C_SERVICE_ID"),
        ("mpesa__shortcode", "mpesa.shortcode", "B2C_SHORTCODE"),
        ("mpesa__initiatorName", "mpesa.initiatorName", "B2C_INITIATOR_NAME"),
        ("secrets__amqpUrl", "secrets.amqpUrl", "B2C_AMQP_URL"),
        ("secrets__databaseUrl", "secrets.databaseUrl", "B2C_DATABASE_URL"),
        ("secrets__callbackToken", "secrets.callbackToken", "B2C_CALLBACK_TOKEN"),
        ("secrets__spPassword", "secrets.spPassword", "B2C_SP_PASSWORD"),
        ("secrets__initiatorPassword", "secrets.initiatorPassword", "B2C_INITIATOR_PASSWORD"),
        ("certificate__pem", "certificate", "B2C_CERT_PATH"),
    ],
)
def test_each_missing_value_is_named_at_install_and_stops_the_pods(missing: str, named: str, variable: str) -> None:
    values = merged(MINIMAL, **{missing: None})
    assert f"  - {named}" in notes(values)
    docs = documents(render(values))
    for component in ("worker", "callbacks"):
        assert refused_variables(pod_environment(docs, f"{PREFIX}-{component}")) == {variable}


def test_keda_and_hpa_together_refuse_to_render() -> None:
    values = merged(PRODUCTION_ALL, worker__autoscaling={"enabled": True})
    assert "mutually exclusive" in render_error(values)


def test_simulator_next_to_a_real_gateway_refuses_to_render() -> None:
    assert "staging only" in render_error(merged(MINIMAL, simulator={"enabled": True}))


@pytest.mark.parametrize(
    ("missing", "named"),
    [("certificate__existingConfigMap", "certificate"), ("simulator__privateKey", "simulator.privateKey")],
)
def test_staging_needs_the_simulator_key_pair(missing: str, named: str) -> None:
    assert named in render_error(merged(STAGING_ALL, **{missing: None}))


def test_two_certificate_sources_refuse_to_render() -> None:
    assert "only one of" in render_error(merged(MINIMAL, certificate__existingSecret="other"))


@pytest.mark.parametrize(
    "change",
    [
        {"unknownTopLevel": True},
        {"env": {"B2C_AMQP_URL": "amqp://u:p@h/"}},
        {"env": {"LOG_LEVEL": "INFO"}},
        {"worker": {"replicaCount": "two"}},
        {"secrets": {"databaseUrl": "mysql://u:p@h/db"}},
        {"image": {"digest": "latest"}},
        {"mpesa": {"shortcode": "12ab"}},
        {"env": {"B2C_SHORTCODE": "654321"}},
        {"env": {"B2C_DEMO_DEFAULTS": "true"}},
    ],
)
def test_values_schema_rejects_mistakes(change: dict[str, Any]) -> None:
    values = copy.deepcopy(MINIMAL)
    for key, value in change.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    render_error(values)


def test_values_schema_accepts_the_default_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


# --- validation of what renders ---------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", ["1.25.0", None])
def test_native_objects_pass_kubernetes_validate_strict(
    scenario: tuple[str, dict[str, str], list[dict[str, Any]]], kube_version: str | None, tmp_path: Path
) -> None:
    tool = require_tool("kubernetes-validate", "pip install kubernetes-validate")
    _, _, docs = scenario
    native = [d for d in docs if d["kind"] not in CUSTOM]
    path = tmp_path / "native.yaml"
    path.write_text(yaml.safe_dump_all(native))
    args = [tool, "--strict", "--quiet", "--no-warn"]
    if kube_version:
        args += ["-k", kube_version]
    result = run([*args, str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    tool = require_tool("kubernetes-validate", "pip install kubernetes-validate")
    deployment = kind(documents(render(MINIMAL)), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert run([tool, "--strict", "--quiet", str(path)]).returncode != 0


def test_custom_resources_match_their_schemas(scenario: tuple[str, dict[str, str], list[dict[str, Any]]]) -> None:
    name, _, docs = scenario
    expected = {
        "defaults": set(),
        "minimal": set(),
        "production-all": set(CUSTOM),
        "staging-all": set(CUSTOM) - {"ScaledObject"},
    }
    assert {d["kind"] for d in docs} & set(CUSTOM) == expected[name]
    for doc in docs:
        if doc["kind"] in CUSTOM:
            schema = json.loads((K8S_SCHEMAS / CUSTOM[doc["kind"]]).read_text())
            errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
            assert not errors, f"{doc['kind']}: {errors}"


def test_custom_resource_schemas_are_strict(production: list[dict[str, Any]]) -> None:
    monitor = copy.deepcopy(kind(production, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "30s"
    schema = json.loads((K8S_SCHEMAS / CUSTOM["ServiceMonitor"]).read_text())
    assert list(jsonschema.Draft7Validator(schema).iter_errors(monitor))


def test_rendered_output_passes_yamllint(
    scenario: tuple[str, dict[str, str], list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, rendered, _ = scenario
    path = tmp_path / "rendered.yaml"
    path.write_text("".join(f"---\n# Source: {n}\n{t.strip()}\n" for n, t in sorted(rendered.items())))
    assert yamllint([path], YAMLLINT_RENDERED) == ""


def test_chart_sources_pass_yamllint_and_helm_lint() -> None:
    assert yamllint([CHART / "values.yaml", CHART / "Chart.yaml"], YAMLLINT_HAND) == ""
    for values in (None, PRODUCTION_ALL):
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        assert not report["errors"]
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- the shape that matters ---------------------------------------------------------------------------


def test_pods_are_hardened(scenario: tuple[str, dict[str, str], list[dict[str, Any]]]) -> None:
    _, _, docs = scenario
    data_dir = config(docs)["B2C_DATA_DIR"]
    deployments = kind(docs, "Deployment")
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["runAsNonRoot"] is True and sc.get("privileged") is not True
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["livenessProbe"] and container["readinessProbe"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts[data_dir]], "B2C_DATA_DIR must be a writable emptyDir"
            assert "emptyDir" in volumes[mounts["/tmp"]]
            assert "@" in container["image"] or re.search(r":[\w.-]+$", container["image"])


def test_every_object_carries_the_standard_labels(scenario: tuple[str, dict[str, str], list[dict[str, Any]]]) -> None:
    _, _, docs = scenario
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "mpesa-b2c"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "mpesa-b2c"


def test_selectors_find_their_pods(scenario: tuple[str, dict[str, str], list[dict[str, Any]]]) -> None:
    _, _, docs = scenario
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in kind(docs, "Deployment")}
    for deployment in kind(docs, "Deployment"):
        assert matches(deployment["spec"]["selector"]["matchLabels"], pods[deployment["metadata"]["name"]])
    for service in kind(docs, "Service"):
        targets = [n for n, labels in pods.items() if matches(service["spec"]["selector"], labels)]
        assert len(targets) == 1, f"Service {service['metadata']['name']} selects {targets}"
        ports = {
            p["name"]
            for c in next(d for d in kind(docs, "Deployment") if d["metadata"]["name"] == targets[0])["spec"][
                "template"
            ]["spec"]["containers"]
            for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for pdb in kind(docs, "PodDisruptionBudget"):
        assert sum(matches(pdb["spec"]["selector"]["matchLabels"], labels) for labels in pods.values()) == 1
    for name, labels in pods.items():
        policies = [p for p in kind(docs, "NetworkPolicy") if matches(p["spec"]["podSelector"]["matchLabels"], labels)]
        assert len(policies) == 1, f"{name}: {len(policies)} network policies"
    assert {f"{PREFIX}-worker", f"{PREFIX}-callbacks"} <= {
        p["metadata"]["name"] for p in kind(docs, "PodDisruptionBudget")
    }


def test_settings_come_from_the_configmap_and_the_secret(
    scenario: tuple[str, dict[str, str], list[dict[str, Any]]],
) -> None:
    name, _, docs = scenario
    settings = config(docs)
    secret_keys = {
        "B2C_SP_PASSWORD",
        "B2C_INITIATOR_PASSWORD",
        "B2C_AMQP_URL",
        "B2C_DATABASE_URL",
        "B2C_CALLBACK_TOKEN",
    }
    assert not secret_keys & set(settings), "a secret setting in the ConfigMap"
    assert all(k.startswith("B2C_") for k in settings)
    assert settings["B2C_DEMO_DEFAULTS"] == "false"
    urls = ("B2C_MPESA_URL", "B2C_RESULT_URL", "B2C_QUEUE_TIMEOUT_URL")
    for key in urls if name != "defaults" else urls[1:]:
        assert urlsplit(settings[key]).scheme in ("http", "https") and urlsplit(settings[key]).netloc
    existing = SCENARIOS[name].get("secrets", {}).get("existingSecret")
    secret_name = existing or f"{PREFIX}-secrets"
    if existing:
        assert not kind(docs, "Secret"), "the chart must not render a Secret next to existingSecret"
    else:
        secret = one(docs, "Secret", secret_name)
        assert set(secret["stringData"]) == secret_keys
        if name != "defaults":
            assert secret["stringData"]["B2C_DATABASE_URL"].startswith("postgresql://")
    for deployment, container in containers(docs):
        if "simulator" in deployment["metadata"]["name"]:
            assert container["envFrom"] == [{"configMapRef": {"name": f"{PREFIX}-config"}}]
            from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
            assert set(from_secret) == {"B2C_SP_PASSWORD", "B2C_INITIATOR_PASSWORD"}, "no broker/ledger secrets"
            assert all(ref["name"] == secret_name and ref["key"] == k for k, ref in from_secret.items())
            continue
        refs = container["envFrom"]
        assert {"configMapRef": {"name": f"{PREFIX}-config"}} in refs
        assert {"secretRef": {"name": secret_name}} in refs


def test_secret_values_appear_only_in_the_secret(scenario: tuple[str, dict[str, str], list[dict[str, Any]]]) -> None:
    _, _, docs = scenario
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        assert not [v for v in SECRET_VALUES if v in text], f"{doc['kind']}/{doc['metadata']['name']}"


def test_certificate_is_mounted_where_b2c_cert_path_points(
    scenario: tuple[str, dict[str, str], list[dict[str, Any]]],
) -> None:
    name, _, docs = scenario
    if name == "defaults":
        assert "B2C_CERT_PATH" not in config(docs), "no certificate given: the pods must not find one"
        return
    cert_path = PurePosixPath(config(docs)["B2C_CERT_PATH"])
    for deployment, container in containers(docs):
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(cert_path.parent))
        assert mount["readOnly"] is True
        volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        source = volume.get("secret") or volume.get("configMap")
        assert source["items"] == [{"key": cert_path.name, "path": cert_path.name}]
        if "configMap" in volume and volume["configMap"]["name"] == f"{PREFIX}-certificate":
            assert one(docs, "ConfigMap", f"{PREFIX}-certificate")["data"][cert_path.name] == CERT.strip()


def test_worker_drains_on_sigterm_and_probes_its_health_port(production: list[dict[str, Any]]) -> None:
    worker = one(production, "Deployment", f"{PREFIX}-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "worker" and args[args.index("--host") + 1] == "0.0.0.0", "probes and scrapes use the pod IP"
    port = int(args[args.index("--metrics-port") + 1])
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == PRODUCTION_ALL["worker"]["tolerations"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] and annotations["checksum/secret"]


def test_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        worker = one(documents(render(values)), "Deployment", f"{PREFIX}-worker")
        annotation: str = worker["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return annotation

    assert checksum(MINIMAL) != checksum(merged(MINIMAL, env={"B2C_LOG_LEVEL": "DEBUG"}))


def test_receiver_is_published_only_on_its_callback_paths(production: list[dict[str, Any]]) -> None:
    settings = config(production)
    receiver = one(production, "Deployment", f"{PREFIX}-callbacks")
    (container,) = receiver["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["callbacks", "--host", "0.0.0.0"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    ingress = one(production, "Ingress", f"{PREFIX}-callbacks")
    (rule,) = ingress["spec"]["rules"]
    result, timeout = urlsplit(settings["B2C_RESULT_URL"]), urlsplit(settings["B2C_QUEUE_TIMEOUT_URL"])
    assert result.scheme == "https" and result.netloc == rule["host"] == "b2c.example.com"
    paths = {p["path"]: p for p in rule["http"]["paths"]}
    assert set(paths) == {result.path, timeout.path}
    assert all(p["pathType"] == "Exact" for p in paths.values())
    service = one(production, "Service", f"{PREFIX}-callbacks")
    for path in paths.values():
        assert path["backend"]["service"]["name"] == service["metadata"]["name"]
        assert path["backend"]["service"]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"] == [{"hosts": ["b2c.example.com"], "secretName": f"{PREFIX}-callbacks-tls"}]


def test_keda_scales_the_worker_on_the_command_queue(production: list[dict[str, Any]]) -> None:
    (scaled,) = kind(production, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{PREFIX}-worker"
    assert scaled["spec"]["maxReplicaCount"] == 6
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["metadata"]["queueName"] == config(production)["B2C_COMMAND_QUEUE"] == "payouts.commands.ke"
    assert trigger["metadata"]["hostFromEnv"] in one(production, "Secret", f"{PREFIX}-secrets")["stringData"]
    assert not kind(production, "HorizontalPodAutoscaler")


def test_monitoring_objects_are_selected_and_consistent(production: list[dict[str, Any]]) -> None:
    (monitor,) = kind(production, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    scraped = set()
    for service in kind(production, "Service"):
        if matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
            ports = {p["name"] for p in service["spec"]["ports"]} & endpoint_ports
            assert ports, f"{service['metadata']['name']} has no scraped port"
            scraped.add(service["metadata"]["labels"]["app.kubernetes.io/component"])
    assert scraped == {"worker", "callbacks"}
    for endpoint in monitor["spec"]["endpoints"]:
        (relabel,) = endpoint["relabelings"]
        assert relabel["targetLabel"] == "job"
        assert {relabel["replacement"].replace("$1", c) for c in scraped} == {JOBS[c] for c in scraped}

    (rule,) = kind(production, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    canonical = {g["name"]: g for g in yaml.safe_load(RULES.read_text())["groups"]}
    assert groups["mpesa-b2c-thresholds"]["rules"] == [
        {"record": "mpesa_b2c:utility_balance_min_kes", "expr": "vector(250000)"}
    ]
    for name, group in canonical.items():
        if name != "mpesa-b2c-thresholds":
            assert groups[name] == group, f"group {name} differs from {RULES.name}"
    assert "site" in groups


def test_chart_ships_the_canonical_dashboards(production: list[dict[str, Any]]) -> None:
    shipped = {}
    for config_map in kind(production, "ConfigMap"):
        if config_map["metadata"]["labels"].get("grafana_dashboard") == "1":
            assert config_map["metadata"]["annotations"] == {"grafana_folder": "Payments"}
            shipped.update(config_map["data"])
    files = {p.name: p.read_text().strip() for p in DASHBOARDS.glob("*.json")}
    assert shipped == files


def test_network_policies_admit_scrapes_callbacks_and_restrict_egress(production: list[dict[str, Any]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in kind(production, "NetworkPolicy")}
    worker, callbacks = policies[f"{PREFIX}-worker"], policies[f"{PREFIX}-callbacks"]
    assert worker["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert worker["ingress"][0]["from"] == PRODUCTION_ALL["networkPolicy"]["metricsFrom"]
    allowed = callbacks["ingress"][0]["from"]
    assert all(peer in allowed for peer in PRODUCTION_ALL["networkPolicy"]["callbacksFrom"])
    for spec in (worker, callbacks):
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert {"port": 53, "protocol": "UDP"} in spec["egress"][0]["ports"]
        assert PRODUCTION_ALL["networkPolicy"]["egress"]["rules"][0] in spec["egress"]


def test_staging_wires_the_simulator_in_cluster(staging: list[dict[str, Any]]) -> None:
    settings = config(staging)
    simulator = one(staging, "Service", f"{PREFIX}-simulator")
    receiver = one(staging, "Service", f"{PREFIX}-callbacks")
    gateway = urlsplit(settings["B2C_MPESA_URL"])
    assert gateway.hostname == f"{PREFIX}-simulator.{NAMESPACE}.svc"
    assert gateway.port == simulator["spec"]["ports"][0]["port"] and gateway.path == "/mminterface/request"
    result = urlsplit(settings["B2C_RESULT_URL"])
    assert result.hostname == f"{PREFIX}-callbacks.{NAMESPACE}.svc"
    assert result.port == receiver["spec"]["ports"][0]["port"]
    (container,) = one(staging, "Deployment", f"{PREFIX}-simulator")["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "simulator"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert PurePosixPath(env["B2C_SIM_PRIVATE_KEY"]).parent.as_posix() in {
        m["mountPath"] for m in container["volumeMounts"]
    }
    assert env["B2C_SIM_BALANCE"] == "5000000"
    (hpa,) = kind(staging, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{PREFIX}-worker" and hpa["spec"]["maxReplicas"] == 4
    policy = one(staging, "NetworkPolicy", f"{PREFIX}-simulator")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "simulator"
    for _, worker in containers([one(staging, "Deployment", f"{PREFIX}-worker")]):
        assert {"name": "TZ", "value": "Africa/Nairobi"} in worker["env"]
