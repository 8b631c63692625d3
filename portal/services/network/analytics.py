"""Network statistics for everyone (``/stats/network``, GraphQL, the explorer) and revenue analytics for
admins, computed with SQL and plain Python (pandas, for the admin's tables alone, is imported when they are
asked for); the public figures are cached for a short while.

Public: devices and GPUs by state, by model and by country; the hired share of online GPUs; the latest
average utilization; compute hours served and earnings paid out, all time. Simulated GPUs are counted apart.
Admin: revenue (charges), platform fees and provider earnings per day, customer cohorts (customers by
the month of their first charge, spending in each later month) and sign-up cohorts (``signup_cohorts``),
as tables or CSV.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func
from sqlmodel import Session, select

from portal.infra.cache import Cache
from portal.models import Device, NetworkSnapshot, Payout, PayoutState, UsageRecord
from portal.models.base import utcnow
from portal.services import csv_export
from portal.services.network import daily_figures, signup_cohorts
from portal.services.network.network_stats import ONLINE_STATES

if TYPE_CHECKING:
    # Only the admin's analytics tables use pandas, imported when asked for: about 50 MiB that the public
    # statistics, asked for by every visitor and the explorer, need not hold in every portal process.
    import pandas as pd

CACHE_KEY = "stats:network"
CACHE_TTL_S = 30


@dataclass(frozen=True)
class Group:
    key: str
    devices: int
    gpus: int
    gpus_hired: int
    simulated_gpus: int


@dataclass(frozen=True)
class NetworkStats:
    at: str
    devices: int
    gpus: int
    devices_online: int
    gpus_online: int
    gpus_hired: int
    simulated_gpus_online: int
    hired_share: float  # of online GPUs
    utilization_avg: float | None  # percent, the latest snapshot's average over online GPUs
    compute_hours: float  # GPU-hours served and metered, all time
    earnings_paid_micro: int  # paid to providers, confirmed on chain
    by_state: list[Group]
    by_model: list[Group]
    by_country: list[Group]


@dataclass(frozen=True)
class _DeviceRow:
    state: str
    model: str
    gpus: int
    country: str
    simulated: bool


def _groups(devices: Sequence[_DeviceRow], key: str) -> list[Group]:
    """Devices grouped by one of their fields, the most GPUs (then devices) first, ties by key."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for device in devices:
        total = totals[getattr(device, key)]
        total[0] += 1
        total[1] += device.gpus
        total[2] += device.gpus if device.state == "hired" else 0
        total[3] += device.gpus if device.simulated else 0
    groups = [Group(str(name), *total) for name, total in sorted(totals.items())]
    return sorted(groups, key=lambda group: (-group.gpus, -group.devices))


def compute(session: Session) -> NetworkStats:
    rows = session.exec(
        select(Device.state, Device.gpu_model, Device.gpu_count, Device.country, Device.simulated)
    ).all()
    devices = [
        _DeviceRow(str(state), model or "no GPU", int(gpus), country, bool(simulated))
        for state, model, gpus, country, simulated in rows
    ]
    online_states = {str(state) for state in ONLINE_STATES}
    online = [device for device in devices if device.state in online_states]
    gpus_online = sum(device.gpus for device in online)
    gpus_hired = sum(device.gpus for device in online if device.state == "hired")
    latest = session.exec(select(func.max(NetworkSnapshot.at))).one()
    utilization = None
    if latest is not None:
        utilization = session.exec(
            select(func.avg(NetworkSnapshot.util_avg)).where(NetworkSnapshot.at == latest)
        ).one()
    gpu_seconds = session.exec(
        select(func.coalesce(func.sum(UsageRecord.seconds * UsageRecord.gpu_count), 0))
    ).one()
    paid = session.exec(
        select(func.coalesce(func.sum(Payout.amount_micro), 0)).where(Payout.state == PayoutState.CONFIRMED)
    ).one()
    return NetworkStats(
        at=utcnow().isoformat(),
        devices=len(devices),
        gpus=sum(device.gpus for device in devices),
        devices_online=len(online),
        gpus_online=gpus_online,
        gpus_hired=gpus_hired,
        simulated_gpus_online=sum(device.gpus for device in online if device.simulated),
        hired_share=round(gpus_hired / gpus_online, 4) if gpus_online else 0.0,
        utilization_avg=round(float(utilization), 1) if utilization is not None else None,
        compute_hours=round(int(gpu_seconds) / 3600, 2),
        earnings_paid_micro=int(paid),
        by_state=_groups(devices, "state"),
        by_model=_groups(online, "model"),
        by_country=_groups(online, "country"),
    )


