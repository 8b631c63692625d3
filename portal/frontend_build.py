"""The pages' production build, made once per change of what it is built from.

Reflex's production run compiles the app and builds its frontend at every start: tens of seconds of the
portal's outage at each restart, on the cores that serve it. ``portal run`` builds only when a fingerprint
of the build's inputs (the app's code and assets, Reflex's version and settings, the port the pages call back
on) differs from the one kept with the last build, and otherwise serves that build as it is.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from portal.config import PROJECT_ROOT

REFLEX = str(Path(sys.executable).with_name("reflex"))
BUILD_DIR = PROJECT_ROOT / ".web" / "build"
# Inside the build folder, which Reflex empties as a build begins: a build that failed keeps no stamp.
STAMP = BUILD_DIR / "portal-build.sha256"
SOURCES = ("portal", "assets", "rxconfig.py", "reflex.lock")
# What else a build reads: Reflex's and Vite's settings from the environment.
ENV_PREFIXES = ("REFLEX_", "VITE_")
# The environment's variables that name local paths or tools, not what the pages are made of.
ENV_IGNORED = frozenset({"REFLEX_DIR", "REFLEX_BUN_PATH", "REFLEX_MOUNT_FRONTEND_COMPILED_APP"})


def _port_environment(port: int) -> dict[str, str]:
    # The pages call the API back on this port (same-port production serving).
    return {"REFLEX_FRONTEND_PORT": str(port), "REFLEX_BACKEND_PORT": str(port)}


def fingerprint(env: Mapping[str, str], port: int, root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        source = root / name
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        name = dist.metadata["Name"] or ""
        if name.lower().startswith("reflex"):
            digest.update(f"{name}=={dist.version}\0".encode())
    settings = {**env, **_port_environment(port)}
    for name in sorted(settings):
        if name.startswith(ENV_PREFIXES) and name not in ENV_IGNORED:
            digest.update(f"{name}={settings[name]}\0".encode())
    return digest.hexdigest()


def is_current(wanted: str, build_dir: Path = BUILD_DIR) -> bool:
    stamp = build_dir / STAMP.name
    return stamp.is_file() and stamp.read_text().strip() == wanted and (build_dir / "client").is_dir()


def build(env: Mapping[str, str], port: int) -> bool:
    """Compile the app and build its pages for ``port``, stamped with their fingerprint; False if it failed
    (Reflex has said why on the console)."""
    command = [REFLEX, "export", "--frontend-only", "--no-zip", "--env", "prod"]
    build_env = {**env, **_port_environment(port)}
    if "NPM_CONFIG_REGISTRY" not in build_env:
        # bun installs the pages' packages from npm's registry (a mirror, on some machines); asked here, only
        # when building, as npm takes half a second to answer.
        build_env["NPM_CONFIG_REGISTRY"] = _npm_registry()
    if subprocess.run(command, cwd=PROJECT_ROOT, env=build_env).returncode != 0:
        return False
    STAMP.write_text(fingerprint(env, port) + "\n")
    return True


def _npm_registry() -> str:
    try:
        asked = subprocess.run(
            ["npm", "config", "get", "registry"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return "https://registry.npmjs.org/"
    return asked.stdout.strip() or "https://registry.npmjs.org/"


def serve_command(host: str, port: int) -> list[str]:
    """Reflex serving the API and, mounted beside it, the pages already built (``SERVE_PAGES``)."""
    return [
        REFLEX,
        "run",
        "--env",
        "prod",
        "--backend-only",
        "--backend-host",
        host,
        "--backend-port",
        f"{port}",
    ]


# Set by ``portal run`` for the web workers: Reflex mounts the built pages only in its own full production
# run, which would build them again.
SERVE_PAGES = "PORTAL_SERVE_BUILT_PAGES"


def serving_built_pages() -> bool:
    return os.environ.get(SERVE_PAGES) == "1"
