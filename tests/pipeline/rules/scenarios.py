"""Synthetic detection streams for rule and tracker tests: vehicles that drive in, park, are occluded, leave;
vehicles that drive through; detection jitter, dropped detections, irregular frame times."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import Zone
from pipeline.detections import LABEL_IDS, VEHICLE, Detections

W, H = 80.0, 50.0  # a car's box in pixels
ZONE_POLY = [(200.0, 300.0), (1000.0, 300.0), (1000.0, 600.0), (200.0, 600.0)]
SPOT = (500.0, 450.0)  # anchor (bottom-centre) of the parking spot, inside ZONE_POLY
T0 = 1_795_651_200.0  # 2026-11-26 08:00 Asia/Shanghai (a Thursday) = 00:00 UTC

Path_ = Callable[[float], tuple[float, float] | None]  # ts -> anchor, or None when absent


def box_at(anchor: tuple[float, float], w: float = W, h: float = H) -> tuple[float, float, float, float]:
    x, y = anchor
    return (x - w / 2, y - h, x + w / 2, y)


@dataclass
class Obj:
    path: Path_
    label: int = VEHICLE
    w: float = W
    h: float = H
    hidden: list[tuple[float, float]] = field(default_factory=list)  # occlusion windows: not detected

    def anchor(self, ts: float) -> tuple[float, float] | None:
        if any(a <= ts < b for a, b in self.hidden):
            return None
        return self.path(ts)


def parked(
    t_arrive: float,
    t_leave: float,
    spot: tuple[float, float] = SPOT,
    speed: float = 80.0,
    approach: float = 400.0,
) -> Path_:
    """Drives in from ``approach`` px left of the spot, stands at the spot from ``t_arrive`` to ``t_leave``,
    drives off to the right."""
    x, y = spot

    def f(ts: float) -> tuple[float, float] | None:
        if ts < t_arrive - approach / speed:
            return None
        if ts < t_arrive:
            return (x - speed * (t_arrive - ts), y)
        if ts <= t_leave:
            return (x, y)
        dx = speed * (ts - t_leave)
        return (x + dx, y) if dx < 900 else None

    return f


def passing(t_start: float, speed: float, y: float = 480.0, x0: float = -50.0, x1: float = 1330.0) -> Path_:
    """Drives straight through the zone along ``y`` (below the spot: it may hide the parked car)."""

    def f(ts: float) -> tuple[float, float] | None:
        if ts < t_start:
            return None
        x = x0 + speed * (ts - t_start)
        return (x, y) if x <= x1 else None

    return f


def frame_times(t_start: float, t_end: float, rate: float, rng: np.random.Generator) -> Iterator[float]:
    """Frames at ``rate`` per second with ±20 % timing jitter."""
    ts = t_start
    dt = 1.0 / rate
    while ts < t_end:
        yield round(ts, 3)
        ts += dt * float(rng.uniform(0.8, 1.2))


def stream(
    objs: list[Obj],
    t_start: float,
    t_end: float,
    *,
    rate: float = 1.0,
    jitter: float = 0.0,
    drop: float = 0.0,
    seed: int = 0,
    conf: float = 0.8,
) -> list[tuple[float, Detections]]:
    """Detections per frame: every present object, its box jittered by ±``jitter`` px per coordinate, dropped
    with probability ``drop``, and also not detected while another object's box covers ≥ 40 % of its own."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, Detections]] = []
    for ts in frame_times(t_start, t_end, rate, rng):
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        for o in objs:
            a = o.anchor(ts)
            if a is not None:
                boxes.append(box_at(a, o.w, o.h))
                labels.append(o.label)
        keep = []
        for i, b in enumerate(boxes):
            hidden = False
            for j, c in enumerate(boxes):
                if j != i and c[3] > b[3]:  # j is nearer to the camera
                    ix = max(0.0, min(b[2], c[2]) - max(b[0], c[0]))
                    iy = max(0.0, min(b[3], c[3]) - max(b[1], c[1]))
                    hidden |= ix * iy >= 0.4 * (b[2] - b[0]) * (b[3] - b[1])
            if not hidden and rng.random() >= drop:
                keep.append(i)
        xyxy = np.asarray([boxes[i] for i in keep], np.float32).reshape(-1, 4)
        if jitter > 0 and len(xyxy):
            xyxy = xyxy + rng.uniform(-jitter, jitter, xyxy.shape).astype(np.float32)
        confs = np.clip(conf + rng.uniform(-0.1, 0.1, len(keep)), 0.0, 1.0)
        out.append((ts, Detections(xyxy, confs, np.asarray([labels[i] for i in keep], np.int64))))
    return out


def zone(**kw: object) -> Zone:
    data: dict[str, object] = {"id": "fire-lane-1", "type": "fire_lane", "polygon": ZONE_POLY}
    data.update(kw)
    return Zone.model_validate(data)


# ---- golden files ---------------------------------------------------------------------------------------


def dump_frames(frames: list[tuple[float, Detections]], path: Path) -> None:
    rows = []
    for ts, d in frames:
        rows.append(
            {
                "ts": ts,
                "dets": [
                    [*(round(float(v), 1) for v in d.xyxy[i]), round(float(d.confidence[i]), 3), d.label(i)]
                    for i in range(len(d))
                ],
            }
        )
    path.write_text(json.dumps(rows, separators=(",", ":")) + "\n")


def load_frames(path: Path) -> list[tuple[float, Detections]]:
    out = []
    for row in json.loads(path.read_text()):
        dets = row["dets"]
        out.append(
            (
                float(row["ts"]),
                Detections(
                    np.asarray([r[:4] for r in dets], np.float32).reshape(-1, 4),
                    np.asarray([r[4] for r in dets], np.float32),
                    np.asarray([LABEL_IDS[r[5]] for r in dets], np.int64),
                ),
            )
        )
    return out
