"""Logs read well where they are read: short lines on a terminal without the agents' routine traffic, JSON
for anything else."""

import io
import logging
import sys

from portal.config import LogFormat
from portal.infra import logs
from tests.conftest import settings_for


def access_line(path: str, status: int) -> logging.LogRecord:
    record = logging.LogRecord("portal.access", logging.INFO, __file__, 1, "GET %s %s", (path, status), None)
    record.path, record.status = path, status
    return record


def test_a_terminal_sees_no_line_per_heartbeat_but_every_error_and_other_request():
    quiet = logs.QuietWorkerTraffic()
    assert not quiet.filter(access_line("/api/v1/worker/heartbeat", 200))
    assert not quiet.filter(access_line("/api/v1/worker/commands", 200))
    assert quiet.filter(access_line("/api/v1/worker/heartbeat", 401))
    assert quiet.filter(access_line("/api/v1/clusters", 202))
    assert quiet.filter(logging.LogRecord("portal.audit", logging.INFO, __file__, 1, "x", (), None))


def test_the_format_is_text_on_a_terminal_json_otherwise_and_the_setting_wins(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("PORTAL_LOG_FORMAT")  # the tests' own choice
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert logs.log_format(settings_for()) is LogFormat.TEXT
    assert logs.log_format(settings_for(log_format="json")) is LogFormat.JSON
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert logs.log_format(settings_for()) is LogFormat.JSON
    assert logs.log_format(settings_for(log_format="text")) is LogFormat.TEXT


def test_on_a_terminal_the_full_json_log_goes_to_the_data_dir(tmp_path, monkeypatch):
    import json

    settings = settings_for(data_dir=tmp_path, log_format="text")
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        logs.configure_logging(settings)
        logging.getLogger("portal.access").info(
            "GET %s %s",
            "/api/v1/worker/heartbeat",
            200,
            extra={"path": "/api/v1/worker/heartbeat", "status": 200},
        )
        for handler in root.handlers:
            handler.flush()
        (line,) = logs.log_file(settings).read_text().splitlines()
        record = json.loads(line)
        # The terminal leaves routine beats out; the file keeps every line, as JSON.
        assert record["logger"] == "portal.access" and record["path"] == "/api/v1/worker/heartbeat"
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        for handler in before:
            if handler not in root.handlers:
                root.addHandler(handler)
