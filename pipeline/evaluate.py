"""Detector evaluation on YOLO-format labels: mAP50 and mAP50-95, per class, computed here (no ultralytics).

    python -m pipeline.evaluate --model bins --data var/binsynth/data.yaml --split val [--precision int8]

Predictions come from ``pipeline.detection.load_detector`` (the same session, preprocessing and adapter as in
production), run with a low score threshold as mAP needs; ground truth from the YOLO label files mapped
through the model's manifest ``labels`` onto canonical label ids. AP per class and IoU threshold is the
area under the precision envelope sampled at 101 recall points (COCO); mAP50-95 averages IoU 0.50:0.05:0.95.
Predictions are matched greedily by score to the unmatched ground-truth box of the same class with the
highest IoU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.detections import LABELS, Detections, FloatArray, IntArray, box_iou

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Truth:
    """Ground truth of one image: boxes (N,4) in pixels and class ids (N,) in the same id space as the
    predictions' ``class_id``."""

    xyxy: FloatArray
    class_id: IntArray


@dataclass
class ClassResult:
    name: str
    ap50: float
    ap50_95: float
    truths: int
    predictions: int


@dataclass
class EvalResult:
    per_class: dict[int, ClassResult] = field(default_factory=dict)
    images: int = 0

    @property
    def map50(self) -> float:
        scored = [c.ap50 for c in self.per_class.values() if c.truths > 0]
        return float(np.mean(scored)) if scored else 0.0

    @property
    def map50_95(self) -> float:
        scored = [c.ap50_95 for c in self.per_class.values() if c.truths > 0]
        return float(np.mean(scored)) if scored else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "mAP50": round(self.map50, 4),
            "mAP50-95": round(self.map50_95, 4),
            "per_class": {
                c.name: {"AP50": round(c.ap50, 4), "AP50-95": round(c.ap50_95, 4), "truths": c.truths}
                for c in self.per_class.values()
            },
        }


def average_precision(tp: npt.NDArray[np.bool_], scores: FloatArray, n_truth: int) -> float:
    """AP of one class at one IoU threshold: ``tp`` flags each prediction (any order) as a true positive."""
    if n_truth == 0 or len(tp) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = tp[order].astype(np.float64)
    ctp = np.cumsum(hits)
    cfp = np.cumsum(1.0 - hits)
    recall = ctp / n_truth
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at recall ≥ r
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def match(
    pred: FloatArray, scores: FloatArray, truth: FloatArray, thresholds: Sequence[float]
) -> npt.NDArray[np.bool_]:
    """(P, T) true-positive flags of predictions (one class, one image) for each IoU threshold."""
    tp = np.zeros((len(pred), len(thresholds)), bool)
    if len(pred) == 0 or len(truth) == 0:
        return tp
    iou = box_iou(pred, truth)
    order = np.argsort(-scores, kind="stable")
    for t, thr in enumerate(thresholds):
        taken = np.zeros(len(truth), bool)
        for p in order:
            cand = np.where(taken, -1.0, iou[p])
            g = int(np.argmax(cand))
            if cand[g] >= thr:
                taken[g] = True
                tp[p, t] = True
    return tp


