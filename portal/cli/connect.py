"""``portal clusters connect ID``: this machine on a running cluster's private network (the overlay), for
the cluster's life, so the Ray client (``ray://<head overlay ip>:<port>``) and any port of the cluster's
nodes work from a laptop behind NAT.

The key pair is made here (``nebula-cert keygen``; the private key never leaves ``~/.config/portal``) and the
portal signs a certificate for that cluster's group alone. Nebula runs in the foreground under the agent's
supervisor (``gpu_pool.mesh.Mesh``: restarted if it dies, the certificate asked again at half its life);
Ctrl-C leaves the network. It needs a TUN device: root, or CAP_NET_ADMIN and /dev/net/tun.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from gpu_pool import mesh
from portal.cli.client import ApiError, PortalClient, PortalUnreachable, config_dir
from portal.cli.customer import ClusterId, clusters_app, fail, local_time, signed_in

ATTEMPTS = 4
RETRY_PAUSE_S = 2.0


class ClusterNetwork(mesh.Mesh):
    """This machine's Nebula on one cluster's network, certified through the customer's API."""

    def __init__(
        self, portal: PortalClient, cluster_id: uuid.UUID, state_dir: Path, *, tun_device: str
    ) -> None:
        super().__init__(None, state_dir, tun_device=tun_device)  # type: ignore[arg-type]
        self.portal, self.cluster_id = portal, cluster_id
        self.answer: dict | None = None

    def request(self) -> mesh.Certificate:
        _, public_key = mesh.keygen(self.state_dir)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self.answer = self.portal.connect_cluster(self.cluster_id, public_key)
                return mesh.Certificate.from_answer(self.answer)
            except ApiError as error:
                if error.code == "mesh_off":
                    raise mesh.MeshOff(error.message) from None
                if error.status != 503 or attempt == ATTEMPTS:
                    raise mesh.MeshError(error.message) from None
            except PortalUnreachable as error:
                if attempt == ATTEMPTS:
                    raise mesh.MeshError(str(error)) from None
            time.sleep(RETRY_PAUSE_S * attempt)  # a busy or restarting portal: asked again, a little later
        raise AssertionError("unreachable")


@clusters_app.command("connect")
def connect_cluster(
    cluster_id: ClusterId,
    tun: Annotated[str | None, typer.Option(help="The TUN device to make (15 characters at most).")] = None,
) -> None:
    """Join a running cluster's private network from this machine until Ctrl-C or the cluster's end: the Ray
    client and any port of its nodes then work from here. Needs root (or CAP_NET_ADMIN)."""
    usable, detail = mesh.tun_usable()
    if not usable:
        raise fail(f"cannot make a network interface here: {detail} (run it with sudo)")
    state_dir = config_dir() / f"connect-{cluster_id}"
    with signed_in() as portal:
        network = ClusterNetwork(portal, cluster_id, state_dir, tun_device=tun or f"gpc{cluster_id.hex[:12]}")
        try:
            if not network.start():
                raise fail(
                    "this portal runs without an overlay network: its clusters are reached on loopback"
                )
        except mesh.MeshError as error:
            raise fail(f"could not join the cluster's network: {error}") from None
        answer = network.answer or {}
        typer.secho(
            f"On the cluster's network as {answer.get('overlay_ip')} "
            f"until {local_time(answer.get('expires_at'))} (Ctrl-C leaves it).",
            fg=typer.colors.GREEN,
        )
        typer.echo(f"Head                {answer.get('head_overlay_ip')}")
        typer.echo(f"Ray client address  {answer.get('ray_client_address') or '-'}")
        sys.stdout.flush()  # it stays in the foreground: what it printed must show now, piped or not
        left = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: left.set())
        while not left.wait(5):
            held = network.certificate
            if held is not None and datetime.now(UTC) >= held.expires_at:
                typer.echo("The cluster's booked time has ended.")
                break
        network.stop()
    typer.echo("Left the cluster's network.")
