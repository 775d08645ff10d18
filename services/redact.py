"""Keeping secrets out of what the control plane shows: its logs, API answers and job messages.

Three kinds of secret reach this process: the database password (inside the database URL), API
keys and job tokens (``lf_…`` and ``lfj_…``, prefixed so they can be recognised anywhere), and
cloud or Ray credentials in its environment. Every log record is redacted as it is made, so a
secret in a message, an argument or a traceback never reaches a handler.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")
TOKEN = re.compile(r"\blfj?_[A-Za-z0-9_-]{16,}")
BEARER = re.compile(r"(?i)\b(?P<head>bearer\s+)[\w.~+/=-]+")
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RAY_AUTH_TOKEN",
    "LLMFORGE_API_KEY",
    "LLMFORGE_JOB_TOKEN",
)
MIN_SECRET_CHARS = 4  # shorter "secrets" would mask ordinary words

_known: set[str] = set()
_install_lock = threading.Lock()
_installed = False


def mask_url(url: str) -> str:
    """``scheme://user:***@host…``: the password of any URL in ``url`` hidden."""
    return URL_PASSWORD.sub(rf"\g<head>:{MASK}@", url)


def remember(secret: str | None) -> None:
    """A literal secret to mask wherever it appears (for secrets without a recognisable form)."""
    if secret and len(secret) >= MIN_SECRET_CHARS:
        _known.add(secret)


def remember_database_url(url: str) -> None:
    try:
        password = make_url(url).password
    except ArgumentError:
        return
    remember(str(password) if password is not None else None)


def redact(text: str) -> str:
    text = mask_url(text)
    text = TOKEN.sub(MASK, text)
    text = BEARER.sub(rf"\g<head>{MASK}", text)
    for secret in _known | {v for n in SECRET_ENV if len(v := os.environ.get(n, "")) >= 4}:
        text = text.replace(secret, MASK)
    return text


def _redacting(previous: Any) -> Any:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when the record is handled
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if (clean_text := redact(text)) != text:
                record.exc_text = clean_text
        return record

    return make_record


def install_log_redaction(database_url: str) -> None:
    """Redact every log record of this process from now on (installed once per process)."""
    global _installed
    remember_database_url(database_url)
    with _install_lock:
        if not _installed:
            logging.setLogRecordFactory(_redacting(logging.getLogRecordFactory()))
            _installed = True
