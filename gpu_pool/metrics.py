"""The agent's own /metrics: its GPUs under DCGM-exporter metric names and labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpu_pool.hardware import GpuInfo, GpuSample

LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "simulated"]


class DcgmCollector(Collector):
    def __init__(
        self,
        gpus: Callable[[], list[GpuInfo]],
        samples: Callable[[], list[GpuSample]],
        hostname: str,
        simulated: bool,
    ) -> None:
        self._gpus, self._samples, self._hostname, self._simulated = gpus, samples, hostname, simulated

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "util": GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=LABELS),
            "used": GaugeMetricFamily(
                "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=LABELS
            ),
            "free": GaugeMetricFamily(
                "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=LABELS
            ),
            "temp": GaugeMetricFamily("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels=LABELS),
            "power": GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=LABELS),
            "xid": GaugeMetricFamily("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error.", labels=LABELS),
            "ecc": GaugeMetricFamily(
                "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                "Total number of double-bit volatile ECC errors.",
                labels=LABELS,
            ),
        }
        info = {gpu.index: gpu for gpu in self._gpus()}
        for sample in self._samples():
            gpu = info.get(sample.index)
            if gpu is None:
                continue
            labels = [
                str(gpu.index),
                gpu.uuid,
                f"nvidia{gpu.index}",
                gpu.model,
                self._hostname,
                str(self._simulated).lower(),
            ]
            families["util"].add_metric(labels, sample.util_pct)
            families["used"].add_metric(labels, sample.mem_used_mb)
            families["free"].add_metric(labels, max(0.0, gpu.memory_mb - sample.mem_used_mb))
            families["temp"].add_metric(labels, sample.temp_c)
            families["power"].add_metric(labels, sample.power_w)
            families["xid"].add_metric(labels, sample.xid_errors)
            families["ecc"].add_metric(labels, sample.ecc_uncorrected)
        yield from families.values()


def serve(collector: DcgmCollector, port: int, host: str = "127.0.0.1") -> str:
    """Serve /metrics on ``host:port`` (loopback unless told otherwise); returns its URL."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return f"http://{host}:{server.server_port}/metrics"
