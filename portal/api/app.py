"""The FastAPI application that Reflex mounts its own backend into (``api_transformer``)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from portal import __version__
from portal.api import health
from portal.api.errors import install_error_handlers
from portal.api.middleware import RequestContextMiddleware
from portal.services.errors import NotFound

API_PREFIX = "/api/v1"


def create_api() -> FastAPI:
    api = FastAPI(
        title="GPU Portal API",
        version=__version__,
        summary="Rent GPUs as Ray clusters; connect GPUs and earn.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    install_error_handlers(api)
    api.add_middleware(RequestContextMiddleware)
    # Operators and load balancers probe the root paths; API clients find the same under /api/v1.
    api.include_router(health.router, include_in_schema=False)
    v1 = APIRouter(prefix=API_PREFIX)
    v1.include_router(health.router)
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
