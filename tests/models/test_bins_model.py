"""The committed bin model (models/bins-yolov8*.onnx) finds overflowing bins in scenes it never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.binsynth import BIN_OVERFLOW as SYN_OVERFLOW
from models.binsynth import render_scene, render_station_sequence, sequence_plan
from pipeline.detection import OnnxDetector, load_detector
from pipeline.detections import BIN, BIN_OVERFLOW, box_iou

MODELS = Path(__file__).resolve().parents[2] / "models"
# Far from the training (0..2999) and validation (5_000_000..) seeds of `models.train_bins data --seed 0`.
FRESH = 987_000_000


@pytest.fixture(scope="module", params=["fp32", "int8"])
def detector(request: pytest.FixtureRequest) -> OnnxDetector:
    from pipeline.manifest import model_entry

    if request.param == "int8" and "int8" not in model_entry("bins", MODELS).variants:
        pytest.skip("no int8 variant kept for the bin model")
    return load_detector("bins", MODELS, providers=["cpu"], precision=request.param)


def _fresh_overflow_scenes(n: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Scenes with a clearly visible, not tiny, overflowing bin."""
    out = []
    seed = FRESH
    while len(out) < n:
        img, labels = render_scene(seed)
        seed += 1
        boxes = [
            np.asarray(lb.box, np.float32)
            for lb in labels
            if lb.cls == SYN_OVERFLOW and lb.visible > 0.9 and lb.box[3] - lb.box[1] > 50
        ]
        if boxes:
            out.append((img, boxes))
    return out


def test_detects_overflowing_bins_in_fresh_scenes(detector: OnnxDetector) -> None:
    scenes = _fresh_overflow_scenes(12)
    found = 0
    for (_img, boxes), det in zip(scenes, detector.detect([s[0] for s in scenes]), strict=True):
        over = det.with_labels("bin_overflow")
        if len(over) and (box_iou(np.stack(boxes), over.xyxy).max(axis=1) >= 0.5).any():
            found += 1
    assert found >= 10, f"found an overflowing bin in {found}/12 fresh scenes"


def test_station_sequence_overflow_then_cleared(detector: OnnxDetector) -> None:
    steps = 20
    plan = sequence_plan(steps)
    seq = render_station_sequence(FRESH, steps)
    picks = [0, plan.fill_at + 1, plan.clear_at + 1]
    dets = detector.detect([seq[i][0] for i in picks])
    normal, full, cleared = dets
    assert not (normal.class_id == BIN_OVERFLOW).any()
    assert (full.class_id == BIN_OVERFLOW).sum() >= 1
    assert not (cleared.class_id == BIN_OVERFLOW).any()
    assert (cleared.class_id == BIN).sum() >= 2
