"""Embedded mode stays light (issue 22): the portal's processes do not import what only a rare path needs.
`python -m bench.memory` measures the whole; these tests hold the pieces that keep it under 300 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from portal.config import PROJECT_ROOT
from portal.services.network.analytics import Group, _DeviceRow, _groups

# Modules the web worker must not hold once the app is imported, and what each would cost (RSS after
# Reflex, FastAPI and SQLModel, measured on this machine): pandas about 50 MiB, for the admin's analytics
# tables alone; Ray about 33 MiB, which only the agents run.
NOT_IMPORTED = ("pandas", "ray")


def test_importing_the_whole_app_leaves_pandas_and_ray_out(tmp_path):
    probe = (
        "import json, sys\n"
        "import portal.portal\n"
        f"print(json.dumps([name for name in {NOT_IMPORTED!r} if name in sys.modules]))\n"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("PORTAL_")}
    env |= {"PORTAL_DATA_DIR": str(tmp_path), "REFLEX_TELEMETRY_ENABLED": "false"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_network_groups_put_the_most_gpus_first_then_devices_then_the_key():
    rows = [
        _DeviceRow("ready", "A100-80GB", 2, "DE", simulated=False),
        _DeviceRow("hired", "H100-80GB", 4, "US", simulated=True),
        _DeviceRow("ready", "RTX-4090", 1, "DE", simulated=False),
        _DeviceRow("ready", "RTX-4090", 1, "FR", simulated=False),
        _DeviceRow("ready", "L4", 2, "FR", simulated=False),
    ]
    assert _groups(rows, "model") == [
        Group("H100-80GB", devices=1, gpus=4, gpus_hired=4, simulated_gpus=4),
        Group("RTX-4090", devices=2, gpus=2, gpus_hired=0, simulated_gpus=0),
        Group("A100-80GB", devices=1, gpus=2, gpus_hired=0, simulated_gpus=0),
        Group("L4", devices=1, gpus=2, gpus_hired=0, simulated_gpus=0),
    ]
    by_country = [(group.key, group.gpus) for group in _groups(rows, "country")]
    assert by_country == [("US", 4), ("DE", 3), ("FR", 3)]
    assert _groups([], "state") == []
