"""Static checks of the compose stack: docker-compose.yml, .env.example, the Dockerfile, Prometheus, Grafana.

No Docker engine runs here: this proves what can be proven without one (spec validity, files and
variables in place, no committed secrets, health-gated startup, hadolint, image hygiene, monitoring
config consistent with the service). tests/integration/test_compose_native.py runs the services.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.compose_native import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    ComposeError,
    load_compose,
    read_env_file,
    referenced_variables,
)
from tests.support.dashboards import DASHBOARDS, dashboard_metric_names, pushed_metric_names

# The Compose Specification's JSON schema (draft-07, vendored from shared/schemas); MLSTACK_COMPOSE_SCHEMA overrides.
COMPOSE_SCHEMA = Path(os.environ.get("MLSTACK_COMPOSE_SCHEMA", Path(__file__).parent / "schemas" / "compose-spec.json"))
HADOLINT = REPO / ".venv" / "bin" / "hadolint"
DOCKERFILES = sorted((REPO / "infra" / "docker").rglob("Dockerfile*"))
PROMETHEUS_CONFIG = REPO / "infra" / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = REPO / "infra" / "grafana" / "provisioning"

# BentoML's own HTTP metrics (bentoml/_internal/server/http/instruments.py, namespace
# `bentoml_service` set in _bentoml_impl/server/app.py): the name, and a file that must define it.
BENTOML_METRICS = {
    "bentoml_service_request_total": "request_total",
    "bentoml_service_request_duration_seconds": "request_duration_seconds",
    "bentoml_service_request_in_progress": "request_in_progress",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|AUTH$|API_KEY", re.IGNORECASE)
HEALTH_CONDITIONS = {"service_healthy", "service_completed_successfully"}


def raw_compose() -> dict[str, Any]:
    """The compose file as YAML, before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def example_variables() -> dict[str, str]:
    """.env.example with placeholder values for the required (empty) entries."""
    return {key: value or f"example-{key.lower()}" for key, value in read_env_file().items()}


def one_shot(spec: dict[str, Any]) -> bool:
    """A job run to completion (restart: "no"), not a server."""
    return str(spec.get("restart", "no")) == "no"


