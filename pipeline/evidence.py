"""Evidence stills: JPEG scenes with a burned-in caption, plate close-ups, and the evidence-pack hash chain.

Ground-floor safe: imports nothing from other pipeline stages, so ``api/`` may import :func:`sha256_hex` and
:func:`chain_hash` to verify evidence packs with exactly the code that made them.

Text is drawn with Pillow (OpenCV's ``putText`` has no CJK glyphs) in a CJK font found at run time among
the Debian font paths (``fonts-wqy-zenhei``, ``fonts-wqy-microhei``, ``fonts-noto-cjk``); without one it falls
back to DejaVu Sans with a logged warning (Chinese then renders as boxes). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

JPEG_QUALITY = 88

# Searched in order; the first that exists wins. (.ttc collections: face 0 is the Simplified Chinese face.)
CJK_FONT_PATHS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Medium.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)
FALLBACK_FONT_PATHS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
)

CAPTION_BG = (0, 0, 0)
CAPTION_FG = (255, 255, 255)
BOX_COLOUR = (255, 40, 40)  # RGB
LABEL_FG = (255, 255, 255)


@lru_cache(maxsize=1)
def find_cjk_font() -> Path | None:
    """The first CJK font installed on this machine, or None."""
    for p in CJK_FONT_PATHS:
        if Path(p).is_file():
            return Path(p)
    return None


@lru_cache(maxsize=1)
def _font_path() -> Path | None:
    cjk = find_cjk_font()
    if cjk is not None:
        return cjk
    for p in FALLBACK_FONT_PATHS:
        if Path(p).is_file():
            log.warning(
                "no CJK font found (install fonts-wqy-zenhei or fonts-noto-cjk); Chinese captions will not "
                "render, falling back to %s",
                p,
            )
            return Path(p)
    log.warning("no CJK or DejaVu font found; using Pillow's built-in bitmap font")
    return None


@lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A TrueType font of ``size`` px that can draw Chinese where the machine has one (see module doc)."""
    p = _font_path()
    if p is None:
        return ImageFont.load_default()
    return ImageFont.truetype(str(p), size=size, index=0)


