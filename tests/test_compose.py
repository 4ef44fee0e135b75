"""docker-compose.yml and its files, checked without a Docker engine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
# Pinned means a version in the tag: never `latest`, never a bare name.
PINNED_TAG = re.compile(r"^[\w./-]+:(v?\d+(\.\d+)+[\w.-]*)$")
# Images without a shell or HTTP client cannot check themselves; others wait for them to start.
NO_SHELL = {"otel-collector"}
EXPECTED_SERVICES = {"app", "postgres", "prometheus", "otel-collector", "jaeger", "grafana", "loadgen", "clickhouse"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_every_part_of_the_stack_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_images_are_pinned_to_versions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "image" in service:
            image = service["image"]
            assert PINNED_TAG.match(image), f"{name}: image {image!r} is not pinned to a version"
            assert not image.endswith(":latest"), name


def test_depends_on_targets_exist_with_conditions_they_can_meet(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            condition = rule["condition"]
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy: no healthcheck"


def test_start_order_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in services[name].get("depends_on", {}):
                visit(target, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())


def test_servers_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in NO_SHELL or name == "loadgen":
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_published_ports_are_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write ports as 'host_ip:host:container' strings"
            host_ip, host_port, container_port = port.split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this machine"
            published[name] = (int(host_port), int(container_port))
    assert published == {
        "app": (8000, 8000),
        "prometheus": (9090, 9090),
        "grafana": (3000, 3000),
        "jaeger": (16686, 16686),
    }


def test_every_mounted_or_built_file_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repo"
        build = service.get("build")
        if build is not None:
            context = REPO / build["context"]
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name} builds from {dockerfile}, which is missing"
            for source in _dockerfile_sources(dockerfile):
                assert (context / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repo"


def _dockerfile_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in {"COPY", "ADD"}:
            args = [w for w in words[1:] if not w.startswith("--")]
            sources.extend(args[:-1])
    return sources


def test_app_runs_multiprocess_on_a_tmpfs_with_the_example_config(services: dict[str, dict[str, Any]]) -> None:
    app = services["app"]
    env = app["environment"]
    multiproc_dir = env["PROMETHEUS_MULTIPROC_DIR"]
    assert any(mount.split(":")[0] == multiproc_dir for mount in app["tmpfs"])
    assert int(env["GUNICORN_WORKERS"]) > 1
    assert env["USAGE_DB_URL"].split("@")[1].startswith("postgres:5432/")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"  # what turns the extension's OTLP set-up on
    # The image runs gunicorn with the config that ships in the package: it must import and carry the hooks.
    cmd = json.loads(
        next(line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))[4:]
    )
    config = cmd[cmd.index("--config") + 1]
    assert config.startswith("python:"), cmd
    # In a child: the config turns on prometheus_client's multiprocess mode in whatever imports it.
    module = config.removeprefix("python:")
    check = f"import {module} as m; print(all(map(callable, (m.on_starting, m.child_exit, m.worker_exit))))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip() == "True", result.stderr


def test_prometheus_keeps_exemplars_and_scrapes_the_app(services: dict[str, dict[str, Any]]) -> None:
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert "app:8000" in targets


def test_collector_pipelines_use_defined_components() -> None:
    config = yaml.safe_load((REPO / "deploy" / "otel-collector.yml").read_text())
    receivers = config["receivers"]["otlp"]["protocols"]
    assert receivers["grpc"]["endpoint"].endswith(":4317")
    assert receivers["http"]["endpoint"].endswith(":4318")
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"pipeline {name} uses undefined {kind[:-1]} {component}"
    # The pinned Collector (0.144 and later) names the gRPC OTLP exporter otlp_grpc.
    assert config["exporters"]["otlp_grpc/jaeger"]["endpoint"] == "jaeger:4317"
    assert set(config["service"]["extensions"]) <= set(config["extensions"])


def test_grafana_mounts_match_the_provisioning(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    datasources = yaml.safe_load((REPO / "grafana/provisioning/datasources/datasources.yml").read_text())
    urls = {d["type"]: d.get("url") for d in datasources["datasources"]}
    # The data sources point at the compose services by name.
    assert urls["prometheus"] == "http://prometheus:9090"
    assert urls["grafana-postgresql-datasource"] == "postgres:5432"
    assert urls["jaeger"] == "http://jaeger:16686"


def test_raw_rows_ride_the_collector_to_clickhouse(services: dict[str, dict[str, Any]]) -> None:
    assert services["app"]["environment"]["TRACK_USAGE_OTEL_LOGS"] == "true"
    config = yaml.safe_load((REPO / "deploy" / "otel-collector.yml").read_text())
    logs = config["service"]["pipelines"]["logs"]
    assert logs["receivers"] == ["otlp"]
    assert logs["exporters"] == ["clickhouse"]
    exporter = config["exporters"]["clickhouse"]
    assert exporter["endpoint"].startswith("tcp://clickhouse:9000")
    clickhouse = services["clickhouse"]["environment"]
    assert exporter["database"] == clickhouse["CLICKHOUSE_DB"]
    assert (exporter["username"], exporter["password"]) == (
        clickhouse["CLICKHOUSE_USER"],
        clickhouse["CLICKHOUSE_PASSWORD"],
    )
    assert exporter["logs_table_name"] == "otel_logs"  # what grafana/dashboards/flask-usage-logs.json reads
    assert "clickhouse" in services["otel-collector"]["depends_on"]

    datasources = yaml.safe_load((REPO / "grafana/provisioning/datasources/datasources.yml").read_text())
    (source,) = [d for d in datasources["datasources"] if d["type"] == "grafana-clickhouse-datasource"]
    assert source["jsonData"]["host"] == "clickhouse"
    assert source["jsonData"]["defaultDatabase"] == exporter["database"]
    assert source["jsonData"]["username"] == exporter["username"]
    plugin = services["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    assert re.fullmatch(r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", plugin), plugin


def _version(image: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", image.rpartition(":")[2])[:3])


def test_the_stack_pins_releases_the_dashboards_are_written_for(services: dict[str, dict[str, Any]]) -> None:
    from tests.clickhouse_support import COLLECTOR_VERSION

    collector = services["otel-collector"]["image"]
    # The ClickHouse dashboard's SQL and its test are written for the exporter's table of this version.
    assert collector == f"otel/opentelemetry-collector-contrib:{COLLECTOR_VERSION}"
    assert _version(collector) >= (0, 151)  # otel_logs keyed on Timestamp, with EventName
    assert _version(services["prometheus"]["image"]) >= (3, 15)
    assert _version(services["grafana"]["image"]) >= (13, 2)
    assert _version(services["clickhouse"]["image"]) >= (26, 8)


def test_prometheus_loads_the_alerting_rules_shipped_with_the_dashboards(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("."))
    rules_dir = mounts["./grafana/alerts"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    assert config["rule_files"], "deploy/prometheus.yml loads no rule file"
    for rule_file in config["rule_files"]:
        assert rule_file.startswith(rules_dir + "/"), f"{rule_file} is not in the mounted {rules_dir}"
        local = REPO / "grafana" / "alerts" / rule_file.removeprefix(rules_dir + "/")
        assert local.is_file(), f"{rule_file} is mounted from {local}, which is missing"
        groups = yaml.safe_load(local.read_text())["groups"]
        assert any("alert" in rule for group in groups for rule in group["rules"])


def test_docs_list_every_service_with_its_pinned_image(services: dict[str, dict[str, Any]]) -> None:
    page = (REPO / "docs" / "compose.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| ")}
    for name, service in services.items():
        assert name in rows, f"docs/compose.md does not list the {name} service"
        if "build" not in service:  # built images are named after the demo's version, not pulled
            image = service["image"]
            assert image in rows[name], f"docs/compose.md gives {name} another image than {image}"
