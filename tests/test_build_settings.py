"""What rxconfig.py adds to Reflex's page build (portal/build_settings.py): Vite skips its compressed-size
report, and Reflex's lines that would send a newcomer the wrong way are not printed."""

import logging

import pytest
from reflex.utils import js_runtimes, path_ops
from reflex_base.compiler import templates

from portal import build_settings


def reflex_vite_config() -> str:
    """The vite.config.js Reflex writes for a production build, from its own template."""
    return templates.vite_config_template(
        base="/", hmr=False, force_full_reload=False, experimental_hmr=False, sourcemap=False
    )


def test_the_vite_build_skips_its_compressed_size_report_and_keeps_the_rest():
    written = reflex_vite_config()
    lighter = build_settings.lighter_vite_build(written)
    assert lighter.replace("    reportCompressedSize: false,\n", "", 1) == written
    build_options = lighter[lighter.index("  build: {") :]
    assert build_options.splitlines()[1] == "    reportCompressedSize: false,"
    assert build_settings.lighter_vite_build(lighter) == lighter  # once, however often it is applied


def test_a_vite_config_of_another_shape_is_left_as_it_is():
    other = "export default defineConfig({ build: { minify: true } });\n"
    assert build_settings.lighter_vite_build(other) == other


def test_the_plugin_asks_reflex_to_modify_the_vite_config():
    asked = []
    build_settings.LighterViteBuild().pre_compile(add_modify_task=lambda *args: asked.append(args))
    assert asked == [("vite.config.js", build_settings.lighter_vite_build)]


@pytest.fixture
def reflex_lines(caplog):
    build_settings.quiet_misleading_reflex_lines()
    build_settings.quiet_misleading_reflex_lines()  # rxconfig.py may be read more than once
    caplog.set_level(logging.INFO)

    def printed(logger: str, message: str) -> bool:
        caplog.clear()
        logging.getLogger(logger).warning(message)
        return [record.getMessage() for record in caplog.records] == [message]

    return printed


NODE_WARNING = "Your version (20.20.2) of Node.js is out of date. Upgrade to 22.22.0 or higher."


def test_the_node_upgrade_warning_is_dropped_when_bun_runs_the_build(reflex_lines, monkeypatch, tmp_path):
    monkeypatch.setattr(path_ops, "get_bun_path", lambda: tmp_path / "bun")
    monkeypatch.setattr(js_runtimes, "prefer_npm_over_bun", lambda: False)
    assert not reflex_lines("reflex.utils.js_runtimes", NODE_WARNING)
    assert reflex_lines("reflex.utils.js_runtimes", "Bun or npm not found.")  # other warnings stay


@pytest.mark.parametrize("bun", [False, True])
def test_the_node_upgrade_warning_stays_when_node_runs_the_build(reflex_lines, monkeypatch, tmp_path, bun):
    monkeypatch.setattr(path_ops, "get_bun_path", lambda: tmp_path / "bun" if bun else None)
    monkeypatch.setattr(js_runtimes, "prefer_npm_over_bun", lambda: bun)  # with bun: REFLEX_USE_NPM
    assert reflex_lines("reflex.utils.js_runtimes", NODE_WARNING)


def test_reflexs_next_step_after_making_dot_web_is_not_printed(reflex_lines):
    assert not reflex_lines("reflex.reflex", "Initialized portal. Run `uv run reflex run` to start the app.")
    assert reflex_lines("reflex.reflex", "Initialized the web directory.")
