"""Signing up and in: passwords with throttling and lockout, rotating refresh tokens, Solana wallets,
browser sessions with HttpOnly cookies, and the list of signed-in sessions a user can revoke."""

from __future__ import annotations

import functools
import json
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from solders.pubkey import Pubkey
from solders.signature import Signature
from sqlalchemy import update
from sqlmodel import Session, col, select

from portal import parts
from portal.config import Settings
from portal.infra.cache import Cache
from portal.models import AuthSession, RefreshToken, Role, User
from portal.models.base import utcnow
from portal.security.authentication import revoked_session_key
from portal.security.jwt import issue_access_token
from portal.security.passwords import hash_password, verify_password
from portal.security.principal import RequestOrigin
from portal.security.secrets import BROWSER_COOKIE_PREFIX, REFRESH_TOKEN_PREFIX, keyed_hash, new_token
from portal.services import audit
from portal.services.accounts import mail, users
from portal.services.errors import Conflict, InvalidInput, NotFound, RateLimited, Unauthorized

SELF_SERVICE_ROLES = {Role.CUSTOMER, Role.PROVIDER}
WALLET_NONCE_TTL_S = 300
BROWSER_HANDOFF_TTL_S = 60
BROWSER_SESSION_DAYS = 14
FIRST_WAIT_S = 15  # after login_max_failures wrong passwords from one address, doubling from there
UNLOCK_LINK_TTL_S = 86_400
TRUSTED_ADDRESS_TTL_S = 30 * 86_400
TAKEN_SIGNUP_MAIL_EVERY_S = 3600


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: uuid.UUID


@functools.cache
def _decoy_hash() -> str:
    # Checked when the email is unknown, so a miss costs as long as a wrong password (no user enumeration).
    return hash_password(secrets.token_urlsafe(16))


# --- sign-up and password sign-in ------------------------------------------------------------------


@dataclass(frozen=True)
class SignedUp:
    """What a sign-up answers. ``created`` is False when the email already had an account: ``user`` is then
    a stand-in that is never stored, so the answer looks like a new account's and says nothing about the
    existing one (whose owner is emailed instead)."""

    user: User
    roles: frozenset[Role]
    created: bool


def signup(
    session: Session,
    cache: Cache,
    *,
    email: str,
    password: str,
    roles: list[Role],
    origin: RequestOrigin,
    settings: Settings | None = None,
) -> SignedUp:
    """A new account, or (for a taken email) the same answer with nothing created and the owner told.

    Both ways hash the password and write one audit entry, so a taken email is not answered faster.
    """
    settings = settings or parts.current().settings
    wanted = frozenset(roles) or frozenset({Role.CUSTOMER})
    if not wanted <= SELF_SERVICE_ROLES:
        raise InvalidInput(
            "Sign-up can ask for the customer and provider roles only.", details={"field": "roles"}
        )
    users.require_valid_password(password)
    existing = users.get_user_by_email(session, email)
    if existing is None:
        user = new_account(
            session, email=email, password=password, roles=set(wanted), method="password", origin=origin
        )
        return SignedUp(user, wanted, created=True)
    hash_password(password)  # the time a new account spends hashing it
    audit.record(
        session,
        "user.signup",
        origin=origin,
        outcome="failure",
        target_type="user",
        target_id=existing.id,
        details={"method": "password", "reason": "email_taken"},
    )
    _tell_owner_of_taken_signup(cache, settings, existing, origin)
    email = users.normalize_email(email)
    stand_in = User(email=email, display_name=email.split("@")[0], created_at=utcnow())
    return SignedUp(stand_in, wanted, created=False)


