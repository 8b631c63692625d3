"""The smallest actor: proves that a message goes through the broker to a worker and back."""

import dramatiq

from portal import parts
from portal.services.health import record_pong


@dramatiq.actor(max_retries=3, time_limit=10_000)
def ping(token: str) -> None:
    record_pong(parts.current().cache, token)
