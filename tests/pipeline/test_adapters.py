"""Adapters: pre-processing geometry, NMS, NanoDet decode (against a loop-by-loop reference), YOLO decode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.adapters import (
    Preprocess,
    Resize,
    batched_nms,
    fit,
    from_nanodet_output,
    from_yolo_output,
    nanodet_levels,
    nms,
    preprocess,
)
from pipeline.detections import PERSON, VEHICLE, box_iou

# ---- pre-processing -------------------------------------------------------------------------------------


def test_letterbox_fit_keeps_aspect_and_centres() -> None:
    r = fit(1920, 1080, Preprocess(640, 640, letterbox=True))
    assert r.scale_x == pytest.approx(1 / 3) and r.scale_y == pytest.approx(1 / 3)
    assert (r.pad_x, r.pad_y) == (0.0, 140.0)


def test_plain_resize_fit_stretches() -> None:
    r = fit(768, 576, Preprocess(416, 416))
    assert (r.scale_x, r.scale_y, r.pad_x, r.pad_y) == (416 / 768, 416 / 576, 0.0, 0.0)


@pytest.mark.parametrize("letterbox", [True, False])
def test_boxes_map_back_to_source(letterbox: bool) -> None:
    pre = Preprocess(320, 320, letterbox=letterbox)
    r = fit(640, 360, pre)
    src = np.array([[100, 50, 300, 200], [0, 0, 640, 360]], np.float32)
    model = np.empty_like(src)
    model[:, 0::2] = src[:, 0::2] * r.scale_x + r.pad_x
    model[:, 1::2] = src[:, 1::2] * r.scale_y + r.pad_y
    np.testing.assert_allclose(r.to_source(model), src, atol=1e-3)


def test_to_source_clips_to_frame() -> None:
    r = Resize(1.0, 1.0, 0.0, 0.0, 100, 50)
    out = r.to_source(np.array([[-10, -5, 120, 60]], np.float32))
    np.testing.assert_array_equal(out, [[0, 0, 100, 50]])


def test_preprocess_normalises_pads_and_swaps_colour() -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[..., 0], image[..., 2] = 10, 200  # B=10, R=200
    pre = Preprocess(40, 40, mean=(0, 0, 0), std=(1, 1, 1), letterbox=True, pad_value=7)
    blob, (r,) = preprocess([image], pre)
    assert blob.shape == (1, 3, 40, 40) and blob.dtype == np.float32
    assert r.pad_y == 10 and blob[0, 0, 0, 0] == 7  # padded band above the image
    assert blob[0, 0, 20, 20] == 10 and blob[0, 2, 20, 20] == 200  # BGR kept
    rgb, _ = preprocess([image], Preprocess(40, 40, mean=(0, 0, 0), std=(1, 1, 1), rgb=True, letterbox=True))
    assert rgb[0, 0, 20, 20] == 200 and rgb[0, 2, 20, 20] == 10
    norm, _ = preprocess([image], Preprocess(40, 20, mean=(10, 0, 100), std=(2, 1, 50)))
    np.testing.assert_allclose(norm[0, :, 5, 5], [0, 0, 2])


def test_preprocess_batches_mixed_sizes() -> None:
    images = [np.full((h, w, 3), 50, np.uint8) for w, h in [(640, 480), (1280, 720), (300, 300)]]
    blob, resizes = preprocess(images, Preprocess(64, 64, letterbox=True))
    assert blob.shape == (3, 3, 64, 64)
    assert [(r.width, r.height) for r in resizes] == [(640, 480), (1280, 720), (300, 300)]


def test_dynamic_height_keeps_aspect_and_pads_only_to_the_stride() -> None:
    pre = Preprocess(416, 416, std=(1, 1, 1), dynamic_height=True, height_multiple=32, pad_value=7)
    frame = np.full((1080, 1920, 3), 50, np.uint8)
    blob, (r,) = preprocess([frame], pre)
    assert blob.shape == (1, 3, 256, 416)  # not 416×416: 0.62× the pixels
    assert r.scale_x == pytest.approx(416 / 1920) and r.scale_y == pytest.approx(234 / 1080)
    assert (r.pad_x, r.pad_y) == (0.0, 0.0)
    assert blob[0, 0, 233, 10] == 50 and blob[0, 0, 234, 10] == 7  # picture on top, padding below
    portrait, (rp,) = preprocess([frame.transpose(1, 0, 2).copy()], pre)  # corridor mode: 9:16
    assert portrait.shape == (1, 3, 416, 416) and rp.scale_y == pytest.approx(416 / 1920)
    assert portrait[0, 0, 10, 233] == 50 and portrait[0, 0, 10, 235] == 7
    mixed, _ = preprocess([frame, np.full((576, 768, 3), 9, np.uint8)], pre)
    assert mixed.shape == (2, 3, 320, 416)  # as tall as the tallest (4:3 → 312 → 320 rows)


@settings(max_examples=200, deadline=None)
@given(
    w=st.integers(16, 4000),
    h=st.integers(16, 4000),
    width=st.sampled_from([320, 416, 640]),
    box=st.tuples(*[st.floats(0, 1)] * 4),
)
def test_dynamic_height_fits_any_frame_inside_the_grid(
    w: int, h: int, width: int, box: tuple[float, float, float, float]
) -> None:
    pre = Preprocess(width, width, dynamic_height=True, height_multiple=32)
    r = fit(w, h, pre)
    rows = pre.rows(r)
    new_w, new_h = round(w * r.scale_x), round(h * r.scale_y)
    assert rows % 32 == 0 and rows <= width and new_h <= rows and new_w <= width
    assert new_w == width or rows == width  # one side always fills the model input
    assert abs(r.scale_x - r.scale_y) <= 1.0 / min(w, h)  # aspect kept, up to rounding one pixel
    x0, x1 = sorted((box[0] * w, box[2] * w))
    y0, y1 = sorted((box[1] * h, box[3] * h))
    src = np.array([[x0, y0, x1, y1]], np.float32)
    model = src * np.array([r.scale_x, r.scale_y] * 2, np.float32)
    np.testing.assert_allclose(r.to_source(model), src, atol=1e-2 * max(w, h) / 100 + 1e-3)


# ---- NMS ----------------------------------------------------------------------------------------------


def test_nms_suppresses_duplicates_keeps_best() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.8, 0.9, 0.5], np.float32), 0.5)
    assert keep.tolist() == [1, 2]


def test_batched_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.8, 0.9], np.float32)
    assert sorted(batched_nms(boxes, scores, np.array([0, 1]), 0.5).tolist()) == [0, 1]
    assert batched_nms(boxes, scores, np.array([1, 1]), 0.5).tolist() == [1]


# ---- NanoDet ------------------------------------------------------------------------------------------

# A toy COCO-like head: 4 model classes; 0 → person, 1 and 2 → vehicle (car/truck), 3 dropped.
CLASS_MAP = np.array([PERSON, VEHICLE, VEHICLE, -1], np.int64)
REG_MAX = 4
STRIDES = (8, 16, 32)


def _toy_nanodet(rng: np.random.Generator, w: int, h: int) -> list[np.ndarray]:
    outs: list[np.ndarray] = []
    for s in STRIDES:
        n = math.ceil(w / s) * math.ceil(h / s)
        scores = rng.random((1, n, len(CLASS_MAP)), dtype=np.float32) ** 6  # mostly low, a few high
        outs.append(scores)
    for s in STRIDES:
        n = math.ceil(w / s) * math.ceil(h / s)
        outs.append(rng.normal(0, 2, (1, n, 4 * (REG_MAX + 1))).astype(np.float32))
    return outs


def _reference_nanodet(outs, w, h, thr, iou_thr, offset):  # type: ignore[no-untyped-def]
    """Decode with plain loops and math, independent of the adapter's vectorised code."""
    cands = []  # (score, label, [x1, y1, x2, y2])
    for k, s in enumerate(STRIDES):
        gw = math.ceil(w / s)
        scores, dist = outs[k][0], outs[k + len(STRIDES)][0]
        for cell in range(len(scores)):
            y, x = cell // gw, cell % gw
            sides = []
            for side in range(4):
                logits = [float(v) for v in dist[cell, side * (REG_MAX + 1) : (side + 1) * (REG_MAX + 1)]]
                m = max(logits)
                ex = [math.exp(v - m) for v in logits]
                sides.append(sum(i * e for i, e in enumerate(ex)) / sum(ex) * s)
            px, py = (x + offset) * s, (y + offset) * s
            box = [px - sides[0], py - sides[1], px + sides[2], py + sides[3]]
            for label in (PERSON, VEHICLE):
                best = max(float(scores[cell, c]) for c in range(len(CLASS_MAP)) if CLASS_MAP[c] == label)
                if best > thr:
                    cands.append((best, label, box))
    kept: list[tuple[float, int, list[float]]] = []
    for score, label, box in sorted(cands, key=lambda c: -c[0]):
        if all(
            lab != label or box_iou(np.array([box], np.float32), np.array([b], np.float32))[0, 0] <= iou_thr
            for _, lab, b in kept
        ):
            kept.append((score, label, box))
    return kept


