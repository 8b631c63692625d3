"""Overlay certificates, timed: ``python -m bench.mesh``.

Certificates signed per second through ``mesh.certificates.issue`` (key check, overlay address, groups,
``nebula-cert sign`` in a private directory, the device's row) on SQLite, for new devices (an address is
allocated) and for renewals (it is found), against the bare ``nebula-cert sign`` process with the same CA
and key in the same run. Then what keeping 100,000 devices certified costs the portal: each device renews
once per certificate lifetime (``PORTAL_MESH_CERT_HOURS``, 12 h by default), or twice when agents renew at
half-life, in CPU-seconds per hour (the portal's process and its nebula-cert children together).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.sizes import size
from portal.config import Settings
from portal.infra import migrations
from portal.infra.db import build_engine, session_scope
from portal.models import Device, User
from portal.services.mesh import ca, certificates

CERTIFICATES = size(200, 20)
FLEET = 100_000


def _cpu_s() -> float:
    """CPU seconds used so far by this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(action: Callable[[int], object], count: int) -> tuple[float, float]:
    """Certificates per second (wall clock) and CPU seconds per certificate."""
    action(-1)  # warm up
    cpu, started = _cpu_s(), time.perf_counter()
    for number in range(count):
        action(number)
    wall = time.perf_counter() - started
    return count / wall, (_cpu_s() - cpu) / count


def _line(label: str, rate: float, cpu_s: float) -> None:
    print(f"  {label:<52} {rate:8,.0f} certificates/s   {cpu_s * 1000:6.2f} ms CPU each")


def bench_mesh(count: int = CERTIFICATES) -> None:
    print(f"Overlay certificates: {count} signed each way (SQLite, nebula-cert from Debian)")
    program = shutil.which("nebula-cert")
    if program is None:
        print("  not measured: nebula-cert is not installed (make mesh installs Debian's nebula)")
        return
    work = Path(tempfile.mkdtemp(prefix="portal-bench-mesh-"))
    settings = Settings(data_dir=work / "data", mesh="nebula")  # type: ignore[call-arg]
    authority = ca.authority(settings)
    keys = ["-out-key", str(work / "agent.key"), "-out-pub", str(work / "agent.pub")]
    subprocess.run([program, "keygen", *keys], check=True)
    public_key = (work / "agent.pub").read_text()

    def bare(number: int) -> None:
        out = work / f"bare-{number}.crt"
        out.unlink(missing_ok=True)
        command = [
            program, "sign",
            "-ca-crt", str(work / "data" / "mesh-ca" / "ca.crt"),
            "-ca-key", str(authority.key_file),
            "-in-pub", str(work / "agent.pub"),
            "-name", f"bare-{number}",
            "-ip", "100.64.0.9/10",
            "-groups", "device",
            "-duration", "12h",
            "-out-crt", str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=10)

    url = f"sqlite:///{work / 'bench.db'}"
    migrations.upgrade(url)
    engine = build_engine(url)
    with session_scope(engine) as session:
        owner = User(email="provider@bench.test")
        session.add(owner)
        session.flush()
        devices = [
            Device(owner_id=owner.id, name=f"d{n}", country="DE", token_hash=f"h{n}", token_prefix="x")
            for n in range(count + 1)
        ]
        session.add_all(devices)
    ids = [device.id for device in devices]

    def issue(number: int) -> None:
        certificates.issue(engine, settings, ids[number], public_key)

    bare_rate, bare_cpu = _measure(bare, count)
    new_rate, new_cpu = _measure(issue, count)
    renew_rate, renew_cpu = _measure(issue, count)
    engine.dispose()
    shutil.rmtree(work, ignore_errors=True)

    _line("baseline: bare nebula-cert sign process", bare_rate, bare_cpu)
    _line("certificates.issue, a new device (address allocated)", new_rate, new_cpu)
    _line("certificates.issue, a renewal (address kept)", renew_rate, renew_cpu)
    hours = settings.mesh_cert_hours
    per_hour = FLEET / hours
    print(
        f"  {FLEET:,} devices renewing every {hours} h: {per_hour:,.0f} certificates/h, "
        f"{per_hour * renew_cpu:,.0f} CPU-s/h ({per_hour * renew_cpu / 36:.2f}% of one core); "
        f"at half-life {2 * per_hour * renew_cpu:,.0f} CPU-s/h (bare signing: {per_hour * bare_cpu:,.0f})"
    )


if __name__ == "__main__":
    bench_mesh()
