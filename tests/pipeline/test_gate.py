"""pipeline/gate.py: the static-scene gate on the synthetic parking scene."""

from __future__ import annotations

import time

import numpy as np

from pipeline.gate import SceneGate
from tests.fixtures.media import parking_scene

SIZE = (640, 360)
W, H = SIZE
# a no-parking zone around where the car ends up, and one far away on the left
ZONE = [(0.5 * W, 0.4 * H), (0.9 * W, 0.4 * H), (0.9 * W, 0.8 * H), (0.5 * W, 0.8 * H)]
LEFT_ZONE = [(0.02 * W, 0.5 * H), (0.2 * W, 0.5 * H), (0.2 * W, 0.9 * H), (0.02 * W, 0.9 * H)]


def frame(i: int, t: float) -> np.ndarray:
    return parking_scene(i, t, SIZE)


def test_first_frame_then_still_scene_is_unchanged() -> None:
    gate = SceneGate([ZONE], (H, W, 3), refresh_s=1e9)
    assert gate.changed(frame(0, 5.0), ts=0.0)  # first frame: detect
    assert not any(gate.changed(frame(i, 5.0 + i), ts=float(i)) for i in range(1, 20))  # noise only


def test_car_arriving_in_zone_is_a_change() -> None:
    gate = SceneGate([ZONE], (H, W, 3), refresh_s=1e9)
    gate.changed(frame(0, 0.0), ts=0.0)  # empty lot (car still off-frame at t=0)
    assert gate.changed(frame(30, 3.0), ts=3.0)  # parked car now in the zone
    assert not gate.changed(frame(40, 4.0), ts=4.0)  # and it stays: no change any more


def test_change_outside_the_zones_is_ignored() -> None:
    gate = SceneGate([LEFT_ZONE], (H, W, 3), refresh_s=1e9)
    gate.changed(frame(0, 0.0), ts=0.0)
    assert not gate.changed(frame(30, 3.0), ts=3.0)  # the car parks on the right


def test_global_brightness_change_is_ignored() -> None:
    gate = SceneGate([ZONE], (H, W, 3), refresh_s=1e9)
    img = frame(0, 5.0)
    gate.changed(img, ts=0.0)
    brighter = np.clip(img.astype(np.int16) + 30, 0, 255).astype(np.uint8)
    assert not gate.changed(brighter, ts=1.0)


def test_forced_refresh() -> None:
    gate = SceneGate([ZONE], (H, W, 3), refresh_s=10.0)
    assert gate.changed(frame(0, 5.0), ts=100.0)
    assert not gate.changed(frame(1, 5.0), ts=105.0)
    assert gate.changed(frame(2, 5.0), ts=110.0)
    assert not gate.changed(frame(3, 5.0), ts=111.0)


def test_resolution_change_resets() -> None:
    gate = SceneGate([ZONE], (H, W, 3), refresh_s=1e9)
    gate.changed(frame(0, 5.0), ts=0.0)
    assert gate.changed(parking_scene(1, 5.0, (1280, 720)), ts=1.0)


def test_no_zones_watches_whole_frame_and_is_cheap() -> None:
    gate = SceneGate([], (1080, 1920, 3), refresh_s=1e9)
    img = parking_scene(0, 5.0, (1920, 1080))
    gate.changed(img, ts=0.0)
    moved = img.copy()
    moved[108:324, 192:576] = (235, 235, 235)  # a white van
    t = time.perf_counter()
    for i in range(20):
        gate.changed(img, ts=1.0 + i)
    per_frame = (time.perf_counter() - t) / 20
    assert gate.changed(moved, ts=30.0)
    assert per_frame < 0.01  # ~0.6 ms here; generous for a loaded CI box


def test_anchor_replaces_the_reference() -> None:
    gate = SceneGate([ZONE], (H, W, 3), refresh_s=1e9)
    gate.changed(frame(0, 0.0), ts=0.0)
    gate.anchor(frame(30, 3.0), ts=3.0)  # e.g. the frame a detection ran on
    assert not gate.changed(frame(31, 3.1), ts=3.1)
    assert gate.changed(frame(32, 0.0), ts=3.2)  # the car is gone again
