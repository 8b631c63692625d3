"""Providers' devices: add (token shown once), list, inspect with the eligibility checklist, remove."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from sqlmodel import Session

from portal.api.clusters import Minutes
from portal.api.deps import CacheDep, SessionDep, SettingsDep
from portal.config import Settings
from portal.models import Device, Role
from portal.schemas.clusters import MetricsOut
from portal.schemas.devices import (
    CheckOut,
    DeviceCreatedOut,
    DeviceIn,
    DeviceOut,
    DevicePriceIn,
    GpuOut,
    TokenOut,
)
from portal.schemas.mesh import MeshOut
from portal.security.access import OriginDep, SignedIn
from portal.security.principal import Principal
from portal.services.mesh import certificates
from portal.services.providers import devices, telemetry

router = APIRouter(prefix="/devices", tags=["provider: devices"])
Reader = Annotated[Principal, Depends(SignedIn([Role.PROVIDER], scope="devices:read"))]
Writer = Annotated[Principal, Depends(SignedIn([Role.PROVIDER], scope="devices:write"))]


def device_out(session: Session, device: Device, settings: Settings) -> DeviceOut:
    checks = devices.eligibility(session, device, settings)
    mesh = certificates.status(device, settings)
    columns = set(DeviceOut.model_fields) - {"gpus", "eligibility", "hireable", "mesh"}
    return DeviceOut(
        **device.model_dump(include=columns),
        gpus=[
            GpuOut.model_validate(gpu, from_attributes=True) for gpu in devices.gpus_of(session, device.id)
        ],
        eligibility=[CheckOut(key=c.key, ok=c.ok, message=c.message) for c in checks],
        hireable=devices.is_hireable(checks),
        mesh=MeshOut(state=mesh.state, relayed=mesh.relayed),
    )


@router.post("", status_code=201, summary="Add a device; its token and launch command are shown once")
def add_device(
    body: DeviceIn, session: SessionDep, settings: SettingsDep, origin: OriginDep, caller: Writer
) -> DeviceCreatedOut:
    device, token = devices.add_device(
        session,
        owner_id=caller.user_id,
        name=body.name,
        country=body.country,
        connectivity_tier=body.connectivity_tier,
        price_per_gpu_hour_micro=body.price_per_gpu_hour_micro,
        origin=origin,
    )
    commands = devices.launch_commands(settings, token)
    return DeviceCreatedOut(
        device=device_out(session, device, settings),
        device_token=token,
        launch_command=commands["pip"],
        launch_commands=commands,
    )


@router.get("", summary="Your devices")
def list_devices(session: SessionDep, settings: SettingsDep, caller: Reader) -> list[DeviceOut]:
    return [device_out(session, device, settings) for device in devices.list_devices(session, caller.user_id)]


@router.get("/{device_id}", summary="A device: state, GPUs, last heartbeat, verification, eligibility")
def get_device(device_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: Reader) -> DeviceOut:
    return device_out(session, devices.get_device(session, caller.user_id, device_id), settings)


@router.get("/{device_id}/metrics", summary="Per-GPU time series of the device")
def metrics(
    device_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: Reader, minutes: Minutes = 15
) -> MetricsOut:
    device = devices.get_device(session, caller.user_id, device_id)
    found = telemetry.series(session, settings, [device.id], minutes)
    return MetricsOut.model_validate(telemetry.as_json(found, minutes))


@router.put(
    "/{device_id}/price",
    summary="Set the device's price per GPU-hour (null: the list price); running clusters keep theirs",
)
def set_price(
    device_id: uuid.UUID,
    body: DevicePriceIn,
    session: SessionDep,
    settings: SettingsDep,
    origin: OriginDep,
    caller: Writer,
) -> DeviceOut:
    device = devices.set_price(
        session,
        owner_id=caller.user_id,
        device_id=device_id,
        price_per_gpu_hour_micro=body.price_per_gpu_hour_micro,
        origin=origin,
    )
    return device_out(session, device, settings)


@router.delete("/{device_id}", status_code=204, summary="Remove a device (not while it runs a cluster)")
def remove_device(
    device_id: uuid.UUID, session: SessionDep, cache: CacheDep, origin: OriginDep, caller: Writer
) -> None:
    devices.remove_device(session, cache, owner_id=caller.user_id, device_id=device_id, origin=origin)


@router.post("/{device_id}/rotate-token", summary="A new device token; the old one stops working")
def rotate_token(
    device_id: uuid.UUID,
    session: SessionDep,
    cache: CacheDep,
    settings: SettingsDep,
    origin: OriginDep,
    caller: Writer,
) -> TokenOut:
    token = devices.rotate_token(session, cache, owner_id=caller.user_id, device_id=device_id, origin=origin)
    return TokenOut(device_token=token, launch_command=devices.launch_commands(settings, token)["pip"])
