"""pipeline/redact.py: URL masking, secret redaction, and the logging filter."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from pipeline.config import RtspSource
from pipeline.redact import MASK, RedactingFilter, Redactor, mask_url

PW = "p@ss:w/rd%1"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://admin:secret@10.0.0.5:554/Streaming/101", "rtsp://***:***@10.0.0.5:554/Streaming/101"),
        ("rtsp://admin@10.0.0.5/x", "rtsp://***:***@10.0.0.5/x"),
        ("rtsp://10.0.0.5/x", "rtsp://10.0.0.5/x"),
        (f"rtsp://u:{quote(PW, safe='')}@h/x", "rtsp://***:***@h/x"),
        ("open 'rtsp://a:b@h:1/c' failed", "open 'rtsp://***:***@h:1/c' failed"),
        ("no url here: a@b", "no url here: a@b"),
        ("rtsp://u:p@ss@h/x", "rtsp://***:***@h/x"),  # an unencoded '@' in the password
        ("rtsp://h/x then mail a@b", "rtsp://h/x then mail a@b"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redactor_masks_raw_and_percent_encoded_forms() -> None:
    r = Redactor([PW])
    text = f"pw={PW} enc={quote(PW, safe='')} enc2={quote(PW)} rtsp://u:x@h/"
    out = r.redact(text)
    assert PW not in out and quote(PW, safe="") not in out and quote(PW) not in out
    assert out.count(MASK) >= 3 and "rtsp://***:***@h/" in out


def test_redactor_ignores_tiny_and_empty_secrets() -> None:
    r = Redactor(["", "ab"])
    assert r.redact("abc cab") == "abc cab"
    assert r.secrets == ()


def test_redactor_add_later_and_longest_first() -> None:
    r = Redactor(["secret"])
    r.add("secret-longer")
    assert r.redact("x secret-longer y secret") == "x *** y ***"


def test_rtsp_source_secrets_feed_the_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINGAN_T_PW", PW)
    src = RtspSource(url="rtsp://viewer:${PINGAN_T_PW}@10.1.1.1/live")
    r = Redactor(src.secrets())
    resolved = src.resolved()
    assert quote(PW, safe="") in resolved
    assert PW not in r.redact(f"{resolved} {PW}") and quote(PW, safe="") not in r.redact(resolved)


def test_logging_filter_redacts_message_args_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    r = Redactor([PW])
    caplog.handler.addFilter(RedactingFilter(r))
    log = logging.getLogger("tests.redact")
    with caplog.at_level(logging.INFO):
        log.info("connecting to %s with %s", f"rtsp://u:{quote(PW, safe='')}@h/x", PW)
        try:
            raise ValueError(f"bad password {PW}")
        except ValueError:
            log.exception("failed %s", PW)
        log.warning("stack", stack_info=True, extra={"x": 1})
        log.info(f"plain {PW}")
    text = caplog.text
    assert PW not in text and quote(PW, safe="") not in text
    assert "connecting to rtsp://***:***@h/x with ***" in text
    assert "ValueError: bad password ***" in text
    assert all(PW not in rec.getMessage() for rec in caplog.records)


def test_install_adds_filter_to_handlers() -> None:
    r = Redactor([PW])
    h = logging.Handler()
    flt = r.install(h)
    assert flt in h.filters and isinstance(flt, logging.Filter)
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "pw %s", (PW,), None)
    assert h.filter(rec) and rec.getMessage() == "pw ***"
