from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline import evidence
from pipeline.evidence import (
    CHAIN_SEED,
    chain_hash,
    crop_upscaled,
    find_cjk_font,
    format_caption,
    load_font,
    render_still,
    sha256_hex,
)

WQY = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")


def scene(h: int = 360, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 90, np.uint8)
    img[h // 2 :, :] = (60, 60, 60)
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    return img


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_still_is_a_jpeg_with_caption_band_and_box() -> None:
    img = scene()
    box = (200.0, 150.0, 420.0, 300.0)
    jpeg = render_still(
        img, ["2026-11-26 16:00:05 +08:00  东门 gate-east", "消防通道 fire-lane-3"], [(box, "车辆 0.91")]
    )
    assert jpeg[:3] == b"\xff\xd8\xff"
    out = decode(jpeg)
    h, w = img.shape[:2]
    assert out.shape[1] == w and out.shape[0] > h  # the band is added below, the scene is not covered
    band = out[h:].astype(int)
    assert band.std() > 20  # text drawn on the black band
    assert (band > 128).mean() > 0.01
    # the box outline is drawn (red in BGR) where the scene was grey
    edge = out[int(box[1]) + 20 : int(box[3]) - 20, int(box[0])].astype(int)
    assert (edge[:, 2] > 180).all() and (edge[:, 1] < 120).all()
    # its label sits on a box-coloured tag just above the box's top-left corner (red or white: red is high)
    tag = out[int(box[1]) - 14 : int(box[1]) - 2, int(box[0]) + 1 : int(box[0]) + 30].astype(int)
    assert tag[..., 2].mean() > 180 and tag[..., 1].std() > 20  # white text on it
    # elsewhere the scene is the scene (JPEG tolerance)
    assert np.abs(out[5:100, 5:100].astype(int) - img[5:100, 5:100].astype(int)).mean() < 6


def test_caption_text_changes_the_band() -> None:
    img = scene()
    a = decode(render_still(img, ["京A12345 消防通道"], []))
    b = decode(render_still(img, ["沪B67890 东门岗亭"], []))
    h = img.shape[0]
    assert np.abs(a[h:].astype(int) - b[h:].astype(int)).mean() > 1


def _glyph(text: str) -> np.ndarray:
    font = load_font(48)
    im = Image.new("L", (48 * len(text) + 20, 70), 0)
    ImageDraw.Draw(im).text((10, 5), text, font=font, fill=255)
    return np.asarray(im)


@pytest.mark.skipif(find_cjk_font() is None, reason="no CJK font installed")
def test_chinese_glyphs_render() -> None:
    plate, tofu = _glyph("京A12345 消防通道"), _glyph("□□□□□□□ □□□□")
    assert (plate > 0).mean() > 0.05
    assert np.abs(plate.astype(int) - tofu.astype(int)).mean() > 5
    # distinct hanzi have distinct shapes (a missing-glyph box would make them identical)
    jing, xiao, fang = _glyph("京"), _glyph("消"), _glyph("防")
    assert (jing != xiao).mean() > 0.02 and (xiao != fang).mean() > 0.02
    assert (jing != _glyph("□")).mean() > 0.02


def test_finds_the_debian_cjk_font() -> None:
    if WQY.is_file():
        assert find_cjk_font() == WQY


def test_falls_back_to_dejavu_with_a_warning(monkeypatch: pytest.MonkeyPatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(evidence, "CJK_FONT_PATHS", ("/nonexistent/font.ttc",))
    for f in (evidence.find_cjk_font, evidence._font_path, evidence.load_font):
        f.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.evidence"):
            assert find_cjk_font() is None
            jpeg = render_still(scene(120, 200), ["2026-11-26 16:00:05 +08:00 cam"], [])
        assert decode(jpeg) is not None
        assert "no CJK font" in caplog.text
    finally:
        for f in (evidence.find_cjk_font, evidence._font_path, evidence.load_font):
            f.cache_clear()


def test_long_caption_is_kept_inside_and_empty_caption_works() -> None:
    img = scene(100, 160)
    assert decode(render_still(img, ["很长的说明" * 40], [((0, 0, 159, 99), "")])).shape[1] == 160
    assert decode(render_still(img, [], [])).shape[0] > 100
    assert (
        decode(render_still(img, ["x"], [((500, 500, 600, 600), "outside"), ((-5, -5, 20, 20), "")]))
        is not None
    )


def test_format_caption_local_time_with_offset() -> None:
    t = datetime(2026, 11, 26, 8, 0, 5, 120000, tzinfo=UTC).astimezone(timezone(timedelta(hours=8)))
    lines = format_caption(t, "东门 gate-east", "消防通道", "fangshan/xilu/haiyi-bandao/0421")
    assert lines == [
        "2026-11-26 16:00:05 +08:00  东门 gate-east",
        "消防通道  fangshan/xilu/haiyi-bandao/0421",
    ]
    assert format_caption(datetime(2026, 1, 1, tzinfo=UTC), "cam")[0].startswith("2026-01-01 00:00:00 +00:00")
    with pytest.raises(ValueError):
        format_caption(datetime(2026, 1, 1), "cam")


def test_crop_upscaled() -> None:
    img = scene()
    crop = crop_upscaled(img, (100, 200, 160, 220), scale=2.0, min_size=96)
    assert crop.dtype == np.uint8 and crop.ndim == 3
    assert min(crop.shape[:2]) >= 96
    assert crop.shape[1] > crop.shape[0]  # aspect kept
    big = crop_upscaled(img, (0, 0, 300, 200), scale=2.0, min_size=10)
    assert big.shape[:2] == (432, 648)  # padded 8 % per side (clipped at 0): 324×216, then ×2
    edge = crop_upscaled(img, (600, 340, 700, 400), scale=1.0, min_size=8)  # clipped to the image
    assert edge.size > 0
    with pytest.raises(ValueError):
        crop_upscaled(img, (700, 400, 800, 500))


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_chain_hash_definition_and_sensitivity() -> None:
    a, b = ("scene-1.jpg", sha256_hex(b"1")), ("plate-1.jpg", sha256_hex(b"2"))
    h0 = hashlib.sha256(CHAIN_SEED.encode()).hexdigest()
    assert chain_hash([]) == h0
    h1 = hashlib.sha256(f"{h0}\n{a[0]}\n{a[1]}".encode()).hexdigest()
    h2 = hashlib.sha256(f"{h1}\n{b[0]}\n{b[1]}".encode()).hexdigest()
    assert chain_hash([a, b]) == h2
    assert chain_hash([a, b]) != chain_hash([b, a])
    assert chain_hash([a]) != chain_hash([a, b])
    assert chain_hash([a, ("plate-1.jpg", sha256_hex(b"3"))]) != h2
    assert chain_hash([a, ("plate-2.jpg", b[1])]) != h2
    with pytest.raises(ValueError):
        chain_hash([("x.jpg", "ABC")])
    with pytest.raises(ValueError):
        chain_hash([("x\n.jpg", a[1])])


def test_evidence_module_imports_no_other_stage() -> None:
    src = Path(evidence.__file__).read_text()
    assert "from pipeline" not in src and "import pipeline" not in src
