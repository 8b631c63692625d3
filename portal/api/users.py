"""The caller's own account: profile, payout wallet, signed-in sessions, API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from sqlmodel import Session

from portal.api.deps import CacheDep, SessionDep, SettingsDep
from portal.models import User
from portal.schemas.auth import ApiKeyCreatedOut, ApiKeyIn, ApiKeyOut, SessionOut, UserOut, WalletVerifyIn
from portal.security.access import SIGNED_IN_BROWSER_OR_TOKEN, OriginDep, SignedIn
from portal.security.principal import Principal
from portal.services.accounts import api_keys, auth, provider_role, users

router = APIRouter(tags=["account"])
# An API key reads the account only with the account:read scope (a billing:read key must not).
AccountReader = Annotated[Principal, Depends(SignedIn(scope="account:read"))]
# Credentials are managed by a signed-in person, never by an API key.
AccountOwner = Annotated[Principal, Depends(SIGNED_IN_BROWSER_OR_TOKEN)]


def user_out(session: Session, user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        roles=sorted(users.roles_of(session, user.id)),
        wallet_address=user.wallet_address,
        created_at=user.created_at,
    )


@router.get("/me", summary="The signed-in account")
def me(session: SessionDep, caller: AccountReader) -> UserOut:
    user = session.get(User, caller.user_id)
    assert user is not None
    return user_out(session, user)


@router.put("/me/wallet", summary="Link a payout wallet, proved by signing a challenge")
def link_wallet(
    body: WalletVerifyIn, session: SessionDep, cache: CacheDep, origin: OriginDep, caller: AccountOwner
) -> UserOut:
    user = auth.link_wallet(
        session,
        cache,
        user_id=caller.user_id,
        address=body.address,
        nonce=body.nonce,
        signature=body.signature,
        origin=origin,
    )
    return user_out(session, user)


@router.put("/me/provider", summary="Become a provider: offer GPUs on the marketplace")
def become_provider(session: SessionDep, cache: CacheDep, origin: OriginDep, caller: AccountOwner) -> UserOut:
    provider_role.become_provider(session, cache, caller.user_id, origin=origin)
    return user_out(session, users.get_user(session, caller.user_id))


@router.delete(
    "/me/provider",
    summary="Stop being a provider; 409 while a device of yours serves a rental or is on the market",
)
def stop_providing(
    session: SessionDep, cache: CacheDep, settings: SettingsDep, origin: OriginDep, caller: AccountOwner
) -> UserOut:
    provider_role.stop_providing(session, cache, settings, caller.user_id, origin=origin)
    return user_out(session, users.get_user(session, caller.user_id))


@router.get("/me/sessions", summary="Signed-in browsers and clients")
def my_sessions(session: SessionDep, caller: AccountOwner) -> list[SessionOut]:
    return [
        SessionOut(
            id=s.id,
            kind=s.kind,
            method=s.method,
            ip=s.ip,
            user_agent=s.user_agent,
            created_at=s.created_at,
            last_used_at=s.last_used_at,
            current=s.id == caller.session_id,
        )
        for s in auth.active_sessions(session, caller.user_id)
    ]


@router.delete("/me/sessions/{session_id}", status_code=204, summary="Sign a browser or client out")
def end_my_session(
    session_id: uuid.UUID, session: SessionDep, cache: CacheDep, origin: OriginDep, caller: AccountOwner
) -> None:
    auth.end_session(session, cache, user_id=caller.user_id, session_id=session_id, origin=origin)


def api_key_out(key: object) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key, from_attributes=True)


@router.post("/api-keys", status_code=201, summary="Create an API key; the key is shown once")
def create_api_key(
    body: ApiKeyIn, session: SessionDep, origin: OriginDep, caller: AccountOwner
) -> ApiKeyCreatedOut:
    stored, key = api_keys.create_key(
        session,
        user_id=caller.user_id,
        name=body.name,
        scopes=body.scopes,
        origin=origin,
        expires_in_days=body.expires_in_days,
    )
    return ApiKeyCreatedOut(id=stored.id, key=key, prefix=stored.prefix, api_key=api_key_out(stored))


@router.get("/api-keys", summary="Your active API keys (prefix, scopes, last use)")
def list_api_keys(session: SessionDep, caller: AccountOwner) -> list[ApiKeyOut]:
    return [api_key_out(key) for key in api_keys.list_keys(session, caller.user_id)]


@router.delete("/api-keys/{key_id}", status_code=204, summary="Revoke an API key")
def revoke_api_key(key_id: uuid.UUID, session: SessionDep, origin: OriginDep, caller: AccountOwner) -> None:
    api_keys.revoke_key(session, user_id=caller.user_id, key_id=key_id, origin=origin)
