"""Dramatiq worker threads inside the portal process, for the embedded (no RabbitMQ) mode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dramatiq

from portal import parts

logger = logging.getLogger(__name__)


@asynccontextmanager
async def embedded_task_worker() -> AsyncIterator[None]:
    """Run the actors in this process while it lives, when no external broker is configured."""
    settings = parts.current().settings
    if not settings.uses_embedded_broker:
        yield
        return
    from tasks import broker

    # worker_timeout bounds how long stop() waits for idle threads (about twice this, in ms).
    worker = dramatiq.Worker(broker, worker_threads=settings.embedded_worker_threads, worker_timeout=250)
    worker.start()
    logger.info("embedded task worker started", extra={"threads": settings.embedded_worker_threads})
    try:
        yield
    finally:
        await asyncio.to_thread(worker.stop)
        logger.info("embedded task worker stopped")
