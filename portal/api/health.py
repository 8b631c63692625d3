"""Liveness, readiness and metrics, served at the root and under /api/v1: no credentials, except the
metrics token that /metrics asks for once ``PORTAL_METRICS_TOKEN`` is set."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from portal.api.deps import CacheDep, EngineDep, PartsDep, SettingsDep
from portal.api.errors import error_response
from portal.infra.db import session_scope
from portal.infra.metrics import REGISTRY, actor_runs_exposition, payouts_exposition
from portal.parts import AppParts
from portal.security.access import METRICS_SCRAPER, OPEN
from portal.services.health import check_readiness
from portal.services.money import payouts
from portal.services.providers import telemetry

logger = logging.getLogger(__name__)
# No credentials are read: these must answer even when the database is down.
router = APIRouter(tags=["health"], dependencies=[Depends(OPEN)])


@router.get("/healthz", summary="200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 when database, cache and broker answer; 503 naming the one that does not")
async def readyz(settings: SettingsDep, engine: EngineDep, cache: CacheDep) -> JSONResponse:
    checks = await run_in_threadpool(check_readiness, settings, engine, cache)
    down = [name for name, result in checks.items() if result != "ok"]
    if down:
        return error_response(
            503, "not_ready", f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} down", checks
        )
    return JSONResponse({"status": "ready", "checks": checks})


def _shared_exposition(parts: AppParts) -> bytes:
    """What the database and the cache know (the GPU gauges, every worker's actor runs), or nothing while
    they are down: /metrics must still answer."""
    from tasks import broker

    try:
        with session_scope(parts.engine) as session:
            readings = telemetry.online_gpu_readings(session, parts.cache, parts.settings)
            payout_totals = payouts.totals_by_state(session)
        actors = actor_runs_exposition(parts.cache, broker.get_declared_actors())
    except (SQLAlchemyError, RedisError):
        logger.warning(
            "GPU gauges and actor runs left out of /metrics: database or cache down", exc_info=True
        )
        return b""
    return actors + payouts_exposition(payout_totals) + telemetry.gpu_exposition(readings)


@router.get(
    "/metrics",
    summary="Prometheus text exposition",
    response_class=Response,
    dependencies=[Depends(METRICS_SCRAPER)],
)
async def metrics(parts: PartsDep) -> Response:
    """The portal's counters, and every online device's GPUs under dcgm-exporter names and labels."""
    shared = await run_in_threadpool(_shared_exposition, parts)
    return Response(generate_latest(REGISTRY) + shared, media_type=CONTENT_TYPE_LATEST)
