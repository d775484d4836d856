"""Browser: a worker's event appears on an open dashboard without reload; an operator disposes of it."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.api import PASSWORD, WORKER, LiveServer, make_event

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


@pytest.fixture
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (CI requires it)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()


def _png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\x80\x20\x20" * 8 for _ in range(8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _login(browser, url: str, user: str, errors: list[str], live: bool = True):  # type: ignore[no-untyped-def]
    page = browser.new_context(locale="zh-CN").new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")
    if live:
        page.wait_for_selector("#conn.up", timeout=5000)
    return page


def test_live_event_and_disposition(browser, live_api: LiveServer) -> None:
    errors: list[str] = []
    page = _login(browser, live_api.url, "op", errors)
    watcher = _login(browser, live_api.url, "admin", errors)  # a second desk, watching
    assert page.text_content("h1") == "平安 · 视频分析"
    page.wait_for_selector('[data-camera-id="gate-east"]')

    png = _png()
    ev = make_event()
    ev["evidence"] = [
        {
            "name": "scene-1.png",
            "taken_at": ev["started_at"],
            "sha256": hashlib.sha256(png).hexdigest(),
            "kind": "scene",
        }
    ]
    with httpx.Client(base_url=live_api.url, headers=WORKER) as worker:
        t0 = time.monotonic()
        assert worker.post("/api/events", json=ev).status_code == 201
        row = page.wait_for_selector(f'tr[data-event-id="{ev["id"]}"]', timeout=2000)
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0
        r = worker.put(
            f"/api/events/{ev['id']}/evidence/scene-1.png", content=png, headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 201
    assert row is not None
    row.click()
    page.wait_for_selector(f'#detail[data-event-id="{ev["id"]}"]')
    page.wait_for_selector('#evidence img[alt="scene-1.png"]')
    assert page.eval_on_selector("#evidence img", "img => img.complete && img.naturalWidth") == 8

    for n, (action, remark) in enumerate(
        [("acknowledge", "收到"), ("dispatch", "派保安"), ("resolve", "车已挪走")], start=1
    ):
        page.fill("#remark", remark)
        page.click(f'#action-buttons button[data-action="{action}"]')
        page.wait_for_function(
            "n => document.querySelectorAll('#history li').length === n", arg=n, timeout=5000
        )
    items = page.eval_on_selector_all("#history li", "els => els.map(e => [e.dataset.action, e.textContent])")
    assert [a for a, _ in items] == ["acknowledge", "dispatch", "resolve"]
    assert "车已挪走" in items[2][1] and "op" in items[2][1]
    assert page.get_attribute(f'tr[data-event-id="{ev["id"]}"]', "data-disposition") == "resolved"
    assert page.query_selector_all('#action-buttons button[data-action="reopen"]')
    # the other desk saw the event arrive and its disposition change, without reloading
    watcher.wait_for_selector(f'tr[data-event-id="{ev["id"]}"][data-disposition="resolved"]', timeout=2000)
    watcher.click(f'tr[data-event-id="{ev["id"]}"]')
    watcher.wait_for_selector("#pack:not([hidden])")
    assert watcher.get_attribute("#pack", "href") == f"/api/violations/{ev['id']}/pack"
    assert len(watcher.query_selector_all("#history li")) == 3

    # filters: "new" hides the resolved event, a live update that no longer matches leaves too
    page.select_option("#f-disposition", "new")
    page.wait_for_selector(f'tr[data-event-id="{ev["id"]}"]', state="detached", timeout=2000)
    page.select_option("#f-disposition", "")
    page.wait_for_selector(f'tr[data-event-id="{ev["id"]}"]', timeout=2000)
    page.select_option("#f-camera", "lot-north")
    page.wait_for_selector(f'tr[data-event-id="{ev["id"]}"]', state="detached", timeout=2000)
    page.select_option("#f-camera", "")

    page.click("#lang")
    assert page.text_content("h1") == "Pingan · Video analytics"
    page.reload()
    page.wait_for_selector("#conn.up")
    assert page.text_content("h1") == "Pingan · Video analytics"
    assert errors == []
    page.close()


def test_police_cannot_open_the_live_feed(browser, live_api: LiveServer) -> None:
    errors: list[str] = []
    page = _login(browser, live_api.url, "police", errors, live=False)
    page.wait_for_function(
        "() => document.querySelector('#conn').textContent === '无实时推送'", timeout=15000
    )
    assert page.evaluate("() => window.pinganStream === undefined")
    # and the feed itself refuses a police session, even when asked directly
    status = page.evaluate("() => fetch('/api/events/stream').then(r => r.status)")
    assert status == 403
    assert not [e for e in errors if "403" not in e and "Failed to load resource" not in e], errors


def test_a_camera_falling_behind_shows_on_the_dashboard(browser, live_api: LiveServer) -> None:
    """A box past its capacity: the camera's tile turns to "behind" live, with how late and how much shed."""
    errors: list[str] = []
    page = _login(browser, live_api.url, "op", errors)
    page.wait_for_selector('[data-camera-id="gate-east"]')
    report = {"state": "running", "fps": 25.0, "frames": 900, "result_age_ms": 3400, "shed_share": 0.42}
    with httpx.Client(base_url=live_api.url, headers=WORKER) as worker:
        r = worker.put("/api/cameras/gate-east/status", json=dict(report, behind=True))
        assert r.status_code == 204
        tile = page.wait_for_selector('[data-camera-id="gate-east"][data-health="behind"]', timeout=3000)
        assert tile is not None
        text = tile.text_content() or ""
        assert "处理滞后" in text and "结果延迟 3.4 s" in text and "丢帧 42%" in text
        r = worker.put("/api/cameras/gate-east/status", json=dict(report, behind=False, shed_share=0.0))
        assert r.status_code == 204
        tile = page.wait_for_selector('[data-camera-id="gate-east"][data-health="ok"]', timeout=3000)
        assert tile is not None and "丢帧" not in (tile.text_content() or "")
        assert "逐帧解码" not in (tile.text_content() or "")
        # keyframes too seldom for keyframe-only decoding: the tile says what this camera costs and why
        r = worker.put(
            "/api/cameras/gate-east/status",
            json=dict(report, behind=False, keyframe_interval_s=4.0, decode="every_frame"),
        )
        assert r.status_code == 204
        hint = page.wait_for_selector('[data-camera-id="gate-east"] .decode-every', timeout=3000)
        assert hint is not None and hint.text_content() == "逐帧解码 · 关键帧间隔 4.0 s"
        assert "I 帧间隔" in (hint.get_attribute("title") or "")
    assert errors == []
    page.close()
