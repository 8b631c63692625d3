"""Sign-in with GitHub, Google or any OpenID Connect provider: authorization code flow with PKCE and state.

The state, the PKCE verifier and a browser-binding secret are kept server side (cache, ten minutes,
taken once); the binding secret also sits in a short-lived HttpOnly cookie, so a callback only works in
the browser that started the sign-in (no login CSRF).
"""

from __future__ import annotations

import functools
import hmac
import json
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any

import authlib.deprecate
import httpx
from authlib.common.security import generate_token
from sqlmodel import Session, select

from portal.config import Settings
from portal.infra.cache import Cache
from portal.models import OAuthIdentity, Role, User
from portal.security.principal import RequestOrigin
from portal.services import names
from portal.services.accounts import auth, users
from portal.services.errors import NotFound, Unauthorized, Unavailable

# authlib.deprecate installs an "always" filter when first imported; ours is added after it, so it wins.
assert authlib.deprecate
with warnings.catch_warnings():
    # Authlib announces a future move of its httpx integration; it works as documented today.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.httpx_client import OAuth2Client

STATE_TTL_S = 600
HTTP_TIMEOUT_S = 10
GOOGLE_DISCOVERY = "https://accounts.google.com/.well-known/openid-configuration"


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    client_id: str
    client_secret: str
    scope: str
    discovery_url: str | None = None  # OpenID Connect providers
    authorize_url: str | None = None  # plain OAuth 2 providers (GitHub)
    token_url: str | None = None

    @property
    def is_oidc(self) -> bool:
        return self.discovery_url is not None


@dataclass(frozen=True)
class Identity:
    subject: str
    email: str | None
    email_verified: bool
    name: str


def configured_providers(settings: Settings) -> list[Provider]:
    providers = []
    if settings.oauth_github_client_id and settings.oauth_github_client_secret:
        providers.append(
            Provider(
                "github",
                "GitHub",
                settings.oauth_github_client_id,
                settings.oauth_github_client_secret.get_secret_value(),
                "read:user user:email",
                authorize_url="https://github.com/login/oauth/authorize",
                token_url="https://github.com/login/oauth/access_token",
            )
        )
    if settings.oauth_google_client_id and settings.oauth_google_client_secret:
        providers.append(
            Provider(
                "google",
                "Google",
                settings.oauth_google_client_id,
                settings.oauth_google_client_secret.get_secret_value(),
                "openid email profile",
                discovery_url=GOOGLE_DISCOVERY,
            )
        )
    if settings.oidc_discovery_url and settings.oidc_client_id and settings.oidc_client_secret:
        providers.append(
            Provider(
                settings.oidc_name,
                settings.oidc_name.replace("-", " ").title(),
                settings.oidc_client_id,
                settings.oidc_client_secret.get_secret_value(),
                "openid email profile",
                discovery_url=settings.oidc_discovery_url,
            )
        )
    return providers


def get_provider(settings: Settings, name: str) -> Provider:
    for provider in configured_providers(settings):
        if provider.name == name:
            return provider
    raise NotFound(f"No sign-in provider named {name!r} is configured.")


