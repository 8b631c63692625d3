"""Reading the machine's NVIDIA GPUs through NVML (nvidia-ml-py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DriverStatus:
    available: bool
    detail: str


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
