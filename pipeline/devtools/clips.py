"""Synthetic test clips (PyAV + libx264/libx265), for tests, benchmarks and the demo; nothing is downloaded.

- ``make_clip(path, seconds=10, fps=10, size=(640, 360), gop=None, scene_fn=parking_scene, profile="main")``
  writes an H.264 MP4 (no B-frames, GOP = ``gop`` or ``fps``: one keyframe a second) and returns the path;
  ``bframes`` adds B-frames, ``codec="hevc"`` makes it H.265 (what most new CCTV cameras send).
- ``parking_scene(i, t, size)``: a static lot (asphalt, bay lines, a kerb) where a car-shaped block drives in
  during the first ~2 s and then stays parked, with a little sensor noise so frames are not bit-identical.
  ``CAR_BOX`` is the parked car's final box as fractions of (w, h).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
SceneFn = Callable[[int, float, tuple[int, int]], Image]

CAR_BOX = (0.55, 0.45, 0.85, 0.75)  # parked car's final box as fractions of (w, h): x0, y0, x1, y1


def _background(size: tuple[int, int]) -> Image:
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (90, 92, 95)  # asphalt (BGR)
    img[: h // 4] = (60, 120, 70)  # a hedge along the top
    img[h // 4 : h // 4 + max(2, h // 60)] = (200, 200, 200)  # kerb
    for x in range(w // 8, w, w // 4):  # bay lines
        img[h // 3 :, x : x + max(2, w // 160)] = (220, 220, 220)
    return img


_BG_CACHE: dict[tuple[int, int], Image] = {}


def parking_scene(i: int, t: float, size: tuple[int, int]) -> Image:
    """Frame ``i`` at ``t`` seconds: static lot; a red car drives in over 2 s and then stays."""
    w, h = size
    bg = _BG_CACHE.get(size)
    if bg is None:
        bg = _BG_CACHE[size] = _background(size)
    img = bg.copy()
    x0f, y0f, x1f, y1f = CAR_BOX
    shift = max(0.0, 1.0 - t / 2.0) * (x0f + 0.3)  # slides in from the left
    x0, x1 = int((x0f - shift) * w), int((x1f - shift) * w)
    y0, y1 = int(y0f * h), int(y1f * h)
    xa, xb = max(0, x0), min(w, x1)
    if xb > xa:
        img[y0:y1, xa:xb] = (40, 40, 180)  # body
        cab_y1 = y0 + (y1 - y0) // 3
        img[y0:cab_y1, max(0, x0 + (x1 - x0) // 4) : max(0, x1 - (x1 - x0) // 4)] = (70, 60, 50)  # windows
        wr = max(2, (y1 - y0) // 6)
        for cx in (x0 + (x1 - x0) // 5, x1 - (x1 - x0) // 5):  # wheels
            if 0 <= cx < w:
                img[y1 - wr : y1, max(0, cx - wr) : min(w, cx + wr)] = (20, 20, 20)
    # tiny deterministic noise so frames differ a little, like a real sensor
    rng = np.random.default_rng(i)
    noise = rng.integers(0, 3, size=(h // 8, w // 8, 1), dtype=np.uint8)
    img[: h // 8 * 8, : w // 8 * 8] += np.kron(noise, np.ones((8, 8, 1), np.uint8))[
        : h // 8 * 8, : w // 8 * 8
    ]
    return img


def make_clip(
    path: str | Path,
    seconds: float = 10.0,
    fps: int = 10,
    size: tuple[int, int] = (640, 360),
    gop: int | None = None,
    scene_fn: SceneFn = parking_scene,
    profile: str = "main",
    deblock: bool = False,
    bframes: int = 0,
    codec: str = "h264",
) -> Path:
    """Encode an H.264 MP4 (libx264, ``profile`` main|baseline, fixed GOP), or H.265 with ``codec="hevc"``
    (libx265; ``profile`` and ``deblock`` apply to H.264 only); return its path.

    ``deblock`` turns H.264's in-loop deblocking filter back on (ultrafast leaves it off; cameras use it).
    ``bframes`` B-frames between references (most cameras send none; files and some encoders do): the
    decoder then holds pictures back to reorder them (main profile or above)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gop = gop or fps
    n = round(seconds * fps)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        if codec == "hevc":
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:log-level=error"
            st = out.add_stream("libx265", rate=fps, options={"preset": "ultrafast", "x265-params": params})
        else:
            st = out.add_stream(
                "libx264",
                rate=fps,
                options={
                    "profile": profile,
                    "preset": "ultrafast",
                    "tune": "zerolatency",
                    # ultrafast alone gives Constrained Baseline; main turns CABAC back on (as cameras send)
                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"
                    + (":b-adapt=0" if bframes else "")
                    + (":cabac=1" if profile != "baseline" else "")
                    + (":deblock=0,0" if deblock else ""),
                },
            )
        st.width, st.height = size
        st.pix_fmt = "yuv420p"
        st.codec_context.time_base = Fraction(1, fps)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(scene_fn(i, i / fps, size), format="bgr24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    tmp.replace(path)
    return path
