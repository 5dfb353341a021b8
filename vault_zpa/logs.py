"""Logging for every command: text or JSON lines on stderr, a run id on every line, and the
redacting filter as a last line of defence against secrets in library debug output."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, TextIO

from vault_zpa.masking import REDACTOR

__all__ = [
    "REDACTOR",
    "JsonFormatter",
    "clear_run_id",
    "drop_reported",
    "new_run_id",
    "run_id",
    "setup",
]

# One run at a time per process, and its lines come from pool threads too: a plain global,
# not a ContextVar (which executor threads would not inherit).
_run_id = "-"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def new_run_id() -> str:
    global _run_id
    _run_id = uuid.uuid4().hex[:12]
    return _run_id


def clear_run_id() -> None:
    global _run_id
    _run_id = "-"


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", "-"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info and record.levelno <= logging.DEBUG:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run_id() -> str:
    return _run_id


class _ShownInReport(logging.Filter):
    """Drops the sync engine's per-listing and per-item failure warnings: a one-shot command
    prints each in its report (stdout), and saying it twice on a terminal misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "vault_zpa.sync" and record.levelno == logging.WARNING)


def drop_reported() -> None:
    """For one-shot commands at the default level (the daemon, which has no report, and an
    explicit --log-level keep these lines)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ShownInReport())


def setup(level: str, fmt: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RunIdFilter())
    handler.addFilter(REDACTOR)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(run_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter stays at warning unless debugging.
    for noisy in ("httpx", "httpcore", "urllib3", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
