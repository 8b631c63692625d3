"""The welcome ``portal run`` prints once the portal answers: where it is, the demo logins, and three things
to try with the exact commands. It runs beside the portal as a small process of its own (``portal run``
hands its own process over to the server), in the same process group, so Ctrl-C ends it too. It imports
little (urllib, not httpx): it starts while the portal does, on the same cores."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

WAIT_S = 300


def render(
    base_url: str, logins: list[dict[str, str]], logins_file: Path, log_file: Path, portal: str
) -> str:
    width = max((len(login["email"]) for login in logins), default=0)
    customer = next((login["email"] for login in logins if login["role"] == "customer"), "")
    lines = [
        "",
        f"  GPU Portal is ready at {base_url}   (Ctrl-C stops it)",
        "",
        f"  Sign in as (kept in {logins_file}):",
        *(f"    {login['role']:<9}  {login['email']:<{width}}  {login['password']}" for login in logins),
        "",
        "  Three things to try:",
        f"    1. Rent GPUs as the customer: deploy a cluster at {base_url}/market, or from a shell:",
        f"         {portal} login --portal {base_url} --email {customer}",
        f"         {portal} clusters create --name demo --gpu-model H100-80GB --gpus 2 --hours 1",
        f"    2. Watch the devices as the provider: {base_url}/devices (local agents, simulated GPUs)",
        "    3. Kill an agent under the running cluster and watch the cluster heal:",
        f"         {portal} demo kill-agent demo-rig-2",
        "",
        *([f"  The full logs (JSON) are in {log_file}.", ""] if log_file else []),
    ]
    return "\n".join(lines)


def main(base_url: str, data_dir: str, portal: str) -> int:
    """Print the welcome once ``base_url`` answers; give up quietly after ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    break
        except (OSError, ValueError):  # not answering yet (urllib's errors are OSErrors)
            pass
        time.sleep(0.5)
    else:
        return 1
    logins_file = Path(data_dir) / "demo_logins.json"
    try:
        logins = json.loads(logins_file.read_text())
    except (OSError, ValueError):
        logins = []
    log_file = Path(data_dir) / "logs" / "portal.log"  # there when the terminal shows short lines
    print(render(base_url, logins, logins_file, log_file if log_file.exists() else None, portal), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
