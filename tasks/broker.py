"""The Dramatiq broker: RabbitMQ (pika) in production, an in-process stub broker when embedded."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker

from portal.config import Settings


def build_broker(settings: Settings) -> dramatiq.Broker:
    if settings.broker_url:
        # Publisher confirms: a send returns only once RabbitMQ has the message.
        return RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    return StubBroker()
