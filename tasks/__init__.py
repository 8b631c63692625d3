"""Background work as Dramatiq actors; each actor is a few lines that call a service.

Importing this package sets the global broker from the settings and registers every actor, which is
what ``dramatiq tasks`` (run by ``portal worker``) and the embedded worker both rely on.
"""

import dramatiq

from portal import parts
from tasks.broker import build_broker

broker = build_broker(parts.current().settings)
dramatiq.set_broker(broker)

from tasks import billing, clusters, devices, ping, retention  # noqa: E402  (actors need the broker set first)

__all__ = ["billing", "broker", "clusters", "devices", "ping", "retention"]
