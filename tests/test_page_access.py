"""Every page event handler declares who may call it, and guarded handlers refuse everyone else."""

import uuid

import reflex as rx

import portal.portal  # noqa: F401  (registers every page and state)
from portal.models import Role
from portal.state.session import ACCESS_ATTRIBUTE, for_users
from tests.conftest import run_coroutine


def portal_states() -> list[type[rx.State]]:
    found, pending = [], [rx.State]
    while pending:
        state = pending.pop()
        pending.extend(state.get_substates())
        if state.__module__.startswith("portal."):
            found.append(state)
    return found


def test_every_page_event_handler_declares_its_access():
    undeclared = [
        f"{state.__name__}.{name}"
        for state in portal_states()
        for name, handler in state.event_handlers.items()
        if handler.fn.__module__.startswith("portal.") and not hasattr(handler.fn, ACCESS_ATTRIBUTE)
    ]
    assert portal_states(), "no page states found"
    assert undeclared == [], "add @for_anyone or @for_users(...) to these handlers"


def test_admin_handlers_are_declared_for_admins():
    from portal.state.admin_clusters import AdminClustersState
    from portal.state.admin_devices import AdminDevicesState
    from portal.state.admin_payouts import AdminPayoutsState
    from portal.state.audit import AuditState

    # Theirs and the paging and reason-dialog mixins' handlers alike: every one of them is for admins.
    for state in (AuditState, AdminDevicesState, AdminClustersState, AdminPayoutsState):
        handlers = {
            name: handler.fn
            for name, handler in state.event_handlers.items()
            if handler.fn.__module__.startswith("portal.")
        }
        assert {"load", "page"} <= set(handlers), state.__name__
        for name, fn in handlers.items():
            assert getattr(fn, ACCESS_ATTRIBUTE) == ("signed_in", frozenset({Role.ADMIN})), (state, name)


class _Probe:
    """Stands in for a state instance: what the guard reads, and a handler body that must not run."""

    def __init__(self, principal):
        self.ran = False
        self._principal = principal
        self.router = type("Router", (), {"url": type("Url", (), {"path": "/account", "query": ""})()})()

    async def _resolve_principal(self):
        return self._principal


def test_a_guarded_handler_sends_the_signed_out_to_sign_in_and_refuses_the_wrong_role():
    from portal.security.principal import Principal, PrincipalKind

    async def body(self):
        self.ran = True

    guarded = for_users(Role.ADMIN)(body)
    signed_out = _Probe(None)
    redirect = run_coroutine(guarded(signed_out))
    assert not signed_out.ran and "/login?next=/account" in str(redirect)

    customer = _Probe(Principal(PrincipalKind.USER, uuid.uuid4(), roles=frozenset({Role.CUSTOMER})))
    run_coroutine(guarded(customer))
    assert not customer.ran

    admin = _Probe(Principal(PrincipalKind.USER, uuid.uuid4(), roles=frozenset({Role.ADMIN})))
    run_coroutine(guarded(admin))
    assert admin.ran


def test_sign_in_keeps_the_deep_link_and_only_a_local_one():
    from reflex.istate.data import ReflexURL

    from portal.state.session import safe_next, sign_in_first

    deep = "/deploy?gpu_model=H100-80GB&country=DE"
    assert sign_in_first(ReflexURL("http://portal" + deep)) == (
        "/login?next=/deploy%3Fgpu_model%3DH100-80GB%26country%3DDE"
    )
    assert sign_in_first(ReflexURL("http://portal/account")) == "/login?next=/account"
    assert safe_next(deep) == deep
    for foreign in ("//evil.example", "https://evil.example", "/a?next=https://evil.example", "/\\evil"):
        assert safe_next(foreign) == "/account"
