"""Logs: one JSON object a line for machines, or short readable lines on a terminal; each record carries
the id of the request it belongs to."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from portal.config import LogFormat, Settings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


_base_record_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_record_factory(*args, **kwargs)
    record.request_id = request_id_var.get()
    return record


# Every record, from any logger or library, carries the id of the request it was written for.
logging.setLogRecordFactory(_record_with_request_id)


class QuietWorkerTraffic(logging.Filter):
    """Drops the access lines of agents' routine traffic (beats, polls: several a second per agent), which
    would bury everything else on a terminal; their errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "portal.access":
            return True
        path, status = getattr(record, "path", ""), getattr(record, "status", 500)
        return not (path.startswith("/api/v1/worker/") and status < 400)


def log_format(settings: Settings) -> LogFormat:
    """The format in force: the setting, else text on a terminal and JSON for anything reading the output."""
    if settings.log_format is not None:
        return settings.log_format
    return LogFormat.TEXT if sys.stdout.isatty() else LogFormat.JSON


LOG_FILE_BYTES = 20 * 2**20
LOG_FILES_KEPT = 3


def log_file(settings: Settings) -> Path:
    """Where the full JSON log goes while the terminal shows short lines."""
    return settings.data_dir / "logs" / "portal.log"


def _json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(settings: Settings) -> None:
    """JSON lines on stdout; or, on a terminal, short lines there and the full JSON log in ``log_file``."""
    handler: logging.Handler = logging.StreamHandler(sys.stdout)
    handlers = [handler]
    if log_format(settings) is LogFormat.JSON:
        handler.setFormatter(_json_formatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
        handler.addFilter(QuietWorkerTraffic())
        path = log_file(settings)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILES_KEPT, delay=True)
        except OSError as error:
            print(f"portal: no log file at {path}: {error.strerror}", file=sys.stderr)
        else:
            kept.setFormatter(_json_formatter())
            handlers.append(kept)
    root = logging.getLogger()
    for existing in [h for h in root.handlers if getattr(h, "_portal", False)]:
        root.removeHandler(existing)
        existing.close()
    for new in handlers:
        new._portal = True  # type: ignore[attr-defined]
        root.addHandler(new)
    root.setLevel(settings.log_level)
    # Our request middleware writes the access log with the request id; uvicorn's would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
