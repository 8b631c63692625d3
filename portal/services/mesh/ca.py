"""The overlay's certificate authority: its key pair, and signing with Debian's ``nebula-cert``.

The CA is given by the operator (``PORTAL_MESH_CA_KEY``/``_FILE`` with ``PORTAL_MESH_CA_CERT``/``_FILE``,
from a secret store) or generated once into ``data_dir/mesh-ca`` (directory 700, key 600). The key is never
logged and never part of an error: ``nebula-cert`` reads it from its file, or from a private temporary
directory when it came in a setting, and what it prints on failure goes to the log, never to the caller.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from portal.config import Settings
from portal.services.errors import Unavailable

log = logging.getLogger(__name__)

CA_NAME = "GPU Portal overlay"
CA_HOURS = 5 * 365 * 24
TIMEOUT_S = 10.0
LOCAL_CA_DIR = "mesh-ca"


@dataclass(frozen=True)
class Authority:
    """The CA's certificate and where its key is; ``repr`` never shows the key."""

    cert_pem: str
    not_after: datetime
    cert_file: Path | None = None
    key_file: Path | None = None
    key_pem: SecretStr | None = field(default=None, repr=False)


def nebula_cert() -> str:
    found = shutil.which("nebula-cert")
    if found is None:
        raise Unavailable(
            "The overlay's certificate authority is not ready: nebula-cert is not installed on the portal's "
            "machine (Debian package nebula).",
            code="mesh_unavailable",
        )
    return found


def authority(settings: Settings) -> Authority:
    """The CA this portal signs with: the operator's, else the one in ``data_dir`` (made on first use)."""
    if settings.mesh_ca_key is not None or settings.mesh_ca_key_file is not None:
        cert_pem = settings.mesh_ca_cert or _read(settings.mesh_ca_cert_file, "PORTAL_MESH_CA_CERT_FILE")
        if settings.mesh_ca_key_file is not None:
            _read(settings.mesh_ca_key_file, "PORTAL_MESH_CA_KEY_FILE")  # readable now, not at the first sign
        return Authority(
            cert_pem,
            _not_after(cert_pem),
            cert_file=settings.mesh_ca_cert_file,
            key_file=settings.mesh_ca_key_file,
            key_pem=settings.mesh_ca_key,
        )
    home = _local_ca(settings.data_dir)
    cert_pem = (home / "ca.crt").read_text()
    return Authority(cert_pem, _not_after(cert_pem), cert_file=home / "ca.crt", key_file=home / "ca.key")


def sign(
    ca: Authority, *, public_key_pem: str, name: str, ip_cidr: str, groups: list[str], hours: float
) -> str:
    """A certificate for ``public_key_pem`` (already checked: ``keys.parse_public_key``), as PEM."""
    if ca.not_after < datetime.now(UTC) + timedelta(hours=hours):
        raise Unavailable(
            f"The overlay's CA certificate expires at {ca.not_after:%Y-%m-%d %H:%M} UTC, before a new "
            "certificate would; the operator must give the portal a new CA.",
            code="mesh_ca_expiring",
        )
    program = nebula_cert()
    with tempfile.TemporaryDirectory(prefix="portal-mesh-") as private:  # mode 700
        work = Path(private)
        cert_file = ca.cert_file
        if cert_file is None:
            cert_file = work / "ca.crt"
            cert_file.write_text(ca.cert_pem)
        (work / "device.pub").write_text(public_key_pem)
        key_file = ca.key_file
        if key_file is None:
            assert ca.key_pem is not None
            key_file = work / "ca.key"
            _write_private(key_file, ca.key_pem.get_secret_value())
        command = [
            program, "sign",
            "-ca-crt", str(cert_file),
            "-ca-key", str(key_file),
            "-in-pub", str(work / "device.pub"),
            "-name", name,
            "-ip", ip_cidr,
            "-groups", ",".join(groups),
            "-duration", f"{max(1, round(hours * 60))}m",
            "-out-crt", str(work / "device.crt"),
        ]  # fmt: skip
        _run(command, "sign a certificate")
        return (work / "device.crt").read_text()


def _run(command: list[str], what: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        log.error("nebula-cert did not %s within %.0f s", what, TIMEOUT_S)
        raise Unavailable(
            "The overlay's certificate authority did not answer in time.", code="mesh_ca_failed"
        ) from None
    if done.returncode != 0:
        # nebula-cert names files and reasons, never key material; the caller gets neither.
        log.error("nebula-cert could not %s (exit %d): %s", what, done.returncode, done.stderr.strip()[:300])
        raise Unavailable(
            f"The overlay's certificate authority could not {what}; the portal's log says why.",
            code="mesh_ca_failed",
        )
    return done.stdout


def _local_ca(data_dir: Path) -> Path:
    """``data_dir/mesh-ca`` with ca.crt and ca.key, made once. Made in a private directory beside it and
    renamed into place, so concurrent first uses (several portal processes) agree on one CA."""
    home = data_dir / LOCAL_CA_DIR
    if (home / "ca.key").exists():
        return home
    program = nebula_cert()
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mesh-ca-", dir=data_dir))
    command = [
        program, "ca",
        "-name", CA_NAME,
        "-duration", f"{CA_HOURS}h",
        "-out-crt", str(staging / "ca.crt"),
        "-out-key", str(staging / "ca.key"),
    ]  # fmt: skip
    try:
        _run(command, "create the CA")
        os.chmod(staging / "ca.key", 0o600)
        try:
            staging.rename(home)  # atomic; fails when another process put its CA there first
            log.info("made the overlay's certificate authority in %s", home)
        except OSError:
            if not (home / "ca.key").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home


@functools.lru_cache(maxsize=8)
def _not_after(cert_pem: str) -> datetime:
    """When the CA certificate ends, as ``nebula-cert print`` reads it (once per certificate)."""
    with tempfile.TemporaryDirectory(prefix="portal-mesh-") as private:
        path = Path(private) / "ca.crt"
        path.write_text(cert_pem)
        printed = _run([nebula_cert(), "print", "-json", "-path", str(path)], "read the CA certificate")
    try:
        details = json.loads(printed)["details"]
        if not details["isCa"]:
            raise ValueError("not a CA certificate")
        return datetime.fromisoformat(details["notAfter"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError) as error:
        log.error("the overlay's CA certificate is not usable: %s", error)
        raise Unavailable(
            "The overlay's CA certificate is not a Nebula CA certificate.", code="mesh_ca_failed"
        ) from None


def _read(path: Path | None, setting: str) -> str:
    assert path is not None
    try:
        return path.read_text()
    except OSError as error:
        log.error("%s cannot be read: %s", setting, error.strerror)
        raise Unavailable(f"{setting} cannot be read ({error.strerror}).", code="mesh_ca_failed") from None


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
