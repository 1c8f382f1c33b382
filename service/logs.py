"""Structured JSON logs, configured once per process -- ours (structlog) and everybody else's (stdlib).

Our own code logs through structlog straight to stderr as JSON. Libraries log through the stdlib:
uvicorn ("Started server process", "Application startup complete", errors of the protocol layer),
asyncio, redis-py. Their records go through `JsonFormatter` (structlog's ProcessorFormatter), so
that every line the service prints is one JSON object with `event`, `level`, `timestamp` and
`logger`, and a log shipper needs one parser.

`mrdib serve` hands `uvicorn_log_config()` to uvicorn, so that even the lines uvicorn prints before
the app exists (the supervisor of ``--workers N``) are JSON. Under plain
``uvicorn --factory service.api:create_app``, uvicorn's loggers are switched to JSON when the app is
created (their first lines, before that, are uvicorn's own format).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _stdlib_chain() -> list:
    """Processors for records that come from the stdlib `logging` module."""
    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """stdlib formatter writing one JSON object per record (usable from a dictConfig via ``"()"``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
            foreign_pre_chain=_stdlib_chain(),
        )


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write, not at configuration time: a stream
    swapped in and later closed (a test runner's capture, a CLI harness) must not break every later log line."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _CurrentStderr()


def _json_handler() -> logging.Handler:
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(JsonFormatter())
    handler._mrdib_json = True  # type: ignore[attr-defined]  # marks ours, so that it is added once
    return handler


def uvicorn_log_config(level: str = "INFO") -> dict:
    """`logging.config.dictConfig` for uvicorn.run(log_config=...): its loggers, JSON, on stderr."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["json"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["json"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["json"], "level": level},
    }


def configure_logging(level: str = "INFO") -> None:
    """structlog for our code; JSON for the stdlib root and uvicorn's loggers. Idempotent per process."""
    global _configured
    if _configured:
        return
    level = level.upper()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    if not any(getattr(h, "_mrdib_json", False) for h in root.handlers):
        root.addHandler(_json_handler())
    root.setLevel(level)
    for name in _UVICORN_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(h.formatter, JsonFormatter) for h in lg.handlers):
            # uvicorn's own (plain-text) handlers go; ours is the root's, reached by propagation
            lg.handlers = []
            lg.propagate = True
    _configured = True
