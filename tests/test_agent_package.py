"""The agent installs alone (issue 19): `gpu_pool/pyproject.toml` builds the `gpu-pool` distribution, which
brings what the agent imports and none of the server's packages."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import gpu_pool
import portal
from portal.config import PROJECT_ROOT, Settings
from portal.services.providers.devices import launch_commands

AGENT_DIR = PROJECT_ROOT / "gpu_pool"
# What a provider's machine must never get from the agent: the web app, the API, the database, the chain,
# the task broker, the analytics.
SERVER_PACKAGES = {
    "reflex",
    "fastapi",
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "solana",
    "solders",
    "pandas",
    "dramatiq",
    "strawberry-graphql",
    "plotly",
    "uvicorn",
    "gpu-portal",
}
# Imported inside `try: ... except ImportError`: faster proof of compute when the provider has them.
OPTIONAL_IMPORTS = {"torch", "cupy"}


def _requirements(pyproject: Path) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {Requirement(line).name.lower(): Requirement(line) for line in project["dependencies"]}


def _third_party_imports() -> set[str]:
    """Every top-level module the agent's code imports, at module level or inside functions."""
    found: set[str] = set()
    for path in AGENT_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"gpu_pool", "__future__"} - OPTIONAL_IMPORTS


def test_the_root_distribution_carries_the_agents_dependencies_at_the_same_pins() -> None:
    # The root `gpu-portal` ships gpu_pool and the `gpu-pool` script too: it must satisfy the agent, with the
    # same Ray (an agent's node must join the portal's clusters).
    agent = _requirements(AGENT_DIR / "pyproject.toml")
    root = _requirements(PROJECT_ROOT / "pyproject.toml")
    assert set(agent) <= set(root), f"missing from the root pyproject: {set(agent) - set(root)}"
    assert agent["ray"].specifier == root["ray"].specifier
    assert agent["ray"].extras == root["ray"].extras == {"default"}
    assert not set(agent) & SERVER_PACKAGES


def test_providers_are_told_to_install_the_agent_released_with_this_portal(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, public_url="https://portal.example.com")
    commands = launch_commands(settings, "gpd_secret")
    # One release: the pinned agent speaks this portal's protocol and runs its Ray.
    assert gpu_pool.__version__ == portal.__version__
    assert commands["pip"] == (
        f"pip install gpu-pool=={portal.__version__} && "
        "gpu-pool worker --portal https://portal.example.com --token gpd_secret"
    )
    assert f" gpu-pool:{portal.__version__} gpu-pool worker " in commands["docker"]
    assert "gpu-portal" not in " ".join(commands.values())


@pytest.mark.slow
def test_the_agent_installs_alone_into_an_empty_venv(tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is installed into the venv by `make setup`"
    # A copy of the folder: proves it is self-contained, and keeps setuptools' build/ out of the checkout.
    source = tmp_path / "src" / "gpu_pool"
    shutil.copytree(AGENT_DIR, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(PROJECT_ROOT / ".uv-cache"))}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    # Offline: `make setup` filled the cache with every pinned package (the root needs a superset).
    constraints = str(PROJECT_ROOT / "constraints.txt")
    install = subprocess.run(
        [uv, "pip", "install", "--offline", "--python", str(python), "-c", constraints, str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr

    freeze = subprocess.run(
        [uv, "pip", "freeze", "--python", str(python)], capture_output=True, text=True, check=True, env=env
    )
    installed = {Requirement(line).name.lower() for line in freeze.stdout.splitlines() if line.strip()}
    assert {"gpu-pool", "ray", "httpx", "nvidia-ml-py", "psutil"} <= installed
    server = installed & SERVER_PACKAGES
    assert not server, f"server packages came with the agent: {server}"

    # Run from an empty folder, so nothing is imported from the checkout or the copy.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    help_ = subprocess.run(
        [str(venv / "bin" / "gpu-pool"), "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=60
    )
    assert help_.returncode == 0, help_.stderr
    assert "worker" in help_.stdout and "doctor" in help_.stdout

    # Every module the agent imports, even lazily (pynvml, Ray's autoscaler), is there; portal is not.
    modules = sorted(_third_party_imports())
    assert {"httpx", "ray", "pynvml"} <= set(modules)
    probe = (
        "import importlib, importlib.util, gpu_pool\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import gpu_pool.agent, gpu_pool.autoscaler, gpu_pool.cli, gpu_pool.metrics, gpu_pool.mesh\n"
        "assert importlib.util.find_spec('portal') is None and importlib.util.find_spec('tasks') is None\n"
        "print(gpu_pool.__file__)\n"
    )
    imported = subprocess.run(
        [str(python), "-c", probe], cwd=elsewhere, capture_output=True, text=True, timeout=120
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith(str(venv))
