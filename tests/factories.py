"""Small builders of rows that later issues will create through their own services."""

from __future__ import annotations

import secrets
import uuid

from sqlmodel import Session

from portal.models import Device, DeviceState, Gpu, Role
from portal.services import users


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
