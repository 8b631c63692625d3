"""`make run` and `make test` check what the machine must have before installing anything, and say in one
line each what is missing and how to get it (scripts/setup.sh)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portal.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "setup.sh"
TOOLS = ("bash", "date", "awk", "mkdir", "mktemp", "dirname", "rm", "cat", "test", "sha256sum", "cut")


def machine(
    tmp_path: Path, *, python: str | None = "3.11.7", node: str | None = "20.19.0", npm: bool = True
) -> Path:
    """A PATH with the shell's tools and the given Python, Node and npm (stand-ins saying their version)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    if python is not None:
        major, minor = python.split(".")[:2]
        fake = bin_dir / "python3.11"
        fake.write_text(
            "#!/bin/bash\n"
            f'case "$*" in *version_info*) [ "{major}.{minor}" = "3.11" ]; exit $?;; '
            f"*python_version*) echo {python}; exit 0;; *) exit 0;; esac\n"
        )
        fake.chmod(0o755)
    if node is not None:
        fake = bin_dir / "node"
        fake.write_text(f'#!/bin/bash\n[ "$1" = "--version" ] && echo v{node} || echo {node.split(".")[0]}\n')
        fake.chmod(0o755)
    if npm:
        (bin_dir / "npm").write_text("#!/bin/bash\nexit 0\n")
        (bin_dir / "npm").chmod(0o755)
    return bin_dir


