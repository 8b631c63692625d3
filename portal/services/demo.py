"""Demo accounts for a local portal: an admin, a customer with credits and a provider.

Passwords are random per installation and kept in ``data_dir/demo_logins.json`` (mode 600), never in
the repository; seeding again is harmless and prints the same logins.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlmodel import Session

from portal.models import Role
from portal.security.passwords import verify_password
from portal.services import ledger, users

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


def _saved_passwords(path: Path) -> dict[str, str]:
    try:
        return {row["email"]: row["password"] for row in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def seed_demo(session: Session, data_dir: Path) -> list[DemoLogin]:
    logins_file = data_dir / "demo_logins.json"
    saved = _saved_passwords(logins_file)
    logins = []
    for label, email, roles in DEMO_ACCOUNTS:
        password = saved.get(email) or secrets.token_urlsafe(12)
        user = users.get_user_by_email(session, email)
        if user is None:
            user = users.create_user(
                session, email=email, password=password, roles=roles, display_name=f"Demo {label}"
            )
        elif user.password_hash is None or not verify_password(user.password_hash, password):
            users.set_password(session, user, password)
        if label == "customer":
            ledger.grant_credits(
                session,
                user_id=user.id,
                amount_micro=DEMO_CREDITS_MICRO,
                reason="Demo credits",
                idempotency_key=f"demo-credits:{user.id}",
            )
        logins.append(DemoLogin(role=label, email=email, password=password))
    data_dir.mkdir(parents=True, exist_ok=True)
    logins_file.touch(mode=0o600)
    logins_file.write_text(json.dumps([asdict(login) for login in logins], indent=2))
    return logins
