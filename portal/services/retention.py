"""What the database keeps: operational rows go after their window, money stays forever.

Each rule below deletes one table's rows that no page, API or actor reads any more, in batches of
``PORTAL_RETENTION_BATCH_ROWS`` rows, each its own transaction, so a backlog of millions never holds one long
lock or one huge transaction: each batch selects the oldest matching rows by an index and deletes them by key.

The portal's own GPU sample store (the embedded mode, no Prometheus) also downsamples: samples older than an
hour are folded into one average per GPU and 10 minutes (the 24-hour chart's step), older than a day into one
per hour (the 7-day chart's), so a GPU holds about 1,000 rows for its week instead of 120,960. The 15-minute
and 1-hour charts read only the last hour's raw samples.

Kept forever by design (never touched here): ledger accounts, transactions and entries, usage records,
payouts, deposits and deposit accounts, the state transitions of payouts, and the rows money records point
at (users, devices, clusters, cluster nodes). Jobs are kept with their clusters. The network snapshots keep
their own 30-day window (``network_history.prune``, in the snapshot actor).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Engine,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    union,
)

from portal.config import Settings
from portal.infra.db import session_scope
from portal.models import (
    AuditLog,
    AuthSession,
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterState,
    CommandState,
    Device,
    DeviceCommand,
    DeviceState,
    FaultEvent,
    GpuSample,
    HearingGap,
    MeshCertificate,
    RefreshToken,
    StateTransition,
)
from portal.models.base import utcnow
from portal.services.providers import telemetry

# (age, seconds per row): samples older than the age are folded into one row per GPU and step.
SAMPLE_TIERS = ((timedelta(hours=1), 600), (timedelta(days=1), 3600))
ENDED_CLUSTER_STATES = (ClusterState.TERMINATED, ClusterState.FAILED, ClusterState.EXPIRED)
ACTIVE_CLUSTER_STATES = tuple(state for state in ClusterState if state not in ENDED_CLUSTER_STATES)
FINISHED_COMMAND_STATES = (CommandState.SUCCEEDED, CommandState.FAILED, CommandState.EXPIRED)
# Payouts' moves are part of the money trail: kept with the payouts.
KEPT_TRANSITIONS = ("payout",)


def _table(model: type) -> Table:
    return model.__table__  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True)
class Rule:
    """One table's policy: rows matching ``expired(row, cutoff)`` go, oldest first by ``order``."""

    table: Table
    window: timedelta
    expired: Callable[[Table, datetime], ColumnElement[bool]]
    order: str = "id"