def service_metric_names() -> set[str]:
    """Metric names services/metrics.py registers."""
    source = (REPO / "services" / "metrics.py").read_text()
    return set(re.findall(r"(?:Counter|Histogram|Gauge|Summary)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"", source))


def _bentoml_source(*parts: str) -> str:
    import bentoml

    return (Path(bentoml.__file__).parent.parent.joinpath(*parts)).read_text()


# --- the compose file ------------------------------------------------------------------------------


def test_compose_file_validates_against_compose_spec_before_and_after_interpolation():
    if not COMPOSE_SCHEMA.is_file():
        pytest.fail(f"compose spec schema not found at {COMPOSE_SCHEMA} (set MLSTACK_COMPOSE_SCHEMA)", pytrace=False)
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    for document in (raw_compose(), load_compose(example_variables())):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
        assert not errors, "\n".join(errors)


def test_compose_required_variables_are_listed_empty_in_env_example():
    listed = read_env_file()
    required = {name for name, op in referenced_variables().items() if op in (":?", "?")}
    assert required, "the compose file requires no variable: secrets would have to be committed"
    assert required <= listed.keys(), f"missing from .env.example: {sorted(required - listed.keys())}"
    assert {name: listed[name] for name in required if listed[name]} == {}, "a required value is committed"


def test_compose_optional_variables_are_documented_in_env_example():
    text = ENV_EXAMPLE.read_text()
    optional = {name for name, op in referenced_variables().items() if op not in (":?", "?")}
    undocumented = {name for name in optional if not re.search(rf"^#?\s*{name}=", text, re.MULTILINE)}
    assert not undocumented, f"variables used by docker-compose.yml but not in .env.example: {sorted(undocumented)}"


def test_compose_refuses_to_start_when_required_variable_is_missing():
    variables = example_variables()
    del variables["POSTGRES_PASSWORD"]
    with pytest.raises(ComposeError, match="POSTGRES_PASSWORD"):
        load_compose(variables)


def _secret_values(compose: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, value) of every secret-looking setting: secret-named env vars, URL passwords, --requirepass."""
    found: list[tuple[str, str]] = []
    for name, spec in compose["services"].items():
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            if SECRET_NAME.search(key) and not key.endswith(("_PATH", "_FILE")):
                found.append((f"{name}.environment.{key}", str(value)))
            found += [(f"{name}.environment.{key} (URL)", p) for p in _url_passwords(str(value))]
        command = spec.get("command") or []
        args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        for i, arg in enumerate(args):
            if arg == "--requirepass":
                found.append((f"{name}.command --requirepass", args[i + 1]))
            found += [(f"{name}.command (URL)", p) for p in _url_passwords(arg)]
    return found


def _url_passwords(text: str) -> list[str]:
    return re.findall(r"://[^:/@\s]*:([^@\s]+)@", text)


def test_compose_commits_no_secret_values():
    secrets = _secret_values(raw_compose())
    assert secrets, "no secret-looking settings found: the check itself is broken"
    literal = [(where, value) for where, value in secrets if not re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value)]
    assert not literal, f"secrets must be required variables (${{VAR:?}}), not values: {literal}"
    ini = (REPO / "infra" / "docker" / "mlflow" / "basic_auth.ini").read_text()
    assert not re.search(r"^\s*admin_password\s*=", ini, re.MULTILINE)
    assert not _url_passwords(ini)


def test_compose_long_running_services_have_healthchecks_and_jobs_disable_them():
    for name, spec in raw_compose()["services"].items():
        check = spec.get("healthcheck") or {}
        if one_shot(spec):
            assert check.get("disable") is True, f"{name}: a one-shot job should disable the image's healthcheck"
        else:
            assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
            assert spec.get("expose"), f"{name}: declare the ports it listens on (expose)"


def test_compose_depends_on_waits_for_health_or_completion():
    services = raw_compose()["services"]
    for name, spec in services.items():
        depends = spec.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition"
        for dependency, rule in depends.items():
            condition = (rule or {}).get("condition")
            assert condition in HEALTH_CONDITIONS, f"{name} -> {dependency}: condition {condition!r}"
            if condition == "service_completed_successfully":
                assert one_shot(services[dependency]), f"{name} waits for {dependency} to complete, a server"
            else:
                assert not one_shot(services[dependency]), f"{name} waits for job {dependency} to be healthy"


def test_compose_bootstrap_runs_before_service_and_after_its_backends():
    services = raw_compose()["services"]
    assert services["bootstrap"]["command"][:2] == ["mlstack", "bootstrap"]
    assert services["service"]["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
    assert {"redis", "postgres", "mlflow", "prefect-server"} <= services["bootstrap"]["depends_on"].keys()


def test_compose_build_contexts_dockerfiles_and_bind_mounts_exist():
    for name, spec in raw_compose()["services"].items():
        build = spec.get("build")
        if build:
            context = REPO / build["context"]
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        else:
            image = spec["image"]
            assert re.search(r":[^:/]*\d", image) and not image.endswith(":latest"), f"{name}: pin {image}"
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: bind mount source {source} missing"


def test_compose_postgres_init_creates_every_database_the_stack_uses():
    compose = load_compose(example_variables())
    created = set(compose["services"]["postgres"]["environment"]["MLSTACK_DATABASES"].split())
    texts = [json.dumps(compose), (REPO / "infra" / "docker" / "mlflow" / "basic_auth.ini").read_text()]
    used = {db for text in texts for db in re.findall(r"postgresql\+\w+://[^\s\"',]*@?postgres:5432/(\w+)", text)}
    assert used, "no postgres URLs found: the check itself is broken"
    assert used <= created, f"databases used but not created by the init script: {sorted(used - created)}"


def test_dockerignore_sends_only_what_the_image_copies():
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()]
    rules = [rule for rule in rules if not rule.startswith("#")]
    assert rules[0] == "*", ".dockerignore should be an allowlist starting with *"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert not allowed & {".env", ".mlstack", ".venv", ".git"}
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from=" not in line:
                for source in shlex.split(line)[1:-1]:
                    if not source.startswith("--"):
                        assert source.rstrip("/") in allowed, f"{dockerfile.name} copies {source}, not in .dockerignore"


# --- Dockerfiles -----------------------------------------------------------------------------------


def test_dockerfiles_exist_for_every_build():
    assert DOCKERFILES, "no Dockerfile under infra/docker"
    built = {
        (REPO / s["build"]["context"] / s["build"]["dockerfile"]).resolve()
        for s in raw_compose()["services"].values()
        if "build" in s
    }
    assert built <= {path.resolve() for path in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_dockerfile_passes_hadolint_without_unjustified_ignores(dockerfile: Path):
    for line in dockerfile.read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"ignore=\S+\s+\S", line), f"hadolint ignore without a reason: {line}"
    result = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _stages(dockerfile: Path) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("FROM "):
            stages.append([])
        if stages and stripped and not stripped.startswith("#"):
            stages[-1].append(stripped)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_dockerfile_is_multistage_uv_pinned_nonroot_with_healthcheck(dockerfile: Path):
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: a builder stage and a runtime stage"
    text = dockerfile.read_text()
    for base in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
        assert re.search(r":\d+\.\d+\.\d+", base) or "@sha256:" in base, f"base image {base} is not pinned"
    assert re.search(r"uv sync --frozen --no-dev", text), "the builder installs from uv.lock with uv"
    assert re.search(r"uv==\d+\.\d+\.\d+", text) or re.search(r"astral-sh/uv:\d", text), "pin the uv version"
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must run as non-root"
    checks = [line for line in final if line.upper().startswith("HEALTHCHECK")]
    assert checks, "the runtime stage needs a HEALTHCHECK"
    if checks[-1].upper().startswith("HEALTHCHECK NONE"):
        index = text.index(checks[-1])
        assert "#" in text[max(0, index - 300) : index], "HEALTHCHECK NONE needs a comment saying why"


def test_healthcheck_script_exits_nonzero_when_unreachable(unused_port: int):
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "infra/docker/healthcheck.py", f"http://127.0.0.1:{unused_port}/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result


@pytest.fixture
def unused_port() -> int:
    from mlstack.processes import free_port

    return free_port()


# --- Prometheus and Grafana ------------------------------------------------------------------------


def test_prometheus_scrapes_service_metrics_on_its_compose_address():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    services = raw_compose()["services"]
    targets = {
        (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert ("/metrics", "service:3000") in targets
    for _, target in targets:
        host, port = target.rsplit(":", 1)
        if host not in ("127.0.0.1", "localhost"):
            assert port in [str(p) for p in services[host]["expose"]], f"{target}: not an exposed port"
    mounts = services["prometheus"]["volumes"]
    assert "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisions_prometheus_datasource_and_dashboard_folder():
    compose = raw_compose()["services"]
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090" in [str(p) for p in compose["prometheus"]["expose"]]
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "mlstack.yml").read_text())["providers"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in compose["grafana"]["volumes"]}
    for provider in providers:
        assert mounted.get(provider["options"]["path"]) == "./infra/grafana/dashboards"
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == source["uid"], f"{path.name}: {panel['title']}"


def test_dashboard_panels_query_only_metrics_the_service_exports():
    assert DASHBOARDS, "no Grafana dashboard"
    known = service_metric_names() | set(BENTOML_METRICS) | pushed_metric_names()
    instruments = _bentoml_source("bentoml", "_internal", "server", "http", "instruments.py")
    for name in BENTOML_METRICS.values():
        assert f'name="{name}"' in instruments, f"BentoML no longer defines {name}"
    assert 'namespace="bentoml_service"' in _bentoml_source("_bentoml_impl", "server", "app.py")
    unknown = dashboard_metric_names() - known
    assert not unknown, f"dashboard queries metrics nobody exports: {sorted(unknown)}"


def test_dashboard_covers_traffic_latency_decisions_errors_staleness_model_and_drift():
    used = dashboard_metric_names()
    for metric in (
        "bentoml_service_request_total",  # request rate
        "bentoml_service_request_duration_seconds",  # latency
        "mlstack_predictions_total",  # predictions by decision
        "mlstack_prediction_errors_total",  # errors by cause
        "mlstack_feature_staleness_seconds",  # feature staleness
        "mlstack_model_info",  # model version
        "mlstack_drift_score",  # drift, per feature
    ):
        assert metric in used, metric
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