@pytest.mark.parametrize("offset", [0.5, 0.0])
def test_nanodet_decode_matches_loop_reference(offset: float) -> None:
    w, h = 96, 64  # grids 12×8, 6×4, 3×2
    outs = _toy_nanodet(np.random.default_rng(7), w, h)
    levels = nanodet_levels([o.shape for o in outs], (w, h), STRIDES, len(CLASS_MAP), REG_MAX)
    identity = Resize(1.0, 1.0, 0.0, 0.0, 10_000, 10_000)  # no mapping; clips at 0 only
    got = from_nanodet_output(
        outs, levels, CLASS_MAP, identity, reg_max=REG_MAX, cell_offset=offset, score_threshold=0.5,
        nms_iou=0.5, max_detections=1000,
    )  # fmt: skip
    ref = _reference_nanodet(outs, w, h, 0.5, 0.5, offset)
    assert len(ref) > 5  # the toy tensors do exercise NMS and both labels
    assert len(got) == len(ref)
    order = np.argsort(-got.confidence, kind="stable")
    for i, (score, label, box) in zip(order, ref, strict=True):
        assert got.confidence[i] == pytest.approx(score, abs=1e-6)
        assert got.class_id[i] == label
        np.testing.assert_allclose(got.xyxy[i], np.clip(box, 0, None), atol=1e-3)  # clipped after NMS


