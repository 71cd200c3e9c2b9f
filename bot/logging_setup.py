"""Logging for the bot: one stderr handler, and a filter that redacts secrets from every record.

The bot never logs its token on purpose; the filter is defence in depth against a library or an
exception message that does (for example an HTTP error echoing a header).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Interaction tokens travel in webhook and callback URLs, which discord.py logs at DEBUG; each is a
# credential for 15 minutes, so the path segment after the id is masked too.
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]{20,}")


class RedactingFilter(logging.Filter):
    """Replaces each secret in a record's message and exception text with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Very short "secrets" would redact ordinary words; real tokens are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every secret, and every interaction token in a URL, replaced."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _URL_TOKEN.sub(rf"\1{REDACTED}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Format the traceback now so the handler uses the redacted text, not a fresh one.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def setup_logging(level: str, secrets: Iterable[str]) -> logging.Handler:
    """Log to stderr at ``level`` through a redacting handler; returns the handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # discord.py's HTTP debug lines include request bodies; keep them at INFO unless asked.
    if level != "DEBUG":
        logging.getLogger("discord.http").setLevel(logging.INFO)
    return handler


def add_redaction(handler: logging.Handler, secrets: Iterable[str]) -> RedactingFilter:
    """Attach a redacting filter to an existing handler (tests and embedders)."""
    flt = RedactingFilter(secrets)
    handler.addFilter(flt)
    return flt
