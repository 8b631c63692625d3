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
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from gpu_pool import compute
from portal import migrations
from portal.cache import MemoryCache
from portal.db import build_engine, session_scope
from portal.models import Device, DeviceState, User
from portal.services import verification

T = TypeVar("T")


def _timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = action()
    return result, (time.perf_counter() - started) * 1000


def bench_verification(rounds: int = 3) -> None:
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
        agent_ms: list[float] = []
        portal_ms: list[float] = []
        product_ms: list[float] = []
        for _ in range(rounds):
            with session_scope(engine) as session:
                device = session.get(Device, device.id)
                challenge, issue_ms = _timed(lambda: verification.issue(cache, device))
                n = challenge["n"]
                product, multiply_ms = _timed(lambda: compute.multiply(challenge["seed"], n, use_gpu=False))
                hashes, hash_ms = _timed(product.commitment)
                rows, commit_ms = _timed(
                    lambda: verification.commit(
                        cache, device, challenge["id"], row_hashes=hashes, elapsed_ms=product.elapsed_ms
                    )
                )
                result, reveal_ms = _timed(
                    lambda: verification.reveal(
                        session, cache, device, challenge["id"], rows=product.reveal(rows), gpu_models=[]
                    )
                )
            assert result.passed, result.reason
            agent_ms.append(multiply_ms + hash_ms)
            portal_ms.append(issue_ms + commit_ms + reveal_ms)
            a = compute.matrix_rows(challenge["seed"], 0, range(n), n)
            b = compute.matrix_rows(challenge["seed"], 1, range(n), n)
            product_ms.append(_timed(lambda: np.matmul(a, b))[1])
        print(
            f"  n={n} ({'simulated' if simulated else 'a GPU'}'s size, median of {rounds}): "
            f"baseline: the product alone {statistics.median(product_ms):,.1f} ms; "
            f"agent (derive, multiply, hash rows) {statistics.median(agent_ms):,.1f} ms; "
            f"portal (issue, commit, check {verification.ROWS_CHECKED} rows) "
            f"{statistics.median(portal_ms):,.1f} ms"
        )
    engine.dispose()


if __name__ == "__main__":
    bench_verification()
