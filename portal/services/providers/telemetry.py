"""GPU telemetry: per-GPU time series of utilization, memory, temperature and power for devices and
clusters, averaged into buckets that suit the range asked for.

One query layer for the pages and the API. This is its embedded back end, the portal's own sample store
(``GpuSample`` rows written by the heartbeat flush, pruned by ``services/retention.py``); a Prometheus back
end answers the same shape when ``PORTAL_PROMETHEUS_URL`` is set.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from sqlalchemy import ColumnElement, Integer, cast, func
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.infra.cache import Cache
from portal.infra.metrics import escape_label
from portal.models import Device, DeviceState, Gpu, GpuSample, StateTransition
from portal.models.base import utcnow
from portal.services.errors import Unavailable
from portal.services.providers import liveness
from portal.services.providers.devices import MISSED_HEARTBEATS_OFFLINE

# label: (minutes shown, seconds per point): 60 to 170 points a series.
RANGES = {"15m": (15, 15), "1h": (60, 60), "24h": (1440, 600), "7d": (10080, 3600)}
# Our metric name, the sample column, its unit, and the DCGM-exporter name Prometheus knows it by.
METRICS = {
    "util": ("util_pct", "%", "DCGM_FI_DEV_GPU_UTIL"),
    "memory": ("mem_used_mb", "MiB", "DCGM_FI_DEV_FB_USED"),
    "temperature": ("temp_c", "°C", "DCGM_FI_DEV_GPU_TEMP"),
    "power": ("power_w", "W", "DCGM_FI_DEV_POWER_USAGE"),
}


@dataclass
class Series:
    """One GPU's points for one metric."""

    device_id: uuid.UUID
    device_name: str
    gpu_index: int
    times: list[datetime] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.device_name} · GPU {self.gpu_index}"


def bucket_seconds(minutes: int) -> int:
    for span, step in RANGES.values():
        if minutes <= span:
            return step
    return RANGES["7d"][1]


def time_bucket(session: Session, step: int) -> ColumnElement[int]:
    """The sample's time bucket: seconds since the epoch, divided by the step (charts average by it,
    retention folds old samples by it)."""
    if session.get_bind().dialect.name == "sqlite":
        return cast(cast(func.strftime("%s", GpuSample.at), Integer) / step, Integer)
    return cast(func.floor(func.extract("epoch", GpuSample.at) / step), Integer)


def from_moment(found: dict[str, list[Series]], start: datetime) -> dict[str, list[Series]]:
    """The same series without their points before ``start``: a cluster's charts begin with its rental,
    not with what its devices did for the tenants before."""
    return {
        metric: [
            Series(
                one.device_id,
                one.device_name,
                one.gpu_index,
                [at for at in one.times if at >= start],
                [value for at, value in zip(one.times, one.values, strict=True) if at >= start],
            )
            for one in everyone
        ]
        for metric, everyone in found.items()
    }


def series(
    session: Session, settings: Settings, device_ids: list[uuid.UUID], minutes: int
) -> dict[str, list[Series]]:
    """Every metric's series for the devices' GPUs over the last ``minutes``, bucket-averaged: from
    Prometheus when ``PORTAL_PROMETHEUS_URL`` is set, else from the portal's own sample store."""
    if not device_ids:
        return {metric: [] for metric in METRICS}
    if settings.prometheus_url:
        return _from_prometheus(session, settings.prometheus_url, device_ids, minutes)
    return _from_store(session, device_ids, minutes)


def _from_prometheus(
    session: Session, url: str, device_ids: list[uuid.UUID], minutes: int
) -> dict[str, list[Series]]:
    """Range queries over the GPU gauges Prometheus scraped from the portal's /metrics."""
    step = bucket_seconds(minutes)
    end = utcnow()
    names = dict(session.exec(select(Device.id, Device.name).where(col(Device.id).in_(device_ids))).all())
    selector = "|".join(str(device_id) for device_id in device_ids)
    prometheus = PrometheusConnect(url=url, disable_ssl=False)
    found: dict[str, list[Series]] = {}
    for metric, (_, _, dcgm_name) in METRICS.items():
        query = f'avg_over_time({dcgm_name}{{portal_device=~"{selector}"}}[{step}s])'
        try:
            result = prometheus.custom_query_range(
                query, start_time=end - timedelta(minutes=minutes), end_time=end, step=f"{step}s"
            )
        except (PrometheusApiClientException, requests.RequestException) as error:
            raise Unavailable(f"Prometheus did not answer the GPU query ({type(error).__name__}).") from error
        found[metric] = []
        for item in sorted(
            result, key=lambda r: (r["metric"].get("portal_device", ""), r["metric"].get("gpu", ""))
        ):
            labels = item["metric"]
            device_id = uuid.UUID(labels["portal_device"])
            one = Series(device_id, names.get(device_id, str(device_id)[:8]), int(labels.get("gpu", 0)))
            for timestamp, value in item["values"]:
                one.times.append(datetime.fromtimestamp(float(timestamp), UTC))
                one.values.append(round(float(value), 2))
            found[metric].append(one)
    return found


