"""Synthetic CCTV scenes of bin stations, for training and testing the bin model (numpy + OpenCV only).

A scene is a ground plane seen by a pole- or wall-mounted camera (pinhole model: horizon, focal length, camera
height), a back wall or street front, and objects standing on the ground: wheelie bins (120/240/660 L, five
colours) that are normal or overflowing (bags heaped above the rim, lid propped open), litter (bags, boxes,
scattered rubbish) and distractors (people, cars, cabinets, planters, bollards). Day or night, lighting
gradients, shadows, sensor noise, blur and JPEG artefacts.

Everything is deterministic in the seed: the same seed gives the same bytes.

- ``render_scene(seed)`` → ``(image BGR uint8, labels)`` for training.
- ``render_station_sequence(seed, steps)`` → ``[(image, FrameTruth)]``: one bin station over time that fills
  up (a bin overflows, litter appears), is hidden by passers-by for a few frames, and is cleared.
- ``write_mp4(frames, path, fps)`` → H.264 MP4 (PyAV, GOP = fps).
- ``write_dataset(out, n_train, n_val, seed)`` → YOLO dataset (images/, labels/, data.yaml);
  ``python -m models.binsynth --out var/binsynth --train 3000 --val 500``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

CLASSES: tuple[str, ...] = ("bin", "bin_overflow", "litter")
BIN, BIN_OVERFLOW, LITTER = range(3)

Image = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]

# BGR body colours of the five bin kinds (municipal conventions vary; these are the common ones).
BIN_COLOURS: dict[str, tuple[int, int, int]] = {
    "green": (45, 120, 40),
    "blue": (150, 85, 25),
    "grey": (120, 118, 115),
    "red": (40, 40, 165),
    "black": (38, 38, 38),
}
# (width, body height, depth) in metres.
BIN_SIZES: dict[str, tuple[float, float, float]] = {
    "120": (0.48, 0.90, 0.55),
    "240": (0.58, 1.02, 0.72),
    "660": (1.26, 1.10, 0.77),
}
BAG_COLOURS: tuple[tuple[int, int, int], ...] = (
    (28, 28, 30),
    (40, 40, 44),
    (200, 200, 198),
    (225, 225, 220),
    (170, 110, 40),
    (60, 120, 60),
    (40, 170, 220),
    (30, 80, 200),
    (120, 150, 170),
    (90, 90, 95),
)
_SHIFT = 2
_SCALE = 1 << _SHIFT


# ----------------------------------------------------------------------------------------------------------
# camera and drawing


@dataclass(frozen=True)
class Camera:
    """Pinhole camera over a flat ground: a ground point (X right, Z forward, metres) projects to
    ``x = vx + f X / Z``, ``y = hz + f h / Z``; ``ppm = f / Z`` pixels per metre there."""

    width: int
    height: int
    hz: float  # horizon row (may be above the image)
    f: float  # focal length, pixels
    h: float  # camera height, metres
    vx: float  # vanishing point column
    wall_y: float  # row where the back wall meets the ground

    def project(self, x: float, z: float, up: float = 0.0) -> tuple[float, float]:
        return self.vx + self.f * x / z, self.hz + self.f * (self.h - up) / z

    def ppm(self, z: float) -> float:
        return self.f / z

    def z_at_row(self, y: float) -> float:
        return self.f * self.h / max(y - self.hz, 1e-3)

    def x_at(self, col: float, z: float) -> float:
        return (col - self.vx) * z / self.f

    @property
    def z_near(self) -> float:
        return self.z_at_row(self.height)

    @property
    def z_far(self) -> float:
        return self.z_at_row(self.wall_y)


class Canvas:
    """Draws into the image and, with the current object id, into an id map; tracks the object's extent."""

    def __init__(self, img: Image) -> None:
        self.img = img
        self.ids = np.zeros(img.shape[:2], np.uint8)
        self.oid = 0
        self.extent: list[float] = [math.inf, math.inf, -math.inf, -math.inf]

    def begin(self, oid: int) -> None:
        self.oid = oid
        self.extent = [math.inf, math.inf, -math.inf, -math.inf]

    def _grow(self, x1: float, y1: float, x2: float, y2: float) -> None:
        e = self.extent
        e[0], e[1], e[2], e[3] = min(e[0], x1), min(e[1], y1), max(e[2], x2), max(e[3], y2)

    def poly(
        self, pts: Sequence[tuple[float, float]] | npt.NDArray[np.float64], colour: Iterable[float]
    ) -> None:
        p = np.asarray(pts, np.float64)
        self._grow(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max())
        q = np.round(p * _SCALE).astype(np.int32)[None]
        cv2.fillPoly(self.img, q, _c(colour), cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(self.ids, q, self.oid, cv2.LINE_8, _SHIFT)

    def ellipse(
        self, cx: float, cy: float, ax: float, ay: float, angle: float, colour: Iterable[float]
    ) -> None:
        ax, ay = max(ax, 0.5), max(ay, 0.5)
        r = max(ax, ay)
        self._grow(cx - r, cy - r, cx + r, cy + r)
        c = (round(cx * _SCALE), round(cy * _SCALE))
        a = (round(ax * _SCALE), round(ay * _SCALE))
        cv2.ellipse(self.img, c, a, angle, 0, 360, _c(colour), -1, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(self.ids, c, a, angle, 0, 360, self.oid, -1, cv2.LINE_8, _SHIFT)

    def line(
        self, p1: tuple[float, float], p2: tuple[float, float], colour: Iterable[float], thick: float
    ) -> None:
        """A detail line inside an object already drawn (does not grow the extent)."""
        a = (round(p1[0] * _SCALE), round(p1[1] * _SCALE))
        b = (round(p2[0] * _SCALE), round(p2[1] * _SCALE))
        cv2.line(self.img, a, b, _c(colour), max(1, round(thick)), cv2.LINE_AA, _SHIFT)


def _c(colour: Iterable[float]) -> tuple[int, int, int]:
    r = [min(255, max(0, round(float(v)))) for v in colour]
    return r[0], r[1], r[2]


def _shade(colour: Iterable[float], k: float) -> tuple[float, float, float]:
    c = [float(v) * k for v in colour]
    return c[0], c[1], c[2]


def _jitter(rng: np.random.Generator, colour: Iterable[float], amount: float = 18.0) -> tuple[float, ...]:
    k = rng.uniform(0.8, 1.15)
    d = rng.uniform(-amount, amount, 3).tolist()
    return tuple(min(255.0, max(0.0, float(c) * k + e)) for c, e in zip(colour, d, strict=False))


# ----------------------------------------------------------------------------------------------------------
# objects


@dataclass
class Thing:
    """An object standing on the ground at (x, z) metres; drawn from its own seed so redraws are identical."""

    kind: str  # bin | litter_bag | litter_box | litter_pile | person | car | cabinet | planter | bollard
    x: float
    z: float
    seed: int
    params: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> int | None:
        if self.kind == "bin":
            return BIN_OVERFLOW if self.params.get("overflow") else BIN
        if self.kind.startswith("litter"):
            return LITTER
        return None


@dataclass(frozen=True)
class Label:
    cls: int
    box: Box  # x1, y1, x2, y2 in pixels, clipped to the image
    body: Box | None  # a bin's body (without heap or open lid), unclipped
    visible: float  # fraction of the object's pixels not hidden by others
    thing: int  # index of the Thing in its scene


def _box3d(
    cv: Canvas,
    cam: Camera,
    x: float,
    z: float,
    w: float,
    h: float,
    d: float,
    base: float,
    front: Iterable[float],
    side: Iterable[float],
    top: Iterable[float],
    taper: float = 1.0,
) -> dict[str, tuple[float, float]]:
    """A box standing at ground (x, z) (front face centre), width w, height h, depth d, lifted by ``base``."""
    hw = w / 2
    fl = cam.project(x - hw * taper, z, base)
    fr = cam.project(x + hw * taper, z, base)
    tl = cam.project(x - hw, z, base + h)
    tr = cam.project(x + hw, z, base + h)
    btl = cam.project(x - hw, z + d, base + h)
    btr = cam.project(x + hw, z + d, base + h)
    bbl = cam.project(x - hw * taper, z + d, base)
    bbr = cam.project(x + hw * taper, z + d, base)
    # side face (the one facing the camera axis)
    if x > 0:
        cv.poly([fl, tl, btl, bbl], side)
    else:
        cv.poly([fr, tr, btr, bbr], side)
    if cam.h > base + h:
        cv.poly([tl, tr, btr, btl], top)
    cv.poly([fl, fr, tr, tl], front)
    return {"fl": fl, "fr": fr, "tl": tl, "tr": tr, "btl": btl, "btr": btr}


def _draw_bin(cv: Canvas, cam: Camera, t: Thing) -> Box:
    """Draws a wheelie bin; returns its body box (the extent before any heap or open lid)."""
    rng = np.random.default_rng(t.seed)
    size = str(t.params.get("size", "240"))
    w, h, d = BIN_SIZES[size]
    colour = _jitter(rng, BIN_COLOURS[str(t.params.get("colour", "green"))], 10)
    lid = (
        _shade(colour, rng.uniform(0.8, 1.1)) if rng.random() < 0.7 else _jitter(rng, BIN_COLOURS["black"], 8)
    )
    base = 0.12 if size == "660" else 0.03
    ppm = cam.ppm(t.z)
    # wheels / castors
    wheel = (25, 25, 25)
    if size == "660":
        for fx in (-0.42, 0.42):
            wx, wy = cam.project(t.x + fx * w, t.z + 0.05, 0.06)
            cv.ellipse(wx, wy, 0.06 * ppm, 0.07 * ppm, 0, wheel)
    else:
        for fx in (-0.5, 0.5):
            wx, wy = cam.project(t.x + fx * w, t.z + d * 0.7, 0.1)
            cv.ellipse(wx, wy, 0.05 * ppm, 0.1 * ppm, 0, wheel)
    c = _box3d(
        cv, cam, t.x, t.z, w, h, d, base, colour, _shade(colour, 0.65), _shade(colour, 0.85), taper=0.9
    )
    # lid lip on the front face
    lip = 0.06
    ll, lr = cam.project(t.x - w / 2 - 0.02, t.z - 0.02, base + h - lip)
    ul, ur = cam.project(t.x - w / 2 - 0.02, t.z - 0.02, base + h + 0.01)
    rl = cam.project(t.x + w / 2 + 0.02, t.z - 0.02, base + h - lip)
    ru = cam.project(t.x + w / 2 + 0.02, t.z - 0.02, base + h + 0.01)
    cv.poly([(ll, lr), (rl[0], rl[1]), (ru[0], ru[1]), (ul, ur)], _shade(lid, 0.9))
    # ribs, sticker, 660's dome-ish front panel line
    for k in range(int(rng.integers(0, 4))):
        fx = -0.3 + 0.6 * (k + 0.5) / 3
        p1 = cam.project(t.x + fx * w, t.z - 0.005, base + 0.1)
        p2 = cam.project(t.x + fx * w, t.z - 0.005, base + h - 0.12)
        cv.line(p1, p2, _shade(colour, 0.75), 0.012 * ppm)
    if rng.random() < 0.6:
        sx, sy = rng.uniform(-0.25, 0.1) * w, rng.uniform(0.45, 0.75) * h
        p = [
            cam.project(t.x + sx + a, t.z - 0.01, base + sy + b)
            for a, b in ((0, 0), (0.14, 0), (0.14, 0.1), (0, 0.1))
        ]
        cv.poly(p, _jitter(rng, (230, 230, 230) if rng.random() < 0.6 else (40, 200, 230), 15))
    e = cv.extent
    body: Box = (e[0], e[1], e[2], e[3])
    # closed lid: the top face in lid colour
    top = [c["tl"], c["tr"], c["btr"], c["btl"]]
    if not t.params.get("overflow") and not t.params.get("lid_open"):
        cv.poly(top, lid)
        hx1, hy1 = cam.project(t.x - w * 0.35, t.z + d, base + h + 0.02)
        hx2, hy2 = cam.project(t.x + w * 0.35, t.z + d, base + h + 0.02)
        cv.line((hx1, hy1), (hx2, hy2), _shade(lid, 0.6), 0.03 * ppm)
        return body
    # open lid: hinged at the back top edge, raised by an angle (90° = upright)
    inner = _shade(colour, 0.25)
    cv.poly(top, inner)  # the opening
    angle = math.radians(float(t.params.get("lid_angle", 80.0)))
    reach = d * 1.02
    up = reach * math.sin(angle)
    back = -reach * math.cos(angle)  # negative → tilts towards the camera
    lb = cam.project(t.x - w / 2 - 0.02, t.z + d, base + h)
    rb = cam.project(t.x + w / 2 + 0.02, t.z + d, base + h)
    lt = cam.project(t.x - w / 2 - 0.02, t.z + d + back, base + h + up)
    rt = cam.project(t.x + w / 2 + 0.02, t.z + d + back, base + h + up)
    if not t.params.get("overflow"):
        cv.poly([lb, rb, rt, lt], _shade(lid, 0.7))
        return body
    heap = float(t.params.get("heap", 0.35))
    # lid behind the heap when upright; a propped lid (small angle) is drawn after the bags, resting on them
    propped = math.degrees(angle) < 50
    if not propped:
        cv.poly([lb, rb, rt, lt], _shade(lid, 0.7))
    n = int(rng.integers(3, 8)) if size != "660" else int(rng.integers(6, 12))
    bags = []
    for _ in range(n):
        bx = t.x + rng.uniform(-0.45, 0.45) * w
        bz = t.z + rng.uniform(0.1, 0.9) * d
        r = rng.uniform(0.13, 0.24)
        bup = base + h + rng.uniform(-0.05, heap - r * 0.7)
        bags.append((bz, bx, bup, r))
    bags.sort(key=lambda b: -b[0])
    for bz, bx, bup, r in bags:
        cx, cy = cam.project(bx, bz, bup)
        colour_b = _jitter(rng, BAG_COLOURS[int(rng.integers(len(BAG_COLOURS)))], 12)
        rp = r * cam.ppm(bz)
        if rng.random() < 0.2:  # a flattened cardboard box sticking out
            ang = rng.uniform(-40, 40)
            rect = cv2.boxPoints(((cx, cy), (2.2 * rp, 1.2 * rp), ang))
            cv.poly(rect, _jitter(rng, (70, 120, 165), 15))
            continue
        cv.ellipse(
            cx, cy, rp * rng.uniform(0.9, 1.25), rp * rng.uniform(0.75, 1.0), rng.uniform(-30, 30), colour_b
        )
        cv.ellipse(
            cx - 0.3 * rp,
            cy - 0.35 * rp,
            0.3 * rp,
            0.18 * rp,
            -20,
            _shade(colour_b, 1.35) if colour_b[0] < 150 else _shade(colour_b, 1.1),
        )
        # knot
        cv.ellipse(cx + 0.1 * rp, cy - 0.95 * rp, 0.18 * rp, 0.14 * rp, 0, _shade(colour_b, 0.8))
    if propped:
        cv.poly([lb, rb, rt, lt], _shade(lid, 0.95))
    return body


def _draw_litter(cv: Canvas, cam: Camera, t: Thing) -> None:
    rng = np.random.default_rng(t.seed)
    ppm = cam.ppm(t.z)
    if t.kind == "litter_bag":
        n = int(rng.integers(1, 4))
        base_colour = BAG_COLOURS[int(rng.integers(len(BAG_COLOURS)))]
        for _ in range(n):
            r = rng.uniform(0.16, 0.3)
            bx = t.x + rng.uniform(-0.25, 0.25)
            bz = t.z + rng.uniform(0, 0.3)
            cx, cy = cam.project(bx, bz, r * 0.7)
            rp = r * cam.ppm(bz)
            col = _jitter(rng, base_colour if rng.random() < 0.6 else BAG_COLOURS[int(rng.integers(10))], 12)
            cv.ellipse(
                cx, cy, rp * rng.uniform(1.0, 1.35), rp * rng.uniform(0.65, 0.9), rng.uniform(-20, 20), col
            )
            cv.ellipse(
                cx - 0.3 * rp,
                cy - 0.3 * rp,
                0.35 * rp,
                0.17 * rp,
                -15,
                _shade(col, 1.3) if col[0] < 150 else _shade(col, 1.08),
            )
            cv.ellipse(cx + 0.15 * rp, cy - 0.8 * rp, 0.16 * rp, 0.14 * rp, 0, _shade(col, 0.8))
    elif t.kind == "litter_box":
        w, h, d = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5), rng.uniform(0.25, 0.6)
        col = _jitter(rng, (75, 125, 170), 15)
        c = _box3d(cv, cam, t.x, t.z, w, h, d, 0.0, col, _shade(col, 0.7), _shade(col, 1.15))
        cv.line(
            ((c["tl"][0] + c["tr"][0]) / 2, c["tl"][1]),
            ((c["btl"][0] + c["btr"][0]) / 2, c["btl"][1]),
            (190, 190, 180),
            0.04 * ppm,
        )
    else:  # scattered rubbish: paper, bottles, cans in a patch
        n = int(rng.integers(6, 16))
        spread = rng.uniform(0.3, 0.7)
        for _ in range(n):
            bx = t.x + rng.uniform(-spread, spread)
            bz = t.z + rng.uniform(-spread * 0.4, spread * 0.6)
            px, py = cam.project(bx, bz, 0.03)
            sp = cam.ppm(bz)
            kind = rng.random()
            if kind < 0.45:
                pts = cv2.ellipse2Poly((0, 0), (10, 7), 0, 0, 360, 45).astype(np.float64)
                pts *= rng.uniform(0.6, 1.3, pts.shape) * 0.008 * sp
                cv.poly(pts + np.array([px, py]), _jitter(rng, (215, 215, 210), 20))
            elif kind < 0.75:
                rect = cv2.boxPoints(((px, py), (0.25 * sp, 0.07 * sp), rng.uniform(0, 180)))
                cv.poly(
                    rect,
                    _jitter(rng, ((40, 110, 40), (40, 70, 120), (200, 200, 200))[int(rng.integers(3))], 20),
                )
            else:
                cv.ellipse(
                    px, py, 0.06 * sp, 0.045 * sp, rng.uniform(0, 180), _jitter(rng, (60, 60, 190), 30)
                )


def _draw_person(cv: Canvas, cam: Camera, t: Thing) -> None:
    rng = np.random.default_rng(t.seed)
    hgt = rng.uniform(1.55, 1.88)
    ppm = cam.ppm(t.z)
    x0, y0 = cam.project(t.x, t.z)
    s = hgt * ppm
    legs = _jitter(rng, ((50, 40, 30), (60, 60, 60), (120, 90, 50), (30, 30, 30))[int(rng.integers(4))], 15)
    torso = _jitter(rng, tuple(rng.uniform(20, 230, 3)), 5)
    stride = rng.uniform(0, 0.12) * s
    cv.poly(
        [
            (x0 - 0.09 * s - stride, y0),
            (x0 - 0.01 * s, y0),
            (x0 - 0.01 * s, y0 - 0.47 * s),
            (x0 - 0.1 * s, y0 - 0.47 * s),
        ],
        legs,
    )
    cv.poly(
        [
            (x0 + 0.01 * s, y0),
            (x0 + 0.09 * s + stride, y0),
            (x0 + 0.1 * s, y0 - 0.47 * s),
            (x0 + 0.01 * s, y0 - 0.47 * s),
        ],
        _shade(legs, 0.85),
    )
    cv.poly(
        [
            (x0 - 0.13 * s, y0 - 0.45 * s),
            (x0 + 0.13 * s, y0 - 0.45 * s),
            (x0 + 0.12 * s, y0 - 0.82 * s),
            (x0 - 0.12 * s, y0 - 0.82 * s),
        ],
        torso,
    )
    cv.poly(
        [
            (x0 - 0.17 * s, y0 - 0.5 * s),
            (x0 - 0.12 * s, y0 - 0.5 * s),
            (x0 - 0.12 * s, y0 - 0.8 * s),
            (x0 - 0.16 * s, y0 - 0.8 * s),
        ],
        _shade(torso, 0.8),
    )
    skin = _jitter(rng, (120, 160, 200), 25)
    cv.ellipse(x0, y0 - 0.9 * s, 0.065 * s, 0.08 * s, 0, skin)
    cv.ellipse(x0, y0 - 0.95 * s, 0.068 * s, 0.045 * s, 0, _jitter(rng, (25, 25, 30), 10))
    if rng.random() < 0.3:  # carries a bag
        cv.ellipse(x0 + 0.2 * s, y0 - 0.45 * s, 0.07 * s, 0.09 * s, 0, _jitter(rng, BAG_COLOURS[0], 10))
    del ppm


def _draw_car(cv: Canvas, cam: Camera, t: Thing) -> None:
    rng = np.random.default_rng(t.seed)
    col = _jitter(
        rng,
        ((200, 200, 200), (30, 30, 30), (140, 140, 140), (40, 40, 150), (130, 80, 30), (220, 220, 225))[
            int(rng.integers(6))
        ],
        10,
    )
    side = bool(t.params.get("side", rng.random() < 0.5))
    w, d = (4.3, 1.8) if side else (1.8, 4.3)
    _box3d(cv, cam, t.x, t.z, w, 0.75, d, 0.25, col, _shade(col, 0.7), _shade(col, 0.9))
    cw, cd = (w * 0.55, d * 0.9) if side else (w * 0.85, d * 0.5)
    glass = (50, 45, 40)
    _box3d(cv, cam, t.x, t.z + (d - cd) / 2, cw, 0.5, cd, 1.0, glass, _shade(col, 0.6), col, taper=1.12)
    ppm = cam.ppm(t.z)
    for fx in (-0.33, 0.33) if side else (-0.4, 0.4):
        wx, wy = cam.project(t.x + fx * w, t.z - 0.02, 0.3)
        cv.ellipse(wx, wy, 0.3 * ppm if side else 0.12 * ppm, 0.3 * ppm, 0, (20, 20, 20))
    if not side:
        for fx in (-0.35, 0.35):
            lx, ly = cam.project(t.x + fx * w, t.z - 0.02, 0.75)
            cv.ellipse(lx, ly, 0.12 * ppm, 0.06 * ppm, 0, (230, 240, 250))


def _draw_other(cv: Canvas, cam: Camera, t: Thing) -> None:
    rng = np.random.default_rng(t.seed)
    if t.kind == "cabinet":  # grey/green electrical cabinet: a hard negative for grey and green bins
        col = _jitter(rng, ((125, 125, 120), (70, 110, 70), (180, 180, 175))[int(rng.integers(3))], 10)
        w, h = rng.uniform(0.6, 1.2), rng.uniform(0.9, 1.5)
        c = _box3d(cv, cam, t.x, t.z, w, h, 0.35, 0.0, col, _shade(col, 0.7), _shade(col, 0.9))
        mx = (c["tl"][0] + c["tr"][0]) / 2
        cv.line((mx, c["tl"][1] + 2), (mx, c["fl"][1] - 2), _shade(col, 0.55), 1)
    elif t.kind == "planter":
        col = _jitter(rng, (150, 160, 170), 20)
        w = rng.uniform(0.8, 1.6)
        c = _box3d(cv, cam, t.x, t.z, w, 0.5, 0.6, 0.0, col, _shade(col, 0.7), (40, 90, 40))
        ppm = cam.ppm(t.z)
        for _ in range(8):
            px = rng.uniform(c["tl"][0], c["tr"][0])
            cv.ellipse(
                px,
                c["tl"][1] - rng.uniform(0, 0.3) * ppm,
                0.15 * ppm,
                0.12 * ppm,
                0,
                _jitter(rng, (40, 110, 45), 20),
            )
    else:  # bollard
        ppm = cam.ppm(t.z)
        x0, y0 = cam.project(t.x, t.z)
        col = _jitter(rng, ((60, 60, 60), (40, 180, 220), (200, 200, 200))[int(rng.integers(3))], 10)
        cv.poly(
            [
                (x0 - 0.07 * ppm, y0),
                (x0 + 0.07 * ppm, y0),
                (x0 + 0.07 * ppm, y0 - 0.8 * ppm),
                (x0 - 0.07 * ppm, y0 - 0.8 * ppm),
            ],
            col,
        )
        cv.ellipse(x0, y0 - 0.8 * ppm, 0.07 * ppm, 0.03 * ppm, 0, _shade(col, 1.2))


# ----------------------------------------------------------------------------------------------------------
# background and look


@dataclass(frozen=True)
class Look:
    night: bool
    shadow: tuple[float, float]  # ground offset of shadows, metres (x, z)
    shadow_alpha: float
    gain: tuple[float, float, float]
    gradient: tuple[float, float, float]  # angle, low, high
    lamps: tuple[tuple[float, float, float], ...]  # (x, y, radius) pixels
    noise: float
    blur: float
    jpeg: int


def _random_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    wall_y = rng.uniform(0.18, 0.55) * height
    hz = wall_y - rng.uniform(0.12, 0.9) * height
    ppm_bottom = rng.uniform(95, 200)
    h = (height - hz) / ppm_bottom
    f = rng.uniform(450, 900)
    vx = rng.uniform(0.2, 0.8) * width
    return Camera(width, height, float(hz), float(f), float(h), float(vx), float(wall_y))


def _random_look(rng: np.random.Generator, cam: Camera, night: bool | None = None) -> Look:
    if night is None:
        night = bool(rng.random() < 0.3)
    lamps: tuple[tuple[float, float, float], ...] = ()
    if night:
        lamps = tuple(
            (
                rng.uniform(0, cam.width),
                rng.uniform(-0.1, 0.6) * cam.height,
                rng.uniform(0.3, 0.8) * cam.width,
            )
            for _ in range(int(rng.integers(1, 3)))
        )
    return Look(
        night=night,
        shadow=(rng.uniform(-0.8, 0.8), rng.uniform(0.0, 0.8)),
        shadow_alpha=rng.uniform(0.15, 0.3) if night else rng.uniform(0.25, 0.55),
        gain=tuple(rng.uniform(0.88, 1.12, 3)),  # type: ignore[arg-type]
        gradient=(rng.uniform(0, 2 * math.pi), rng.uniform(0.55, 0.95), rng.uniform(1.0, 1.25)),
        lamps=lamps,
        noise=rng.uniform(5, 12) if night else rng.uniform(1.5, 6),
        blur=rng.choice([0.0, 0.0, 0.6, 1.0, 1.5]),
        jpeg=int(rng.integers(35, 92)),
    )


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, amp: float) -> npt.NDArray[np.float32]:
    small = rng.standard_normal((max(2, h // cell), max(2, w // cell)), dtype=np.float32) * amp
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, cam: Camera) -> Image:
    H, W = cam.height, cam.width
    # ground
    ground = np.asarray(
        _jitter(
            rng,
            ((95, 95, 95), (150, 150, 148), (120, 125, 130), (110, 130, 150), (80, 82, 85))[
                int(rng.integers(5))
            ],
            15,
        ),
        np.float32,
    )
    tex = _smooth_noise(rng, H, W, 24, 10)
    tex += _smooth_noise(rng, H, W, 4, 5)
    # per channel: saturating float → uint8 in one OpenCV pass (abs() folds values below 0, rare here)
    img8 = cv2.merge([cv2.convertScaleAbs(tex, alpha=1.0, beta=float(g)) for g in ground])
    # pavement tiles / road markings in perspective
    line_col = _c(_shade(ground, rng.uniform(0.6, 0.8)))
    if rng.random() < 0.65:
        tile = rng.uniform(0.3, 0.8)
        z0, z1 = cam.z_near, min(cam.z_far, cam.z_near * 40)
        z = z0
        while z < z1:
            _, y = cam.project(0, z)
            cv2.line(img8, (0, round(y)), (W, round(y)), line_col, 1, cv2.LINE_AA)
            z += tile
        xl, xr = cam.x_at(0, z0) - tile, cam.x_at(W, z0) + tile
        xg = math.floor(xl / tile) * tile
        while xg < xr:
            p1 = cam.project(xg, z0 * 0.98)
            p2 = cam.project(xg, z1)
            cv2.line(
                img8, (round(p1[0]), round(p1[1])), (round(p2[0]), round(p2[1])), line_col, 1, cv2.LINE_AA
            )
            xg += tile
    for _ in range(int(rng.integers(0, 3))):  # painted lines (parking bays, kerb)
        xg = rng.uniform(-4, 4)
        col = (200, 200, 200) if rng.random() < 0.6 else (40, 190, 220)
        p1 = cam.project(xg, cam.z_near * 0.98)
        p2 = cam.project(xg, cam.z_far)
        cv2.line(
            img8,
            (round(p1[0]), round(p1[1])),
            (round(p2[0]), round(p2[1])),
            col,
            int(rng.integers(2, 5)),
            cv2.LINE_AA,
        )
    # back wall / street front
    wy = round(cam.wall_y)
    wall = np.asarray(
        _jitter(
            rng,
            ((170, 185, 200), (150, 150, 150), (70, 80, 150), (210, 215, 215), (120, 140, 160))[
                int(rng.integers(5))
            ],
            15,
        ),
        np.float32,
    )
    top = round(rng.uniform(-0.2, 0.6) * wy)
    if top > 0:
        sky = np.linspace(1.0, 0.8, top, dtype=np.float32)[:, None, None] * np.asarray(
            _jitter(rng, (225, 200, 170), 20), np.float32
        )
        img8[:top] = np.clip(sky, 0, 255).astype(np.uint8)
    t0 = max(top, 0)
    if wy > t0:
        band = wall + _smooth_noise(rng, wy - t0, W, 8, 6)[..., None]
        img8[t0:wy] = np.clip(band, 0, 255).astype(np.uint8)
        ppm_w = cam.ppm(cam.z_far)
        # windows
        if rng.random() < 0.8 and wy - t0 > 1.6 * ppm_w:
            win = _c(_jitter(rng, (70, 60, 50), 20))
            ww, wh = rng.uniform(0.8, 1.6) * ppm_w, rng.uniform(1.0, 1.6) * ppm_w
            sx, sy = ww * rng.uniform(1.6, 2.6), wh * rng.uniform(1.5, 2.2)
            y = wy - 1.2 * ppm_w - wh
            x0 = rng.uniform(0, sx)
            while y > t0 - wh:
                x = x0
                while x < W:
                    cv2.rectangle(img8, (round(x), round(y)), (round(x + ww), round(y + wh)), win, -1)
                    x += sx
                y -= sy
        if rng.random() < 0.5:  # a door
            dw, dh = rng.uniform(0.9, 1.8) * ppm_w, 2.1 * ppm_w
            dx = rng.uniform(0, W - dw)
            cv2.rectangle(
                img8, (round(dx), round(wy - dh)), (round(dx + dw), wy), _c(_jitter(rng, (60, 70, 90))), -1
            )
        if rng.random() < 0.4:  # hedge or fence along the wall
            hh = rng.uniform(0.5, 1.2) * ppm_w
            if rng.random() < 0.5:
                hedge = np.float32([40, 100, 45]) + _smooth_noise(rng, round(hh) + 1, W, 3, 20)[..., None]
                img8[max(0, wy - round(hh) - 1) : wy] = np.clip(hedge, 0, 255).astype(np.uint8)[
                    -(wy - max(0, wy - round(hh) - 1)) :
                ]
            else:
                step = max(3, round(0.15 * ppm_w))
                for x in range(0, W, step):
                    cv2.line(img8, (x, round(wy - hh)), (x, wy), (50, 50, 50), 1)
                cv2.line(img8, (0, round(wy - hh)), (W, round(wy - hh)), (50, 50, 50), 2)
    cv2.line(img8, (0, wy), (W, wy), _c(_shade(wall, 0.5)), 2)
    return img8


def _draw_shadow(mask: npt.NDArray[np.float32], cam: Camera, t: Thing, look: Look) -> None:
    sizes = {
        "bin": 0.7,
        "litter_bag": 0.45,
        "litter_box": 0.5,
        "litter_pile": 0.0,
        "person": 0.35,
        "car": 2.2,
        "cabinet": 0.7,
        "planter": 0.8,
        "bollard": 0.12,
    }
    r = sizes.get(t.kind, 0.4)
    if t.kind == "bin":
        r = BIN_SIZES[str(t.params.get("size", "240"))][0] * 0.7
    if r <= 0:
        return
    sx, sz = look.shadow
    cx, cy = cam.project(t.x + sx * 0.6, t.z + 0.3 + sz * 0.6)
    ppm = cam.ppm(t.z + 0.3)
    cv2.ellipse(
        mask,
        (round(cx), round(cy)),
        (max(1, round(r * ppm * 1.3)), max(1, round(r * ppm * 0.45))),
        0,
        0,
        360,
        look.shadow_alpha,
        -1,
        cv2.LINE_AA,
    )


def _draw_things(img: Image, cam: Camera, things: Sequence[Thing], look: Look) -> tuple[Image, list[Label]]:
    H, W = img.shape[:2]
    shadow = np.zeros((H, W), np.float32)
    for t in things:
        _draw_shadow(shadow, cam, t, look)
    rows = np.flatnonzero(shadow.any(axis=1))
    img = img.copy()
    if len(rows):  # darken only the band of rows that has shadows
        r0, r1 = max(0, int(rows[0]) - 8), min(H, int(rows[-1]) + 9)
        band = cv2.GaussianBlur(shadow[r0:r1], (0, 0), 2.0)
        img[r0:r1] = (img[r0:r1].astype(np.float32) * (1.0 - band[..., None])).astype(np.uint8)
    cv = Canvas(img)
    order = sorted(range(len(things)), key=lambda i: -things[i].z)
    drawn: list[tuple[int, Box, Box | None, tuple[int, int, int, int], int]] = []
    for k, i in enumerate(order):
        t = things[i]
        oid = min(k + 1, 255)
        cv.begin(oid)
        body: Box | None = None
        if t.kind == "bin":
            body = _draw_bin(cv, cam, t)
        elif t.kind.startswith("litter"):
            _draw_litter(cv, cam, t)
        elif t.kind == "person":
            _draw_person(cv, cam, t)
        elif t.kind == "car":
            _draw_car(cv, cam, t)
        else:
            _draw_other(cv, cam, t)
        e = cv.extent
        if t.label is None or not np.isfinite(e[0]):
            continue
        crop = (
            max(0, math.floor(e[0])),
            max(0, math.floor(e[1])),
            min(W, math.ceil(e[2]) + 1),
            min(H, math.ceil(e[3]) + 1),
        )
        area = (
            int(np.count_nonzero(cv.ids[crop[1] : crop[3], crop[0] : crop[2]] == oid))
            if crop[2] > crop[0] and crop[3] > crop[1]
            else 0
        )
        drawn.append((i, (e[0], e[1], e[2], e[3]), body, crop, area if oid < 255 else 0))
    labels = []
    for i, ext, body, crop, area in drawn:
        t = things[i]
        oid = order.index(i) + 1
        x1, y1, x2, y2 = max(0.0, ext[0]), max(0.0, ext[1]), min(float(W), ext[2]), min(float(H), ext[3])
        if area <= 0 or x2 - x1 < 4 or y2 - y1 < 4:
            continue
        full = (ext[2] - ext[0]) * (ext[3] - ext[1])
        if (x2 - x1) * (y2 - y1) < 0.5 * full:
            continue  # mostly outside the frame
        vis = int(np.count_nonzero(cv.ids[crop[1] : crop[3], crop[0] : crop[2]] == oid)) / area
        assert t.label is not None
        labels.append(Label(t.label, (x1, y1, x2, y2), body, vis, i))
    return cv.img, labels


def _finish(img: Image, look: Look, rng: np.random.Generator) -> Image:
    H, W = img.shape[:2]
    f = img.astype(np.float32)
    ang, lo, hi = look.gradient
    yy, xx = np.mgrid[0:H:8, 0:W:8].astype(np.float32)
    proj = (xx - W / 2) * math.cos(ang) + (yy - H / 2) * math.sin(ang)
    proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    light = lo + (hi - lo) * proj
    if look.night:
        light = light * 0.28
        for lx, ly, lr in look.lamps:
            d2 = ((xx - lx) ** 2 + (yy - ly) ** 2) / (lr * lr)
            light = light + 0.9 * np.exp(-d2)
    light = cv2.resize(light, (W, H), interpolation=cv2.INTER_LINEAR)
    gain = np.asarray(look.gain, np.float32)
    if look.night:
        gain = gain * np.float32([1.15, 1.0, 0.85])  # sodium/LED mix: warm lamps, blue shadows
    f *= light[..., None] * gain
    # sensor noise: uniform with the look's standard deviation (cheaper to draw than Gaussian, looks the same
    # after JPEG), shared by the channels
    noise = rng.random((H, W), dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(look.noise * math.sqrt(12.0))
    f += noise[..., None]
    out = np.clip(f, 0, 255, out=f).astype(np.uint8)
    if look.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), look.blur)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, look.jpeg])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


