"""Structured logging: `key=value` text for people, one JSON object per line for machines."""

from __future__ import annotations

import json
import logging
import sys
import time

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STD_ATTRS)
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # picows logs every refused upgrade at info; keep it for debugging only.
    logging.getLogger("picows").setLevel(max(logging.WARNING, root.level))


class Throttle:
    """Log a recurring line at most once per `interval` seconds, saying how many were
    left out in between (so one misbehaving client can't flood the log)."""

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -interval
        self._suppressed = 0

    def _due(self) -> int | None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return None
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed

    def _emit(self, level: int, msg: str, args: tuple[object, ...], exc: bool) -> None:
        suppressed = self._due()
        if suppressed is None:
            return
        if suppressed:
            msg += f" ({suppressed} more like it in the last {self._interval:g}s not logged)"
        self._logger.log(level, msg, *args, exc_info=exc)

    def info(self, msg: str, *args: object) -> None:
        self._emit(logging.INFO, msg, args, False)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, msg, args, False)

    def exception(self, msg: str, *args: object) -> None:
        self._emit(logging.ERROR, msg, args, True)
