"""Podman for the isolation tests: this machine's settings (tests/podman/containers.conf, given by
CONTAINERS_CONF: runc, cgroupfs, no default ulimits) and the worker image, built once without a registry
(gpu_pool/image/build-test-image.sh, ~60 s) and cached between runs under a tag hashed from constraints.txt.
The fixtures are conftest's, so that one session builds the image once."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "tests" / "podman" / "containers.conf"


def engine(*args: str) -> str:
    """What ``podman ARGS`` prints (empty when it fails)."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=60).stdout.strip()


def of_label(label: str) -> dict[str, list[str]]:
    """Containers, volumes and networks carrying the label, by kind."""
    return {
        "containers": engine("ps", "--all", "--quiet", "--filter", f"label={label}").split(),
        "volumes": engine("volume", "ls", "--quiet", "--filter", f"label={label}").split(),
        "networks": engine("network", "ls", "--quiet", "--filter", f"label={label}").split(),
    }


NOTHING = {"containers": [], "volumes": [], "networks": []}


@pytest.fixture(scope="session")
def podman() -> Iterator[str]:
    """Podman with this machine's settings, for this process and the agents it starts."""
    from tests.conftest import require_program

    require_program("podman", "podman")
    require_program("runc", "runc")
    previous = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    yield "podman"
    if previous is None:
        os.environ.pop("CONTAINERS_CONF", None)
    else:
        os.environ["CONTAINERS_CONF"] = previous


@pytest.fixture(scope="session")
def worker_image(podman: str) -> str:
    """The test worker image's tag, built on first use in this session (or found from an earlier run)."""
    from tests.conftest import require_program

    require_program("mmdebstrap", "mmdebstrap")
    built = subprocess.run(
        [str(ROOT / "gpu_pool" / "image" / "build-test-image.sh"), podman],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return built.stdout.strip().splitlines()[-1]
