"""The FastAPI application that Reflex mounts its own backend into (``api_transformer``)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from portal import __version__
from portal.api import admin, auth, devices, health, users, worker
from portal.api.deps import AppParts
from portal.api.errors import install_error_handlers
from portal.api.middleware import RequestContextMiddleware
from portal.security.firewall import FirewallMiddleware, SecurityHeadersMiddleware
from portal.services.errors import NotFound

API_PREFIX = "/api/v1"


def create_api(parts: AppParts | None = None) -> FastAPI:
    """The API over the given parts; by default the settings' database, cache and broker."""
    api = FastAPI(
        title="GPU Portal API",
        version=__version__,
        summary="Rent GPUs as Ray clusters; connect GPUs and earn.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    api.state.parts = parts or AppParts.from_settings()
    install_error_handlers(api)
    # Added inside out: the request context wraps everything, so even a 429 or 413 carries its request id.
    api.add_middleware(FirewallMiddleware)
    api.add_middleware(SecurityHeadersMiddleware)
    api.add_middleware(RequestContextMiddleware)
    # Operators and load balancers probe the root paths; API clients find the same under /api/v1.
    api.include_router(health.router, include_in_schema=False)
    v1 = APIRouter(prefix=API_PREFIX)
    v1.include_router(health.router)
    v1.include_router(auth.router)
    v1.include_router(users.router)
    v1.include_router(devices.router)
    v1.include_router(worker.router)
    v1.include_router(admin.router)
    api.include_router(v1)
    # Reflex is mounted after these routes and answers every other path with its web app; unknown API
    # paths must still get the JSON error envelope, not a web page.
    api.add_api_route(
        "/api/{path:path}",
        _unknown_api_path,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    return api


async def _unknown_api_path(path: str) -> None:
    raise NotFound(f"No API route /api/{path}.")