@functools.lru_cache(maxsize=16)
def _discovery(url: str, _hour: int) -> dict[str, Any]:
    response = httpx.get(url, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _endpoints(provider: Provider) -> dict[str, str]:
    if provider.discovery_url:
        # Cached for the hour: providers rotate endpoints rarely, and every sign-in would fetch them.
        document = _discovery(provider.discovery_url, int(time.time() // 3600))
        return {
            "authorize": document["authorization_endpoint"],
            "token": document["token_endpoint"],
            "userinfo": document["userinfo_endpoint"],
        }
    assert provider.authorize_url and provider.token_url
    return {
        "authorize": provider.authorize_url,
        "token": provider.token_url,
        "userinfo": "https://api.github.com/user",
    }


def _client(provider: Provider, redirect_uri: str) -> OAuth2Client:
    return OAuth2Client(
        provider.client_id,
        provider.client_secret,
        scope=provider.scope,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=HTTP_TIMEOUT_S,
    )


def redirect_uri(settings: Settings, provider: Provider) -> str:
    return f"{settings.base_url}/api/v1/auth/oauth/{provider.name}/callback"


def start(cache: Cache, settings: Settings, provider: Provider) -> tuple[str, str]:
    """The provider's authorization URL to send the browser to, and the browser-binding secret."""
    try:
        endpoints = _endpoints(provider)
    except (httpx.HTTPError, KeyError, ValueError) as error:
        raise Unavailable(
            f"{provider.label} sign-in is not answering; try again shortly.",
            details={"reason": type(error).__name__},
        ) from None
    verifier = generate_token(64)
    binding = secrets.token_urlsafe(24)
    extra = {"nonce": secrets.token_urlsafe(16)} if provider.is_oidc else {}
    with _client(provider, redirect_uri(settings, provider)) as client:
        url, state = client.create_authorization_url(endpoints["authorize"], code_verifier=verifier, **extra)
    cache.set(
        f"oauth-state:{state}",
        json.dumps({"provider": provider.name, "verifier": verifier, "binding": binding}),
        ttl_s=STATE_TTL_S,
    )
    return url, binding


def _identity(provider: Provider, client: OAuth2Client, userinfo_url: str) -> Identity:
    info = client.get(userinfo_url).raise_for_status().json()
    if provider.is_oidc:
        return Identity(
            str(info["sub"]), info.get("email"), bool(info.get("email_verified")), info.get("name", "")
        )
    emails = client.get("https://api.github.com/user/emails").raise_for_status().json()
    primary = next((e for e in emails if e.get("primary") and e.get("verified")), None)
    return Identity(
        str(info["id"]), primary["email"] if primary else None, primary is not None, info.get("login", "")
    )


def finish(
    session: Session,
    cache: Cache,
    settings: Settings,
    provider: Provider,
    *,
    code: str,
    state: str,
    binding: str | None,
    origin: RequestOrigin,
) -> str:
    """Complete a sign-in at the callback; returns the new browser session's cookie secret."""
    stored_raw = cache.take(f"oauth-state:{state}")
    stored = json.loads(stored_raw) if stored_raw else None
    if stored is None or stored["provider"] != provider.name:
        raise Unauthorized("The sign-in state is unknown, used or expired.", code="invalid_state")
    if not binding or not hmac.compare_digest(stored["binding"], binding):
        raise Unauthorized("This sign-in was started in another browser.", code="invalid_state")
    endpoints = _endpoints(provider)
    try:
        with _client(provider, redirect_uri(settings, provider)) as client:
            client.fetch_token(endpoints["token"], code=code, code_verifier=stored["verifier"])
            identity = _identity(provider, client, endpoints["userinfo"])
    except (httpx.HTTPError, KeyError, ValueError) as error:
        raise Unauthorized(
            f"{provider.label} did not complete the sign-in.",
            code="oauth_failed",
            details={"reason": type(error).__name__},
        ) from None
    user = _user_for(session, provider, identity, origin)
    return auth.start_browser_session_cookie(
        session, user=user, method=f"oauth:{provider.name}", origin=origin
    )


def _user_for(session: Session, provider: Provider, identity: Identity, origin: RequestOrigin) -> User:
    linked = session.exec(
        select(OAuthIdentity).where(
            OAuthIdentity.provider == provider.name, OAuthIdentity.subject == identity.subject
        )
    ).first()
    if linked is not None:
        user = session.get(User, linked.user_id)
        assert user is not None
        if not user.is_active:
            raise Unauthorized("The account is disabled.", code="account_disabled")
        return user
    # An existing account is joined only through an email the provider has verified.
    user = (
        users.get_user_by_email(session, identity.email)
        if identity.email and identity.email_verified
        else None
    )
    if user is None:
        email = identity.email if identity.email and identity.email_verified else None
        user = auth.new_account(
            session,
            email=email,
            password=None,
            roles={Role.CUSTOMER},
            method=f"oauth:{provider.name}",
            origin=origin,
            display_name=_shown_name(identity.name) or f"{provider.label} user",
        )
    session.add(
        OAuthIdentity(
            user_id=user.id, provider=provider.name, subject=identity.subject, email=identity.email or ""
        )
    )
    session.flush()
    return user


def _shown_name(name: str) -> str:
    """The provider's name for the person when it can be shown to others (and fits the column); "" when
    not: the sign-in goes on under a plain name rather than failing over characters the person may not
    control."""
    name = names.tidy(name)[:120]
    return "" if names.why_refused(name) else name
