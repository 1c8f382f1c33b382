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

No secrets in logs: every line, ours and the libraries', passes `redact` last: query parameters with a
secret-looking name (``token``, ``api_key``, ``authorization``, ...), bearer/basic credentials, and the
literal values of the configured tokens become ``[REDACTED]``. The per-request access log (uvicorn's,
which carries the query string) is off unless `MRDIB_ACCESS_LOG` is set, in every worker process.
Python warnings (numpy's overflow warnings, say) are logged as JSON records too, not printed raw.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_configured = False
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
ACCESS_LOGGER = "uvicorn.access"

REDACTED = "[REDACTED]"
# A query (or form) parameter whose name says it holds a secret, up to the end of its value.
_SECRET_PARAM = re.compile(
    r"""([?&;][^=&;\s"'#]*?(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|apikey|auth|signature|sig|session|"""
    r"""credential|private)[^=&;\s"'#]*=)[^&;\s"'#]*""", re.IGNORECASE)
_CREDENTIAL = re.compile(r"\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_MIN_SECRET_CHARS = 6  # shorter literal values are not searched for (they would blank out ordinary words)
_secrets: set[str] = set()


def register_secrets(*values: str | None) -> None:
    """Values (the configured tokens) that must never appear in a log line, whatever carries them."""
    _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_CHARS)


def redact(text: str) -> str:
    """`text` with secret query parameters, credentials and the registered secret values replaced."""
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactFilter(logging.Filter):
    """On uvicorn's loggers: the record's message redacted before any handler formats it, whichever handler
    that is (uvicorn's own plain-text one included, which a later logging setup may put back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_REDACT_FILTER = RedactFilter()


def _redact_line(_: Any, __: str, line: str) -> str:
    """The last processor of both chains: works on the rendered line, so nothing is missed (messages,
    exception text, extra fields)."""
    return redact(line)


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
                        structlog.processors.format_exc_info, structlog.processors.JSONRenderer(), _redact_line],
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


def configure_logging(level: str = "INFO", access_log: bool = False, secrets: tuple[str | None, ...] = ()) -> None:
    """structlog for our code; JSON for the stdlib root and uvicorn's loggers; `secrets` registered for redaction.
    Idempotent per process, except that the access-log choice is applied on every call: uvicorn sets up logging
    in each worker process after this module may have run, and a later call must not undo the setting."""
    global _configured
    register_secrets(*secrets)
    if not _configured:
        _configure(level.upper())
        _configured = True
    for name in _UVICORN_LOGGERS:
        lg = logging.getLogger(name)
        if _REDACT_FILTER not in lg.filters:
            lg.addFilter(_REDACT_FILTER)
    access = logging.getLogger(ACCESS_LOGGER)
    if access_log:
        if not access.handlers:
            access.propagate = True  # to the root's JSON handler
    else:
        # uvicorn logs a request line only when this logger has a handler, its own or by propagation.
        access.handlers = []
        access.propagate = False


def _configure(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
            _redact_line,
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
    logging.captureWarnings(True)  # warnings.warn (numpy overflow...) as JSON records of `py.warnings`