def _tell_owner_of_taken_signup(cache: Cache, settings: Settings, owner: User, origin: RequestOrigin) -> None:
    # At most one such email an hour per account: sign-ups must not become a way to flood an inbox.
    if owner.email is None or not mail.is_configured(settings):
        return
    if not cache.add(f"signup-taken-mail:{owner.id}", "1", ttl_s=TAKEN_SIGNUP_MAIL_EVERY_S):
        return
    mail.send_later(
        settings,
        mail.Mail(
            to=owner.email,
            subject="Someone tried to sign up with your email address",
            body=(
                f"Someone (from {origin.ip or 'an unknown address'}) tried to create a GPU Portal account "
                f"with {owner.email}, which already has one. No account was created and nothing changed.\n\n"
                f"If it was you, sign in instead: {settings.base_url}/login\n"
                "If it was not, you need do nothing.\n"
            ),
        ),
    )


def decoy_browser_code() -> str:
    """A one-time sign-in code that was never issued, for a sign-up page whose email was taken: the page
    goes on as for a new account, and the code is refused as an expired one would be."""
    return secrets.token_urlsafe(24)


def new_account(
    session: Session,
    *,
    email: str | None,
    password: str | None,
    roles: set[Role],
    method: str,
    origin: RequestOrigin,
    display_name: str = "",
    wallet_address: str | None = None,
) -> User:
    """An account made by signing up, whichever way, recorded in the audit log."""
    user = users.create_user(session, email=email, password=password, roles=roles, display_name=display_name)
    if wallet_address is not None:
        user.wallet_address = wallet_address
        session.add(user)
        session.flush()
    audit.record(
        session,
        "user.signup",
        actor_id=f"user:{user.id}",
        origin=origin,
        target_type="user",
        target_id=user.id,
        details={"method": method, "roles": sorted(roles)},
    )
    return user


def _pair_key(email: str, ip: str | None) -> str:
    """One account from one address, hashed: the cache holds neither the email nor the pair in clear."""
    return keyed_hash(json.dumps([email, ip or "unknown"]))


def _refuse_while_waiting(cache: Cache, key: str, message: str) -> None:
    until = cache.get(key)
    if until is not None:
        retry_after = max(1, math.ceil(float(until) - utcnow().timestamp()))
        raise RateLimited(message.format(seconds=retry_after), retry_after_s=retry_after, code="locked_out")


def pair_wait_s(failures: int, settings: Settings) -> int:
    """How long one address waits before trying one account again after ``failures`` wrong passwords:
    nothing until ``login_max_failures``, then 15 s, doubling each time, at most ``login_lockout_s``."""
    beyond = failures - settings.login_max_failures
    if beyond < 0:
        return 0
    return min(settings.login_lockout_s, FIRST_WAIT_S * 2 ** min(beyond, 20))