def format_caption(
    taken_at: datetime,
    camera: str,
    zone: str | None = None,
    location: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Caption lines: local time to the second with its zone offset, camera, zone, location / grid code.

    ``taken_at`` must be aware; convert it to the site's time zone first (``dt.astimezone(ZoneInfo(tz))``)
    so the caption shows the local wall-clock time, e.g. ``2026-11-26 16:00:05 +08:00``.
    """
    if taken_at.tzinfo is None:
        raise ValueError("taken_at must be timezone-aware")
    stamp = taken_at.strftime("%Y-%m-%d %H:%M:%S") + " " + taken_at.isoformat()[-6:]
    first = f"{stamp}  {camera}"
    second = "  ".join(s for s in (zone, location) if s)
    lines = [first]
    if second:
        lines.append(second)
    lines.extend(extra)
    return lines


def _text_width(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> float:
    return float(draw.textlength(text, font=font))


def render_still(
    image_bgr: npt.NDArray[np.uint8],
    caption: list[str],
    boxes: Sequence[tuple[Box, str]] = (),
    quality: int = JPEG_QUALITY,
) -> bytes:
    """A JPEG evidence still: the scene with each object box (and its label) drawn, and a caption band.

    The caption band is *added* below the scene (the output is taller than the input by the band's height), so
    no pixel of the scene is hidden by text. Font size scales with the image width.

    The scene never goes through Pillow: only the caption band and the box labels (small images) do, and are
    copied into the BGR canvas. Converting a whole 1080p frame to a Pillow image and back held the GIL for
    ~5 ms a still, on the thread that applies every camera's detections.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError("image must be H×W×3 BGR")
    import cv2  # here, not at module level: api/ imports this module for hashing only

    h, w = image_bgr.shape[:2]
    font_px = max(14, round(w / 45))
    font = load_font(font_px)
    lines = [ln for ln in caption if ln] or [""]
    pad = max(4, font_px // 3)
    line_h = round(font_px * 1.25)
    band_h = pad * 2 + line_h * len(lines)
    canvas = np.empty((h + band_h, w, 3), np.uint8)
    canvas[:h] = image_bgr
    canvas[h:] = _caption_band(lines, w, band_h, pad, line_h, font)

    thick = max(2, round(w / 400))
    label_font = load_font(max(12, round(w / 55)))
    for (x1, y1, x2, y2), label in boxes:
        bx = (max(0.0, x1), max(0.0, y1), min(w - 1.0, x2), min(h - 1.0, y2))
        if bx[2] <= bx[0] or bx[3] <= bx[1]:
            continue  # nothing of it inside the image
        # the outline lies inside the box, as Pillow draws it
        ix1, iy1, ix2, iy2 = (round(v) for v in bx)
        half = thick // 2
        cv2.rectangle(canvas[:h], (ix1 + half, iy1 + half), (ix2 - half, iy2 - half), BOX_COLOUR[::-1], thick)
        if label:
            th = round(label_font.size) if isinstance(label_font, ImageFont.FreeTypeFont) else 11
            ty = iy1 - th - 2 * thick if iy1 - th - 2 * thick >= 0 else iy1
            _paste(canvas[:h], _label_patch(label, label_font, th, thick), ix1, ty)

    # libjpeg-turbo through OpenCV, no Huffman optimisation: a 1080p still takes ~14 ms, not Pillow's ~35
    # (optimising saves ~2 % of the bytes for ~7 ms); it counts when every camera of a box renders stills.
    ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(jpeg)


def _caption_band(
    lines: list[str],
    w: int,
    band_h: int,
    pad: int,
    line_h: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> npt.NDArray[np.uint8]:
    """The caption lines in white on black, ``w`` × ``band_h``, BGR."""
    band = Image.new("RGB", (w, band_h), CAPTION_BG)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        text = line
        # Keep the line inside the frame: shrink by characters rather than overflow.
        while text and _text_width(draw, text, font) > w - 2 * pad:
            text = text[:-1]
        draw.text((pad, pad + i * line_h), text, font=font, fill=CAPTION_FG)
    return np.asarray(band)[:, :, ::-1]


def _label_patch(
    label: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, th: int, thick: int
) -> npt.NDArray[np.uint8]:
    """A box's label: white text on the box colour, BGR."""
    tw = font.getlength(label)
    patch = Image.new("RGB", (max(1, round(tw + 2 * thick)) + 1, th + 2 * thick + 1), BOX_COLOUR)
    ImageDraw.Draw(patch).text((thick, thick), label, font=font, fill=LABEL_FG)
    return np.asarray(patch)[:, :, ::-1]


def _paste(canvas: npt.NDArray[np.uint8], patch: npt.NDArray[np.uint8], x: int, y: int) -> None:
    """``patch`` onto ``canvas`` with its top-left at (x, y), clipped to the canvas."""
    h, w = canvas.shape[:2]
    ph, pw = min(patch.shape[0], h - y), min(patch.shape[1], w - x)
    if ph > 0 and pw > 0 and x >= 0 and y >= 0:
        canvas[y : y + ph, x : x + pw] = patch[:ph, :pw]


def crop_upscaled(
    image: npt.NDArray[np.uint8],
    box: Box,
    scale: float = 2.0,
    min_size: int = 96,
    pad_fraction: float = 0.08,
) -> npt.NDArray[np.uint8]:
    """A close-up of ``box`` (e.g. a plate or the vehicle's front): padded by ``pad_fraction`` of the box on
    each side, clipped to the image, enlarged ``scale``× and further if needed so that the shorter side is at
    least ``min_size`` px (bicubic). Raises ValueError for a box outside the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    px, py = (x2 - x1) * pad_fraction, (y2 - y1) * pad_fraction
    ix1, iy1 = max(0, int(np.floor(x1 - px))), max(0, int(np.floor(y1 - py)))
    ix2, iy2 = min(w, int(np.ceil(x2 + px))), min(h, int(np.ceil(y2 + py)))
    if ix2 - ix1 < 1 or iy2 - iy1 < 1:
        raise ValueError(f"box {box} lies outside the {w}×{h} image")
    crop = image[iy1:iy2, ix1:ix2]
    ch, cw = crop.shape[:2]
    f = max(scale, min_size / min(ch, cw))
    nw, nh = max(1, round(cw * f)), max(1, round(ch * f))
    if (nw, nh) == (cw, ch):
        return np.ascontiguousarray(crop)
    pil = Image.fromarray(np.ascontiguousarray(crop))
    resized = pil.resize((nw, nh), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8).copy()


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data`` (the form ``Evidence.sha256`` carries)."""
    return hashlib.sha256(data).hexdigest()


CHAIN_SEED = "pingan-evidence-chain-v1"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def chain_hash(items: Sequence[tuple[str, str]]) -> str:
    """Hash chain over an evidence pack: ``items`` are ``(name, sha256_hex)`` in pack order.

    Definition (v1), all strings UTF-8, ``H`` = SHA-256 as lower-case hex::

        h0 = H("pingan-evidence-chain-v1")
        hi = H(h(i-1) + "\\n" + name_i + "\\n" + sha256_i)
        chain_hash = h_n

    Order is significant and is the order of the event's ``evidence`` list (which is the order the files were
    taken), so reordering, adding, dropping or altering any file changes the result. An empty pack hashes to
    h0.
    Names must not contain a newline; digests must be 64 lower-case hex characters (ValueError otherwise).
    """
    h = hashlib.sha256(CHAIN_SEED.encode()).hexdigest()
    for name, digest in items:
        if "\n" in name or not name:
            raise ValueError(f"bad evidence name {name!r}")
        if not _SHA_RE.match(digest):
            raise ValueError(f"bad sha256 for {name!r}: {digest!r}")
        h = hashlib.sha256(f"{h}\n{name}\n{digest}".encode()).hexdigest()
    return h
