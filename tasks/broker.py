"""The Dramatiq broker: RabbitMQ (pika) in production, an in-process stub broker when embedded."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker

from portal.config import Settings
from portal.infra.metrics import COUNTER_TTL_S, actor_runs_key

logger = logging.getLogger(__name__)


class ActorMetrics(dramatiq.Middleware):
    """Counts actor runs by outcome in the shared cache, so the portal's /metrics shows the runs of every
    task-worker process (``portal_actor_runs_total``), not only its own."""

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result: Any = None, exception: Any = None
    ) -> None:
        from portal import parts

        outcome = "failure" if exception else "success"
        try:
            parts.current().cache.incr(actor_runs_key(message.actor_name, outcome), ttl_s=COUNTER_TTL_S)
        except Exception:  # a metric must never fail the task it counts
            logger.warning("could not count a run of %s", message.actor_name, exc_info=True)


def build_broker(settings: Settings) -> dramatiq.Broker:
    if settings.broker_url:
        # Publisher confirms: a send returns only once RabbitMQ has the message.
        broker: dramatiq.Broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    else:
        broker = StubBroker()
    broker.add_middleware(ActorMetrics())
    return broker
