"""A small, real OpenID Connect provider for tests: discovery, authorize (auto-consent), token with PKCE
S256 and client secret checks, userinfo. Served over HTTP on loopback by uvicorn in a thread."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from tests.servers import ServerThread

CLIENT_ID = "portal-test-client"
CLIENT_SECRET = "portal-test-secret"  # a test fixture's credential for a provider that exists only in tests


@dataclass
class OidcProvider:
    subject: str = "user-4242"
    email: str = "oidc.user@example.com"
    email_verified: bool = True
    url: str = ""
    codes: dict[str, dict] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    token_requests: list[dict] = field(default_factory=list)

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def app(self) -> Starlette:
        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.url,
                    "authorization_endpoint": f"{self.url}/authorize",
                    "token_endpoint": f"{self.url}/token",
                    "userinfo_endpoint": f"{self.url}/userinfo",
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                }
            )

        async def authorize(request: Request) -> RedirectResponse | JSONResponse:
            q = request.query_params
            if (
                q.get("client_id") != CLIENT_ID
                or q.get("code_challenge_method") != "S256"
                or not q.get("state")
            ):
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"]}
            return RedirectResponse(
                f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", 302
            )

        async def token(request: Request) -> JSONResponse:
            form = dict(await request.form())
            self.token_requests.append(form)
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            if "authorization" in request.headers:
                decoded = base64.b64decode(request.headers["authorization"].split()[1]).decode()
                client_id, client_secret = decoded.split(":", 1)
            grant = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            )
            if client_id != CLIENT_ID or client_secret != CLIENT_SECRET or grant is None:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            if challenge != grant["challenge"] or form.get("redirect_uri") != grant["redirect_uri"]:
                return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
            access = secrets.token_urlsafe(16)
            self.tokens[access] = self.subject
            return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 300})

        async def userinfo(request: Request) -> JSONResponse:
            access = request.headers.get("authorization", "").removeprefix("Bearer ")
            if access not in self.tokens:
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            return JSONResponse(
                {
                    "sub": self.subject,
                    "email": self.email,
                    "email_verified": self.email_verified,
                    "name": "Oidc User",
                }
            )

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/authorize", authorize),
                Route("/token", token, methods=["POST"]),
                Route("/userinfo", userinfo),
            ]
        )


class ProviderServer(ServerThread):
    def __init__(self, provider: OidcProvider) -> None:
        super().__init__(None)
        provider.url = self.url
        self.provider = provider
        self.app = provider.app()

    def __enter__(self) -> OidcProvider:  # type: ignore[override]
        self.start()
        return self.provider
