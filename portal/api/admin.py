"""Admin routes: people (roles, lock), devices and their faults, clusters, credits, payouts, analytics and
the audit log."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from portal.api.billing import payout_out
from portal.api.clusters import StateFilter, cluster_out
from portal.api.deps import CacheDep, FollowUpsDep, SessionDep, SettingsDep
from portal.api.devices import device_out
from portal.api.users import user_out
from portal.models import DeviceState, PayoutState
from portal.schemas.auth import AuditEntryOut, RolesIn, UserOut
from portal.schemas.billing import (
    AdminPayoutOut,
    AnalyticsDayOut,
    AnalyticsTotalsOut,
    BalanceOut,
    CreditGrantIn,
    DailyAnalyticsOut,
    PayoutOut,
    PayoutRetryIn,
)
from portal.schemas.clusters import ClusterOut
from portal.schemas.common import Limit, Moment, Offset, Page
from portal.schemas.devices import AdminDeviceOut, BlockIn, FaultOut
from portal.security.access import ADMIN, OriginDep
from portal.security.principal import Principal
from portal.services import audit
from portal.services.accounts import admin_users, users
from portal.services.money import billing, payouts
from portal.services.network import analytics, daily_figures
from portal.services.providers import device_admin
from portal.services.rentals import clusters

router = APIRouter(prefix="/admin", tags=["admin"])
AdminCaller = Annotated[Principal, Depends(ADMIN)]


@router.get("/users", summary="Accounts, newest first; filter by email")
def list_users(
    session: SessionDep,
    _: AdminCaller,
    email: Annotated[str | None, Query(max_length=320)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[UserOut]:
    rows, total = users.search_users(session, email=email, limit=limit, offset=offset)
    return Page(items=[user_out(session, user) for user in rows], total=total, limit=limit, offset=offset)


@router.put(
    "/users/{user_id}/roles",
    summary="Set an account's roles (audited); its access tokens hold the new roles from the next request",
)
def set_user_roles(
    user_id: uuid.UUID,
    body: RolesIn,
    session: SessionDep,
    cache: CacheDep,
    caller: AdminCaller,
    origin: OriginDep,
) -> UserOut:
    admin_users.set_roles(session, cache, user_id, body.roles, admin_id=caller.user_id, origin=origin)
    return user_out(session, users.get_user(session, user_id))


@router.post(
    "/users/{user_id}/lock",
    summary="Lock an account (audited): it cannot sign in, and its tokens and keys stop working at once",
)
def lock_user(
    user_id: uuid.UUID, session: SessionDep, cache: CacheDep, caller: AdminCaller, origin: OriginDep
) -> UserOut:
    admin_users.set_locked(session, cache, user_id, True, admin_id=caller.user_id, origin=origin)
    return user_out(session, users.get_user(session, user_id))


@router.post("/users/{user_id}/unlock", summary="Unlock an account (audited)")
def unlock_user(
    user_id: uuid.UUID, session: SessionDep, cache: CacheDep, caller: AdminCaller, origin: OriginDep
) -> UserOut:
    admin_users.set_locked(session, cache, user_id, False, admin_id=caller.user_id, origin=origin)
    return user_out(session, users.get_user(session, user_id))


@router.get("/audit", summary="The audit log, newest first, with filters")
def audit_log(
    session: SessionDep,
    _: AdminCaller,
    action: Annotated[
        str | None, Query(max_length=64, description="Action or its prefix, e.g. auth.")
    ] = None,
    actor_id: Annotated[str | None, Query(max_length=64)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[str | None, Query(pattern="^(success|failure)$")] = None,
    since: Moment | None = None,
    until: Moment | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditEntryOut]:
    entries, total = audit.search(
        session,
        action=action,
        actor_id=actor_id,
        target_id=target_id,
        outcome=outcome,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    return Page(
        items=[AuditEntryOut.model_validate(entry, from_attributes=True) for entry in entries],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/clusters", summary="Every customer's clusters, newest first")
def list_clusters(
    session: SessionDep,
    settings: SettingsDep,
    _: AdminCaller,
    state: StateFilter = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ClusterOut]:
    rows, total = clusters.list_clusters(session, None, limit=limit, offset=offset, state=state)
    return Page(
        items=[cluster_out(session, settings, c, events=False) for c in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post("/clusters/{cluster_id}/terminate", status_code=202, summary="Terminate any cluster")
def terminate_cluster(
    cluster_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    followups: FollowUpsDep,
    caller: AdminCaller,
    origin: OriginDep,
) -> ClusterOut:
    cluster = clusters.terminate(
        session,
        followups,
        cluster_id,
        owner_id=None,
        reason="terminated by an admin",
        actor_id=caller.id,
        origin=origin,
    )
    return cluster_out(session, settings, cluster)


@router.post("/credits", status_code=201, summary="Grant credits to an account, with a reason (audited)")
def grant_credits(
    body: CreditGrantIn, session: SessionDep, caller: AdminCaller, origin: OriginDep
) -> BalanceOut:
    billing.grant_credits(
        session,
        user_id=body.user_id,
        amount_micro=body.amount_micro,
        reason=body.reason,
        admin_id=caller.user_id,
        origin=origin,
    )
    available, escrow = billing.balance(session, body.user_id)
    return BalanceOut(available_micro=available, escrow_micro=escrow)


@router.get("/payouts", summary="Every payout, newest first; filter by state, provider and when it was made")
def list_payouts(
    session: SessionDep,
    settings: SettingsDep,
    _: AdminCaller,
    state: Annotated[PayoutState | None, Query()] = None,
    provider_id: uuid.UUID | None = None,
    provider: Annotated[
        str | None, Query(max_length=320, description="Part of the provider's email.")
    ] = None,
    since: Annotated[Moment | None, Query(description="Made at or after this moment.")] = None,
    until: Annotated[Moment | None, Query(description="Made before this moment.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AdminPayoutOut]:
    rows, total = payouts.search_payouts(
        session,
        state=state,
        provider_id=provider_id,
        provider_email=provider,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    items = [
        AdminPayoutOut(**payout_out(settings, payout).model_dump(), provider_email=email)
        for payout, email in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post("/payouts/{payout_id}/retry", summary="Send a failed payout again (audited)")
def retry_payout(
    payout_id: uuid.UUID,
    body: PayoutRetryIn,
    session: SessionDep,
    settings: SettingsDep,
    followups: FollowUpsDep,
    caller: AdminCaller,
    origin: OriginDep,
) -> PayoutOut:
    payout = payouts.retry(
        session, followups, payout_id, reason=body.reason, admin_id=caller.user_id, origin=origin
    )
    return payout_out(settings, payout)


@router.get(
    "/devices", summary="Every provider's devices, newest first; filter by state, name or owner email"
)
def list_devices(
    session: SessionDep,
    settings: SettingsDep,
    _: AdminCaller,
    state: Annotated[DeviceState | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=100, description="Part of the name or owner email.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AdminDeviceOut]:
    rows, total = device_admin.search_devices(session, state=state, text=q, limit=limit, offset=offset)
    items = [
        AdminDeviceOut(
            **device_out(session, device, settings).model_dump(), owner_id=device.owner_id, owner_email=email
        )
        for device, email in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/devices/{device_id}/block", summary="Take a device off the market, with the reason its owner sees"
)
def block_device(
    device_id: uuid.UUID,
    body: BlockIn,
    session: SessionDep,
    settings: SettingsDep,
    followups: FollowUpsDep,
    caller: AdminCaller,
    origin: OriginDep,
) -> AdminDeviceOut:
    device = device_admin.block(
        session, followups, device_id, body.reason, admin_id=caller.user_id, origin=origin
    )
    return AdminDeviceOut(
        **device_out(session, device, settings).model_dump(), owner_id=device.owner_id, owner_email=None
    )


@router.post("/devices/{device_id}/unblock", summary="Let a blocked device prove its compute and return")
def unblock_device(
    device_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    followups: FollowUpsDep,
    caller: AdminCaller,
    origin: OriginDep,
) -> AdminDeviceOut:
    device = device_admin.unblock(session, followups, device_id, admin_id=caller.user_id, origin=origin)
    return AdminDeviceOut(
        **device_out(session, device, settings).model_dump(), owner_id=device.owner_id, owner_email=None
    )


@router.get("/faults", summary="Fault events across the network, newest first, with filters")
def list_faults(
    session: SessionDep,
    _: AdminCaller,
    device_id: uuid.UUID | None = None,
    cluster_id: uuid.UUID | None = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    severity: Annotated[str | None, Query(pattern="^(info|warning|error|critical)$")] = None,
    since: Moment | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[FaultOut]:
    rows, total = device_admin.search_faults(
        session,
        device_id=device_id,
        cluster_id=cluster_id,
        kind=kind,
        severity=severity,
        since=since,
        limit=limit,
        offset=offset,
    )
    items = [
        FaultOut(**fault.model_dump(exclude={"details", "resolved_at"}), device_name=name)
        for fault, name in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/analytics",
    summary="Revenue, fees and earnings per day (30 days), customer cohorts by first charge (spending) and "
    "by sign-up month (who was active since)",
)
def analytics_tables(session: SessionDep, _: AdminCaller) -> dict[str, list[dict]]:
    return {name: table(session).to_dict(orient="records") for name, table in analytics.TABLES.items()}


@router.get(
    "/analytics/daily",
    summary="Revenue, fees, earnings, GPU-hours (in all and by GPU model) and active customers and providers "
    "per day over a period of up to 366 days (default: the last 30)",
)
def analytics_daily(
    session: SessionDep, _: AdminCaller, since: date | None = None, until: date | None = None
) -> DailyAnalyticsOut:
    return _daily_out(daily_figures.daily_figures(session, *daily_figures.period(since, until)))


@router.get(
    "/analytics/daily.csv",
    summary="The figures per day over a period as CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def analytics_daily_csv(
    session: SessionDep, _: AdminCaller, since: date | None = None, until: date | None = None
) -> Response:
    figures = daily_figures.daily_figures(session, *daily_figures.period(since, until))
    name = f"gpu-portal-daily-{figures.start:%Y-%m-%d}-{figures.end:%Y-%m-%d}.csv"
    return Response(
        daily_figures.as_csv(figures),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _daily_out(figures: daily_figures.DailyFigures) -> DailyAnalyticsOut:
    return DailyAnalyticsOut(
        since=figures.start,
        until=figures.end,
        days=[AnalyticsDayOut(**asdict(day)) for day in figures.days],
        gpu_hours_by_model=figures.gpu_hours_by_model,
        totals=AnalyticsTotalsOut(**asdict(figures.totals)),
    )


@router.get(
    "/analytics/{table}.csv",
    summary="One analytics table as CSV: revenue, cohorts (spending) or signups (active since signing up)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def analytics_csv(
    table: Literal["revenue", "cohorts", "signups"], session: SessionDep, _: AdminCaller
) -> Response:
    return Response(
        analytics.as_csv(analytics.TABLES[table](session)),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="gpu-portal-{table}.csv"'},
    )
