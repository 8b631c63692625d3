"""Sign-up and sign-in: passwords, refresh rotation, wallets and the browser session cookie."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse

from portal.api.deps import CacheDep, SessionDep, SettingsDep
from portal.schemas.auth import (
    BrowserCodeIn,
    LoginIn,
    LogoutIn,
    RefreshIn,
    SignupIn,
    TokensOut,
    UnlockIn,
    UserOut,
    WalletChallengeIn,
    WalletChallengeOut,
    WalletVerifyIn,
)
from portal.security.access import PUBLIC, OriginDep
from portal.security.cookies import SESSION_COOKIE, clear_session_cookie, served_over_tls, set_session_cookie
from portal.security.principal import Principal
from portal.services import audit
from portal.services.accounts import auth, oauth
from portal.services.errors import DomainError, Unauthorized

router = APIRouter(prefix="/auth", tags=["auth"])
# Binds an OAuth sign-in to the browser that started it; sent only to the OAuth routes.
OAUTH_BINDING_COOKIE = "portal_oauth"
OAUTH_COOKIE_PATH = "/api/v1/auth/oauth"
Caller = Annotated[Principal | None, Depends(PUBLIC)]


def tokens_out(tokens: auth.TokenPair) -> TokensOut:
    return TokensOut(
        access_token=tokens.access_token, refresh_token=tokens.refresh_token, expires_in=tokens.expires_in
    )


@router.post(
    "/signup",
    status_code=201,
    summary="Create an account with email and password (a taken email gets the same answer; its owner "
    "is emailed)",
)
def signup(
    body: SignupIn, session: SessionDep, cache: CacheDep, settings: SettingsDep, origin: OriginDep, _: Caller
) -> dict[str, UserOut]:
    signed_up = auth.signup(
        session,
        cache,
        email=body.email,
        password=body.password,
        roles=body.roles,  # type: ignore[arg-type]
        origin=origin,
        settings=settings,
    )
    user = signed_up.user
    return {
        "user": UserOut(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            roles=sorted(signed_up.roles),
            wallet_address=user.wallet_address,
            created_at=user.created_at,
        )
    }


@router.post("/login", summary="Sign in with email and password; returns an access and a refresh token")
def login(
    body: LoginIn, session: SessionDep, cache: CacheDep, settings: SettingsDep, origin: OriginDep, _: Caller
) -> TokensOut:
    return tokens_out(
        auth.login(session, cache, email=body.email, password=body.password, origin=origin, settings=settings)
    )


@router.post(
    "/unlock",
    status_code=204,
    summary="Unlock an account with the token its owner was emailed when it locked",
)
def unlock(body: UnlockIn, session: SessionDep, cache: CacheDep, origin: OriginDep, _: Caller) -> None:
    auth.unlock(session, cache, token=body.token, origin=origin)


@router.post("/refresh", summary="Swap a refresh token for a new pair; reusing one revokes its session")
def refresh(body: RefreshIn, session: SessionDep, cache: CacheDep, origin: OriginDep, _: Caller) -> TokensOut:
    return tokens_out(auth.refresh(session, cache, refresh_token=body.refresh_token, origin=origin))


@router.post(
    "/logout", status_code=204, summary="End the session of a refresh token (or of the access token sent)"
)
def logout(
    session: SessionDep, cache: CacheDep, origin: OriginDep, caller: Caller, body: LogoutIn | None = None
) -> None:
    auth.logout(
        session,
        cache,
        refresh_token=body.refresh_token if body else None,
        session_id=caller.session_id if caller else None,
        origin=origin,
    )


@router.post("/wallet/challenge", summary="A one-time message for a Solana wallet to sign")
def wallet_challenge(body: WalletChallengeIn, cache: CacheDep, _: Caller) -> WalletChallengeOut:
    nonce, message = auth.wallet_challenge(cache, address=body.address)
    return WalletChallengeOut(nonce=nonce, message=message)


@router.post("/wallet/verify", summary="Sign in with the wallet's signature of the challenge")
def wallet_verify(
    body: WalletVerifyIn, session: SessionDep, cache: CacheDep, origin: OriginDep, _: Caller
) -> TokensOut:
    return tokens_out(
        auth.wallet_login(
            session, cache, address=body.address, nonce=body.nonce, signature=body.signature, origin=origin
        )
    )


@router.post(
    "/browser/session", status_code=204, summary="Swap a page's one-time sign-in code for the session cookie"
)
def browser_session(
    body: BrowserCodeIn,
    request: Request,
    response: Response,
    cache: CacheDep,
    settings: SettingsDep,
    _: Caller,
) -> None:
    secret = auth.redeem_browser_code(cache, body.code)
    set_session_cookie(response, secret, secure=served_over_tls(request, settings))


@router.post("/browser/logout", status_code=204, summary="End this browser's session and clear its cookie")
def browser_logout(
    request: Request,
    response: Response,
    session: SessionDep,
    cache: CacheDep,
    settings: SettingsDep,
    origin: OriginDep,
    _: Caller,
) -> None:
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        raise Unauthorized("This browser is not signed in.", code="not_signed_in")
    auth.end_browser_session(session, cache, secret, origin)
    clear_session_cookie(response, secure=served_over_tls(request, settings))


@router.get(
    "/oauth/{provider}/login", status_code=302, summary="Start signing in with GitHub, Google or OIDC"
)
def oauth_login(
    provider: str, request: Request, cache: CacheDep, settings: SettingsDep, _: Caller
) -> Response:
    chosen = oauth.get_provider(settings, provider)
    url, binding = oauth.start(cache, settings, chosen)
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        OAUTH_BINDING_COOKIE,
        binding,
        max_age=oauth.STATE_TTL_S,
        path=OAUTH_COOKIE_PATH,
        httponly=True,
        secure=served_over_tls(request, settings),
        samesite="lax",
    )
    return response


@router.get(
    "/oauth/{provider}/callback", status_code=302, summary="Where the provider returns; signs the browser in"
)
def oauth_callback(
    provider: str,
    request: Request,
    session: SessionDep,
    cache: CacheDep,
    settings: SettingsDep,
    origin: OriginDep,
    _: Caller,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    secure = served_over_tls(request, settings)
    try:
        if not code or not state:
            raise Unauthorized("The provider did not grant the sign-in.", code="oauth_denied")
        secret = oauth.finish(
            session,
            cache,
            settings,
            oauth.get_provider(settings, provider),
            code=code,
            state=state,
            binding=request.cookies.get(OAUTH_BINDING_COOKIE),
            origin=origin,
        )
    except DomainError as error:
        audit.record(
            session,
            "auth.login",
            origin=origin,
            outcome="failure",
            details={"method": f"oauth:{provider[:40]}", "code": error.code},
        )
        failed = RedirectResponse("/login?error=oauth", status_code=302)
        failed.delete_cookie(OAUTH_BINDING_COOKIE, path=OAUTH_COOKIE_PATH)
        return failed
    response = RedirectResponse("/account", status_code=302)
    set_session_cookie(response, secret, secure=secure)
    response.delete_cookie(OAUTH_BINDING_COOKIE, path=OAUTH_COOKIE_PATH)
    return response
