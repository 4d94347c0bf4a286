"""One log line per daemon event, as text or JSON lines (``--log-json``)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

LOGGER = "nst_batch.watch"
WARNINGS = ("failed", "lost", "error", "dead", "incomplete")  # events logged at WARNING


def event(log: logging.Logger, name: str, job: str | None = None, **fields: Any) -> None:
    """Log event ``name`` (claimed, started, done, skipped, failed, requeued, ...) for ``job``."""
    level = logging.WARNING if name in WARNINGS else logging.INFO
    text = " ".join([name, *([job] if job else []), *(f"{k}={v}" for k, v in fields.items())])
    log.log(level, text, extra={"event": name, "job": job, "fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None),
            "job": getattr(record, "job", None),
            **getattr(record, "fields", {}),
        }
        if data["event"] is None:
            data["message"] = record.getMessage()
        return json.dumps(data, default=str)


def configure(json_lines: bool, level: int = logging.INFO) -> logging.Logger:
    """The daemon's logger writing to stderr; called by the CLI."""
    log = logging.getLogger(LOGGER)
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(message)s")
    )
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    return log