def _from_store(session: Session, device_ids: list[uuid.UUID], minutes: int) -> dict[str, list[Series]]:
    step = bucket_seconds(minutes)
    since = utcnow() - timedelta(minutes=minutes)
    bucket = time_bucket(session, step).label("bucket")
    rows = session.exec(
        select(
            GpuSample.device_id,
            GpuSample.gpu_index,
            bucket,
            *(func.avg(getattr(GpuSample, column)) for column, _, _ in METRICS.values()),
        )
        .where(col(GpuSample.device_id).in_(device_ids), GpuSample.at >= since)
        .group_by(GpuSample.device_id, GpuSample.gpu_index, bucket)
        .order_by(GpuSample.device_id, GpuSample.gpu_index, bucket)
    ).all()
    names = dict(session.exec(select(Device.id, Device.name).where(col(Device.id).in_(device_ids))).all())
    found: dict[str, dict[tuple[uuid.UUID, int], Series]] = {metric: {} for metric in METRICS}
    for device_id, gpu_index, slot, *averages in rows:
        at = datetime.fromtimestamp(int(slot) * step, UTC)
        for metric, value in zip(METRICS, averages, strict=True):
            one = found[metric].setdefault(
                (device_id, gpu_index), Series(device_id, names.get(device_id, str(device_id)[:8]), gpu_index)
            )
            one.times.append(at)
            one.values.append(round(float(value), 2))
    return {metric: list(by_gpu.values()) for metric, by_gpu in found.items()}


def as_json(found: dict[str, list[Series]], minutes: int) -> dict:
    """The API's shape of ``series``: per metric its unit, DCGM name and per-GPU points."""
    return {
        "minutes": minutes,
        "step_s": bucket_seconds(minutes),
        "metrics": {
            metric: {
                "unit": METRICS[metric][1],
                "dcgm_name": METRICS[metric][2],
                "series": [
                    {
                        "device_id": one.device_id,
                        "device_name": one.device_name,
                        "gpu_index": one.gpu_index,
                        "label": one.label,
                        "points": list(zip(one.times, one.values, strict=True)),
                    }
                    for one in found[metric]
                ],
            }
            for metric in METRICS
        },
    }


@dataclass(frozen=True)
class GpuReading:
    labels: dict[str, str]  # as dcgm-exporter labels a GPU, plus the portal's device id and "simulated"
    sample: dict[str, float]  # the latest heartbeat's reading, by sample column


def online_gpu_readings(session: Session, cache: Cache, settings: Settings) -> list[GpuReading]:
    """Every online device's GPUs with their latest readings, for the portal's ``/metrics``."""
    online_since = utcnow() - timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    rows = session.exec(
        select(Device.id, Device.hostname, Device.simulated, Gpu.index, Gpu.uuid, Gpu.model)
        .join(Gpu, col(Gpu.device_id) == Device.id)
        .where(col(Device.last_heartbeat_at) > online_since)
    ).all()
    gpus = {(device_id, index): (uuid_, model) for device_id, _, _, index, uuid_, model in rows}
    online = list(
        dict.fromkeys((device_id, hostname, simulated) for device_id, hostname, simulated, *_ in rows)
    )
    latest = cache.get_many([liveness.samples_key(device_id) for device_id, _, _ in online])
    readings = []
    for (device_id, hostname, simulated), raw in zip(online, latest, strict=True):
        for sample in json.loads(raw)["gpus"] if raw else []:
            known = gpus.get((device_id, sample["index"]))
            if known is None:
                continue
            labels = {
                "gpu": str(sample["index"]),
                "UUID": known[0],
                "device": f"nvidia{sample['index']}",
                "modelName": known[1],
                "Hostname": hostname,
                "portal_device": str(device_id),
                "simulated": "true" if simulated else "false",
            }
            readings.append(GpuReading(labels, sample))
    return readings


