"""docker-compose.yml, ops/prometheus.yml and Grafana provisioning: the local stack is wired consistently.

No Docker engine: the files are loaded and cross-checked (URLs point at the right services and ports, every
`service_healthy` dependency has a health check, Prometheus scrapes the job names the alerts use, Grafana
reads the chart's single copy of the dashboards).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from .conftest import DASHBOARDS, JOBS, REPO, RULES, YAMLLINT_HAND, run, yamllint

COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "ops" / "prometheus.yml"
GRAFANA = REPO / "ops" / "grafana" / "provisioning"
APP_SERVICES = ("simulator", "worker", "callbacks")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def listening_port(service: dict[str, Any]) -> int:
    command = service["command"]
    flag = "--port" if "--port" in command else "--metrics-port"
    return int(command[command.index(flag) + 1])


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, container port) of each published port, ${VAR:-default} resolved to its default."""
    ports = []
    for entry in service.get("ports", []):
        text = re.sub(r"\$\{\w+:-(\w+)\}", r"\1", entry)
        host, _, container = text.rpartition(":")
        ports.append((host.rsplit(":", 1)[0], container))
    return ports


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path for bind mounts (named volumes are left out)."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        if source.startswith((".", "/")):
            found[target] = source
    return found


def test_the_whole_stack_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"rabbitmq", "postgres", *APP_SERVICES, "prometheus", "grafana"}
    assert services["rabbitmq"]["image"].endswith("-management"), "the management UI is part of the stack"
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image"


def test_app_services_run_the_project_image_with_their_role(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"] == ".", name
        assert service["command"][0] == name, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        env = service["environment"]
        assert int(env["B2C_HEALTH_PORT"]) == listening_port(service), f"{name}: health check port"
        assert service["command"][service["command"].index("--host") + 1] == "0.0.0.0", name


def test_urls_point_at_the_right_services(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        gateway = urlsplit(env["B2C_MPESA_URL"])
        assert gateway.hostname == "simulator" and gateway.port == listening_port(services["simulator"])
        assert gateway.path == "/mminterface/request"
        for key, path in (("B2C_RESULT_URL", "/mpesa/result"), ("B2C_QUEUE_TIMEOUT_URL", "/mpesa/queue-timeout")):
            url = urlsplit(env[key])
            assert url.hostname == "callbacks" and url.port == listening_port(services["callbacks"]), key
            assert url.path == path, key

        broker = urlsplit(env["B2C_AMQP_URL"])
        rabbit = services["rabbitmq"]["environment"]
        assert broker.hostname == "rabbitmq" and broker.port == 5672
        assert (broker.username, broker.password) == (rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"])
        assert broker.username != "guest", "RabbitMQ refuses guest from other hosts"
        assert unquote(broker.path) == "//"

        ledger = urlsplit(env["B2C_DATABASE_URL"])
        postgres = services["postgres"]["environment"]
        assert ledger.scheme == "postgresql" and ledger.hostname == "postgres" and ledger.port == 5432
        assert (ledger.username, ledger.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
        assert ledger.path == "/" + postgres["POSTGRES_DB"]


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]["depends_on"]
    assert {"rabbitmq", "postgres", "simulator", "callbacks"} <= set(worker)
    assert {"rabbitmq", "postgres"} <= set(services["callbacks"]["depends_on"])
    for name, service in services.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            continue
        for target, condition in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            if condition["condition"] == "service_healthy":
                other = services[target]
                # App services inherit the image's HEALTHCHECK, which reads B2C_HEALTH_PORT.
                assert "healthcheck" in other or "B2C_HEALTH_PORT" in other.get("environment", {}), target
    assert services["worker"]["stop_grace_period"] == "90s"


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "rabbitmq": {"5672", "15672"},
        "postgres": {"5432"},
        "simulator": {"8310"},
        "callbacks": {"8320"},
        "prometheus": {"9090"},
        "grafana": {"3000"},
    }
    for name, service in services.items():
        ports = published(service)
        assert all(host == "127.0.0.1" for host, _ in ports), f"{name}: {service.get('ports')}"
        assert {container for _, container in ports} == expected.get(name, set()), name


def test_prometheus_scrapes_every_component_under_the_alerting_job_names(
    services: dict[str, dict[str, Any]], promtool: str
) -> None:
    result = run([promtool, "check", "config", "--syntax-only", str(PROMETHEUS)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(JOBS.values()) <= set(jobs)
    for component, job_name in JOBS.items():
        job = jobs[job_name]
        targets = [t for s in job.get("static_configs", []) for t in s["targets"]]
        targets += [f"{n}:{d['port']}" for d in job.get("dns_sd_configs", []) for n in d["names"]]
        assert targets == [f"{component}:{listening_port(services[component])}"], job_name

    prometheus = services["prometheus"]
    binds = mounts(prometheus)
    assert Path(REPO, binds["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS
    rule_globs = config["rule_files"]
    rule_targets = [t for t, source in binds.items() if Path(REPO, source).resolve() == RULES]
    assert rule_targets, "the canonical rules file is not mounted"
    assert any(PurePosixPath(rule_targets[0]).match(glob) for glob in rule_globs)


def test_grafana_reads_the_single_copy_of_the_dashboards(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    binds = mounts(grafana)
    dashboards_target = next(t for t, s in binds.items() if Path(REPO, s).resolve() == DASHBOARDS)
    assert Path(REPO, binds["/etc/grafana/provisioning"]).resolve() == GRAFANA
    provider = yaml.safe_load((GRAFANA / "dashboards" / "mpesa-b2c.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == dashboards_target
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home).parent == PurePosixPath(dashboards_target)
    assert (DASHBOARDS / PurePosixPath(home).name).is_file()
    (source,) = yaml.safe_load((GRAFANA / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert url.hostname == "prometheus" and url.port == 9090
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_stack_files_pass_yamllint() -> None:
    files = [COMPOSE, PROMETHEUS, *sorted(GRAFANA.rglob("*.yml"))]
    assert yamllint(files, YAMLLINT_HAND) == ""
