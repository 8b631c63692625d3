"""The agent's NVML path against a stand-in for the NVML library (these machines have no NVIDIA driver; on a
GPU machine `scripts/gpu_check.sh` runs the real one): readings, XID errors from NVML's event set, and
uncorrectable ECC counts."""

from __future__ import annotations

import sys
import types

import pytest

from gpu_pool.hardware import NvmlGpus, OfferedGpus


class NVMLError(Exception):
    pass


def fake_nvml(xid_events: list[tuple[int, int]]) -> types.ModuleType:
    """Two A100s; ``xid_events`` are (GPU index, XID) pairs waiting in the event set."""
    handles = ["gpu0", "gpu1"]
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlEventTypeXidCriticalError = 8
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(handles)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: handles[i]
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA A100-SXM4-80GB"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30, used=2**30)
    nvml.nvmlSystemGetDriverVersion = lambda: "550.54"
    nvml.nvmlSystemGetCudaDriverVersion_v2 = lambda: 12040
    nvml.nvmlDeviceGetPowerUsage = lambda h: 250_000
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37)
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 61
    nvml.nvmlEventSetCreate = lambda: "events"
    nvml.nvmlDeviceRegisterEvents = lambda handle, kinds, events: None
    nvml.nvmlEventSetFree = lambda events: None

    def wait(events: str, timeout_ms: int) -> types.SimpleNamespace:
        if not xid_events:
            raise NVMLError("timeout")
        index, xid = xid_events.pop(0)
        return types.SimpleNamespace(device=handles[index], eventData=xid)

    nvml.nvmlEventSetWait_v2 = wait
    nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC = 1, 0

    def ecc(handle: str, error_type: int, counter: int) -> int:
        if handle == "gpu0":
            raise NVMLError("Not Supported")  # ECC off on this board
        assert (error_type, counter) == (1, 0)  # uncorrectable, since the driver loaded
        return 3

    nvml.nvmlDeviceGetTotalEccErrors = ecc
    return nvml


def test_nvml_readings_and_the_last_xid_error_of_each_gpu(monkeypatch: pytest.MonkeyPatch):
    pending = [(1, 79)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(pending))
    gpus = NvmlGpus()
    first, _ = gpus.describe()
    assert (first.model, first.memory_mb, first.driver, first.cuda) == (
        "NVIDIA A100-SXM4-80GB",
        81920,
        "550.54",
        "12.4",
    )
    samples = gpus.sample()
    assert [s.xid_errors for s in samples] == [0, 79] and not pending
    assert [s.ecc_uncorrected for s in samples] == [0, 3]
    assert (samples[0].util_pct, samples[0].temp_c, samples[0].power_w, samples[0].mem_used_mb) == (
        37.0,
        61.0,
        250.0,
        1024.0,
    )
    pending.extend([(0, 43), (1, 13)])
    assert [s.xid_errors for s in gpus.sample()] == [43, 13]
    assert [s.xid_errors for s in gpus.sample()] == [43, 13]  # the last XID stays until another comes
    gpus.close()


def test_only_the_offered_gpus_are_described_and_sampled_by_their_nvml_numbers(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([(0, 43), (1, 79)]))
    offered = OfferedGpus(NvmlGpus(), [1])
    assert [(g.index, g.uuid) for g in offered.describe()] == [(1, "GPU-gpu1")]
    (sample,) = offered.sample()
    assert (sample.index, sample.xid_errors, sample.ecc_uncorrected) == (1, 79, 3)
