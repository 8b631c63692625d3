"""The explorer's history: a snapshot a minute of GPUs online and hired by model and country."""

from datetime import timedelta

from sqlmodel import select

from portal.infra.db import session_scope
from portal.models import DeviceState, NetworkSnapshot
from portal.models.base import utcnow
from portal.services.network import network_history
from tests.test_clusters import SETTINGS, market_with


def test_snapshots_sum_gpus_online_and_hired_by_model_and_country(engine):
    with session_scope(engine) as session:
        _, hired, silent = market_with(session, [2, 4, 8])
        hired.state = DeviceState.HIRED
        silent.last_heartbeat_at = utcnow() - timedelta(minutes=5)
        session.add_all([hired, silent])
    with session_scope(engine) as session:
        assert network_history.take_snapshot(session, SETTINGS) == 1
        network_history.take_snapshot(session, SETTINGS)
    with session_scope(engine) as session:
        (trend,) = network_history.history(session, 15, by="gpu_model")
        assert trend.key == "H100-80GB" and trend.online == [6, 6] and trend.hired == [4, 4]
        assert [t.key for t in network_history.history(session, 15, by="country")] == ["DE"]
    with session_scope(engine) as session:
        for snapshot in session.exec(select(NetworkSnapshot)).all():
            snapshot.at -= timedelta(days=31)
            session.add(snapshot)
    with session_scope(engine) as session:
        assert network_history.prune(session) == 2
        assert network_history.history(session, 60 * 24 * 60, by="gpu_model") == []
