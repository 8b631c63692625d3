"""Proof of compute: a fresh matrix product the agent must compute, checked far cheaper than computing it.

1. The portal issues a random seed and a size n. Both sides derive A and B (n x n, float32) from the seed.
2. The agent computes C = A·B on its GPU and commits to it: the SHA-256 of every row of C, and its time.
3. Only then the portal picks k random rows; the agent reveals them.
4. The portal checks each revealed row against its committed hash, and checks the rows with Freivalds'
   method: C_R·r = A_R·(B·r) for a random vector r, which costs O(n²) instead of the O(n³) product.

An agent that skipped a fraction f of the rows passes with probability about (1 - f)^k. The portal also
times the round itself, so a claimed time cannot be faster than what it observed, and compares the measured
throughput with the GPU model's reference.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.infra.cache import Cache
from portal.models import Device, DeviceState, FaultEvent
from portal.models.base import utcnow
from portal.services import state_machines
from portal.services.errors import Conflict, InvalidInput, NotFound
from portal.services.providers import commands
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE
from portal.services.providers.gpu_catalog import CATALOG

SIMULATED_SIZE = 256
GPU_SIZE = 4096
ROWS_CHECKED = 8
CHALLENGE_TTL_S = 600
# Measured throughput below this share of the model's reference means it is not that GPU (or is busy).
MIN_SHARE_OF_REFERENCE = 0.05
# Faster than the reference by this factor is not believable either.
MAX_SHARE_OF_REFERENCE = 3.0
# The agent must be able to allocate at least this share of the memory its GPUs claim (some is in use).
MIN_VRAM_SHARE = 0.5


def matrix_rows(seed: int, which: int, rows: Iterable[int], n: int) -> np.ndarray:
    """Rows of A (``which`` 0) or B (1), uniform in [-1, 1), each from its own stream so the portal can
    derive just the rows it checks. gpu_pool/compute.py derives the same; a contract test keeps them equal."""
    return np.stack(
        [np.random.default_rng([seed, which, i]).random(n, dtype=np.float32) * 2 - 1 for i in rows]
    )


def row_hash(row: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(row, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class Result:
    passed: bool
    reason: str
    tflops: float | None


def _key(challenge_id: str) -> str:
    return f"challenge:{challenge_id}"


def _load(cache: Cache, device: Device, challenge_id: str) -> dict:
    raw = cache.get(_key(challenge_id))
    state = json.loads(raw) if raw else None
    if state is None or state["device_id"] != str(device.id):
        raise NotFound("No such challenge, or it expired; ask for a new one.")
    return state


def issue(cache: Cache, device: Device, deadline_s: int | None = None, *, hardware: str = "") -> dict:
    """A fresh challenge for the device; its state lives in the cache until answered or expired. It vouches
    for ``hardware`` (``worker.recorded_hardware``) alone: an answer after the GPUs changed fails."""
    if device.state == DeviceState.HIRED:
        raise Conflict("A hired device is not re-verified while it runs a cluster.", code="device_hired")
    n = SIMULATED_SIZE if device.simulated else GPU_SIZE
    challenge = {
        "id": secrets.token_urlsafe(12),
        "seed": secrets.randbits(63),
        "n": n,
        "dtype": "float32",
        "deadline_s": deadline_s or (60 if device.simulated else 120),
    }
    state = {
        **challenge,
        "device_id": str(device.id),
        "hardware": hardware,
        "phase": "commit",
        "issued_at": time.time(),
    }
    cache.set(_key(challenge["id"]), json.dumps(state), ttl_s=CHALLENGE_TTL_S)
    return challenge


def commit(
    cache: Cache,
    device: Device,
    challenge_id: str,
    *,
    row_hashes: list[str],
    elapsed_ms: float,
    vram_mb: int | None = None,
) -> list[int]:
    """Record the agent's commitment; returns the rows it must now reveal."""
    state = _load(cache, device, challenge_id)
    if state["phase"] != "commit":
        raise Conflict("This challenge is already committed.", code="challenge_committed")
    if len(row_hashes) != state["n"] or not all(isinstance(h, str) and len(h) == 64 for h in row_hashes):
        raise InvalidInput(
            f"Send one SHA-256 hex digest per row ({state['n']}).", details={"field": "row_hashes"}
        )
    rows = sorted(secrets.SystemRandom().sample(range(state["n"]), ROWS_CHECKED))
    state |= {
        "phase": "reveal",
        "row_hashes": row_hashes,
        "elapsed_ms": float(elapsed_ms),
        "vram_mb": vram_mb,
        "committed_at": time.time(),
        "rows": rows,
    }
    cache.set(_key(challenge_id), json.dumps(state), ttl_s=CHALLENGE_TTL_S)
    return rows