def check_password(
    session: Session,
    cache: Cache,
    *,
    email: str,
    password: str,
    origin: RequestOrigin,
    settings: Settings | None = None,
) -> User:
    """The user whose password this is, or a clear refusal.

    Wrong passwords are counted per account and address: the address waits longer after each one past
    ``login_max_failures``, while the owner signing in from elsewhere is not held up. An address is cut
    off after 4 times that many across accounts; an account locks for everyone only after
    ``login_account_max_failures`` from everywhere, and its owner is then emailed a link that unlocks it
    (and keeps the address that opens it clear of such locks from then on).
    """
    settings = settings or parts.current().settings
    email = users.normalize_email(email)
    pair = _pair_key(email, origin.ip)
    if cache.get(f"login-trusted:{pair}") is None:
        _refuse_while_waiting(
            cache,
            f"login-lock:{email}",
            "Too many failed sign-ins from many places; this account is locked for {seconds} s"
            + (
                " (its owner can unlock it by the link emailed to them)."
                if mail.is_configured(settings)
                else "."
            ),
        )
    _refuse_while_waiting(
        cache, f"login-wait:{pair}", "Too many failed sign-ins; try this account again in {seconds} s."
    )
    ip_failures_key = f"login-failures-ip:{origin.ip}"
    if int(cache.get(ip_failures_key) or 0) >= settings.login_max_failures * 4:
        raise RateLimited(
            "Too many failed sign-ins from this address; try again later.",
            retry_after_s=settings.login_lockout_s,
            code="locked_out",
        )
    user = users.get_user_by_email(session, email)
    usable = user is not None and user.is_active and user.password_hash is not None
    valid = verify_password(user.password_hash if usable else _decoy_hash(), password)  # type: ignore[union-attr, arg-type]
    if usable and valid:
        cache.delete(f"login-failures:{pair}", f"login-failures:{email}")
        return user  # type: ignore[return-value]
    window_s = settings.login_lockout_s
    failures = cache.incr(f"login-failures:{pair}", ttl_s=window_s)
    account_failures = cache.incr(f"login-failures:{email}", ttl_s=window_s)
    cache.incr(ip_failures_key, ttl_s=window_s)
    wait_s = pair_wait_s(failures, settings)
    if wait_s:
        cache.set(f"login-wait:{pair}", str(utcnow().timestamp() + wait_s), ttl_s=wait_s)
    locked = account_failures >= settings.login_account_max_failures
    if locked:
        cache.set(f"login-lock:{email}", str(utcnow().timestamp() + window_s), ttl_s=window_s)
        cache.delete(f"login-failures:{email}")  # the next lock takes as many failures again
        if usable:
            _send_unlock_link(cache, settings, user)  # type: ignore[arg-type]
    audit.record(
        session,
        "auth.login",
        actor_id=f"user:{user.id}" if user else None,
        origin=origin,
        outcome="failure",
        target_type="user",
        target_id=user.id if user else None,
        details={"email": email, "failures": failures, "wait_s": wait_s, "locked": locked},
    )
    session.commit()  # the failure stays on record although the request fails
    raise Unauthorized("Wrong email or password.", code="invalid_credentials")


def _send_unlock_link(cache: Cache, settings: Settings, user: User) -> None:
    if user.email is None or not mail.is_configured(settings):
        return
    token = secrets.token_urlsafe(32)
    cache.set(f"login-unlock:{keyed_hash(token)}", user.email, ttl_s=UNLOCK_LINK_TTL_S)
    mail.send_later(
        settings,
        mail.Mail(
            to=user.email,
            subject="Your GPU Portal account was locked",
            body=(
                "Many wrong passwords were tried on your GPU Portal account from several places, so it "
                f"is locked for {settings.login_lockout_s // 60 or 1} minutes. Your password was not "
                "changed.\n\n"
                f"To unlock it now, open this link (it works once, for a day):\n"
                f"{settings.base_url}/unlock?token={token}\n\n"
                "The address you open it from will not be locked out by others' guesses again.\n"
            ),
        ),
    )


def unlock(session: Session, cache: Cache, *, token: str, origin: RequestOrigin) -> None:
    """Clear an account's lock with the emailed token (once), and keep the address that used it clear of
    account-wide locks from then on."""
    email = cache.take(f"login-unlock:{keyed_hash(token)}")
    if email is None:
        raise Unauthorized("The unlock link is unknown, used or expired.", code="invalid_unlock_token")
    pair = _pair_key(email, origin.ip)
    cache.delete(
        f"login-lock:{email}", f"login-failures:{email}", f"login-wait:{pair}", f"login-failures:{pair}"
    )
    cache.set(f"login-trusted:{pair}", "1", ttl_s=TRUSTED_ADDRESS_TTL_S)
    user = users.get_user_by_email(session, email)
    audit.record(
        session,
        "auth.unlock",
        actor_id=f"user:{user.id}" if user else None,
        origin=origin,
        target_type="user",
        target_id=user.id if user else None,
    )