def _samples(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    return row.c.at < cutoff


def _transitions(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    """Older than the window; of a device, not its newest move before the window: that one says what state
    the window opens in (its uptime chart and reliability score start from it). Nothing reads clusters' and
    nodes' moves but their rows' own state."""
    newer = _table(StateTransition).alias("newer")
    return and_(
        row.c.entity_type.not_in(KEPT_TRANSITIONS),
        row.c.at < cutoff,
        or_(
            row.c.entity_type != "device",
            exists().where(
                newer.c.entity_type == row.c.entity_type,
                newer.c.entity_id == row.c.entity_id,
                newer.c.at < cutoff,
                or_(newer.c.at > row.c.at, and_(newer.c.at == row.c.at, newer.c.id > row.c.id)),
            ),
        ),
    )


def _faults(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    return row.c.at < cutoff


def _hearing_gaps(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    return row.c.ended_at < cutoff


def _cluster_events(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    """The log of a cluster that ended before the window (its row keeps how it ended, the ledger what it
    cost); a live cluster's log stays whole."""
    clusters = _table(Cluster)
    return exists().where(
        clusters.c.id == row.c.cluster_id,
        clusters.c.state.in_(ENDED_CLUSTER_STATES),
        clusters.c.ended_at < cutoff,
    )


def _commands(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    """Answered (or expired) before the window, and not the command a live node still reads: the start
    command of a node of an active cluster (its head address), or the stop of a device not handed back."""
    nodes, clusters, devices = _table(ClusterNode), _table(Cluster), _table(Device)
    still_read = union(
        select(nodes.c.command_id).where(
            nodes.c.command_id.is_not(None),
            nodes.c.cluster_id.in_(select(clusters.c.id).where(clusters.c.state.in_(ACTIVE_CLUSTER_STATES))),
        ),
        select(nodes.c.command_id).where(
            nodes.c.command_id.is_not(None),
            nodes.c.device_id.in_(select(devices.c.id).where(devices.c.state == DeviceState.HIRED)),
        ),
    )
    return and_(
        row.c.state.in_(FINISHED_COMMAND_STATES),
        row.c.completed_at < cutoff,
        row.c.id.not_in(still_read),
    )


def _dead_session(sessions: Table, cutoff: datetime) -> ColumnElement[bool]:
    return or_(sessions.c.expires_at < cutoff, sessions.c.revoked_at < cutoff)


def _refresh_tokens(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    """The tokens of sessions gone: a used token is kept while its session lives, to catch its reuse."""
    sessions = _table(AuthSession)
    return exists().where(sessions.c.id == row.c.session_id, _dead_session(sessions, cutoff))


def _sessions(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    return _dead_session(row, cutoff)


def _certificates(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    """Expired: Nebula refuses them anyway, so the blocklist no longer needs them."""
    return row.c.expires_at < cutoff


def _audit(row: Table, cutoff: datetime) -> ColumnElement[bool]:
    return row.c.at < cutoff


def rules(settings: Settings) -> list[Rule]:
    """Every table that grows with use and is pruned, with its window, in the order they are pruned
    (refresh tokens before their sessions)."""
    days = timedelta(days=1)
    return [
        Rule(_table(GpuSample), settings.retention_gpu_samples_days * days, _samples),
        Rule(_table(StateTransition), settings.retention_state_transitions_days * days, _transitions),
        Rule(_table(FaultEvent), settings.retention_fault_events_days * days, _faults),
        Rule(_table(HearingGap), settings.retention_hearing_gaps_days * days, _hearing_gaps),
        Rule(_table(ClusterEvent), settings.retention_cluster_events_days * days, _cluster_events),
        Rule(
            _table(DeviceCommand),
            settings.retention_device_commands_days * days,
            _commands,
            order="completed_at",
        ),
        Rule(_table(RefreshToken), settings.retention_auth_sessions_days * days, _refresh_tokens),
        Rule(
            _table(AuthSession), settings.retention_auth_sessions_days * days, _sessions, order="expires_at"
        ),
        Rule(
            _table(MeshCertificate),
            settings.retention_mesh_certificates_days * days,
            _certificates,
            order="expires_at",
        ),
        Rule(_table(AuditLog), settings.retention_audit_log_days * days, _audit, order="at"),
    ]


@dataclass
class Pruned:
    """What one pass deleted, by table, and whether it stopped at its time budget with rows left."""

    rows: dict[str, int]
    batches: int = 0
    out_of_time: bool = False


def prune_batch(
    engine: Engine, rule: Rule, cutoff: datetime, batch_rows: int, after: int | None = None
) -> tuple[int, int | None]:
    """Delete up to ``batch_rows`` of the rule's oldest expired rows in one transaction; returns how many
    and, for tables ordered by their integer key, the newest key deleted: the next batch starts after it
    (``after``) instead of walking again past the old rows kept (a device's newest move, a live cluster's
    log)."""
    table = rule.table
    oldest = table.alias("oldest")
    key = table.primary_key.columns.values()[0]
    order = oldest.c[rule.order]
    chosen = select(oldest.c[key.name]).where(rule.expired(oldest, cutoff))
    if after is not None:
        chosen = chosen.where(order > after)
    chosen = chosen.order_by(order).limit(batch_rows)
    with session_scope(engine) as session:
        deleted = session.execute(delete(table).where(key.in_(chosen)).returning(key)).scalars().all()
    by_key = rule.order == key.name and deleted and isinstance(deleted[0], int)
    return len(deleted), max(deleted) if by_key else None


def _floor(moment: datetime, step: int) -> datetime:
    return datetime.fromtimestamp(int(moment.timestamp()) // step * step, UTC)


def downsample_batch(engine: Engine, cutoff: datetime, step: int, groups: int) -> tuple[int, int]:
    """Fold up to ``groups`` (GPU, ``step``-second bucket) groups of several samples before ``cutoff`` into
    one average row each, in one transaction; returns the groups folded and the rows that went."""
    samples = _table(GpuSample)
    with session_scope(engine) as session:
        bucket = telemetry.time_bucket(session, step).label("bucket")
        found = session.execute(
            select(
                samples.c.device_id,
                samples.c.gpu_index,
                bucket,
                func.count(),
                *(func.avg(samples.c[name]) for name in ("util_pct", "mem_used_mb", "temp_c", "power_w")),
            )
            .where(samples.c.at < cutoff)
            .group_by(samples.c.device_id, samples.c.gpu_index, bucket)
            .having(func.count() > 1)
            .limit(groups)
        ).all()
        if not found:
            return 0, 0
        folded = [
            {
                "device": device_id,
                "gpu": gpu_index,
                "start": datetime.fromtimestamp(int(slot) * step, UTC),
                "end": datetime.fromtimestamp((int(slot) + 1) * step, UTC),
                "util": util,
                "memory": memory,
                "temperature": temperature,
                "power": power,
            }
            for device_id, gpu_index, slot, _, util, memory, temperature, power in found
        ]
        session.execute(
            delete(samples).where(
                samples.c.device_id == bindparam("device"),
                samples.c.gpu_index == bindparam("gpu"),
                samples.c.at >= bindparam("start"),
                samples.c.at < bindparam("end"),
            ),
            folded,
        )
        session.execute(
            insert(samples).values(
                device_id=bindparam("device"),
                gpu_index=bindparam("gpu"),
                at=bindparam("start"),
                util_pct=bindparam("util"),
                mem_used_mb=bindparam("memory"),
                temp_c=bindparam("temperature"),
                power_w=bindparam("power"),
            ),
            folded,
        )
    return len(found), sum(int(count) for _, _, _, count, *_ in found) - len(found)


def prune(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime | None = None,
    budget_s: float = 240.0,
    tables: list[str] | None = None,
) -> Pruned:
    """Prune every rule's table (or ``tables``) batch by batch until no expired row is left or
    ``budget_s`` is spent, then fold old GPU samples; the next pass carries on where this one stopped."""
    now = now or utcnow()
    deadline = time.monotonic() + budget_s
    pruned = Pruned(rows={})
    for rule in rules(settings):
        if tables is not None and rule.table.name not in tables:
            continue
        cutoff = now - rule.window
        deleted, after = settings.retention_batch_rows, None
        pruned.rows[rule.table.name] = 0
        while deleted == settings.retention_batch_rows:
            if time.monotonic() > deadline:
                pruned.out_of_time = True
                return pruned
            deleted, after = prune_batch(engine, rule, cutoff, settings.retention_batch_rows, after)
            pruned.rows[rule.table.name] += deleted
            pruned.batches += 1
    # Folded last: samples past their window are deleted, not averaged first.
    if tables is None or "gpu_samples" in tables:
        groups = max(1, settings.retention_batch_rows // 100)  # up to 120 samples (10 minutes) a group
        pruned.rows["gpu_samples folded"] = 0
        for age, step in SAMPLE_TIERS:
            folded = groups
            while folded == groups:
                if time.monotonic() > deadline:
                    pruned.out_of_time = True
                    return pruned
                folded, rows = downsample_batch(engine, _floor(now - age, step), step, groups)
                pruned.rows["gpu_samples folded"] += rows
                pruned.batches += 1
    return pruned
