"""The portal's own node on the overlay: its first host (``Settings.portal_overlay_ip``), in the group
``portal``. Through it the portal reaches each head's dashboard and GCS at the overlay address it allocated
(``node_addresses``), and every device's firewall admits it; it admits nobody (its tunnels carry only what
it asked for).

It runs where the portal's web processes run, on a TUN device of that network namespace (root or
``CAP_NET_ADMIN`` and ``/dev/net/tun``; in Kubernetes a sidecar of the portal's pod): ``portal mesh-node``,
which ``portal run`` starts on its own with ``PORTAL_MESH=nebula``. Nebula is the agent's supervisor
(``gpu_pool.mesh.Mesh``: restarted when it dies, renewed at half its certificate's life); only where the
certificate comes from differs: the portal's CA, in-process, for a key made in the data dir. Each renewal
renders the blocklist of revoked certificates too (``revocations``), read from the portal's database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from gpu_pool.mesh import Certificate, Mesh, MeshError, keygen
from portal.config import Settings
from portal.infra.db import build_engine
from portal.services.errors import DomainError
from portal.services.mesh import ca, keys, revocations
from portal.services.mesh.certificates import require_mesh

GROUP = "portal"
TUN_DEVICE = "nebula-portal"


class PortalNode(Mesh):
    """The portal's Nebula, certified by the portal's own CA."""

    def __init__(
        self,
        settings: Settings,
        *,
        tun_device: str = TUN_DEVICE,
        listen_port: int = 0,
        engine: Engine | None = None,
    ) -> None:
        require_mesh(settings)
        home = settings.data_dir / "mesh-portal-node"
        super().__init__(None, home, tun_device=tun_device, listen_port=listen_port)  # type: ignore[arg-type]
        self.settings = settings
        self.engine = engine or build_engine(settings.sqlalchemy_url, settings=settings)

    def request(self) -> Certificate:
        _, public_key = keygen(self.state_dir)
        settings, hours = self.settings, self.settings.mesh_cert_hours
        now = datetime.now(UTC).replace(microsecond=0)
        try:
            authority = ca.authority(settings)
            certificate = ca.sign(
                authority,
                public_key_pem=keys.public_key_pem(keys.parse_public_key(public_key)),
                name="portal",
                ip_cidr=f"{settings.portal_overlay_ip}/{settings.overlay_network.prefixlen}",
                groups=[GROUP],
                hours=hours,
            )
            blocklist = revocations.blocklist(self.engine)
        except DomainError as error:
            raise MeshError(error.message) from None
        except SQLAlchemyError as error:
            raise MeshError(f"the blocklist could not be read: {type(error).__name__}") from None
        return Certificate(
            certificate=certificate,
            ca=authority.cert_pem,
            lighthouses=[
                {"overlay_ip": str(lighthouse.overlay_ip), "public_address": lighthouse.public_address}
                for lighthouse in settings.lighthouses
            ],
            overlay_ip=str(settings.portal_overlay_ip),
            overlay_cidr=settings.overlay_cidr,
            portal_overlay_ip=str(settings.portal_overlay_ip),
            groups=[GROUP],
            expires_at=now + timedelta(hours=hours),
            received_at=now,
            blocklist=blocklist,
        )
