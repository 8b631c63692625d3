"""Liveness, readiness and metrics: no credentials, served at the root and under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from portal.api.deps import CacheDep, EngineDep, SettingsDep
from portal.api.errors import error_response
from portal.metrics import REGISTRY
from portal.security.access import OPEN
from portal.services.health import check_readiness

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


@router.get("/metrics", summary="Prometheus text exposition", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
