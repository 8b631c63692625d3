import reflex as rx

from portal.build_settings import LighterViteBuild, quiet_misleading_reflex_lines
from portal.config import get_settings

quiet_misleading_reflex_lines()

config = rx.Config(
    app_name="portal",
    telemetry_enabled=False,
    show_built_with_reflex=False,
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(appearance="inherit", accent_color="violet", gray_color="slate", radius="medium")
        ),
        LighterViteBuild(),
    ],
    disable_plugins=[rx.plugins.SitemapPlugin],
    cors_allowed_origins=get_settings().allowed_origins,
    # With Redis, Reflex keeps per-tab state there and can run several backend workers.
    redis_url=get_settings().redis_url,
)
