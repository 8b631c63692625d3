"""The agent's side of proof of compute: derive A and B from the challenge's seed, multiply them on the
GPU (torch or cupy when present, numpy otherwise), commit to every row of the product, reveal rows."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def matrix_rows(seed: int, which: int, rows: Iterable[int], n: int) -> np.ndarray:
    """Rows of A (``which`` 0) or B (1), uniform in [-1, 1); the portal derives the same rows."""
    return np.stack(
        [np.random.default_rng([seed, which, i]).random(n, dtype=np.float32) * 2 - 1 for i in rows]
    )


def row_hash(row: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(row, dtype="<f4").tobytes()).hexdigest()


@dataclass
class Product:
    c: np.ndarray
    elapsed_ms: float
    backend: str

    def commitment(self) -> list[str]:
        return [row_hash(row) for row in self.c]

    def reveal(self, rows: list[int]) -> dict[int, list[float]]:
        return {i: self.c[i].astype(np.float32).tolist() for i in rows}


def _torch_matmul(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    # Full FP32: TF32 would still pass the check, but the throughput is measured for FP32.
    torch.backends.cuda.matmul.allow_tf32 = False
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    torch.cuda.synchronize()
    started = time.perf_counter()
    tc = ta @ tb
    torch.cuda.synchronize()
    return tc.cpu().numpy(), (time.perf_counter() - started) * 1000


def _cupy_matmul(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float] | None:
    try:
        import cupy
    except ImportError:
        return None
    ca, cb = cupy.asarray(a), cupy.asarray(b)
    cupy.cuda.Device().synchronize()
    started = time.perf_counter()
    cc = ca @ cb
    cupy.cuda.Device().synchronize()
    return cupy.asnumpy(cc), (time.perf_counter() - started) * 1000


def multiply(seed: int, n: int, *, use_gpu: bool = True) -> Product:
    a = matrix_rows(seed, 0, range(n), n)
    b = matrix_rows(seed, 1, range(n), n)
    if use_gpu:
        for backend, attempt in (("torch", _torch_matmul), ("cupy", _cupy_matmul)):
            done = attempt(a, b)
            if done is not None:
                return Product(done[0], done[1], backend)
    started = time.perf_counter()
    c = a @ b
    return Product(c, (time.perf_counter() - started) * 1000, "numpy")


def vram_allocatable_mb(gpu_index: int, memory_mb: int) -> int | None:
    """How much of the claimed memory could be allocated on the GPU (torch), or None when it cannot tell."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(gpu_index)
    target = min(free, memory_mb * 2**20) // 2 * 2  # ask for what is free right now
    block = torch.empty(target // 2, dtype=torch.float16, device=f"cuda:{gpu_index}")
    del block
    torch.cuda.empty_cache()
    return int(target // 2**20)