def _check(state: dict, revealed: dict[int, list[float]]) -> tuple[bool, str, float | None]:
    n, rows = state["n"], state["rows"]
    observed_s = state["committed_at"] - state["issued_at"]
    if observed_s > state["deadline_s"]:
        return (
            False,
            f"late: the commitment came after {observed_s:.1f} s (limit {state['deadline_s']} s)",
            None,
        )
    if sorted(revealed) != rows:
        return False, "the revealed rows are not the ones asked for", None
    if any(len(revealed[i]) != n for i in rows):
        return False, "the revealed rows are malformed", None
    values = np.array([revealed[i] for i in rows], dtype=np.float32)
    if not np.all(np.isfinite(values)):
        return False, "the revealed rows are malformed", None
    if any(row_hash(values[j]) != state["row_hashes"][i] for j, i in enumerate(rows)):
        return False, "a revealed row does not match its commitment", None
    a_rows = matrix_rows(state["seed"], 0, rows, n).astype(np.float64)
    b = matrix_rows(state["seed"], 1, range(n), n).astype(np.float64)
    r = np.random.default_rng(secrets.randbits(63)).standard_normal(n)
    expected = a_rows @ (b @ r)
    got = values.astype(np.float64) @ r
    # Rounding errors are tiny next to the scale ||a_i||·||B·r|| of each checked value (even with TF32's
    # 10-bit mantissa they stay near 1e-3 of it); a wrong row misses by the whole scale.
    bound = 1e-2 * np.linalg.norm(a_rows, axis=1) * np.linalg.norm(b @ r)
    if not np.all(np.abs(got - expected) <= bound):
        return False, "wrong product: the revealed rows fail Freivalds' check", None
    # The agent cannot claim to be faster than the round the portal watched.
    seconds = max(state["elapsed_ms"] / 1000, 1e-6)
    if seconds > observed_s + 1:
        seconds = observed_s
    return True, "passed", 2 * n**3 / seconds / 1e12


def reveal(
    session: Session,
    cache: Cache,
    device: Device,
    challenge_id: str,
    *,
    rows: dict[int, list[float]],
    gpu_models: list[str],
    claimed_vram_mb: int = 0,
    hardware: str = "",
) -> Result:
    """Judge the revealed rows; a pass makes the device ready, a failure raises a fault event."""
    state = _load(cache, device, challenge_id)
    if state["phase"] != "reveal":
        raise Conflict("Commit to the product before revealing rows.", code="challenge_not_committed")
    cache.delete(_key(challenge_id))  # one answer per challenge, right or wrong
    passed, reason, tflops = _check(state, rows)
    if passed and state.get("hardware", "") != hardware:
        passed, reason, tflops = False, "the GPUs changed during the proof", None
    if passed and not device.simulated and gpu_models:
        reference = sum(CATALOG[m].reference_tflops for m in gpu_models if m in CATALOG)
        if (
            reference
            and not MIN_SHARE_OF_REFERENCE * reference <= (tflops or 0) <= MAX_SHARE_OF_REFERENCE * reference
        ):
            passed, reason = (
                False,
                f"implausible throughput: {tflops:.2f} TFLOPS measured, reference {reference:.1f}",
            )
    vram_mb = state.get("vram_mb")
    if passed and not device.simulated and vram_mb is not None and vram_mb < MIN_VRAM_SHARE * claimed_vram_mb:
        passed, reason = False, f"only {vram_mb} MiB of the claimed {claimed_vram_mb} MiB could be allocated"
    now = utcnow()
    if passed:
        device.verified_at, device.verified_tflops, device.verification_failures = now, tflops, 0
        # A hired device keeps its cluster: the proof only renews its record.
        if device.state != DeviceState.HIRED:
            state_machines.move(session, "device", device, DeviceState.READY, "proof of compute passed")
    else:
        device.verified_at = None
        device.verification_failures += 1
        session.add(
            FaultEvent(
                device_id=device.id,
                kind="verification_failed",
                severity="warning",
                message=f"Proof of compute failed: {reason}.",
                details={"challenge": challenge_id},
            )
        )
        if device.state not in (DeviceState.VERIFYING, DeviceState.HIRED):
            state_machines.move(
                session, "device", device, DeviceState.VERIFYING, f"verification failed: {reason}"
            )
        device.state_reason = f"verification failed: {reason}"
    session.add(device)
    return Result(passed, reason, tflops)


def due_for_reverification(session: Session, settings: Settings, limit: int = 200) -> list[Device]:
    """Idle, online devices whose last proof is older than ``reverify_after_h``; hired ones never."""
    now = utcnow()
    online_since = now - timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    return list(
        session.exec(
            select(Device)
            .where(
                Device.state == DeviceState.READY,
                col(Device.verified_at) < now - timedelta(hours=settings.reverify_after_h),
                col(Device.last_heartbeat_at) > online_since,
            )
            .order_by(col(Device.verified_at))
            .limit(limit)
        ).all()
    )


def start_reverification(session: Session, device: Device) -> None:
    """Take the device off the market and ask its agent for a fresh proof; it is ready again once it
    passes (``reveal``). Ready only: a device booked meanwhile is left alone."""
    if device.state != DeviceState.READY:
        return
    state_machines.move(session, "device", device, DeviceState.VERIFYING, "periodic re-verification")
    commands.enqueue(session, device, "verify", {})
