"""The portal as ``portal run`` serves agents and customers (the API behind the heartbeat lane, the embedded
task worker, the periodic scheduler), without the pages: what ``tests/test_mesh_cluster.py`` runs inside
the portal's network namespace, where a thread of the test process cannot be.

``python -m tests.mesh_portal HOST PORT``, configured by the ``PORTAL_*`` environment as the portal is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import uvicorn

from portal import parts
from portal.api.app import create_api
from portal.api.front import in_front
from portal.infra.logs import configure_logging
from portal.parts import AppParts
from tasks.embedded import embedded_task_worker
from tasks.followups import TaskFollowUps
from tasks.scheduler import periodic_scheduler


async def serve(host: str, port: int) -> None:
    built = AppParts.from_settings()
    parts.use(dataclasses.replace(built, followups=TaskFollowUps(built.wakeups)))
    configure_logging(parts.current().settings)
    app = in_front(create_api(parts.current()), parts.current())
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    async with embedded_task_worker(), periodic_scheduler():
        await server.serve()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
