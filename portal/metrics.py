"""The portal's own Prometheus metrics, exposed at ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "portal_http_requests",
    "HTTP requests answered by the portal, by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "portal_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HEARTBEATS = Counter("portal_heartbeats", "Heartbeats received from worker agents.", registry=REGISTRY)
PLACEMENTS = Counter(
    "portal_placements",
    "Cluster placements, by outcome (booked, or refused for capacity or credit).",
    ["outcome"],
    registry=REGISTRY,
)
ACTOR_RUNS = Counter(
    "portal_actor_runs",
    "Task actor runs, by actor and outcome.",
    ["actor", "outcome"],
    registry=REGISTRY,
)


class GpuGauges(CollectorRegistry):
    """A registry of one scrape's GPU readings, one gauge family per dcgm-exporter metric."""

    def __init__(self, gauges: Iterable[Any]) -> None:
        super().__init__(auto_describe=False)
        self._gauges = list(gauges)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from portal.services.telemetry import METRICS

        for metric, (_, unit, dcgm_name) in METRICS.items():
            family = None
            for gauge in (g for g in self._gauges if g.metric == metric):
                if family is None:
                    family = GaugeMetricFamily(
                        dcgm_name,
                        f"GPU {metric} ({unit}), from the agents' heartbeats.",
                        labels=list(gauge.labels),
                    )
                family.add_metric(list(gauge.labels.values()), gauge.value)
            if family is not None:
                yield family