def test_nanodet_decode_maps_to_source_and_clips() -> None:
    w = h = 64
    outs = _toy_nanodet(np.random.default_rng(1), w, h)
    levels = nanodet_levels([o.shape for o in outs], (w, h), STRIDES, len(CLASS_MAP), REG_MAX)
    r = fit(128, 96, Preprocess(w, h))
    d = from_nanodet_output(outs, levels, CLASS_MAP, r, reg_max=REG_MAX, score_threshold=0.3)
    assert len(d) > 0
    assert d.xyxy[:, [0, 2]].max() <= 128 and d.xyxy[:, [1, 3]].max() <= 96 and d.xyxy.min() >= 0


def test_nanodet_levels_pairs_outputs_by_shape_in_any_order() -> None:
    shapes = [[1, 169, 44], [1, 2704, 80], [1, 676, 44], [1, 169, 80], [1, 2704, 44], [1, 676, 80]]
    levels = nanodet_levels(shapes, (416, 416), STRIDES, 80, 10)
    assert [(lv.stride, lv.grid_w, lv.scores, lv.distances) for lv in levels] == [
        (8, 52, 1, 4),
        (16, 26, 5, 2),
        (32, 13, 3, 0),
    ]
    with pytest.raises(ValueError, match=r"stride 8: expected one output \[.., 2704, 44\]"):
        nanodet_levels(shapes[:3], (416, 416), STRIDES, 80, 10)


