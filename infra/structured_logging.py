"""Structured logs for every process: one JSON object a line in production, readable locally."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD_RECORD_KEYS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: what log shippers and `jq` want."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleLogFormatter(logging.Formatter):
    """Readable locally, still carrying the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_")
        )
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else ConsoleLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "faust", "mode", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    busy = logging.getLogger("mode.timers")
    if not any(isinstance(existing, BusyLoopNote) for existing in busy.filters):
        busy.addFilter(BusyLoopNote())


class BusyLoopNote(logging.Filter):
    """Faust's timers (``mode.timers``) warn "Timer X is overlapping" when the worker's event
    loop was busy for longer than a timer's interval: a start that loads a city or a burst of
    batches on a small machine does that, and nothing needs doing about it. It is a note
    (INFO); an agent that really stops is what ``feedgrid_stream_stalled_seconds`` and
    ``/readyz`` report."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "is overlapping" in str(record.msg):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True
