"""The machine's GPUs: read through NVML (nvidia-ml-py), or simulated for development.

Simulated GPUs say so in every message the agent sends; the portal shows them as simulated everywhere and
never lets them be hired in a production deployment.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
import uuid
from dataclasses import asdict, dataclass

# Memory of the models the agent can simulate; the portal's catalogue knows the same names.
SIMULATED_MODELS = {
    "H200-141GB": 143_771,
    "H100-80GB": 81_559,
    "A100-80GB": 81_920,
    "A100-40GB": 40_960,
    "L40S-48GB": 46_068,
    "A10-24GB": 23_028,
    "RTX-4090-24GB": 24_564,
    "RTX-3090-24GB": 24_576,
    "T4-16GB": 15_360,
}


@dataclass(frozen=True)
class DriverStatus:
    available: bool
    detail: str


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    model: str
    memory_mb: int
    driver: str
    cuda: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GpuSample:
    index: int
    util_pct: float
    mem_used_mb: float
    temp_c: float
    power_w: float
    xid_errors: int = 0
    ecc_uncorrected: int = 0  # uncorrectable (double-bit) ECC errors since the driver loaded

    def as_dict(self) -> dict:
        return asdict(self)


def driver_status() -> DriverStatus:
    """Whether an NVIDIA driver answers, with its version or the reason it does not."""
    try:
        import pynvml
    except ImportError:
        return DriverStatus(False, "nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return DriverStatus(False, f"no NVIDIA driver answers ({error})")
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        count = pynvml.nvmlDeviceGetCount()
        return DriverStatus(True, f"driver {version}, {count} GPU(s)")
    finally:
        pynvml.nvmlShutdown()


class NvmlGpus:
    """Real GPUs. NVML stays initialised for the agent's life; every reading is a cheap library call."""

    simulated = False

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        # The last XID error of each GPU (dcgm-exporter's DCGM_FI_DEV_XID_ERRORS), from NVML's event set.
        self._last_xid = [0] * len(self._handles)
        self._xid_events = None
        try:
            events = pynvml.nvmlEventSetCreate()
            for handle in self._handles:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, events)
            self._xid_events = events
        except pynvml.NVMLError:
            pass  # boards or drivers without XID events: reported as 0

    def _text(self, value: bytes | str) -> str:
        return value.decode() if isinstance(value, bytes) else value

    def compute_processes(self, indices: list[int]) -> list[tuple[int, int]]:
        """(GPU index, pid) of every process holding a context, and so memory, on these GPUs: after a
        rental's wipe there must be none on the GPUs it rented."""
        held = []
        for index in indices:
            for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handles[index]):
                held.append((index, int(process.pid)))
        return held

    def describe(self) -> list[GpuInfo]:
        nvml = self._nvml
        driver = self._text(nvml.nvmlSystemGetDriverVersion())
        cuda_version = nvml.nvmlSystemGetCudaDriverVersion_v2()
        cuda = f"{cuda_version // 1000}.{cuda_version % 1000 // 10}"
        return [
            GpuInfo(
                index=i,
                uuid=self._text(nvml.nvmlDeviceGetUUID(handle)),
                model=self._text(nvml.nvmlDeviceGetName(handle)),
                memory_mb=nvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20,
                driver=driver,
                cuda=cuda,
            )
            for i, handle in enumerate(self._handles)
        ]

    def _drain_xid_events(self) -> None:
        nvml = self._nvml
        if self._xid_events is None:
            return
        while True:
            try:
                event = nvml.nvmlEventSetWait_v2(self._xid_events, 0)
            except nvml.NVMLError:  # NVML_ERROR_TIMEOUT: nothing pending
                return
            for i, handle in enumerate(self._handles):
                if nvml.nvmlDeviceGetUUID(handle) == nvml.nvmlDeviceGetUUID(event.device):
                    self._last_xid[i] = int(event.eventData)

    def sample(self) -> list[GpuSample]:
        nvml = self._nvml
        self._drain_xid_events()
        samples = []
        for i, handle in enumerate(self._handles):
            try:
                power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000
            except nvml.NVMLError:
                power = 0.0  # some boards do not report power
            samples.append(
                GpuSample(
                    index=i,
                    util_pct=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    mem_used_mb=nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
                    temp_c=float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                    power_w=power,
                    xid_errors=self._last_xid[i],
                    ecc_uncorrected=self._ecc_uncorrected(handle),
                )
            )
        return samples

    def _ecc_uncorrected(self, handle: object) -> int:
        nvml = self._nvml
        try:
            return int(
                nvml.nvmlDeviceGetTotalEccErrors(
                    handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC
                )
            )
        except nvml.NVMLError:
            return 0  # ECC off or not supported (consumer boards): nothing to count

    def close(self) -> None:
        if self._xid_events is not None:
            self._nvml.nvmlEventSetFree(self._xid_events)
        self._nvml.nvmlShutdown()


