"""The repository keeps its promises: layer boundaries, lint, container files and documented settings."""

import ast
import re
import subprocess
from pathlib import Path

import yaml

from portal.config import PROJECT_ROOT, Settings
from tests.conftest import VENV_BIN


def imported_modules(package: Path) -> set[str]:
    modules = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


def test_the_worker_agent_never_imports_the_portal_or_its_tasks():
    assert imported_modules(PROJECT_ROOT / "gpu_pool").isdisjoint({"portal", "tasks"})


def test_the_code_is_ruff_clean():
    result = subprocess.run(
        [str(VENV_BIN / "ruff"), "check", "--output-format", "concise", "."],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "Dockerfile"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_environment() -> dict[str, str]:
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    return compose["x-portal-env"]


def test_compose_runs_the_whole_stack_and_publishes_on_loopback_only():
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "rabbitmq", "prometheus", "portal", "worker", "migrate"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert services["worker"]["command"] == ["portal", "worker"]
    assert services["portal"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_settings_are_real_settings_that_validate():
    env = compose_environment()
    fields = {f"PORTAL_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields
    # ${VAR:-default} and ${VAR:?message} resolve as compose would, with a stand-in for required secrets.
    resolved = {
        key: re.sub(
            r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)\}",
            lambda m: m.group(2) if m.group(2) is not None else "x" * 48,
            value,
        )
        for key, value in env.items()
    }
    settings = Settings(**{key.removeprefix("PORTAL_").lower(): value for key, value in resolved.items()})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert not settings.uses_embedded_broker


def test_prometheus_scrapes_the_portal():
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [
        target
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    ]
    assert "portal:3000" in targets
    (discovery,) = [sd for job in config["scrape_configs"] for sd in job.get("http_sd_configs", [])]
    assert discovery["url"] == "http://portal:3000/api/v1/monitoring/targets"


def test_the_readme_documents_every_setting():
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"PORTAL_{name.upper()}" not in readme]
    assert missing == []


def test_the_readme_opens_with_the_two_commands():
    opening = (PROJECT_ROOT / "README.md").read_text()[:600]
    assert "make run" in opening and "make test" in opening