def scrape_targets(session: Session, settings: Settings) -> list[dict]:
    """The online agents' own ``/metrics`` endpoints, in Prometheus' HTTP service-discovery format."""
    online_since = utcnow() - timedelta(seconds=settings.heartbeat_interval_s * MISSED_HEARTBEATS_OFFLINE)
    targets = []
    for device_id, name, url, address, simulated in session.exec(
        select(Device.id, Device.name, Device.metrics_url, Device.address, Device.simulated).where(
            col(Device.metrics_url).is_not(None), col(Device.last_heartbeat_at) > online_since
        )
    ).all():
        parsed = httpx.URL(url)
        # Registration keeps only URLs on the device's own address (services/node_addresses); a row from
        # before that check is held to it here too.
        if parsed.scheme not in ("http", "https") or parsed.host != address or parsed.port is None:
            continue
        targets.append(
            {
                "targets": [f"{parsed.host}:{parsed.port}"],
                "labels": {
                    "__scheme__": parsed.scheme,
                    "__metrics_path__": parsed.path or "/metrics",
                    "portal_device": str(device_id),
                    "portal_device_name": name,
                    "simulated": "true" if simulated else "false",
                },
            }
        )
    return targets


UP_STATES = {DeviceState.VERIFYING, DeviceState.READY, DeviceState.HIRED}


def daily_uptime(session: Session, device: Device, days: int = 30) -> list[tuple[datetime, float]]:
    """The device's uptime per day (percent of the day in an online state) over the last ``days``, from
    its recorded state transitions; days before it was added are left out."""
    now = utcnow()
    start = max(
        device.created_at, (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    )
    moves = session.exec(
        select(StateTransition.at, StateTransition.to_state)
        .where(StateTransition.entity_type == "device", StateTransition.entity_id == str(device.id))
        .order_by(col(StateTransition.at))
    ).all()
    # The state at each moment: registered until the first move, then each move's target.
    timeline = [(device.created_at, str(DeviceState.REGISTERED)), *((at, str(state)) for at, state in moves)]
    return uptime_by_day(timeline, start, now)


def uptime_by_day(
    timeline: list[tuple[datetime, str]], start: datetime, now: datetime
) -> list[tuple[datetime, float]]:
    """Percent of each day from ``start`` to ``now`` spent in an online state, given the states the device
    entered in time order (the first one holding from ``start`` at the latest)."""
    days_out = []
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < now:
        end = min(day + timedelta(days=1), now)
        window_start = max(day, start)
        up = 0.0
        for (at, state), following in zip(timeline, [*timeline[1:], (now, "")], strict=True):
            lo, hi = max(at, window_start), min(following[0], end)
            if hi > lo and state in UP_STATES:
                up += (hi - lo).total_seconds()
        span = (end - window_start).total_seconds()
        if span > 0:
            days_out.append((day, round(100 * up / span, 1)))
        day += timedelta(days=1)
    return days_out


def gpu_exposition(readings: Sequence[GpuReading]) -> bytes:
    """The GPU readings in the text exposition format, one gauge family per dcgm-exporter metric.

    Written directly rather than through prometheus_client's collectors: with 10,000 devices these are
    80,000 samples a scrape, and each GPU's labels are formatted once here instead of once per metric."""
    if not readings:
        return b""
    labels = [
        ",".join(f'{name}="{escape_label(value)}"' for name, value in reading.labels.items())
        for reading in readings
    ]
    lines = []
    for metric, (column, unit, dcgm_name) in METRICS.items():
        lines.append(f"# HELP {dcgm_name} GPU {metric} ({unit}), from the agents' heartbeats.")
        lines.append(f"# TYPE {dcgm_name} gauge")
        lines.extend(
            f"{dcgm_name}{{{label}}} {float(reading.sample[column])!r}"
            for label, reading in zip(labels, readings, strict=True)
        )
    return ("\n".join(lines) + "\n").encode()