# ----------------------------------------------------------------------------------------------------------
# scenes


def _random_bin(
    rng: np.random.Generator, x: float, z: float, overflow: bool, size: str | None = None
) -> Thing:
    size = size or str(rng.choice(["120", "240", "240", "660"]))
    params: dict[str, object] = {
        "size": size,
        "colour": str(rng.choice(list(BIN_COLOURS))),
        "overflow": overflow,
        "heap": float(rng.uniform(0.18, 0.6)),
        "lid_angle": float(rng.choice([rng.uniform(20, 45), rng.uniform(70, 120)])),
    }
    if not overflow and rng.random() < 0.05:
        params["lid_open"] = True
    return Thing("bin", x, z, int(rng.integers(1 << 31)), params)


def _station_site(rng: np.random.Generator, cam: Camera) -> tuple[float, float]:
    """A ground point where bins are large enough (≥ ~34 px) and the station is mostly in view."""
    z_max = min(cam.z_far - 0.8, cam.f / 38.0)
    z_min = cam.z_near + 0.6
    z = rng.uniform(z_min, max(z_min + 0.1, z_max))
    x_l, x_r = cam.x_at(0.08 * cam.width, z), cam.x_at(0.92 * cam.width, z)
    return float(rng.uniform(x_l, x_r)), float(z)