def evaluate(
    predictions: Sequence[Detections],
    truths: Sequence[Truth],
    class_ids: Sequence[int],
    names: Sequence[str] | None = None,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> EvalResult:
    """AP per class over a set of images. ``class_ids`` are the classes to score (ids as in the inputs);
    ``names`` their display names (default: canonical ``LABELS``). ``thresholds[0]`` must be 0.5 for AP50."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} images")
    result = EvalResult(images=len(truths))
    for k, cid in enumerate(class_ids):
        flags: list[npt.NDArray[np.bool_]] = []
        scores: list[FloatArray] = []
        n_truth = 0
        for det, gt in zip(predictions, truths, strict=True):
            pm = det.class_id == cid
            gm = gt.class_id == cid
            n_truth += int(gm.sum())
            if pm.any():
                flags.append(match(det.xyxy[pm], det.confidence[pm], gt.xyxy[gm], thresholds))
                scores.append(det.confidence[pm])
        tp = np.concatenate(flags) if flags else np.zeros((0, len(thresholds)), bool)
        sc = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        aps = [average_precision(tp[:, t], sc, n_truth) for t in range(len(thresholds))]
        name = names[k] if names is not None else LABELS[cid]
        result.per_class[cid] = ClassResult(name, aps[0], float(np.mean(aps)), n_truth, len(sc))
    return result


def read_yolo_labels(path: Path, width: int, height: int, class_map: IntArray) -> Truth:
    """A YOLO label file (``cls cx cy w h`` normalised) → pixel boxes; classes mapped by ``class_map``
    (model class index → id; -1 drops the box). A missing file means no objects."""
    rows = np.zeros((0, 5), np.float64)
    if path.exists():
        text = path.read_text().split()
        if text:
            rows = np.asarray(text, np.float64).reshape(-1, 5)
    cls = class_map[rows[:, 0].astype(np.int64)] if len(rows) else np.zeros(0, np.int64)
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    keep = cls >= 0
    return Truth(xyxy[keep], cls[keep].astype(np.int64))


def dataset_images(data_yaml: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs of a split of a YOLO ``data.yaml`` (labels/ beside images/)."""
    import yaml

    cfg = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(cfg.get("path") or Path(data_yaml).parent)
    if not root.is_absolute():
        root = Path(data_yaml).parent / root
    images_dir = root / cfg[split]
    pairs = []
    for img in sorted(images_dir.iterdir()):
        if img.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}:
            parts = list(img.with_suffix(".txt").parts)
            i = len(parts) - 1 - parts[::-1].index("images")
            parts[i] = "labels"
            pairs.append((img, Path(*parts)))
    return pairs


def _progress(what: str, done: int, total: int) -> None:
    """A one-line progress bar on stderr (long evaluations take minutes on a CPU box)."""
    if total <= 0 or (done != total and done % max(1, total // 50)):
        return
    filled = round(30 * done / total)
    sys.stderr.write(f"\r{what} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run(
    model: str,
    data_yaml: Path,
    split: str = "val",
    models_dir: Path = Path("models"),
    precision: str = "fp32",
    conf: float = 0.001,
    limit: int | None = None,
    timing_images: int = 50,
) -> dict[str, object]:
    """Evaluate a manifest model on a YOLO split; returns the figures (also timing, 1 thread, ms/image)."""
    import cv2

    from pipeline.detection import load_detector

    det = load_detector(model, models_dir, providers=["cpu"], intra_op_threads=1, precision=precision)
    operating = det.entry
    class_map = operating.class_map()
    pairs = dataset_images(data_yaml, split)[:limit]
    images: list[npt.NDArray[np.uint8]] = []
    for p, _ in pairs:
        im = cv2.imread(str(p))
        if im is None:
            raise SystemExit(f"{p}: not a readable image")
        images.append(np.asarray(im, np.uint8))
    truths = [
        read_yolo_labels(lbl, im.shape[1], im.shape[0], class_map)
        for (_, lbl), im in zip(pairs, images, strict=True)
    ]
    # timing at the operating threshold, as in production
    times = []
    for im in images[:timing_images]:
        t0 = time.perf_counter()
        det.detect([im])
        times.append((time.perf_counter() - t0) * 1000)
    det.entry = operating.model_copy(update={"score_threshold": conf, "max_detections": 300})
    preds = []
    for i, im in enumerate(images, 1):
        preds.extend(det.detect([im]))
        _progress("evaluating", i, len(images))
    ids = sorted({int(c) for c in class_map if c >= 0})
    names = [next(c for c, lid in zip(operating.classes, class_map, strict=True) if lid == i) for i in ids]
    res = evaluate(preds, truths, ids, names)
    out = res.as_dict()
    out.update(
        model=model,
        precision=det.precision,
        split=split,
        file=Path(det.entry.file_for(det.precision)[0]).name,
        ms_per_image_1thread=round(statistics.median(times), 2) if times else None,
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="mAP50 / mAP50-95 of a manifest model on YOLO-format labels")
    ap.add_argument("--model", required=True, help="model name in models/manifest.yaml")
    ap.add_argument("--data", required=True, type=Path, help="YOLO data.yaml")
    ap.add_argument("--split", default="val")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    ap.add_argument("--conf", type=float, default=0.001, help="score threshold for the mAP run")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    out = run(a.model, a.data, a.split, a.models_dir, a.precision, a.conf, a.limit)
    text = json.dumps(out, indent=2, ensure_ascii=False)
    if a.json:
        a.json.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
