"""The printable invoice (issue 20): a stable number, the month's period, one line per cluster and totals
that agree with the CSV invoice to the micro-USD."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta

from sqlmodel import Session

from portal.models import Cluster, ClusterNode, DeviceState, Role, UsageRecord
from portal.parts import in_use
from portal.security.principal import Principal, PrincipalKind
from portal.services.money import billing
from portal.state.invoice import _invoice
from tests.factories import make_device, make_user

NOVEMBER = date(2026, 11, 1)


def cluster_with_usage(session: Session, customer_id, provider_id, name: str, usage: list[tuple]) -> Cluster:
    """A cluster of the customer's on one device, with ``(start, seconds, gpus, amount, fee)`` usage lines."""
    device = make_device(session, provider_id, state=DeviceState.READY, gpus=2)
    cluster = Cluster(
        owner_id=customer_id,
        name=name,
        gpu_model="H100-80GB",
        gpu_count=2,
        duration_hours=10,
        price_per_gpu_hour_micro=2_000_000,
    )
    session.add(cluster)
    session.flush()
    node = ClusterNode(
        cluster_id=cluster.id, device_id=device.id, role="head", gpu_count=2, rate_micro=2_000_000
    )
    session.add(node)
    session.flush()
    for start, seconds, gpus, amount, fee in usage:
        session.add(
            UsageRecord(
                cluster_id=cluster.id,
                node_id=node.id,
                device_id=device.id,
                customer_id=customer_id,
                provider_id=provider_id,
                period_start=start,
                period_end=start + timedelta(seconds=seconds),
                seconds=seconds,
                gpu_count=gpus,
                rate_micro=2_000_000,
                amount_micro=amount,
                fee_micro=fee,
            )
        )
    session.flush()
    return cluster


def test_an_invoice_has_a_line_per_cluster_and_totals_that_agree_with_the_csv(engine):
    with Session(engine) as session:
        customer = make_user(session, Role.CUSTOMER, email="invoiced@example.com")
        provider = make_user(session, Role.PROVIDER)
        nov = datetime(2026, 11, 3, 10, tzinfo=UTC)
        training = cluster_with_usage(
            session,
            customer.id,
            provider.id,
            "training",
            [(nov, 600, 2, 666_667, 66_667), (nov + timedelta(minutes=10), 1200, 2, 1_333_333, 133_333)],
        )
        cluster_with_usage(
            session,
            customer.id,
            provider.id,
            "inference",
            # November's last second, and December's first: only the first is November's.
            [
                (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), 1800, 1, 1_000_000, 100_000),
                (datetime(2026, 12, 1, tzinfo=UTC), 1800, 1, 1_000_000, 100_000),
            ],
        )
        session.commit()
        customer_id, training_id = customer.id, training.id
        found = billing.invoice(session, customer_id, NOVEMBER)
        csv_total = list(csv.DictReader(io.StringIO(billing.invoice_csv(session, customer_id, NOVEMBER))))[-1]

    assert found.number == f"GP-202611-{customer_id.hex[:8].upper()}"
    assert (found.period_start, found.period_end) == (date(2026, 11, 1), date(2026, 11, 30))
    assert found.customer_email == "invoiced@example.com"
    assert [(line.cluster, line.gpu_seconds, line.amount_micro) for line in found.lines] == [
        ("training", 2 * 1800, 2_000_000),
        ("inference", 1800, 1_000_000),
    ]
    assert found.lines[0].cluster_id == training_id
    assert found.total_micro == 3_000_000 == int(csv_total["amount_micro"])
    assert found.fee_micro == 300_000


def test_the_page_shows_money_in_cents_and_the_hours_of_gpus(parts):
    with Session(parts.engine) as session:
        customer = make_user(session, Role.CUSTOMER)
        provider = make_user(session, Role.PROVIDER)
        start = datetime(2026, 11, 5, tzinfo=UTC)
        cluster_with_usage(session, customer.id, provider.id, "mine", [(start, 5400, 2, 6_000_000, 600_000)])
        session.commit()
        customer_id = customer.id
    caller = Principal(PrincipalKind.USER, customer_id, roles=frozenset({Role.CUSTOMER}))
    with in_use(parts):
        shown = _invoice(caller, "2026-11")
        empty = _invoice(caller, "2026-10")
    assert shown["period"] == "01 November 2026 to 30 November 2026"
    assert shown["lines"] == [
        {
            "cluster": "mine",
            "cluster_id": shown["lines"][0]["cluster_id"],
            "gpu_model": "H100-80GB",
            "gpu_hours": "3.00",
            "amount": "$6.00",
        }
    ]
    assert (shown["total"], shown["fee"], shown["providers"]) == ("$6.00", "$0.60", "$5.40")
    assert empty["lines"] == [] and empty["total"] == "$0.00"
    assert uuid.UUID(shown["lines"][0]["cluster_id"])


def test_another_customers_usage_is_never_on_the_invoice(engine):
    with Session(engine) as session:
        customer, other = make_user(session, Role.CUSTOMER), make_user(session, Role.CUSTOMER)
        provider = make_user(session, Role.PROVIDER)
        start = datetime(2026, 11, 5, tzinfo=UTC)
        cluster_with_usage(session, other.id, provider.id, "theirs", [(start, 60, 1, 10_000, 1_000)])
        session.commit()
        assert billing.invoice(session, customer.id, NOVEMBER).lines == []