def _station(rng: np.random.Generator, cam: Camera, overflow_p: float) -> list[Thing]:
    x, z = _station_site(rng, cam)
    n = int(rng.choice([1, 1, 2, 2, 3, 3, 4, 5]))
    size = str(rng.choice(["120", "240", "660"])) if rng.random() < 0.6 else None
    things = []
    cursor = x
    for _ in range(n):
        b = _random_bin(rng, cursor, z + rng.uniform(-0.1, 0.1), bool(rng.random() < overflow_p), size)
        w = BIN_SIZES[str(b.params["size"])][0]
        b.x = cursor + w / 2
        cursor += w + rng.uniform(0.03, 0.4)
        things.append(b)
    shift = (cursor - x) / 2
    for b in things:
        b.x -= shift
    return things


def _random_litter(rng: np.random.Generator, x: float, z: float) -> Thing:
    kind = str(rng.choice(["litter_bag", "litter_bag", "litter_box", "litter_pile"]))
    return Thing(kind, x, z, int(rng.integers(1 << 31)))


def _random_distractors(rng: np.random.Generator, cam: Camera, n: int) -> list[Thing]:
    out = []
    for _ in range(n):
        kind = str(rng.choice(["person", "person", "car", "cabinet", "planter", "bollard"]))
        z = rng.uniform(cam.z_near + 0.3, cam.z_far - 0.3 if cam.z_far > cam.z_near + 1 else cam.z_near + 1)
        x = cam.x_at(rng.uniform(-0.1, 1.1) * cam.width, z)
        out.append(Thing(kind, float(x), float(z), int(rng.integers(1 << 31))))
    return out


