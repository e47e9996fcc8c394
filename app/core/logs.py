"""The service's log lines as JSON, one object per line on stderr:

    {"time": "2026-01-01T12:00:00.123Z", "level": "WARNING", "logger": "app.services.redis_store",
     "message": "Redis is back", "request_id": "4f1c…"}

`request_id` is there for lines written while a request was served (app/api/middleware.py sets it; the
threadpool and streaming responses carry it along), `exc_info` when there is a traceback. Messages never
hold raw account ids: the code logs counts, names and pseudonymous ids only.

`configure_logging` puts one handler on the `app` and `xrec` loggers (the service's own: every module
logs under its import name); `uvicorn_log_config` gives uvicorn's loggers the same format for `xrec serve`.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# The id of the request being served, for log lines; None outside requests (startup, replay, the bus).
request_id: ContextVar[str | None] = ContextVar("xrec_request_id", default=None)

SERVICE_LOGGERS = ("app", "xrec")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line is written (not when the handler was made): test
    runners and daemonisers swap it."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """One handler on the service's loggers, at `level`. Idempotent: a second call (another app in the same
    process, as in tests) replaces the first one's handler. Lines still propagate to the root logger, which
    has no handler under uvicorn (pytest's log capture sits there)."""
    formatter: logging.Formatter = (JsonFormatter() if json_lines
                                    else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if getattr(h, "_xrec", False)]:
            logger.removeHandler(h)
        handler = StderrHandler()
        handler._xrec = True  # type: ignore[attr-defined]
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        logger.setLevel(level.upper())


def uvicorn_log_config(json_lines: bool = True) -> dict[str, Any]:
    """uvicorn's `log_config`: its own lines (startup, errors with tracebacks) in the service's format."""
    formatter = ({"()": "app.core.logs.JsonFormatter"} if json_lines
                 else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": {"()": "app.core.logs.StderrHandler", "formatter": "default"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
    }
