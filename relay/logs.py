# How `relay serve` writes its log: text for people, or one JSON object per line for
# log shippers (`--log-format json`). Structured fields come from the log calls'
# `extra=` (message_id, recipient, outcome, reply, next_attempt, ...), so a line
# is searchable by field without parsing its text.
from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        # default=str: an extra that is not JSON (a datetime, an exception) still logs.
        return json.dumps(doc, ensure_ascii=False, default=str)


class _NoCredentials(logging.Filter):
    """Drops aiosmtpd's DEBUG line that shows an AUTH result with its login and password."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("auth_%s returned"))


def configure(*, level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Set up the root logger for `relay serve` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    smtp_protocol = logging.getLogger("mail.log")
    smtp_protocol.addFilter(_NoCredentials())
    # aiosmtpd logs every command line (envelope addresses included) at INFO: per
    # message noise that costs ~8% of intake CPU; keep it for --log-level DEBUG.
    if level.upper() != "DEBUG":
        smtp_protocol.setLevel(logging.WARNING)
    # aiosqlite's DEBUG is two lines per SQL statement: the library's internals, not relay's.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    # flufl.bounce (inbound plain-text bounces) logs each detector it runs at INFO and a
    # traceback for each that fails on odd input, which relay.feedback reads as "not a bounce":
    # per-message noise that senders on the internet control; keep it for --log-level DEBUG.
    logging.getLogger("flufl.bounce").setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL)