class SimulatedGpus:
    """GPUs that exist only in this process, for development and tests; labelled simulated everywhere."""

    simulated = True

    def __init__(self, count: int, model: str, seed: int | None = None) -> None:
        if model not in SIMULATED_MODELS:
            raise ValueError(f"unknown model {model}; choose one of {', '.join(SIMULATED_MODELS)}")
        self._rng = random.Random(seed)
        self._machine = uuid.uuid4().hex[:8]
        self._gpus = [
            GpuInfo(
                i,
                f"GPU-SIMULATED-{self._machine}-{i}",
                model,
                SIMULATED_MODELS[model],
                "simulated",
                "simulated",
            )
            for i in range(count)
        ]

    def describe(self) -> list[GpuInfo]:
        return list(self._gpus)

    def sample(self, busy: bool = True) -> list[GpuSample]:
        """Readings that follow a slow wave under load, and stay near zero while idle (no Ray node)."""
        phase = time.time() / 60
        samples = []
        for gpu in self._gpus:
            wave = 50 + 40 * math.sin(phase + gpu.index) if busy else 1.0
            load = max(0.0, min(100.0, wave + self._rng.uniform(-5, 5) * (1 if busy else 0.2)))
            samples.append(
                GpuSample(
                    index=gpu.index,
                    util_pct=round(load, 1),
                    mem_used_mb=round(gpu.memory_mb * load / 150, 1),
                    temp_c=round(35 + load * 0.45, 1),
                    power_w=round(70 + load * 6, 1),
                )
            )
        return samples

    def close(self) -> None:
        return None


class OfferedGpus:
    """Only the GPUs the provider rents out (``gpu-pool worker --gpus 0,2``), by the indices NVML and
    nvidia-smi give them: the others are never described, sampled, proven or passed to a rental, and keep
    serving the provider's own work."""

    def __init__(self, gpus: NvmlGpus | SimulatedGpus, indices: list[int]) -> None:
        present = [gpu.index for gpu in gpus.describe()]
        missing = sorted(set(indices) - set(present))
        if missing or not indices:
            raise ValueError(
                f"no GPU {', '.join(map(str, missing))} on this machine: it has {len(present)} "
                f"(indices {', '.join(map(str, present)) or 'none'})"
                if missing
                else "offer at least one GPU"
            )
        self._gpus, self.indices = gpus, sorted(set(indices))
        self.simulated = gpus.simulated

    def describe(self) -> list[GpuInfo]:
        return [gpu for gpu in self._gpus.describe() if gpu.index in self.indices]

    def sample(self, *args: bool, **kwargs: bool) -> list[GpuSample]:
        return [sample for sample in self._gpus.sample(*args, **kwargs) if sample.index in self.indices]

    def close(self) -> None:
        self._gpus.close()


def parse_indices(text: str) -> list[int]:
    """``0,2`` -> [0, 2]: which GPUs to offer."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) < 64 for part in parts):
        raise ValueError("GPU indices as nvidia-smi numbers them, separated by commas, e.g. 0,2")
    return [int(part) for part in parts]


def parse_simulation(spec: str) -> tuple[int, str]:
    """``2xH100-80GB`` -> (2, "H100-80GB")."""
    count, _, model = spec.partition("x")
    if not count.isdigit() or not 1 <= int(count) <= 16 or model not in SIMULATED_MODELS:
        raise ValueError(f"simulate as COUNTxMODEL, e.g. 2xH100-80GB; models: {', '.join(SIMULATED_MODELS)}")
    return int(count), model


def machine_facts() -> dict:
    import psutil

    return {
        "hostname": platform.node()[:255],
        "os": f"{platform.system()} {platform.release()}"[:120],
        "cpu_count": os.cpu_count() or 0,
        "ram_mb": psutil.virtual_memory().total // 2**20,
    }