def network_stats(session: Session, cache: Cache) -> NetworkStats:
    """The network's statistics, computed at most every ``CACHE_TTL_S`` seconds."""
    cached = cache.get(CACHE_KEY)
    if cached:
        data = json.loads(cached)
        for name in ("by_state", "by_model", "by_country"):
            data[name] = [Group(**group) for group in data[name]]
        return NetworkStats(**data)
    stats = compute(session)
    cache.set(CACHE_KEY, json.dumps(asdict(stats)), ttl_s=CACHE_TTL_S)
    return stats


def revenue_by_day(session: Session, days: int = 30) -> pd.DataFrame:
    """Charges, platform fees and provider earnings per day (micro-USD), oldest first, empty days included
    (summed by the database: ``daily_figures``)."""
    import pandas as pd

    start, end = daily_figures.period(None, None, default_days=days)
    figures = daily_figures.daily_figures(session, start, end)
    return pd.DataFrame(
        [
            (f"{d.day:%Y-%m-%d}", d.revenue_micro, d.fees_micro, d.provider_earnings_micro)
            for d in figures.days
        ],
        columns=["day", "revenue_micro", "fees_micro", "provider_earnings_micro"],
    )


def customer_cohorts(session: Session) -> pd.DataFrame:
    """Customers by the month of their first charge (rows) and what the cohort spent each month (columns,
    micro-USD), with the cohort's size."""
    import pandas as pd

    rows = session.exec(
        select(UsageRecord.customer_id, UsageRecord.period_end, UsageRecord.amount_micro)
    ).all()
    frame = pd.DataFrame(rows, columns=["customer", "at", "amount"])
    if frame.empty:
        return pd.DataFrame(columns=["cohort", "customers"])
    frame["month"] = pd.to_datetime(frame["at"], utc=True).dt.strftime("%Y-%m")
    frame["cohort"] = frame.groupby("customer")["month"].transform("min")
    spend = frame.pivot_table(index="cohort", columns="month", values="amount", aggfunc="sum", fill_value=0)
    sizes = frame.groupby("cohort")["customer"].nunique().rename("customers")
    return pd.concat([sizes, spend.astype("int64")], axis=1).rename_axis("cohort").reset_index()


def signup_cohorts_table(session: Session) -> pd.DataFrame:
    """Customers and providers by the month they signed up (the last 12), and how many of each cohort
    were active in each month since (``signup_cohorts``): a row per cohort and month."""
    import pandas as pd

    rows = []
    for who in signup_cohorts.WHO:
        found = signup_cohorts.signup_cohorts(session, who, "month")
        for cohort in found.cohorts:
            for after, (active, share) in enumerate(zip(cohort.active, cohort.shares, strict=True)):
                rows.append((who, found.label(cohort), cohort.size, after, active, share))
    return pd.DataFrame(
        rows, columns=["who", "cohort", "signed_up", "months_after", "active", "active_share"]
    )


# The admin's tables by name (GET /admin/analytics, /admin/analytics/{name}.csv, the page's downloads).
TABLES: dict[str, Callable[[Session], pd.DataFrame]] = {
    "revenue": revenue_by_day,
    "cohorts": customer_cohorts,
    "signups": signup_cohorts_table,
}


def as_csv(table: pd.DataFrame) -> str:
    """An analytics table as a CSV file, its columns named in the header."""
    return csv_export.csv_text(table.columns, table.itertuples(index=False))
