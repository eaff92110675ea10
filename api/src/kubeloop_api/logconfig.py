"""Logging for the facade process: one line per record, and a filter that blanks anything that looks
like a credential (bearer tokens, API tokens, JWTs, presigned-URL signatures) in case one ever reaches a
log call. The facade itself never logs a token; this is the second line of defence."""

from __future__ import annotations

import logging
import re
from typing import Final

_PATTERNS: Final = (
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"klp_[0-9a-f]{12}_[A-Za-z0-9_-]+"),
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)(X-Amz-Signature=|X-Amz-Credential=|access_token=|token=)[^&\s\"']+"),
)


def redact(text: str) -> str:
    for rx in _PATTERNS:
        text = rx.sub(lambda m: (m.group(1) if m.groups() and m.group(1) else "") + "[REDACTED]", text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # httpx logs every request URL at INFO; keep it at WARNING (URLs carry no secrets, but are noise).
    logging.getLogger("httpx").setLevel(logging.WARNING)
