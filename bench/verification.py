"""Proof of compute, timed: ``python -m bench.verification``.

At the simulated size (n=256) and a GPU's (n=4096), one round through the portal's own functions: the agent's
side (derive A and B from the seed, multiply, hash every row of the product) and the portal's (issue the
challenge, take the commitment and pick rows, check the revealed rows with Freivalds' method), against the
matrix product alone on this machine (numpy on the CPU here; an agent on a GPU multiplies with torch or cupy).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid

import numpy as np
from sqlalchemy import Engine

from bench.sizes import size
from gpu_pool import compute
from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.models import Device, DeviceState, User
from portal.services.providers import verification


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _one_round(engine: Engine, cache: MemoryCache, device_id: uuid.UUID) -> tuple[int, float, float, float]:
    """n, then the agent's, the portal's and the bare product's milliseconds."""
    with session_scope(engine) as session:
        device = session.get_one(Device, device_id)
        started = time.perf_counter()
        challenge = verification.issue(cache, device)
        portal_ms = _ms_since(started)
        n, seed = challenge["n"], challenge["seed"]
        started = time.perf_counter()
        product = compute.multiply(seed, n, use_gpu=False)
        hashes = product.commitment()
        agent_ms = _ms_since(started)
        started = time.perf_counter()
        rows = verification.commit(
            cache, device, challenge["id"], row_hashes=hashes, elapsed_ms=product.elapsed_ms
        )
        portal_ms += _ms_since(started)
        revealed = product.reveal(rows)
        started = time.perf_counter()
        result = verification.reveal(session, cache, device, challenge["id"], rows=revealed, gpu_models=[])
        portal_ms += _ms_since(started)
    assert result.passed, result.reason
    a, b = compute.matrix_rows(seed, 0, range(n), n), compute.matrix_rows(seed, 1, range(n), n)
    started = time.perf_counter()
    np.matmul(a, b)
    return n, agent_ms, portal_ms, _ms_since(started)


def bench_verification(rounds: int = size(3, 1)) -> None:
    print("Proof of compute: one round through the portal's and the agent's functions (SQLite, in process)")
    url = f"sqlite:///{tempfile.mkdtemp(prefix='portal-bench-db-')}/verification.db"
    migrations.upgrade(url)
    engine = build_engine(url)
    cache = MemoryCache()
    with session_scope(engine) as session:
        owner = User(email="bench@example.com")
        session.add(owner)
        session.flush()
        devices = {
            simulated: Device(
                owner_id=owner.id,
                name=f"rig-{simulated}",
                country="DE",
                token_hash=uuid.uuid4().hex,
                token_prefix="x",
                simulated=simulated,
                state=DeviceState.VERIFYING,  # registered; proving its compute
            )
            for simulated in (True, False)
        }
        session.add_all(devices.values())
    for simulated, device in devices.items():
        n, agent_ms, portal_ms, product_ms = (
            statistics.median(column)
            for column in zip(*(_one_round(engine, cache, device.id) for _ in range(rounds)), strict=True)
        )
        print(
            f"  n={n:.0f} ({'simulated' if simulated else 'a GPU'}'s size, median of {rounds}): "
            f"baseline: the product alone {product_ms:,.1f} ms; "
            f"agent (derive, multiply, hash rows) {agent_ms:,.1f} ms; "
            f"portal (issue, commit, check {verification.ROWS_CHECKED} rows) {portal_ms:,.1f} ms"
        )
    engine.dispose()


if __name__ == "__main__":
    bench_verification()
