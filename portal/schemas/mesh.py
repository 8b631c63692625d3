"""The overlay network on the wire: a device's certificate request and answer, and its mesh status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from portal.services.mesh.certificates import Issued
from portal.services.mesh.keys import MAX_PEM_CHARS

EXAMPLE_KEY = (
    "-----BEGIN NEBULA X25519 PUBLIC KEY-----\nh7S9TBe3xFHyvHYzVTrEel6UQoTcOcYGUhjeR6bqeCU=\n"
    "-----END NEBULA X25519 PUBLIC KEY-----\n"
)


class MeshCertificateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PEM_CHARS,
            description="The agent's X25519 public key as nebula-cert keygen writes it (PEM); never the "
            "private key.",
            examples=[EXAMPLE_KEY],
        ),
    ]


class LighthouseOut(BaseModel):
    overlay_ip: str
    public_address: str


class MeshCertificateOut(BaseModel):
    certificate: str = Field(description="The device's Nebula certificate (PEM).")
    ca: str = Field(description="The overlay CA's certificate (PEM), for Nebula's pki.ca.")
    lighthouses: list[LighthouseOut]
    overlay_ip: str = Field(description="The device's overlay address; the same for every renewal.")
    overlay_cidr: str
    portal_overlay_ip: str = Field(description="The portal's own node on the overlay.")
    groups: list[str] = Field(description="device, and cluster-<id> while the device serves that cluster.")
    expires_at: datetime = Field(description="Renew before this (the certificate's not-after, or earlier).")
    blocklist: list[str] = Field(
        description="Fingerprints of revoked certificates not yet expired, for Nebula's pki.blocklist."
    )


class MeshOut(BaseModel):
    state: str = Field(
        description="off (no overlay), none (never certified), certified, expired, or as the agent reports: "
        "connecting (no lighthouse reached yet), connected, down (its Nebula not running)."
    )
    relayed: bool | None = Field(description="Whether its tunnels go through a relay; null until reported.")


class ClusterConnectionOut(MeshCertificateOut):
    """A customer's machine on their cluster's network: the fields of a device's certificate, and where the
    head is."""

    groups: list[str] = Field(
        description="customer and cluster-<id>: that cluster's nodes admit it, no other."
    )
    expires_at: datetime = Field(
        description="The cluster's booked end; extend the cluster to connect longer."
    )
    head_overlay_ip: str = Field(description="The head's overlay address.")
    ray_client_address: str | None = Field(description="ray://<head overlay ip>:<port> for ray.init().")


def certificate_fields(issued: Issued) -> dict[str, Any]:
    """What ``MeshCertificateOut`` says of a signed certificate (a device's or a customer's machine's)."""
    return {
        "certificate": issued.certificate,
        "ca": issued.ca,
        "lighthouses": [
            LighthouseOut(overlay_ip=str(lighthouse.overlay_ip), public_address=lighthouse.public_address)
            for lighthouse in issued.lighthouses
        ],
        "overlay_ip": str(issued.overlay_ip),
        "overlay_cidr": issued.overlay_cidr,
        "portal_overlay_ip": str(issued.portal_overlay_ip),
        "groups": issued.groups,
        "expires_at": issued.expires_at,
        "blocklist": issued.blocklist,
    }
