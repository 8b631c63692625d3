#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the agent's NVML discovery, one proof-of-compute round judged by the
# portal's own verifier (in process, no server needed), and one scrape of the agent's DCGM-named metrics.
# Usage: scripts/gpu_check.sh            (uses .venv if present, else python3 on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHONPATH=. exec "$PYTHON" - <<'PY'
import json, time, urllib.request

from gpu_pool import compute
from gpu_pool.hardware import NvmlGpus, driver_status, machine_facts
from gpu_pool.metrics import DcgmCollector, serve

status = driver_status()
print(f"driver: {status.detail}")
if not status.available:
    raise SystemExit("no NVIDIA driver: nothing to check")
gpus = NvmlGpus()
described = gpus.describe()
for gpu in described:
    print(f"gpu {gpu.index}: {gpu.model} {gpu.memory_mb} MiB uuid={gpu.uuid} driver={gpu.driver} cuda={gpu.cuda}")
for sample in gpus.sample():
    print(f"sample {sample.index}: util={sample.util_pct}% mem={sample.mem_used_mb:.0f} MiB "
          f"temp={sample.temp_c} C power={sample.power_w:.1f} W xid={sample.xid_errors} "
          f"ecc_uncorrected={sample.ecc_uncorrected}")
# What a rental's wipe checks: the processes holding memory on each GPU (none when the GPU is idle).
print(f"compute processes: {gpus.compute_processes([gpu.index for gpu in described])}")

# One verification round, judged the way the portal judges it.
try:
    from portal.services import verification
    from portal.services.gpu_catalog import normalize_model_name
except ImportError:
    verification = None
for n in (1024, 4096):
    seed = int(time.time())
    product = compute.multiply(seed, n)
    rows = [0, n // 3, n // 2, n - 1]
    print(f"proof of compute n={n}: backend={product.backend} {product.elapsed_ms:.1f} ms "
          f"-> {2 * n**3 / (product.elapsed_ms / 1000) / 1e12:.2f} TFLOPS")
    if verification:
        state = {"n": n, "rows": rows, "seed": seed, "issued_at": 0.0, "committed_at": product.elapsed_ms / 1000,
                 "deadline_s": 120, "elapsed_ms": product.elapsed_ms, "row_hashes": product.commitment()}
        started = time.perf_counter()
        passed, reason, tflops = verification._check(state, product.reveal(rows))
        print(f"  portal verdict: {reason} ({(time.perf_counter() - started) * 1000:.1f} ms to check)")
        models = [normalize_model_name(g.model, g.memory_mb) for g in described]
        print(f"  catalogue models: {models}")
mb = compute.vram_allocatable_mb(0, described[0].memory_mb)
print(f"vram allocatable on gpu 0: {mb} MiB of {described[0].memory_mb}")

url = serve(DcgmCollector(gpus.describe, gpus.sample, machine_facts()["hostname"], False), 0)
body = urllib.request.urlopen(url, timeout=5).read().decode()
print(f"metrics from {url}:")
print("\n".join(line for line in body.splitlines() if line.startswith("DCGM_FI_DEV")))
PY
