"""Credential masking for everything that leaves a component: status reasons, log records, tracebacks.

- ``mask_url(url)`` replaces the userinfo of a URL with ``***:***@``.
- ``Redactor`` holds secret strings (raw and percent-encoded, e.g. from ``RtspSource.secrets()``) and masks
  them, and any URL userinfo, in arbitrary text.
- ``RedactingFilter`` is a ``logging.Filter`` that rewrites a record's message, arguments, exception and stack
  text. Logger-level filters do not see records propagated from child loggers, so install it on *handlers*
  (``Redactor.install()`` does that for the root logger's handlers).

There is no module-level mutable state: the CLI creates one ``Redactor``, feeds it every camera's secrets, and
installs its filter; components that get no redactor make a private one.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, unquote

MASK = "***"
# scheme://userinfo@  — userinfo is anything up to the last '@' before the host part ends.
_USERINFO_RE = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#'\"<>]*)@")
MIN_SECRET_LEN = (
    3  # shorter values would mask ordinary characters everywhere; URL userinfo is masked regardless
)


def mask_url(url: str) -> str:
    """``rtsp://user:pw@host/x`` → ``rtsp://***:***@host/x``; URLs without userinfo come back unchanged."""
    return _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{MASK}:{MASK}@", url)


class Redactor:
    """Masks known secrets (and URL userinfo) in text. Thread-safe; ``add`` may be called at any time."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._re: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Remember secrets, in raw, percent-encoded and percent-decoded forms."""
        new: set[str] = set()
        for s in secrets:
            if not s:
                continue
            for form in (s, quote(s, safe=""), quote(s), unquote(s)):
                if len(form) >= MIN_SECRET_LEN:
                    new.add(form)
        with self._lock:
            merged = set(self._secrets) | new
            if merged == set(self._secrets):
                return
            self._secrets = tuple(sorted(merged, key=len, reverse=True))  # longest first
            self._re = re.compile("|".join(re.escape(s) for s in self._secrets))

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def redact(self, text: str) -> str:
        """The text with URL userinfo masked and every known secret replaced by ``***``."""
        if not text:
            return text
        # known secrets first: masking URL userinfo first would cut a raw password that contains '@' or '/'
        # in two, and its tail would no longer match
        pattern = self._re
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return mask_url(text)

    def filter(self) -> RedactingFilter:
        return RedactingFilter(self)

    def install(self, *handlers: logging.Handler) -> RedactingFilter:
        """Add one filter to the given handlers (default: the root logger's current handlers)."""
        flt = RedactingFilter(self)
        for h in handlers or tuple(logging.getLogger().handlers):
            h.addFilter(flt)
        return flt


class RedactingFilter(logging.Filter):
    """Rewrites records so that neither the message, its arguments, nor exception/stack text carries a secret.

    The message is formatted once (``record.getMessage()``), redacted, and stored back with ``args`` cleared;
    exception text is rendered and redacted into ``record.exc_text`` (which formatters use as is).
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor.redact
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: keep what we can
            msg = f"{record.msg!s} {record.args!r}"
        record.msg = r(msg)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = r(record.exc_text)
        if record.stack_info:
            record.stack_info = r(record.stack_info)
        return True