def _seeded(seed: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(salt)]))


def scene_things(rng: np.random.Generator, cam: Camera) -> list[Thing]:
    things: list[Thing] = []
    if rng.random() < 0.92:
        things += _station(rng, cam, overflow_p=float(rng.choice([0.2, 0.5, 0.8])))
        if rng.random() < 0.35:
            things += _station(rng, cam, overflow_p=0.4)
    bins = [t for t in things if t.kind == "bin"]
    if rng.random() < 0.55:
        for _ in range(int(rng.integers(1, 5))):
            if bins and rng.random() < 0.8:
                b = bins[int(rng.integers(len(bins)))]
                x = b.x + rng.uniform(-1.6, 1.6)
                z = max(cam.z_near + 0.2, b.z + rng.uniform(-1.2, 0.4))
            else:
                x, z = _station_site(rng, cam)
            things.append(_random_litter(rng, float(x), float(z)))
    things += _random_distractors(rng, cam, int(rng.integers(0, 5)))
    return things


def render_scene(seed: int, width: int = 640, height: int = 384) -> tuple[Image, list[Label]]:
    """One random scene. Labels of objects less than 30 % visible are dropped."""
    rng = _seeded(seed)
    cam = _random_camera(rng, width, height)
    bg = _background(rng, cam)
    things = scene_things(rng, cam)
    look = _random_look(rng, cam)
    img, labels = _draw_things(bg, cam, things, look)
    img = _finish(img, look, rng)
    return img, [lb for lb in labels if lb.visible >= 0.3]


