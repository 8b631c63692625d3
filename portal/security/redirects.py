"""Redirects point at the portal's public URL, never at whatever ``Host`` a request claimed.

Starlette's trailing-slash redirects and the static pages' directory redirects build an absolute
``Location`` from the request's ``Host`` header, so ``Host: evil.example`` sent through a shared cache or a
lenient proxy would send visitors away. A ``Location`` whose host is the one the request named is rewritten
onto ``PORTAL_PUBLIC_URL``; redirects the portal means to send elsewhere (an OAuth provider) name another
host and pass unchanged.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def public_location(location: str, request_host: str, base_url: str) -> str:
    """``location`` moved onto ``base_url``'s scheme and host when it names the request's own host."""
    target = urlsplit(location)
    if not target.netloc or target.netloc.lower() != request_host.lower():
        return location
    public = urlsplit(base_url)
    return urlunsplit((public.scheme, public.netloc, target.path, target.query, target.fragment))


class PublicRedirectsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_host = Headers(scope=scope).get("host", "")
        base_url = scope["app"].state.parts.settings.base_url

        async def send_public_location(message: Message) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                message["headers"] = [
                    (name, public_location(value.decode("latin-1"), request_host, base_url).encode("latin-1"))
                    if name.lower() == b"location"
                    else (name, value)
                    for name, value in message.get("headers", [])
                ]
            await send(message)

        await self.app(scope, receive, send_public_location)
