"""The portal's side of isolation (issue 19): a device says how it runs customers' code; a production
portal hires only devices that run it in containers; a device goes back to ready only once its agent has
wiped the rental, and a failed wipe takes it off the market with the reason, as a fault."""

from sqlmodel import select

from portal.config import Environment
from portal.infra.db import session_scope
from portal.models import Cluster, Device, DeviceState, FaultEvent, Role, User
from portal.models.base import utcnow
from portal.services.providers import agents, commands, devices
from portal.services.rentals import clusters, placement
from tests.factories import make_device, make_user
from tests.test_clusters import SETTINGS, advance, device_state, run_to_running

PRODUCTION = SETTINGS.model_copy(update={"environment": Environment.PRODUCTION})


def report(**isolation: str) -> agents.MachineReport:
    gpu = {"index": 0, "uuid": "GPU-1", "model": "H100-80GB", "memory_mb": 81_559}
    return agents.MachineReport("0.1.0", "rig", "Linux", 8, 64_000, [gpu], False, None, **isolation)


def test_a_production_portal_hires_only_devices_that_run_customers_code_in_containers(engine):
    with session_scope(engine) as session:
        owner = make_user(session, Role.PROVIDER)
        owner.wallet_address = "wallet"
        boxed, bare = (
            make_device(session, owner.id, state=DeviceState.READY, simulated=False) for _ in range(2)
        )
        agents.register(
            session,
            boxed,
            report(
                isolation="container", container_engine="podman", worker_image="gpu-pool-worker:ray-2.60.0"
            ),
            peer="203.0.113.7",
            settings=PRODUCTION,
        )
        agents.register(session, bare, report(), peer="203.0.113.8", settings=PRODUCTION)
        for device in (boxed, bare):  # proven again with the GPUs just reported
            device.verified_at, device.state = utcnow(), DeviceState.READY
        session.flush()

        checks = {
            device.id: {c.key: c for c in devices.eligibility(session, device, PRODUCTION)}
            for device in (boxed, bare)
        }
        assert checks[boxed.id]["isolated"].ok
        assert checks[boxed.id]["isolated"].message == (
            "Customers' code runs in containers (podman, gpu-pool-worker:ray-2.60.0)."
        )
        assert not checks[bare.id]["isolated"].ok
        assert "start the agent with --isolation container" in checks[bare.id]["isolated"].message
        assert devices.eligibility(session, bare, SETTINGS)[-2].message == "No isolation (development mode)."
        hireable = session.exec(
            select(Device.id)
            .join(User, User.id == Device.owner_id)
            .where(*placement.hireable_clause(PRODUCTION))
        ).all()
        assert boxed.id in hireable and bare.id not in hireable


def answer_stop(engine, device_id, *, ok: bool, detail: str) -> None:
    with session_scope(engine) as session:
        (command,) = commands.take(session, device_id)
        assert command.kind == "stop_ray"
        commands.complete(session, device_id, command.id, ok=ok, detail=detail)


def test_a_device_is_ready_again_only_after_its_wipe_and_a_failed_wipe_is_a_fault(engine):
    cluster_id, _, (wiped, failed) = run_to_running(engine, [1, 1], 2)
    with session_scope(engine) as session:
        for device in (wiped, failed):
            row = session.get(Device, device.id)
            row.isolation, row.last_heartbeat_at = "container", utcnow()
            session.add(row)
        assert clusters.request_termination(session, session.get(Cluster, cluster_id), "test")
    advance(engine, cluster_id)
    answer_stop(engine, wiped.id, ok=True, detail="stopped")
    answer_stop(engine, failed.id, ok=False, detail="the wipe left volume gpu-pool-x")
    advance(engine, cluster_id)

    assert device_state(engine, wiped.id) == DeviceState.READY
    assert device_state(engine, failed.id) == DeviceState.BLOCKED
    with session_scope(engine) as session:
        assert session.get(Device, wiped.id).last_wipe_at is not None
        blocked = session.get(Device, failed.id)
        assert blocked.state_reason == "wipe failed: the wipe left volume gpu-pool-x"
        assert blocked.last_wipe_at is None
        (fault,) = session.exec(select(FaultEvent).where(FaultEvent.device_id == failed.id)).all()
        assert fault.kind == "wipe_failed" and "the wipe left volume gpu-pool-x" in fault.message
        checks = {c.key: c for c in devices.eligibility(session, blocked, SETTINGS)}
        assert checks["not_blocked"].message == "Blocked: wipe failed: the wipe left volume gpu-pool-x"
