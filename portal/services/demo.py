"""Demo accounts for a local portal: an admin, a customer with credits and a provider.

Passwords are random per installation and kept in ``data_dir/demo_logins.json`` (mode 600), never in
the repository; seeding again is harmless and prints the same logins.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from sqlmodel import Session

from portal import parts
from portal.config import Settings
from portal.models import DepositAccount, Role
from portal.security.passwords import verify_password
from portal.security.principal import RequestOrigin
from portal.services.accounts import users
from portal.services.money import chain, deposits, ledger, treasury
from portal.services.providers import devices

DEMO_CREDITS_MICRO = 500_000_000  # 500 USD of credits for the demo customer


@dataclass(frozen=True)
class DemoLogin:
    role: str
    email: str
    password: str


DEMO_ACCOUNTS = (
    ("admin", "admin@demo.gpu-portal.test", (Role.ADMIN,)),
    ("customer", "customer@demo.gpu-portal.test", (Role.CUSTOMER,)),
    ("provider", "provider@demo.gpu-portal.test", (Role.PROVIDER,)),
)


def _saved_logins(path: Path) -> dict[str, dict[str, str]]:
    try:
        return {row["email"]: row for row in json.loads(path.read_text()) if row["password"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


DEMO_DEPOSIT_MICRO = 25_000_000  # 25 tokens sent to the demo customer's deposit address on a local chain


def demo_deposit(session: Session, settings: Settings) -> bool:
    """Send the demo customer a deposit on the local chain, once; the deposit watcher credits it."""
    customer = users.get_user_by_email(session, DEMO_ACCOUNTS[1][1])
    if customer is None or settings.solana_rpc_url is not None or session.get(DepositAccount, customer.id):
        return False
    local = treasury.settlement(settings)
    account = deposits.deposit_account(session, local.treasury, customer.id)
    keys = local.treasury
    chain.mint_to(
        local.chain,
        keys.keypair,
        keys.mint,
        keys.decimals,
        Pubkey.from_string(account.owner_address),
        DEMO_DEPOSIT_MICRO,
    )
    return True


def seed_demo(session: Session, data_dir: Path) -> list[DemoLogin]:
    logins_file = data_dir / "demo_logins.json"
    saved = _saved_logins(logins_file)
    logins = []
    rows = []
    for label, email, roles in DEMO_ACCOUNTS:
        row = saved.get(email, {})
        password = row.get("password") or secrets.token_urlsafe(12)
        user = users.get_user_by_email(session, email)
        if user is None:
            user = users.create_user(
                session, email=email, password=password, roles=roles, display_name=f"Demo {label}"
            )
        elif user.password_hash is None or (
            # The hash this file's password was given last time: still the user's, the password still
            # matches, without Argon2's 0.4 s of CPU a check (each start seeds).
            user.password_hash != row.get("password_hash")
            and not verify_password(user.password_hash, password)
        ):
            users.set_password(session, user, password)
        if label == "customer":
            ledger.grant_credits(
                session,
                user_id=user.id,
                amount_micro=DEMO_CREDITS_MICRO,
                reason="Demo credits",
                idempotency_key=f"demo-credits:{user.id}",
            )
        login = DemoLogin(role=label, email=email, password=password)
        logins.append(login)
        rows.append({**asdict(login), "password_hash": user.password_hash})
    data_dir.mkdir(parents=True, exist_ok=True)
    logins_file.touch(mode=0o600)
    logins_file.write_text(json.dumps(rows, indent=2))
    return logins


# Country and simulated GPUs of the demo devices, in turn: the first two make a 2-node H100 cluster and
# the third can replace either when its agent dies (`portal demo kill-agent`).
DEMO_DEVICES = (("DE", "1xH100-80GB"), ("NL", "1xH100-80GB"), ("FR", "1xH100-80GB"), ("US", "2xA100-80GB"))


def demo_devices(session: Session, count: int) -> list[tuple[str, str]]:
    """The demo provider's first ``count`` devices, made on first use, each with a fresh token.

    Returns (token, simulation spec) pairs for local agents. The provider gets a payout wallet, so the
    devices can be hired."""
    provider = users.get_user_by_email(session, DEMO_ACCOUNTS[2][1])
    if provider is None:
        raise ValueError("seed the demo accounts first")
    if provider.wallet_address is None:
        provider.wallet_address = str(Keypair().pubkey())  # a demo wallet: payouts land on the local chain
        session.add(provider)
    existing = {device.name: device for device in devices.list_devices(session, provider.id)}
    agents = []
    for number in range(count):
        name = f"demo-rig-{number + 1}"
        country, spec = DEMO_DEVICES[number % len(DEMO_DEVICES)]
        device = existing.get(name)
        if device is None:
            device, token = devices.add_device(
                session,
                owner_id=provider.id,
                name=name,
                country=country,
                connectivity_tier="high",
                price_per_gpu_hour_micro=None,
                origin=RequestOrigin(),
            )
        else:
            token = devices.rotate_token(
                session,
                parts.current().cache,
                owner_id=provider.id,
                device_id=device.id,
                origin=RequestOrigin(),
            )
        agents.append((token, spec))
    return agents