def project_copy(
    tmp_path: Path, *, python: str | None = "exit 0", uv: str = "exit 0", bun: str = "exit 0"
) -> Path:
    """A project holding setup.sh, a pyproject and pins, with stand-ins for the venv's python and uv and for
    bun (each a bash body; ``python=None``: no venv python, setup makes it)."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, project / "scripts" / "setup.sh")
    (project / "pyproject.toml").write_text("[project]\nname = 'portal'\n")
    (project / "constraints.txt").write_text("ray==2.40.0\n")
    venv = project / ".venv" / "bin"
    bun_path = project / ".tools" / "node_modules" / "@oven" / "bun-linux-x64" / "bin" / "bun"
    stand_ins = [(venv / "uv", uv), (bun_path, bun)] + ([(venv / "python", python)] if python else [])
    for path, body in stand_ins:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return project


def run_setup(
    project: Path, bin_dir: Path, *args: str, timeout_s: float = 30, **env: str
) -> subprocess.CompletedProcess:
    """The project's setup.sh on ``bin_dir``'s PATH; it must succeed."""
    ran = subprocess.run(
        ["bash", str(project / "scripts" / "setup.sh"), *args],
        env={"PATH": str(bin_dir), "PYTHON": "python3.11", "BUN_PACKAGE": "@oven/bun-linux-x64", **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert ran.returncode == 0, ran.stderr
    return ran


def preflight(bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={"PATH": str(bin_dir), "PYTHON": "python3.11", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("have", "says"),
    [
        ({"python": None}, "Python 3.11 is missing (python3.11 not found): install it"),
        ({"python": "3.9.2"}, "python3.11 is 3.9.2, not Python 3.11"),
        ({"node": None}, "Node.js is missing: install Node.js 20 or newer with npm"),
        ({"node": "18.19.1"}, "Node.js v18.19.1 is too old: install Node.js 20 or newer"),
        ({"npm": False}, "npm is missing: install it with Node.js"),
    ],
)
def test_a_missing_tool_is_named_in_one_line_with_how_to_get_it(tmp_path, have, says):
    checked = preflight(machine(tmp_path, **have))
    assert checked.returncode == 2
    (line,) = checked.stderr.splitlines()
    assert line.startswith("setup: ") and says in line
    assert checked.stdout == ""  # nothing was installed


def test_make_run_says_when_its_port_is_taken_or_its_data_dir_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        checked = preflight(
            machine(tmp_path), "--run", PORTAL_PORT=str(port), PORTAL_DATA_DIR=str(blocker / "data")
        )
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == [
        f"setup: port {port} is taken (another portal?): stop what listens there, or choose another with "
        "PORTAL_PORT=...",
        f"setup: the data dir {blocker / 'data'} is not writable: fix its permissions, or choose another "
        "with PORTAL_DATA_DIR=...",
    ]


def test_the_packages_install_again_when_the_pins_or_the_requirements_change_and_only_then(tmp_path):
    calls = tmp_path / "uv-calls"
    project = project_copy(tmp_path, uv=f'echo "$*" >>{calls}')
    constraints = project / "constraints.txt"
    bin_dir = machine(tmp_path)

    def installs() -> int:
        run_setup(project, bin_dir)
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    assert installs() == 1
    assert installs() == 1  # current: skipped
    os.utime(constraints, (time.time() + 60, time.time() + 60))
    assert installs() == 1  # touched, not changed
    constraints.write_text("ray==2.41.0\n")
    assert installs() == 2
    constraints.write_text("ray==2.40.0\n")
    assert installs() == 3  # back to the earlier pins: those are installed again


def test_the_pages_npm_packages_are_fetched_into_buns_cache_from_reflex_lock_once_and_never_fail_setup(
    tmp_path,
):
    """While uv installs the Python packages, bun fetches the pages' packages (reflex.lock/, Reflex's own
    lockfile) into its cache, so that the page build's install finds them there; again only when the
    lockfile changes, and a failed fetch leaves the page build to fetch them, as before."""
    calls, failing = tmp_path / "bun-calls", tmp_path / "fail"
    bun_body = (
        f'echo "$PWD|$BUN_INSTALL_CACHE_DIR|$NPM_CONFIG_REGISTRY|$*|$(cat package.json)" >>{calls}\n'
        f'[ -e {failing} ] && {{ echo "error: ConnectionRefused downloading react"; exit 1; }}\n'
        'mkdir -p "$BUN_INSTALL_CACHE_DIR"'
    )
    project = project_copy(tmp_path, bun=bun_body)
    lock = project / "reflex.lock"
    lock.mkdir()
    (lock / "package.json").write_text('{"dependencies": {"react": "19.3.1"}}\n')
    (lock / "bun.lock").write_text('{"lockfileVersion": 1}\n')
    bin_dir = machine(tmp_path)
    for tool in ("cp", "grep", "tail", "sed", "nice"):
        (bin_dir / tool).symlink_to(shutil.which(tool))

    def setup() -> str:
        return run_setup(project, bin_dir).stdout

    def fetches() -> list[list[str]]:
        return [line.split("|") for line in calls.read_text().splitlines()] if calls.exists() else []

    said = setup()
    assert "setup: pages' npm packages" in said
    ((cwd, cache, registry, args, package_json),) = fetches()
    assert Path(cwd) == project / ".tools" / "pages"  # not .web, which Reflex empties when it makes it
    assert Path(cache) == project / ".bun-cache"  # the cache the page build's install reads (Makefile)
    assert registry == "https://registry.npmjs.org/"  # npm names none here
    assert args.split()[:2] == ["install", "--frozen-lockfile"]
    assert package_json == '{"dependencies": {"react": "19.3.1"}}'
    assert "pages' npm packages" not in setup()  # current: skipped
    assert len(fetches()) == 1

    (lock / "bun.lock").write_text('{"lockfileVersion": 1, "packages": {}}\n')
    setup()
    assert len(fetches()) == 2  # the lockfile changed

    # A fetch that fails is said in a few lines, and setup goes on: the page build fetches them itself.
    (lock / "bun.lock").write_text('{"lockfileVersion": 1, "packages": {"react": []}}\n')
    failing.write_text("")
    said = setup()
    assert len(fetches()) == 3
    assert "setup: the pages' npm packages were not fetched ahead (the page build fetches them):" in said
    assert "setup:   error: ConnectionRefused downloading react" in said
    failing.unlink()
    setup()
    assert len(fetches()) == 4  # not marked as fetched: tried again


def test_the_virtual_environment_gets_the_pip_and_setuptools_of_venv_from_their_wheels_through_uv(tmp_path):
    """`python -m venv` would install pip and setuptools with pip (3-7 s here); setup makes the environment
    without them and has uv install the same wheels, ensurepip's own, offline."""
    calls = tmp_path / "uv-calls"
    project = project_copy(tmp_path, python=None, uv=f'echo "$*" >>{calls}')
    venv = project / ".venv" / "bin"
    bin_dir = machine(tmp_path, python=None)
    (bin_dir / "python3.11").symlink_to(Path(sys.base_prefix) / "bin" / "python3.11")  # a real one

    run_setup(project, bin_dir, timeout_s=60)
    assert (venv / "python").exists() and not (venv / "pip").exists()  # made without pip (uv is a stand-in)
    packages, wheels = calls.read_text().splitlines()
    assert "-e .[dev]" in packages
    assert wheels.split()[:6] == ["pip", "install", "--quiet", "--python", ".venv/bin/python", "--offline"]
    names = sorted(Path(wheel).name.split("-")[0] for wheel in wheels.split()[7:])
    assert names == ["pip", "setuptools"]
    assert all(Path(wheel).is_file() for wheel in wheels.split()[7:])


def test_make_run_installs_without_the_test_tools_and_make_test_adds_them(tmp_path):
    calls = tmp_path / "uv-calls"
    project = project_copy(tmp_path, uv=f'echo "$*" >>{calls}')
    bin_dir = machine(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = str(probe.getsockname()[1])

    def setup(*args: str) -> list[str]:
        """What this setup asked uv to install (the last argument of each call)."""
        before = len(calls.read_text().splitlines()) if calls.exists() else 0
        run_setup(project, bin_dir, *args, PORTAL_PORT=free_port, PORTAL_DATA_DIR=str(tmp_path / "data"))
        asked = calls.read_text().splitlines()[before:] if calls.exists() else []
        return [line.split()[-1] for line in asked]

    assert setup("--run") == ["."]  # make run: what the portal runs on
    assert setup("--run") == []
    assert setup() == [".[dev]"]  # make test: the test tools too
    assert setup() == []
    assert setup("--run") == []  # what make test installed serves make run
