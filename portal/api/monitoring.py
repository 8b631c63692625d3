"""Prometheus integration for operators: the agents' own /metrics endpoints, by HTTP service discovery."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from portal.api.deps import SessionDep, SettingsDep
from portal.models import Role
from portal.security.access import SignedIn
from portal.security.principal import Principal
from portal.services.providers import telemetry

router = APIRouter(prefix="/monitoring", tags=["admin"])
# An admin, or an admin's API key with the metrics:read scope (what Prometheus is configured with).
MetricsReader = Annotated[Principal, Depends(SignedIn([Role.ADMIN], scope="metrics:read"))]


@router.get("/targets", summary="Online agents' /metrics endpoints, in Prometheus http_sd format")
def targets(session: SessionDep, settings: SettingsDep, _: MetricsReader) -> list[dict[str, Any]]:
    return telemetry.scrape_targets(session, settings)
