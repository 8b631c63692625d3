"""What stands in front of the app for every request, pages and API alike."""

from __future__ import annotations

from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from portal.api.heartbeat_lane import HeartbeatLane
from portal.parts import AppParts


def in_front(app: ASGIApp, parts: AppParts) -> ASGIApp:
    """The heartbeat lane before the app, and before both, behind a trusted reverse proxy, the client's
    own address taken from its ``X-Forwarded-For``: rate limits, the audit log and a device's registered
    address (the only host the portal calls for it) are the client's, never the proxy's. Headers from
    any other peer are ignored, so nobody can claim an address by sending them."""
    served: ASGIApp = HeartbeatLane(app, parts)
    if parts.settings.trusted_proxies:
        served = ProxyHeadersMiddleware(served, trusted_hosts=parts.settings.trusted_proxies)
    return served
