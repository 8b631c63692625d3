"""Settings: embedded defaults, real services by URL, and one clear line for a bad setting."""

import os
import stat
import subprocess

import pytest

from portal.config import Environment, Settings, SettingsError, load_settings
from tests.conftest import TEST_DATA_DIR, VENV_BIN


def test_defaults_are_embedded_and_on_loopback():
    settings = Settings(data_dir=TEST_DATA_DIR)
    assert settings.sqlalchemy_url == f"sqlite:///{TEST_DATA_DIR / 'portal.db'}"
    assert settings.redis_url is None and settings.broker_url is None
    assert settings.uses_embedded_broker
    assert settings.host == "127.0.0.1"
    assert settings.base_url == "http://127.0.0.1:3000"


@pytest.mark.parametrize(
    ("public_url", "pages_port"),
    [
        ("", 3001),  # the process's own port
        ("http://127.0.0.1:8080", 8080),  # a load balancer in front of several processes
        ("http://portal.example.com", 80),
        (
            "https://portal.example.com",
            3001,
        ),  # the pages call back on the page's port: the build is the image's
    ],
)
def test_the_pages_call_back_where_users_reach_the_portal(public_url, pages_port):
    settings = Settings(data_dir=TEST_DATA_DIR, port=3001, public_url=public_url)
    assert settings.pages_port == pages_port


def test_real_services_are_taken_from_prefixed_variables(monkeypatch):
    monkeypatch.setenv("PORTAL_DATABASE_URL", "postgresql+psycopg://portal@db:5432/portal")
    monkeypatch.setenv("PORTAL_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("PORTAL_BROKER_URL", "amqp://guest:guest@mq:5672/")
    settings = load_settings()
    assert settings.sqlalchemy_url == "postgresql+psycopg://portal@db:5432/portal"
    assert settings.redis_url == "redis://cache:6379/0"
    assert not settings.uses_embedded_broker


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "PORTAL_DATABASE_URL",
            "mysql://root@localhost/portal",
            "invalid setting PORTAL_DATABASE_URL: must start with",
        ),
        (
            "PORTAL_DATABASE_URL",
            "postgresql://u@h/db",
            "invalid setting PORTAL_DATABASE_URL: must start with",
        ),
        ("PORTAL_PORT", "eighty", "invalid setting PORTAL_PORT:"),
        ("PORTAL_PORT", "70000", "invalid setting PORTAL_PORT:"),
        (
            "PORTAL_BROKER_URL",
            "redis://localhost",
            "invalid setting PORTAL_BROKER_URL: must start with amqp://",
        ),
        ("PORTAL_LOG_LEVEL", "LOUD", "invalid setting PORTAL_LOG_LEVEL: must be one of"),
        (
            "PORTAL_ENVIRONMENT",
            "production",
            "PORTAL_SECRET_KEY must be set when PORTAL_ENVIRONMENT=production",
        ),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_cli_reports_a_bad_setting_in_one_line_without_a_traceback():
    env = {**os.environ, "PORTAL_REDIS_URL": "http://not-redis"}
    result = subprocess.run(
        [str(VENV_BIN / "portal"), "db", "current"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "portal: invalid setting PORTAL_REDIS_URL: "
        "must start with redis:// or rediss:// or unix:// (a Redis URL)"
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_production_takes_the_secret_key_from_settings(monkeypatch):
    monkeypatch.setenv("PORTAL_ENVIRONMENT", "production")
    monkeypatch.setenv("PORTAL_SECRET_KEY", "s" * 48)
    monkeypatch.setenv("PORTAL_METRICS_TOKEN", "m" * 32)
    settings = load_settings()
    assert settings.environment is Environment.PRODUCTION
    assert settings.signing_key() == "s" * 48
    assert "s" * 48 not in repr(settings)


def test_development_generates_a_private_secret_key_once(tmp_path):
    settings = Settings(data_dir=tmp_path)
    first = settings.signing_key()
    assert len(first) >= 48
    assert Settings(data_dir=tmp_path).signing_key() == first
    mode = stat.S_IMODE((tmp_path / "secret_key").stat().st_mode)
    assert mode == 0o600