# ----------------------------------------------------------------------------------------------------------
# station sequences, for the bin rule tests


@dataclass(frozen=True)
class FrameTruth:
    step: int
    phase: str  # "normal" (before filling) | "overflow" | "cleared"
    overflowing: bool  # any bin of the station overflows in this frame
    occluded: bool  # a passer-by hides at least 30 % of some bin
    litter: int  # litter items on the ground at the station
    labels: tuple[Label, ...]  # every labelled object, with its visibility

    def boxes(self, cls: int) -> list[Box]:
        return [lb.box for lb in self.labels if lb.cls == cls]


@dataclass(frozen=True)
class SequencePlan:
    fill_at: int
    litter_at: int
    clear_at: int
    occluded_steps: frozenset[int]


def sequence_plan(steps: int) -> SequencePlan:
    fill, litter, clear = round(0.25 * steps), round(0.4 * steps), round(0.8 * steps)
    occ = set(range(round(0.5 * steps), round(0.5 * steps) + max(1, steps // 12)))
    occ |= set(range(round(0.1 * steps), round(0.1 * steps) + max(1, steps // 20)))
    return SequencePlan(fill, litter, clear, frozenset(s for s in occ if 0 <= s < steps))


def render_station_sequence(
    seed: int, steps: int, width: int = 640, height: int = 384, night: bool | None = False
) -> list[tuple[Image, FrameTruth]]:
    """One fixed camera looking at a station of 2–3 bins. Phases (see ``sequence_plan``): normal until
    ``fill_at``; from then the first bin overflows; litter lies beside it from ``litter_at``; at ``clear_at``
    the station is cleared (bins normal, litter gone). During ``occluded_steps`` a passer-by stands in front
    of the overflowing bin. Each frame has fresh sensor noise; nothing else moves."""
    rng = _seeded(seed, 1)
    plan = sequence_plan(steps)
    # a camera close enough that the station is big and central
    for _ in range(50):
        cam = _random_camera(rng, width, height)
        if cam.z_far - cam.z_near > 3.0:
            break
    bg = _background(rng, cam)
    look = _random_look(rng, cam, night)
    look = Look(
        look.night,
        look.shadow,
        look.shadow_alpha,
        look.gain,
        look.gradient,
        look.lamps,
        min(look.noise, 5.0),
        min(look.blur, 0.6),
        max(look.jpeg, 70),
    )
    z = float(
        np.clip(cam.z_near + rng.uniform(1.0, 2.5), cam.z_near + 0.8, max(cam.z_near + 0.9, cam.z_far - 1.0))
    )
    x = cam.x_at(rng.uniform(0.35, 0.65) * width, z)
    n = int(rng.integers(2, 4))
    size = str(rng.choice(["120", "240"]))
    bins = []
    cursor = x - n * (BIN_SIZES[size][0] + 0.15) / 2
    for _ in range(n):
        b = _random_bin(rng, cursor + BIN_SIZES[size][0] / 2, z, False, size)
        b.params.pop("lid_open", None)
        b.params["heap"] = float(rng.uniform(0.3, 0.6))
        b.params["lid_angle"] = float(rng.uniform(75, 110))
        cursor += BIN_SIZES[size][0] + 0.15
        bins.append(b)
    litter = [
        _random_litter(rng, bins[0].x + rng.uniform(-0.6, 0.6), z - rng.uniform(0.5, 0.9)) for _ in range(2)
    ]
    litter[0].kind = "litter_bag"
    walker = Thing("person", bins[0].x, max(cam.z_near + 0.1, z - 0.9), int(rng.integers(1 << 31)))
    out = []
    for s in range(steps):
        phase = "normal" if s < plan.fill_at else ("overflow" if s < plan.clear_at else "cleared")
        full = phase == "overflow"
        scene: list[Thing] = []
        for k, b in enumerate(bins):
            p = dict(b.params)
            p["overflow"] = full and k == 0
            scene.append(Thing("bin", b.x, b.z, b.seed, p))
        n_litter = len(litter) if full and s >= plan.litter_at else 0
        scene += litter[:n_litter]
        if s in plan.occluded_steps:
            scene.append(walker)
        img, labels = _draw_things(bg, cam, scene, look)
        img = _finish(img, look, _seeded(seed, 1000 + s))
        occluded = any(lb.visible < 0.7 for lb in labels if lb.cls in (BIN, BIN_OVERFLOW))
        out.append((img, FrameTruth(s, phase, full, occluded, n_litter, tuple(labels))))
    return out


def write_mp4(frames: Sequence[Image], path: str | Path, fps: int = 5) -> Path:
    """Writes BGR frames as H.264 (yuv420p, GOP = fps, no B-frames) with PyAV; returns the path."""
    import av

    path = Path(path)
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        stream.gop_size = fps
        stream.codec_context.max_b_frames = 0
        stream.options = {"preset": "ultrafast", "crf": "20", "keyint_min": str(fps), "sc_threshold": "0"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(img[: stream.height, : stream.width]), format="bgr24"
            )
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_station_clip(
    path: str | Path,
    seed: int = 7,
    steps: int = 60,
    fps: int = 5,
    step_s: float = 1.0,
    night: bool | None = False,
) -> list[FrameTruth]:
    """A station sequence as an H.264 clip: ``steps`` scenes, each held ``step_s`` seconds (every frame with
    fresh noise would defeat static-scene gating, so a step's frames repeat). 60 steps at 1 s: normal 0–15 s,
    overflowing 15–48 s (litter from 24 s, a passer-by at 30–35 s), cleared 48–60 s.
    Returns each step's truth."""
    seq = render_station_sequence(seed, steps, night=night)
    per = max(1, round(step_s * fps))
    write_mp4([img for img, _ in seq for _ in range(per)], path, fps)
    return [truth for _, truth in seq]


# ----------------------------------------------------------------------------------------------------------
# dataset


def yolo_lines(labels: Sequence[Label], width: int, height: int) -> list[str]:
    out = []
    for lb in labels:
        x1, y1, x2, y2 = lb.box
        out.append(
            f"{lb.cls} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
        )
    return out


def write_dataset(
    out: str | Path, n_train: int, n_val: int, seed: int = 0, width: int = 640, height: int = 384
) -> Path:
    """YOLO dataset under ``out``; image i of split s uses seed ``seed * 10_000_000 + offset + i`` (val offset
    5_000_000), so the splits never share a scene."""
    out = Path(out)
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 5_000_000)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = render_scene(seed * 10_000_000 + offset + i, width, height)
            name = f"{split}_{i:06d}"
            cv2.imwrite(str(out / "images" / split / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            (out / "labels" / split / f"{name}.txt").write_text(
                "\n".join(yolo_lines(labels, width, height)) + "\n"
            )
    (out / "data.yaml").write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\n"
        f"names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    )
    return out / "data.yaml"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", default="var/binsynth")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preview", type=int, default=0, help="also write N annotated previews to OUT/preview")
    a = ap.parse_args(argv)
    data = write_dataset(a.out, a.train, a.val, a.seed)
    if a.preview:
        pv = Path(a.out) / "preview"
        pv.mkdir(exist_ok=True)
        colours = ((0, 255, 0), (0, 0, 255), (255, 0, 255))
        for i in range(a.preview):
            img, labels = render_scene(a.seed * 10_000_000 + i)
            for lb in labels:
                x1, y1, x2, y2 = (round(v) for v in lb.box)
                cv2.rectangle(img, (x1, y1), (x2, y2), colours[lb.cls], 1)
            cv2.imwrite(str(pv / f"{i:03d}.jpg"), img)
    print(data)


if __name__ == "__main__":
    main()
