"""The FastAPI application that Reflex mounts its own backend into (``api_transformer``)."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from portal import __version__
from portal.api import (
    admin,
    auth,
    billing,
    cluster_proxy,
    clusters,
    devices,
    health,
    market,
    monitoring,
    stats,
    users,
    worker,
)
from portal.api.errors import install_error_handlers
from portal.api.middleware import RequestContextMiddleware
from portal.api.openapi import document_errors
from portal.parts import AppParts
from portal.parts import current as current_parts
from portal.security.access import OPEN
from portal.security.firewall import FirewallMiddleware, SecurityHeadersMiddleware
from portal.security.redirects import PublicRedirectsMiddleware
from portal.services.errors import NotFound

API_PREFIX = "/api/v1"
DOCS_ASSETS = "/api/docs-assets"
# Swagger UI 5 (OpenAPI 3.1), as fastapi-offline ships it.
SWAGGER_UI_FILES = Path(fastapi_offline.__file__).parent / "static"


def create_api(parts: AppParts | None = None) -> FastAPI:
    """The API over the given parts; by default the settings' database, cache and broker."""
    api = FastAPI(
        title="GPU Portal API",
        version=__version__,
        summary="Rent GPUs as Ray clusters; connect GPUs and earn.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # served below from the portal's own files: the docs work on a closed network
        redoc_url=None,
    )
    api.state.parts = parts or current_parts()
    install_error_handlers(api)
    # Added inside out: the request context wraps everything, so even a 429 or 413 carries its request id.
    api.add_middleware(FirewallMiddleware)
    api.add_middleware(SecurityHeadersMiddleware)
    api.add_middleware(PublicRedirectsMiddleware)
    api.add_middleware(RequestContextMiddleware)
    # Operators and load balancers probe the root paths; API clients find the same under /api/v1.
    api.include_router(health.router, include_in_schema=False)
    v1 = APIRouter(prefix=API_PREFIX)
    for router in (
        health.router,
        auth.router,
        users.router,
        devices.router,
        worker.router,
        market.router,
        stats.router,
        clusters.router,
        billing.router,
        monitoring.router,
        admin.router,
    ):
        v1.include_router(router)
    api.include_router(v1)
    api.include_router(cluster_proxy.router)
    api.mount(DOCS_ASSETS, StaticFiles(directory=SWAGGER_UI_FILES), name="docs-assets")
    api.add_api_route("/api/docs", _docs, include_in_schema=False, dependencies=[Depends(OPEN)])
    # Reflex is mounted after these routes and answers every other path with its web app; unknown API
    # paths must still get the JSON error envelope, not a web page.
    api.add_api_route(
        "/api/{path:path}",
        _unknown_api_path,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
        dependencies=[Depends(OPEN)],
    )
    document_errors(api)
    return api


async def _docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/api/openapi.json",
        title="GPU Portal API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
    )


async def _unknown_api_path(path: str) -> None:
    raise NotFound(f"No API route /api/{path}.")
