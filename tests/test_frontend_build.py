"""The pages are built again only when what they are built from changed (``portal.frontend_build``)."""

from pathlib import Path

import pytest

from portal import frontend_build

ENV = {"REFLEX_TELEMETRY_ENABLED": "false", "PORTAL_DATA_DIR": "/srv/portal", "REFLEX_DIR": "/opt/reflex"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "portal" / "pages").mkdir(parents=True)
    (tmp_path / "portal" / "pages" / "home.py").write_text("TITLE = 'GPU Portal'\n")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "logo.svg").write_text("<svg/>")
    (tmp_path / "rxconfig.py").write_text("config = None\n")
    return tmp_path


@pytest.mark.parametrize(
    ("written", "settings", "port"),
    [
        (None, {}, 3001),  # the pages call the API back on their port
        (None, {"REFLEX_API_URL": "https://gpu.example"}, 3000),
        (("assets/logo.svg", "<svg></svg>"), {}, 3000),
        (("portal/pages/home.py", "TITLE = 'Portal'\n"), {}, 3000),
        (("portal/pages/new.py", ""), {}, 3000),
    ],
    ids=["port", "reflex-setting", "asset", "page-code", "new-module"],
)
def test_a_change_to_what_the_pages_are_built_from_calls_for_a_new_build(project, written, settings, port):
    built = frontend_build.fingerprint(ENV, 3000, project)
    if written:
        (project / written[0]).write_text(written[1])
    assert frontend_build.fingerprint({**ENV, **settings}, port, project) != built


def test_what_the_pages_are_not_built_from_leaves_the_build_current(project, tmp_path):
    built = frontend_build.fingerprint(ENV, 3000, project)
    (project / "portal" / "pages" / "__pycache__").mkdir()
    (project / "portal" / "pages" / "__pycache__" / "home.cpython-311.pyc").write_bytes(b"\0")
    elsewhere = {
        **ENV,
        "PORTAL_DATA_DIR": "/tmp/other",
        "REFLEX_DIR": "/tmp/reflex",
        "PORTAL_DEMO_AGENTS": "0",
    }
    assert frontend_build.fingerprint(elsewhere, 3000, project) == built


def test_only_a_finished_build_stamped_with_the_same_fingerprint_is_served(tmp_path):
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    assert not frontend_build.is_current("abc", build_dir)
    (build_dir / frontend_build.STAMP.name).write_text("abc\n")
    assert not frontend_build.is_current("abc", build_dir)  # no pages in it
    (build_dir / "client").mkdir()
    assert frontend_build.is_current("abc", build_dir)
    assert not frontend_build.is_current("abd", build_dir)
