"""pipeline/evaluate.py: AP on hand-made cases, YOLO label reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.detections import BIN, BIN_OVERFLOW, LITTER, Detections
from pipeline.evaluate import Truth, average_precision, dataset_images, evaluate, match, read_yolo_labels

rng = np.random.default_rng(0)


def _truths(n: int) -> list[Truth]:
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        xy = rng.uniform(0, 500, (k, 2))
        wh = rng.uniform(20, 120, (k, 2))
        out.append(
            Truth(
                np.hstack([xy, xy + wh]).astype(np.float32),
                rng.choice([BIN, BIN_OVERFLOW, LITTER], k).astype(np.int64),
            )
        )
    return out


def _perfect(truths: list[Truth]) -> list[Detections]:
    return [Detections(t.xyxy, np.linspace(0.9, 0.5, len(t.xyxy)), t.class_id) for t in truths]


CLASSES = [BIN, BIN_OVERFLOW, LITTER]


def test_perfect_predictions_score_one() -> None:
    truths = _truths(20)
    res = evaluate(_perfect(truths), truths, CLASSES)
    assert res.map50 == pytest.approx(1.0)
    assert res.map50_95 == pytest.approx(1.0)
    assert {c.name for c in res.per_class.values()} == {"bin", "bin_overflow", "litter"}


def test_shifted_boxes_score_lower_and_lower() -> None:
    truths = _truths(20)
    perfect = evaluate(_perfect(truths), truths, CLASSES)
    figures = []
    for frac in (0.1, 0.3):
        shifted = []
        for t in truths:
            w = t.xyxy[:, 2:] - t.xyxy[:, :2]
            off = np.hstack([w * frac, w * frac])
            shifted.append(Detections(t.xyxy + off, np.full(len(t.xyxy), 0.8), t.class_id))
        figures.append(evaluate(shifted, truths, CLASSES))
    assert figures[0].map50_95 < perfect.map50_95
    assert figures[1].map50_95 < figures[0].map50_95
    assert figures[0].map50 == pytest.approx(1.0)  # IoU of a 10 % diagonal shift ≈ 0.67 still counts at 0.5
    assert figures[1].map50 < 0.1  # 30 %: IoU ≈ 0.3


def test_no_predictions_score_zero() -> None:
    truths = _truths(5)
    res = evaluate([Detections.empty() for _ in truths], truths, CLASSES)
    assert res.map50 == 0.0 and res.map50_95 == 0.0


def test_wrong_class_is_not_a_hit() -> None:
    truths = _truths(5)
    swapped = [
        Detections(t.xyxy, np.full(len(t.xyxy), 0.9), np.where(t.class_id == BIN, LITTER, BIN))
        for t in truths
    ]
    assert evaluate(swapped, truths, CLASSES).map50 < 0.5


def test_false_positives_ranked_below_hits_keep_ap_one() -> None:
    truth = Truth(np.array([[0, 0, 10, 10]], np.float32), np.array([BIN]))
    det = Detections(
        np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.array([0.9, 0.1]), np.array([BIN, BIN])
    )
    assert evaluate([det], [truth], [BIN]).map50 == pytest.approx(1.0)
    det_bad_first = Detections(det.xyxy, np.array([0.1, 0.9]), det.class_id)
    assert evaluate([det_bad_first], [truth], [BIN]).map50 == pytest.approx(0.5, abs=0.01)


def test_one_truth_matches_one_prediction() -> None:
    truth = np.array([[0, 0, 10, 10]], np.float32)
    tp = match(
        np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32), np.array([0.9, 0.8], np.float32), truth, [0.5]
    )
    assert tp[:, 0].tolist() == [True, False]
    assert average_precision(np.zeros(0, bool), np.zeros(0, np.float32), 3) == 0.0


def test_read_yolo_labels_and_dataset(tmp_path: Path) -> None:
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "images" / "val" / "a.jpg").write_bytes(b"")
    (tmp_path / "labels" / "val" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.1 0.1 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images/val\nval: images/val\n")
    pairs = dataset_images(tmp_path / "data.yaml", "val")
    assert pairs == [(tmp_path / "images/val/a.jpg", tmp_path / "labels/val/a.txt")]
    t = read_yolo_labels(pairs[0][1], 640, 384, np.array([BIN, BIN_OVERFLOW, LITTER]))
    assert t.class_id.tolist() == [BIN_OVERFLOW, BIN]
    np.testing.assert_allclose(t.xyxy[0], [240, 96, 400, 288])
    empty = read_yolo_labels(tmp_path / "missing.txt", 640, 384, np.array([BIN]))
    assert len(empty.xyxy) == 0
