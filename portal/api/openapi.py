"""The error responses of the OpenAPI document, documented once for every operation from what it declares.

Routes declare their success response; the errors they can answer follow from their shape and their
access rule, so they are added here rather than on each decorator: every API path can be rate limited
(429) and can find a dependency down (503); a rule that reads a credential can refuse it (401), and one
that admits only some callers can refuse a valid one (403); a path parameter, a device's own cluster or a
signed-in caller's body names something that may not exist or not be theirs (404); parameters can be
invalid (422); a body can be unparseable (400), too large (413) or invalid (422); a request that changes
state can meet a state that does not allow it (409). Every error has the envelope of
``portal.api.errors``; a status a route declares itself keeps its declaration. Public routes take a
credential optionally, and redirects are documented without a body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute

from portal.security.access import AccessRule, DeviceToken, Open, Public, SignedIn

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}

DESCRIPTIONS = {
    400: "The body is not valid JSON.",
    401: "No credentials, or credentials that are wrong, expired or revoked.",
    403: "The credentials are valid but not allowed here (role, scope or kind of credential).",
    404: "Not found, or not yours.",
    409: "The object's state does not allow this, or capacity or credit is short.",
    413: "The request body is too large.",
    422: "A parameter or the body is invalid; details name the fields.",
    429: "Rate limited; retry after the seconds in Retry-After.",
    503: "A dependency (database, cache, broker, sign-in provider, chain) is down.",
}

RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}
LOCATION = {"Location": {"description": "Where the redirect leads.", "schema": {"type": "string"}}}


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable reason, such as 'not_found'.")
    message: str = Field(description="What went wrong, for a person.")
    details: Any = Field(description="More about the error (the invalid fields, say), or null.")


class ErrorOut(BaseModel):
    """Every error the API answers: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


def document_errors(api: FastAPI) -> None:
    """Make ``api.openapi()`` document the error responses of every operation (see the module docstring)."""
    build = api.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        if ErrorOut.__name__ not in document.get("components", {}).get("schemas", {}):
            add_error_responses(document, access_rules(api.routes))
        return document

    api.openapi = openapi  # type: ignore[method-assign]


def access_rules(routes: list[BaseRoute]) -> dict[tuple[str, str], list[AccessRule]]:
    """The access rules of each documented operation, by (method, path), router-level ones included."""
    # FastAPI keeps included routers unflattened and resolves each route's effective context on demand.
    contexts = getattr(routing, "iter_route_contexts", None)
    rules = {}
    for route in contexts(routes) if contexts else routes:
        dependant = getattr(route, "dependant", None)
        if dependant is None or not getattr(route, "include_in_schema", False):
            continue
        for method in route.methods or ():
            rules[(method, route.path_format)] = list(_rules_in(dependant))
    return rules


def add_error_responses(document: dict[str, Any], rules: dict[tuple[str, str], list[AccessRule]]) -> None:
    """Add the error responses to every operation of the document, in place."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    envelope = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(envelope.pop("$defs", {}))
    schemas[ErrorOut.__name__] = envelope
    reference = {"$ref": f"#/components/schemas/{ErrorOut.__name__}"}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            operation_rules = rules.get((method.upper(), path), [])
            if operation.get("security") and any(type(rule) is Public for rule in operation_rules):
                operation["security"] = [{}, *operation["security"]]  # a credential may be sent, not must
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status.startswith("3"):  # a redirect has no body, only where it goes
                    response.pop("content", None)
                    response.setdefault("headers", LOCATION)
            for status in error_statuses(method.upper(), operation, operation_rules):
                if str(status) in responses and status != 422:
                    continue  # the route's own declaration wins (FastAPI's 422 is replaced by the envelope)
                responses[str(status)] = {
                    "description": DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": reference}},
                    **({"headers": RETRY_AFTER} if status == 429 else {}),
                }
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shapes, now unused
        if f'"#/components/schemas/{name}"' not in json.dumps(document):
            schemas.pop(name, None)


def error_statuses(method: str, operation: dict[str, Any], rules: list[AccessRule]) -> list[int]:
    """The error statuses an operation can answer, from its access rules, parameters, body and method."""
    statuses = {429, 503}
    for rule in rules:
        statuses |= _refusals(rule)
    places = {parameter["in"] for parameter in operation.get("parameters", [])}
    if places:
        statuses.add(422)
    signed_in = any(isinstance(rule, SignedIn | DeviceToken) for rule in rules)
    if "path" in places or any(isinstance(rule, DeviceToken) for rule in rules):
        statuses.add(404)  # what the path names, or (for a device) the cluster it serves
    if "requestBody" in operation:
        statuses.update({400, 413, 422})
        if signed_in:
            statuses.add(404)  # a caller's body may name something that does not exist or is not theirs
    if method in STATE_CHANGING:
        statuses.add(409)
    return sorted(statuses)


def _rules_in(dependant: Dependant) -> Iterator[AccessRule]:
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, AccessRule):
            yield dependency.call
        yield from _rules_in(dependency)


def _refusals(rule: AccessRule) -> set[int]:
    if isinstance(rule, SignedIn | DeviceToken):
        return {401, 403}  # no or a bad credential; a valid one that the rule does not admit
    if type(rule) is Open:
        return set()  # reads no credential
    return {401}  # Public, or an open route that checks a token of its own (a sent credential is checked)
