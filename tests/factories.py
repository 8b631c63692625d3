"""Small builders of rows that later issues will create through their own services."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta

from solders.keypair import Keypair
from sqlalchemy import Engine
from sqlmodel import Session

from portal.models import (
    AuthSession,
    Cluster,
    ClusterNode,
    Device,
    DeviceState,
    Gpu,
    Role,
    UsageRecord,
    User,
)
from portal.models.base import utcnow
from portal.security.jwt import issue_access_token
from portal.security.principal import RequestOrigin
from portal.security.secrets import DEVICE_TOKEN_PREFIX, keyed_hash, new_token
from portal.services.accounts import api_keys, users
from portal.services.providers import devices
from portal.services.providers.gpu_catalog import list_price


def make_provider(session: Session, email: str | None = None) -> uuid.UUID:
    email = email or f"provider-{uuid.uuid4().hex[:8]}@example.com"
    return users.create_user(session, email=email, password="provider-pass-1", roles=[Role.PROVIDER]).id


def make_device(
    session: Session,
    owner_id: uuid.UUID,
    *,
    state: DeviceState,
    gpus: int = 1,
    model: str = "H100-80GB",
    simulated: bool = True,
    country: str = "DE",
) -> Device:
    device = Device(
        owner_id=owner_id,
        name=f"rig-{uuid.uuid4().hex[:6]}",
        country=country,
        state=state,
        token_hash=secrets.token_hex(32),
        token_prefix=secrets.token_hex(4),
        simulated=simulated,
        gpu_model=model,
        gpu_count=gpus,
        hourly_price_micro=list_price(model),
        address="127.0.0.1",  # registered from loopback, as a local agent's is
        # Devices in an online state have an agent that just heartbeated.
        last_heartbeat_at=utcnow()
        if state in (DeviceState.VERIFYING, DeviceState.READY, DeviceState.HIRED)
        else None,
    )
    session.add(device)
    session.flush()
    for index in range(gpus):
        session.add(
            Gpu(
                device_id=device.id,
                index=index,
                uuid=f"GPU-{uuid.uuid4()}",
                model=model,
                memory_mb=81_559,
                simulated=simulated,
            )
        )
    session.flush()
    return device


def add_device(engine: Engine, *, name: str = "rig", payout_wallet: bool = False) -> tuple[uuid.UUID, str]:
    """A provider's device added as the portal adds one (its token issued once); with a payout wallet the
    provider's devices are hireable once proven."""
    with Session(engine) as session:
        owner = make_user(session, Role.PROVIDER)
        if payout_wallet:
            owner.wallet_address = str(Keypair().pubkey())
        device, token = devices.add_device(
            session,
            owner_id=owner.id,
            name=name,
            country="DE",
            connectivity_tier="high",
            price_per_gpu_hour_micro=None,
            origin=RequestOrigin(),
        )
        session.commit()
        return device.id, token


def make_user(session: Session, *roles: Role, email: str | None = None, password: str | None = None) -> User:
    """An account; without a password it is made instantly (no argon2 hashing)."""
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    return users.create_user(session, email=email, password=password, roles=roles or (Role.CUSTOMER,))


def access_token_for(session: Session, user: User) -> str:
    """A signed-in session's access token, as the login route would issue it."""
    auth_session = AuthSession(user_id=user.id, expires_at=utcnow() + timedelta(days=1))
    session.add(auth_session)
    session.flush()
    token, _ = issue_access_token(
        user.id, auth_session.id, {str(role) for role in users.roles_of(session, user.id)}
    )
    return token


def api_key_for(session: Session, user: User, scopes: list[str] | None = None) -> str:
    _, key = api_keys.create_key(
        session,
        user_id=user.id,
        name="test key",
        scopes=scopes or list(api_keys.SCOPES),
        origin=RequestOrigin(),
    )
    return key


def device_token_for(session: Session, owner_id: uuid.UUID) -> str:
    token = new_token(DEVICE_TOKEN_PREFIX)
    device = make_device(session, owner_id, state=DeviceState.REGISTERED, gpus=1)
    device.token_hash = keyed_hash(token)
    session.add(device)
    session.flush()
    return token


class RecordedFollowUps:
    """Follow-ups a command handed on, recorded instead of sent (``portal.services.followups.FollowUps``)."""

    def __init__(self) -> None:
        self.handed: list[tuple[str, uuid.UUID | None]] = []

    def advance_cluster(self, cluster_id: uuid.UUID) -> None:
        self.handed.append(("advance_cluster", cluster_id))

    def reconcile_clusters(self) -> None:
        self.handed.append(("reconcile_clusters", None))

    def settle_payouts(self) -> None:
        self.handed.append(("settle_payouts", None))

    def wake_agent(self, device_id: uuid.UUID) -> None:
        self.handed.append(("wake_agent", device_id))


def make_usage(
    session: Session,
    *,
    customer_id: uuid.UUID,
    device: Device,
    ended_at: datetime,
    seconds: int = 3600,
    gpu_count: int = 1,
    amount_micro: int = 2_000_000,
    fee_micro: int = 200_000,
) -> UsageRecord:
    """A metered period of a node of a cluster of the customer's on ``device``, ending at ``ended_at``: what
    the meter writes, without running a cluster."""
    cluster = Cluster(
        owner_id=customer_id,
        name=f"usage-{uuid.uuid4().hex[:6]}",
        gpu_model=device.gpu_model or "H100-80GB",
        gpu_count=gpu_count,
        duration_hours=1,
        price_per_gpu_hour_micro=amount_micro,
        state="terminated",
    )
    session.add(cluster)
    session.flush()
    node = ClusterNode(
        cluster_id=cluster.id, device_id=device.id, role="head", gpu_count=gpu_count, rate_micro=amount_micro
    )
    session.add(node)
    session.flush()
    record = UsageRecord(
        cluster_id=cluster.id,
        node_id=node.id,
        device_id=device.id,
        customer_id=customer_id,
        provider_id=device.owner_id,
        period_start=ended_at - timedelta(seconds=seconds),
        period_end=ended_at,
        seconds=seconds,
        gpu_count=gpu_count,
        rate_micro=amount_micro,
        amount_micro=amount_micro,
        fee_micro=fee_micro,
    )
    session.add(record)
    session.flush()
    return record
