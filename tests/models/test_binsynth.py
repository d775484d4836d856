"""models/binsynth.py: deterministic scenes, sane labels, station sequences, MP4 clips, YOLO datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.binsynth import (
    BIN,
    BIN_OVERFLOW,
    CLASSES,
    LITTER,
    render_scene,
    render_station_sequence,
    sequence_plan,
    write_dataset,
    write_mp4,
)

SEEDS = range(40)


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, list]]:
    return [render_scene(s) for s in SEEDS]


def test_same_seed_same_bytes() -> None:
    a, la = render_scene(123)
    b, lb = render_scene(123)
    assert a.tobytes() == b.tobytes()
    assert la == lb
    c, _ = render_scene(124)
    assert a.tobytes() != c.tobytes()


def test_image_shape_and_size_option() -> None:
    img, _ = render_scene(5, width=320, height=240)
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8


def test_labels_inside_the_image(scenes: list[tuple[np.ndarray, list]]) -> None:
    n = 0
    for img, labels in scenes:
        h, w = img.shape[:2]
        for lb in labels:
            x1, y1, x2, y2 = lb.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert lb.cls in (BIN, BIN_OVERFLOW, LITTER)
            assert 0.3 <= lb.visible <= 1.0
            n += 1
    assert n > 60


def test_all_classes_appear(scenes: list[tuple[np.ndarray, list]]) -> None:
    seen = {lb.cls for _, labels in scenes for lb in labels}
    assert seen == {BIN, BIN_OVERFLOW, LITTER}
    assert CLASSES == ("bin", "bin_overflow", "litter")


def test_overflowing_bin_box_is_taller_than_its_body(scenes: list[tuple[np.ndarray, list]]) -> None:
    checked = 0
    for _, labels in scenes:
        for lb in labels:
            if lb.cls != BIN_OVERFLOW or lb.body is None or lb.body[1] < 1:
                continue  # (a body cut by the top edge cannot be compared)
            body_h = lb.body[3] - lb.body[1]
            assert lb.box[1] < lb.body[1] - 0.05 * body_h, "heap/lid must rise above the rim"
            assert lb.box[3] - lb.box[1] > body_h
            checked += 1
    assert checked >= 5


def test_normal_bin_box_is_mostly_its_body(scenes: list[tuple[np.ndarray, list]]) -> None:
    """A closed bin's box is its body plus the lid's top face; a few normal bins stand with the lid open."""
    close = [
        lb.box[1] >= lb.body[1] - 0.25 * (lb.body[3] - lb.body[1])
        for _, labels in scenes
        for lb in labels
        if lb.cls == BIN and lb.body is not None and lb.body[1] >= 0
    ]
    assert len(close) > 20 and np.mean(close) > 0.85


def test_station_sequence_truth() -> None:
    steps = 24
    plan = sequence_plan(steps)
    seq = render_station_sequence(11, steps)
    assert len(seq) == steps
    phases = [t.phase for _, t in seq]
    assert phases[: plan.fill_at] == ["normal"] * plan.fill_at
    assert set(phases[plan.fill_at : plan.clear_at]) == {"overflow"}
    assert set(phases[plan.clear_at :]) == {"cleared"}
    for img, t in seq:
        assert img.shape == (384, 640, 3)
        assert t.overflowing == (t.phase == "overflow")
        assert bool(t.boxes(BIN_OVERFLOW)) == t.overflowing
        assert len(t.boxes(BIN)) + len(t.boxes(BIN_OVERFLOW)) >= 2
        assert t.litter == (2 if t.overflowing and t.step >= plan.litter_at else 0)
        if t.step in plan.occluded_steps:
            assert t.occluded  # the passer-by stands in front of the first bin
        else:
            assert not t.occluded
    # the overflowing bin's box rises above the normal one's at the same place
    normal = seq[0][1].labels[0] if seq[0][1].labels[0].cls == BIN else None
    over = next(lb for lb in seq[plan.fill_at][1].labels if lb.cls == BIN_OVERFLOW)
    assert normal is not None and over.box[1] < normal.box[1]
    # nothing moves between frames except noise and the planned changes
    a, b = seq[1][0].astype(int), seq[2][0].astype(int)
    if 1 not in plan.occluded_steps and 2 not in plan.occluded_steps:
        assert np.abs(a - b).mean() < 8
    again = render_station_sequence(11, steps)
    assert all(x[0].tobytes() == y[0].tobytes() for x, y in zip(seq, again, strict=True))


def test_write_mp4_h264_gop(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    frames = [img for img, _ in render_station_sequence(2, 4)] * 2
    path = write_mp4(frames, tmp_path / "s.mp4", fps=4)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        keys = [p.is_keyframe for p in c.demux(stream) if p.size]
    assert len(keys) == 8
    assert [i for i, k in enumerate(keys) if k] == [0, 4]


def test_write_dataset(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ds", 3, 2, seed=1)
    text = data.read_text()
    assert "names:" in text and "1: bin_overflow" in text
    for split, n in (("train", 3), ("val", 2)):
        images = sorted((tmp_path / "ds" / "images" / split).glob("*.jpg"))
        labels = sorted((tmp_path / "ds" / "labels" / split).glob("*.txt"))
        assert len(images) == n and len(labels) == n
        for lbl in labels:
            for row in lbl.read_text().split("\n"):
                if row:
                    c, *xywh = row.split()
                    assert int(c) in (0, 1, 2)
                    assert all(0.0 <= float(v) <= 1.0 for v in xywh)
