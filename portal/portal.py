"""The Reflex app: pages, the API mounted into its backend, and the embedded task worker."""

import dataclasses

import reflex as rx
from reflex_base.environment import environment
from starlette.types import ASGIApp

from portal import frontend_build, parts
from portal.api.app import create_api
from portal.api.front import in_front
from portal.demo_agents import demo_agents
from portal.infra.heap import frozen_heap
from portal.infra.logs import configure_logging
from portal.pages import register_pages
from portal.parts import AppParts
from tasks.embedded import embedded_task_worker
from tasks.followups import TaskFollowUps
from tasks.scheduler import periodic_scheduler

# The composition root: this process's parts, whose commands hand their follow-ups to the task actors.
_built = AppParts.from_settings()
parts.use(dataclasses.replace(_built, followups=TaskFollowUps(_built.wakeups)))
configure_logging(parts.current().settings)

api = create_api(parts.current())


class PortalApp(rx.App):
    """The Reflex app, with agents' heartbeats answered in front of it (``in_front``), and the pages that
    ``portal run`` built served beside it."""

    def __call__(self) -> ASGIApp:
        if frontend_build.serving_built_pages():
            environment.REFLEX_MOUNT_FRONTEND_COMPILED_APP.set(True)
        return in_front(super().__call__(), api.state.parts)


app = PortalApp(api_transformer=api)
register_pages(app)
app.register_lifespan_task(frozen_heap)
app.register_lifespan_task(embedded_task_worker)
app.register_lifespan_task(periodic_scheduler)
app.register_lifespan_task(demo_agents)