def test_nanodet_nothing_above_threshold_is_empty() -> None:
    outs = _toy_nanodet(np.random.default_rng(2), 32, 32)
    levels = nanodet_levels([o.shape for o in outs], (32, 32), STRIDES, len(CLASS_MAP), REG_MAX)
    d = from_nanodet_output(outs, levels, CLASS_MAP, fit(32, 32, Preprocess(32, 32)), reg_max=REG_MAX,
                            score_threshold=0.9999)  # fmt: skip
    assert len(d) == 0 and d.xyxy.shape == (0, 4)


# ---- YOLO ---------------------------------------------------------------------------------------------


Obj = tuple[float, float, float, float, int, float]


def _yolo_tensor(objects: list[list[Obj]], nc: int, n: int) -> np.ndarray:
    """[b, 4+nc, n] with the given (cx, cy, w, h, class, score) rows; other anchors score ~0."""
    rng = np.random.default_rng(0)
    out = np.zeros((len(objects), 4 + nc, n), np.float32)
    out[:, :4] = rng.uniform(10, 50, (len(objects), 4, n))
    out[:, 4:] = rng.uniform(0, 0.05, (len(objects), nc, n))
    for b, objs in enumerate(objects):
        for j, (cx, cy, w, h, c, s) in enumerate(objs):
            out[b, :4, j] = (cx, cy, w, h)
            out[b, 4 + c, j] = s
    return out


def test_yolo_known_boxes_round_trip_with_letterbox() -> None:
    pre = Preprocess(320, 320, letterbox=True)
    r0, r1 = fit(640, 320, pre), fit(320, 320, pre)  # scale 0.5 + pad_y 80; identity
    objs0: list[Obj] = [(80, 120, 40, 20, 0, 0.9)]  # model (60,110)-(100,130) → source: minus pad, /0.5
    objs1: list[Obj] = [(100, 100, 50, 50, 1, 0.8), (200, 200, 20, 40, 2, 0.7)]
    out = _yolo_tensor([objs0, objs1], nc=3, n=64)
    class_map = np.array([VEHICLE, PERSON, -1], np.int64)
    d0, d1 = from_yolo_output(out, class_map, [r0, r1], score_threshold=0.25)
    np.testing.assert_allclose(d0.xyxy, [[120, 60, 200, 100]], atol=1e-3)
    assert d0.class_id.tolist() == [VEHICLE] and d0.confidence[0] == pytest.approx(0.9)
    np.testing.assert_allclose(d1.xyxy, [[75, 75, 125, 125]], atol=1e-3)  # class 2 is dropped
    assert d1.class_id.tolist() == [PERSON]


def test_yolo_nms_suppresses_duplicates_and_merges_mapped_classes() -> None:
    # Same object seen as class 0 and class 1, both mapped to vehicle; plus a shifted duplicate.
    objs: list[Obj] = [(100, 100, 60, 40, 0, 0.9), (101, 100, 60, 40, 1, 0.8), (103, 102, 58, 40, 0, 0.6),
            (250, 250, 30, 30, 0, 0.5)]  # fmt: skip
    out = _yolo_tensor([objs], nc=2, n=32)
    (d,) = from_yolo_output(out, np.array([VEHICLE, VEHICLE]), [fit(320, 320, Preprocess(320, 320))])
    assert len(d) == 2
    np.testing.assert_allclose(d.xyxy[0], [70, 80, 130, 120], atol=1e-3)
    assert d.confidence.tolist() == pytest.approx([0.9, 0.5])


def test_yolo_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match="expected"):
        from_yolo_output(np.zeros((1, 10, 5), np.float32), np.zeros(3, np.int64), [Resize(1, 1, 0, 0, 9, 9)])


def test_yolo_empty_image() -> None:
    out = _yolo_tensor([[]], nc=2, n=16)
    (d,) = from_yolo_output(out, np.array([VEHICLE, PERSON]), [Resize(1, 1, 0, 0, 64, 64)])
    assert len(d) == 0
