"""Public network statistics: ``GET /stats/network`` and the same through GraphQL (``POST /graphql``)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import strawberry
from cross_web import HTTPException as GraphQLHTTPError
from fastapi import APIRouter, Depends, Request, Response
from graphql import GraphQLError
from starlette.exceptions import HTTPException
from strawberry.extensions import MaxTokensLimiter, QueryDepthLimiter
from strawberry.fastapi import GraphQLRouter
from strawberry.types import ExecutionContext

from portal.api.deps import CacheDep, SessionDep
from portal.security.access import PUBLIC
from portal.services.network import analytics

logger = logging.getLogger(__name__)
router = APIRouter(tags=["network"], dependencies=[Depends(PUBLIC)])


@router.get(
    "/stats/network", summary="Devices and GPUs by state, model and country; hired share; utilization"
)
def network(session: SessionDep, cache: CacheDep) -> analytics.NetworkStats:
    return analytics.network_stats(session, cache)


@strawberry.type(description="Devices and GPUs sharing a state, a GPU model or a country.")
class Group:
    key: str
    devices: int
    gpus: int
    gpus_hired: int
    simulated_gpus: int


@strawberry.type(description="The network now (cached for up to 30 s).")
class Network:
    at: str
    devices: int
    gpus: int
    devices_online: int
    gpus_online: int
    gpus_hired: int
    simulated_gpus_online: int
    hired_share: float
    utilization_avg: float | None
    compute_hours: float
    earnings_paid_micro: strawberry.scalars.JSON  # may pass 2^53: JSON numbers, not GraphQL's 32-bit Int
    by_state: list[Group]
    by_model: list[Group]
    by_country: list[Group]


def _network(stats: analytics.NetworkStats) -> Network:
    data: dict[str, Any] = asdict(stats)
    for name in ("by_state", "by_model", "by_country"):
        data[name] = [Group(**group) for group in data[name]]
    return Network(**data)


@strawberry.type
class Query:
    @strawberry.field(description="The network's statistics, as GET /api/v1/stats/network.")
    def network(self, info: strawberry.Info) -> Network:
        context = info.context
        return _network(analytics.network_stats(context["session"], context["cache"]))


async def _context(session: SessionDep, cache: CacheDep) -> dict[str, Any]:
    return {"session": session, "cache": cache}


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # A client's bad query is the client's business: noted, not logged as the portal's error.
        for error in errors:
            logger.info("graphql query refused: %s", error.message)


schema = Schema(
    query=Query,
    extensions=[lambda: QueryDepthLimiter(max_depth=6), lambda: MaxTokensLimiter(max_token_count=2000)],
)


class EnvelopedGraphQLRouter(GraphQLRouter):
    """Strawberry answers a request it cannot read (no JSON, no query, a wrong content type) in plain text;
    here it gets the API's error envelope like every other error. A body that is not UTF-8, or JSON that
    is not an object (``null``, a number), is such a request too: strawberry lets those through as 500s."""

    def parse_json(self, data: str | bytes) -> Any:
        try:
            parsed = super().parse_json(data)
        except UnicodeDecodeError as error:
            raise GraphQLHTTPError(400, "The request body is not UTF-8 JSON.") from error
        if not isinstance(parsed, dict | list):  # a list is a batch, which strawberry refuses itself
            raise GraphQLHTTPError(400, "The body must be a JSON object: {query, variables, operationName}.")
        return parsed

    async def run(  # type: ignore[override]
        self, request: Request, context: Any = strawberry.UNSET, root_value: Any = strawberry.UNSET
    ) -> Response:
        try:
            return await super().run(request, context=context, root_value=root_value)
        except GraphQLHTTPError as error:
            raise HTTPException(error.status_code, error.reason) from error


# The body strawberry reads, so the OpenAPI document (and the schema-driven fuzz) knows it.
GRAPHQL_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["query"],
                "properties": {
                    "query": {"type": "string", "description": "A GraphQL query document."},
                    "variables": {"anyOf": [{"type": "object"}, {"type": "null"}]},
                    "operationName": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
            }
        }
    },
}
# No GET and no in-browser IDE: queries come as POST, and the portal loads nothing from a CDN.
graphql_router = EnvelopedGraphQLRouter(
    schema, path="/graphql", context_getter=_context, graphql_ide=None, allow_queries_via_get=False
)
for _route in graphql_router.routes:
    if "POST" in getattr(_route, "methods", ()):
        _route.openapi_extra = {"requestBody": GRAPHQL_BODY}
router.include_router(graphql_router)
