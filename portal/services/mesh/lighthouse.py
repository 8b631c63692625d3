"""A lighthouse (and relay) of the overlay, as ``portal mesh`` runs it: its own key pair and a certificate the
portal's CA signs for one of ``PORTAL_LIGHTHOUSES``, and Nebula's config for it.

The lighthouse runs without a TUN device (no root, no ``NET_ADMIN``): it only answers where peers are, relays
for peers that cannot punch through their NATs, and answers pings (``gpu-pool doctor``). Its key stays in
``data_dir/mesh-lighthouse-<overlay ip>`` (directory 700, key 600).

It refuses revoked certificates: ``portal mesh`` writes the portal's blocklist (``revocations.blocklist``)
into ``pki.blocklist`` at start and every ``BLOCKLIST_EVERY_S``, and reloads Nebula when it changed; with
``pki.disconnect_invalid`` Nebula also tears down the tunnels of peers whose certificate it now refuses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from portal.config import Lighthouse, Settings
from portal.services.errors import Conflict, Unavailable
from portal.services.mesh import ca, certificates, keys, revocations

GROUP = "lighthouse"
DEFAULT_PORT = 4242
DEFAULT_CERT_HOURS = 24 * 30
BLOCKLIST_EVERY_S = 30.0


@dataclass(frozen=True)
class Prepared:
    config_path: Path
    lighthouse: Lighthouse
    hours: int


def chosen(settings: Settings, overlay_ip: str | None) -> Lighthouse:
    """The lighthouse of ``PORTAL_LIGHTHOUSES`` with ``overlay_ip`` (the first when None)."""
    certificates.require_mesh(settings)
    if not settings.lighthouses:
        raise Conflict(
            'PORTAL_LIGHTHOUSES is empty: list this lighthouse, e.g. [{"overlay_ip": "100.64.0.2", '
            '"public_address": "lh.example.com:4242"}]',
            code="no_lighthouse",
        )
    if overlay_ip is None:
        return settings.lighthouses[0]
    for lighthouse in settings.lighthouses:
        if lighthouse.overlay_ip == ipaddress.IPv4Address(overlay_ip):
            return lighthouse
    listed = ", ".join(str(lighthouse.overlay_ip) for lighthouse in settings.lighthouses)
    raise Conflict(f"{overlay_ip} is not in PORTAL_LIGHTHOUSES ({listed})", code="no_lighthouse")


def config(home: Path, *, listen_port: int, listen_host: str = "0.0.0.0") -> dict[str, Any]:
    return {
        "pki": {
            "ca": str(home / "ca.crt"),
            "cert": str(home / "host.crt"),
            "key": str(home / "host.key"),
            "blocklist": [],  # the portal's, from ``refresh_blocklist``
            "disconnect_invalid": True,
        },
        "static_host_map": {},
        "lighthouse": {"am_lighthouse": True, "serve_dns": False, "interval": 60},
        "listen": {"host": listen_host, "port": listen_port},
        "punchy": {"punch": True, "respond": True},
        "relay": {"am_relay": True, "use_relays": False},
        "tun": {"disabled": True},
        "logging": {"level": "info", "format": "json"},
        "firewall": {
            "outbound": [{"port": "any", "proto": "any", "host": "any"}],
            "inbound": [{"port": "any", "proto": "icmp", "host": "any"}],
        },
    }


def prepare(
    settings: Settings,
    *,
    overlay_ip: str | None = None,
    listen_port: int = DEFAULT_PORT,
    listen_host: str = "0.0.0.0",
    hours: int = DEFAULT_CERT_HOURS,
) -> Prepared:
    """The lighthouse's key (made once), a fresh certificate and its config; the config's path."""
    lighthouse = chosen(settings, overlay_ip)
    home = settings.data_dir / f"mesh-lighthouse-{lighthouse.overlay_ip}"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_key = _keygen(home)
    sign(settings, lighthouse, home, public_key, hours)
    path = home / "nebula.yml"
    rendered = config(home, listen_port=listen_port, listen_host=listen_host)
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
        # The last blocklist stays until ``refresh_blocklist`` reads the portal's (its database may be away).
        rendered["pki"]["blocklist"] = list(yaml.safe_load(path.read_text())["pki"]["blocklist"])
    path.write_text(yaml.safe_dump(rendered, sort_keys=False))
    return Prepared(path, lighthouse, hours)


def sign(settings: Settings, lighthouse: Lighthouse, home: Path, public_key: str, hours: int) -> None:
    """A new certificate for the lighthouse into ``home`` (a running Nebula takes it on SIGHUP)."""
    authority = ca.authority(settings)
    certificate = ca.sign(
        authority,
        public_key_pem=keys.public_key_pem(keys.parse_public_key(public_key)),
        name=f"lighthouse-{lighthouse.overlay_ip}",
        ip_cidr=f"{lighthouse.overlay_ip}/{settings.overlay_network.prefixlen}",
        groups=[GROUP],
        hours=hours,
    )
    for name, text in (("ca.crt", authority.cert_pem), ("host.crt", certificate)):
        staging = home / f"{name}.new"
        staging.write_text(text)
        os.replace(staging, home / name)


def refresh_blocklist(engine: Engine, config_path: Path) -> bool:
    """Write the portal's blocklist into the lighthouse's config; True when it changed (reload Nebula)."""
    fingerprints = revocations.blocklist(engine)
    rendered = yaml.safe_load(config_path.read_text())
    if rendered["pki"].get("blocklist") == fingerprints:
        return False
    rendered["pki"]["blocklist"] = fingerprints
    staging = config_path.with_name(config_path.name + ".new")
    staging.write_text(yaml.safe_dump(rendered, sort_keys=False))
    os.replace(staging, config_path)  # Nebula never reads half a file
    return True


def renew(settings: Settings, prepared: Prepared) -> None:
    home = prepared.config_path.parent
    sign(settings, prepared.lighthouse, home, (home / "host.pub").read_text(), prepared.hours)


def _keygen(home: Path) -> str:
    key, pub = home / "host.key", home / "host.pub"
    if not (key.exists() and pub.exists()):
        for path in (key, pub):
            path.unlink(missing_ok=True)
        ca._run(
            [ca.nebula_cert(), "keygen", "-out-key", str(key), "-out-pub", str(pub)],
            "make the lighthouse's key pair",
        )
    os.chmod(key, 0o600)
    return pub.read_text()


def run_nebula(config_path: Path) -> subprocess.Popen[bytes]:
    """Nebula on ``config_path``, in a session of its own (the caller stops it)."""
    return subprocess.Popen([nebula(), "-config", str(config_path)], start_new_session=True)


def nebula() -> str:
    found = shutil.which("nebula")
    if found is None:
        raise Unavailable(
            "nebula is not installed (Debian package nebula; make mesh)", code="mesh_unavailable"
        )
    return found