def _start_session(
    session: Session,
    user: User,
    *,
    kind: str,
    method: str,
    origin: RequestOrigin,
    cookie_hash: str | None = None,
) -> tuple[AuthSession, TokenPair]:
    now = utcnow()
    lifetime = (
        timedelta(days=BROWSER_SESSION_DAYS)
        if kind == "browser"
        else timedelta(days=parts.current().settings.refresh_token_ttl_days)
    )
    auth_session = AuthSession(
        user_id=user.id,
        kind=kind,
        method=method,
        cookie_hash=cookie_hash,
        ip=origin.ip,
        user_agent=origin.user_agent,
        last_used_at=now,
        expires_at=now + lifetime,
    )
    session.add(auth_session)
    user.last_login_at = now
    session.add(user)
    session.flush()
    audit.record(
        session,
        "auth.login",
        actor_id=f"user:{user.id}",
        origin=origin,
        target_type="session",
        target_id=auth_session.id,
        details={"method": method, "browser": kind == "browser"},
    )
    return auth_session, _new_tokens(session, user, auth_session)


def _new_tokens(session: Session, user: User, auth_session: AuthSession) -> TokenPair:
    refresh_token = new_token(REFRESH_TOKEN_PREFIX)
    session.add(RefreshToken(session_id=auth_session.id, token_hash=keyed_hash(refresh_token)))
    session.flush()
    access_token, expires_in = issue_access_token(
        user.id, auth_session.id, set(users.roles_of(session, user.id))
    )
    return TokenPair(access_token, refresh_token, expires_in, auth_session.id)


def login(
    session: Session,
    cache: Cache,
    *,
    email: str,
    password: str,
    origin: RequestOrigin,
    settings: Settings | None = None,
) -> TokenPair:
    user = check_password(session, cache, email=email, password=password, origin=origin, settings=settings)
    return _start_session(session, user, kind="api", method="password", origin=origin)[1]


# --- refresh-token rotation ------------------------------------------------------------------------


