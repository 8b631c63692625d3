"""The Dramatiq broker: RabbitMQ (pika) in production, an in-process stub broker when embedded."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker

from portal.config import Settings
from portal.metrics import ACTOR_RUNS


class ActorMetrics(dramatiq.Middleware):
    """Counts actor runs by outcome on the portal's /metrics (``portal_actor_runs_total``)."""

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result: Any = None, exception: Any = None
    ) -> None:
        ACTOR_RUNS.labels(message.actor_name, "failure" if exception else "success").inc()


def build_broker(settings: Settings) -> dramatiq.Broker:
    if settings.broker_url:
        # Publisher confirms: a send returns only once RabbitMQ has the message.
        broker: dramatiq.Broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    else:
        broker = StubBroker()
    broker.add_middleware(ActorMetrics())
    return broker
