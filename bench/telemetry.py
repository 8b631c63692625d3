"""The cost of telemetry with 10,000 devices, next to a bare Prometheus query in the same run.

- ``/metrics``: the portal's exposition with every online device's GPUs under dcgm-exporter names
  (10,000 devices x 2 GPUs, latest samples in the cache).
- A dashboard query: the 15-minute charts of a 64-device cluster (128 GPUs) from the portal's own sample
  store (a sample every 5 s for 15 minutes), and the same charts from Prometheus after it scraped the portal.
- Baseline: a bare Prometheus query (``up``) on the same server.

`python -m bench.telemetry` runs it alone; `make bench` includes it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx

from bench.serving import free_port, serving_in_thread
from bench.sizes import size
from portal.api.app import create_api
from portal.config import Settings
from portal.infra import migrations
from portal.infra.cache import MemoryCache
from portal.infra.db import build_engine, session_scope
from portal.models import Device, DeviceState, Gpu, GpuSample, User
from portal.models.base import utcnow
from portal.parts import AppParts
from portal.services.providers import liveness, telemetry

DEVICES = size(10_000, 200)
CLUSTER_DEVICES = 64


def seed(url: str, cache: MemoryCache) -> list[uuid.UUID]:
    """10,000 online devices with 2 GPUs each and their latest samples; 15 minutes of samples for 64."""
    now = utcnow()
    with session_scope(build_engine(url)) as session:
        owner = User(email="bench@example.com")
        session.add(owner)
        session.flush()
        ids = []
        for number in range(DEVICES):
            device = Device(
                owner_id=owner.id,
                name=f"rig-{number}",
                country="DE",
                state=DeviceState.READY,
                token_hash=uuid.uuid4().hex,
                token_prefix="x",
                simulated=True,
                hostname=f"host-{number}",
                last_heartbeat_at=now,
            )
            session.add(device)
            ids.append(device.id)
            session.add_all(
                Gpu(
                    device_id=device.id,
                    index=i,
                    uuid=f"GPU-{number}-{i}",
                    memory_mb=81_559,
                    model="H100-80GB",
                )
                for i in range(2)
            )
            sample = [
                {"index": i, "util_pct": 50.0, "mem_used_mb": 4096.0, "temp_c": 60.0, "power_w": 300.0}
                for i in range(2)
            ]
            cache.set(liveness.samples_key(device.id), json.dumps({"at": now.isoformat(), "gpus": sample}))
        session.flush()
        session.add_all(
            GpuSample(
                device_id=device_id,
                at=now - timedelta(seconds=5 * step),
                gpu_index=i,
                util_pct=float(step % 100),
                mem_used_mb=4096.0,
                temp_c=60.0,
                power_w=300.0,
            )
            for device_id in ids[:CLUSTER_DEVICES]
            for step in range(180)
            for i in range(2)
        )
    return ids


def bench_telemetry() -> None:
    from bench.__main__ import report, timings_ms  # bench/__main__ imports this module

    print(f"Telemetry with {DEVICES:,} devices (SQLite, in-process cache)")
    with tempfile.TemporaryDirectory(prefix="portal-bench-telemetry-") as directory:
        url = f"sqlite:///{directory}/bench.db"
        migrations.upgrade(url)
        cache = MemoryCache()
        started = time.perf_counter()
        ids = seed(url, cache)
        print(f"  seeded in {time.perf_counter() - started:.1f} s")
        engine = build_engine(url)
        settings = Settings(data_dir=Path(directory), heartbeat_interval_s=300, rate_limit_per_minute=10**9)
        parts = AppParts(settings, engine, cache)
        cluster = ids[:CLUSTER_DEVICES]

        def dashboard() -> None:
            with session_scope(engine) as session:
                telemetry.series(session, settings, cluster, 15)

        report("dashboard query, own store (64 devices)", timings_ms(dashboard, 20, warmup=2))
        serve_and_compare(parts, cluster)
        engine.dispose()


def serve_and_compare(parts: AppParts, cluster: list[uuid.UUID]) -> None:
    from bench.__main__ import report, timings_ms

    binary = shutil.which("prometheus")
    with serving_in_thread(create_api(parts)) as url, httpx.Client(base_url=url, timeout=60) as client:
        report("/metrics (20,000 GPUs)", timings_ms(lambda: client.get("/metrics"), 10, warmup=1))
        size = len(client.get("/metrics").content)
        print(f"  /metrics is {size / 1e6:.1f} MB")
        if binary is None:
            print(
                "  skipped Prometheus: Debian's prometheus package is not installed (make test installs it)"
            )
            return
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="portal-bench-prom-") as data:
            config = Path(data) / "prometheus.yml"
            config.write_text(
                "global: {scrape_interval: 15s, scrape_timeout: 10s}\nscrape_configs:\n"
                f"  - job_name: portal\n    static_configs: [{{targets: ['{url.removeprefix('http://')}']}}]\n"
            )
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}/tsdb",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                prometheus = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        result = httpx.get(
                            f"{prometheus}/api/v1/query", params={"query": "count(DCGM_FI_DEV_GPU_UTIL)"}
                        ).json()
                        if result["data"]["result"]:
                            break
                    except (httpx.HTTPError, KeyError, ValueError):
                        pass
                    time.sleep(1)
                report(
                    "baseline: bare Prometheus query (up)",
                    timings_ms(
                        lambda: httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}), 50, warmup=3
                    ),
                )
                with_prometheus = parts.settings.model_copy(update={"prometheus_url": prometheus})

                def dashboard() -> None:
                    with session_scope(parts.engine) as session:
                        telemetry.series(session, with_prometheus, cluster, 15)

                report("dashboard query, Prometheus (64 devices)", timings_ms(dashboard, 20, warmup=2))
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    bench_telemetry()
