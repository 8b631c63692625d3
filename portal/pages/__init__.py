"""Pages, one module per area; ``register_pages`` adds them all to the app."""

from __future__ import annotations

import reflex as rx

from portal.pages import (
    account,
    admin_analytics,
    admin_audit,
    admin_clusters,
    admin_devices,
    admin_payouts,
    admin_users,
    areas,
    auth,
    billing,
    clusters,
    devices,
    explorer,
    landing,
    market,
    not_found,
)


def register_pages(app: rx.App) -> None:
    landing.register(app)
    areas.register(app)
    auth.register(app)
    account.register(app)
    admin_audit.register(app)
    admin_devices.register(app)
    admin_users.register(app)
    admin_clusters.register(app)
    admin_payouts.register(app)
    admin_analytics.register(app)
    devices.register(app)
    market.register(app)
    clusters.register(app)
    billing.register(app)
    explorer.register(app)
    not_found.register(app)