def refresh(session: Session, cache: Cache, *, refresh_token: str, origin: RequestOrigin) -> TokenPair:
    """A new pair for a refresh token, which stops working; presenting it again revokes the whole session."""
    stored = session.exec(
        select(RefreshToken).where(RefreshToken.token_hash == keyed_hash(refresh_token))
    ).first()
    if stored is None:
        raise Unauthorized("The refresh token is invalid.", code="invalid_refresh_token")
    auth_session = session.get(AuthSession, stored.session_id)
    assert auth_session is not None  # a refresh token's session is deleted with it
    now = utcnow()
    # The conditional update makes the exchange atomic: of two racing uses, exactly one wins.
    claimed = session.execute(
        update(RefreshToken)
        .where(col(RefreshToken.id) == stored.id, col(RefreshToken.used_at).is_(None))
        .values(used_at=now)
    ).rowcount
    if not claimed:
        if auth_session.revoked_at is None:
            _revoke(session, cache, auth_session, "refresh token reused")
        audit.record(
            session,
            "auth.refresh_reuse",
            actor_id=f"user:{auth_session.user_id}",
            origin=origin,
            outcome="failure",
            target_type="session",
            target_id=auth_session.id,
        )
        session.commit()
        raise Unauthorized(
            "This refresh token was already used; the session is revoked. Sign in again.",
            code="refresh_token_reused",
        )
    if auth_session.revoked_at is not None or auth_session.expires_at <= now:
        raise Unauthorized("The session has ended; sign in again.", code="session_revoked")
    user = session.get(User, auth_session.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("The account is disabled.", code="account_disabled")
    auth_session.last_used_at = now
    session.add(auth_session)
    return _new_tokens(session, user, auth_session)


def _revoke(session: Session, cache: Cache, auth_session: AuthSession, reason: str) -> None:
    auth_session.revoked_at = utcnow()
    auth_session.revoked_reason = reason
    session.add(auth_session)
    session.flush()
    # Access tokens of the session are refused at once, until the longest of them would have expired.
    cache.set(
        revoked_session_key(auth_session.id), "1", ttl_s=parts.current().settings.access_token_ttl_s + 60
    )


def logout(
    session: Session,
    cache: Cache,
    *,
    refresh_token: str | None,
    session_id: uuid.UUID | None,
    origin: RequestOrigin,
) -> None:
    auth_session = None
    if refresh_token:
        stored = session.exec(
            select(RefreshToken).where(RefreshToken.token_hash == keyed_hash(refresh_token))
        ).first()
        auth_session = session.get(AuthSession, stored.session_id) if stored else None
    elif session_id:
        auth_session = session.get(AuthSession, session_id)
    if auth_session is None:
        raise Unauthorized(
            "Send the refresh token, or the access token of the session to end.", code="missing_refresh_token"
        )
    if auth_session.revoked_at is None:
        _revoke(session, cache, auth_session, "signed out")
    audit.record(
        session,
        "auth.logout",
        actor_id=f"user:{auth_session.user_id}",
        origin=origin,
        target_type="session",
        target_id=auth_session.id,
    )


def active_sessions(session: Session, user_id: uuid.UUID) -> list[AuthSession]:
    return list(
        session.exec(
            select(AuthSession)
            .where(
                AuthSession.user_id == user_id,
                col(AuthSession.revoked_at).is_(None),
                AuthSession.expires_at > utcnow(),
            )
            .order_by(col(AuthSession.last_used_at).desc())
        ).all()
    )


def end_session(
    session: Session, cache: Cache, *, user_id: uuid.UUID, session_id: uuid.UUID, origin: RequestOrigin
) -> None:
    auth_session = session.get(AuthSession, session_id)
    if auth_session is None or auth_session.user_id != user_id:
        raise NotFound("No such session.")
    if auth_session.revoked_at is None:
        _revoke(session, cache, auth_session, "revoked by its owner")
    audit.record(
        session,
        "auth.session_revoke",
        actor_id=f"user:{user_id}",
        origin=origin,
        target_type="session",
        target_id=session_id,
    )


# --- Solana wallets --------------------------------------------------------------------------------


def _pubkey(address: str) -> Pubkey:
    try:
        return Pubkey.from_string(address)
    except ValueError:
        raise InvalidInput(
            "That is not a Solana address (base58 public key).", details={"field": "address"}
        ) from None


def wallet_challenge(cache: Cache, *, address: str) -> tuple[str, str]:
    """A one-time nonce and the message the wallet must sign, valid for five minutes."""
    _pubkey(address)
    nonce = secrets.token_urlsafe(18)
    message = (
        "Sign in to GPU Portal.\n\n"
        f"Wallet: {address}\nNonce: {nonce}\nIssued: {utcnow().isoformat(timespec='seconds')}\n\n"
        "Signing proves you own this wallet; it costs nothing and moves no funds."
    )
    cache.set(
        f"wallet-nonce:{nonce}",
        json.dumps({"address": address, "message": message}),
        ttl_s=WALLET_NONCE_TTL_S,
    )
    return nonce, message


def _verify_wallet(cache: Cache, *, address: str, nonce: str, signature: str) -> None:
    # Taken, not read: a nonce answers one attempt, right or wrong, so it can never be replayed.
    stored = cache.take(f"wallet-nonce:{nonce}")
    if stored is None:
        raise Unauthorized(
            "The nonce is unknown, used or expired; ask for a new challenge.", code="invalid_nonce"
        )
    challenge = json.loads(stored)
    if challenge["address"] != address:
        raise Unauthorized("The nonce was issued for another wallet.", code="invalid_nonce")
    try:
        parsed = Signature.from_string(signature)
    except ValueError:
        raise InvalidInput(
            "The signature is not a base58 ed25519 signature.", details={"field": "signature"}
        ) from None
    if not parsed.verify(_pubkey(address), challenge["message"].encode()):
        raise Unauthorized("The signature does not match this wallet and message.", code="invalid_signature")


def wallet_user(
    session: Session, cache: Cache, *, address: str, nonce: str, signature: str, origin: RequestOrigin
) -> User:
    """The account of a wallet that proved itself by signing its challenge; made on first sign-in."""
    _verify_wallet(cache, address=address, nonce=nonce, signature=signature)
    user = session.exec(select(User).where(User.wallet_address == address)).first()
    if user is None:
        user = new_account(
            session,
            email=None,
            password=None,
            roles={Role.CUSTOMER},
            method="wallet",
            origin=origin,
            display_name=f"{address[:4]}…{address[-4:]}",
            wallet_address=address,
        )
    if not user.is_active:
        raise Unauthorized("The account is disabled.", code="account_disabled")
    return user


def wallet_login(
    session: Session, cache: Cache, *, address: str, nonce: str, signature: str, origin: RequestOrigin
) -> TokenPair:
    user = wallet_user(session, cache, address=address, nonce=nonce, signature=signature, origin=origin)
    return _start_session(session, user, kind="api", method="wallet", origin=origin)[1]


def link_wallet(
    session: Session,
    cache: Cache,
    *,
    user_id: uuid.UUID,
    address: str,
    nonce: str,
    signature: str,
    origin: RequestOrigin,
) -> User:
    _verify_wallet(cache, address=address, nonce=nonce, signature=signature)
    holder = session.exec(select(User).where(User.wallet_address == address)).first()
    if holder is not None and holder.id != user_id:
        raise Conflict("That wallet is linked to another account.", code="wallet_taken")
    user = session.get(User, user_id)
    assert user is not None
    user.wallet_address = address
    session.add(user)
    audit.record(
        session,
        "user.wallet_link",
        actor_id=f"user:{user_id}",
        origin=origin,
        target_type="user",
        target_id=user_id,
        details={"address": address},
    )
    return user


# --- browser sessions ------------------------------------------------------------------------------


def start_browser_session_cookie(session: Session, *, user: User, method: str, origin: RequestOrigin) -> str:
    """Start a browser session; returns the secret of its HttpOnly cookie."""
    cookie_secret = new_token(BROWSER_COOKIE_PREFIX)
    _start_session(
        session, user, kind="browser", method=method, origin=origin, cookie_hash=keyed_hash(cookie_secret)
    )
    return cookie_secret


def start_browser_session(
    session: Session, cache: Cache, *, user: User, method: str, origin: RequestOrigin
) -> str:
    """Start a browser session from a page; returns a one-time code that ``/auth/browser/session`` swaps for
    its cookie.

    Pages talk to the portal over a websocket, which cannot set cookies; the code lets one plain HTTP
    request set the HttpOnly cookie instead. It lives a minute and works once.
    """
    cookie_secret = start_browser_session_cookie(session, user=user, method=method, origin=origin)
    code = secrets.token_urlsafe(24)
    cache.set(f"browser-handoff:{code}", cookie_secret, ttl_s=BROWSER_HANDOFF_TTL_S)
    return code


def redeem_browser_code(cache: Cache, code: str) -> str:
    cookie_secret = cache.take(f"browser-handoff:{code}")
    if cookie_secret is None:
        raise Unauthorized("The sign-in code is unknown, used or expired.", code="invalid_code")
    return cookie_secret


def browser_session(session: Session, cache: Cache, cookie_secret: str) -> AuthSession | None:
    """The live browser session a cookie belongs to, or None when it ended or never existed."""
    if not cookie_secret.startswith(f"{BROWSER_COOKIE_PREFIX}_"):
        return None
    auth_session = session.exec(
        select(AuthSession).where(AuthSession.cookie_hash == keyed_hash(cookie_secret))
    ).first()
    now = utcnow()
    if auth_session is None or auth_session.revoked_at is not None or auth_session.expires_at <= now:
        return None
    user = session.get(User, auth_session.user_id)
    if user is None or not user.is_active:
        return None
    if auth_session.last_used_at is None or now - auth_session.last_used_at > timedelta(minutes=1):
        auth_session.last_used_at = now
        session.add(auth_session)
    return auth_session


def end_browser_session(session: Session, cache: Cache, cookie_secret: str, origin: RequestOrigin) -> None:
    auth_session = browser_session(session, cache, cookie_secret)
    if auth_session is not None:
        logout(session, cache, refresh_token=None, session_id=auth_session.id, origin=origin)
