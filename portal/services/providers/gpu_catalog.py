"""What the portal knows about GPU models: memory, reference FP32 throughput, default price."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    name: str
    memory_mb: int
    # Vendor FP32 peak; a verification that measures far below it is implausible.
    reference_tflops: float
    default_price_per_gpu_hour_micro: int


CATALOG = {
    model.name: model
    for model in (
        GpuModel("H200-141GB", 143_771, 67.0, 3_000_000),
        GpuModel("H100-80GB", 81_559, 51.2, 2_000_000),
        GpuModel("A100-80GB", 81_920, 19.5, 1_200_000),
        GpuModel("A100-40GB", 40_960, 19.5, 1_000_000),
        GpuModel("L40S-48GB", 46_068, 91.6, 900_000),
        GpuModel("A10-24GB", 23_028, 31.2, 450_000),
        GpuModel("RTX-4090-24GB", 24_564, 82.6, 400_000),
        GpuModel("RTX-3090-24GB", 24_576, 35.6, 250_000),
        GpuModel("T4-16GB", 15_360, 8.1, 150_000),
    )
}
# Price of a model the catalogue does not know, per GPU-hour.
UNKNOWN_MODEL_PRICE_MICRO = 300_000


def list_price(model: str) -> int:
    """The price per GPU-hour of a model whose provider set none."""
    known = CATALOG.get(model)
    return known.default_price_per_gpu_hour_micro if known else UNKNOWN_MODEL_PRICE_MICRO


def normalize_model_name(nvml_name: str, memory_mb: int) -> str:
    """An NVML name such as 'NVIDIA H100 80GB HBM3' as a catalogue name when one matches."""
    compact = nvml_name.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace(" ", "")
    for name, model in CATALOG.items():
        family = name.rsplit("-", 1)[0].replace("-", "")
        if family in compact and abs(model.memory_mb - memory_mb) < 4096:
            return name
    return nvml_name.strip()[:80]
