"""Our YOLO post-processing against ultralytics' own `predict` on the same weights (the committed bins ONNX
was exported from them). Runs where the `train` extra is present: `.venv-train` (or ultralytics in this
interpreter) and the training run's weights in var/bins-train; elsewhere there is nothing to compare to."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.detection import load_detector
from pipeline.detections import LABELS, box_iou

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "var" / "bins-train" / "run" / "weights" / "best.pt"
TRAIN_PY = ROOT / ".venv-train" / "bin" / "python"

PREDICT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from models.train_bins import EXPORT_HW, offline_ultralytics
offline_ultralytics()
from ultralytics import YOLO
model = YOLO(sys.argv[2])
out = []
for path in sys.argv[3:]:
    r = model.predict(path, imgsz=list(EXPORT_HW), conf=0.35, iou=0.5, verbose=False, device="cpu")[0]
    names = r.names
    out.append([
        {"box": [float(v) for v in b.xyxy[0]], "label": names[int(b.cls[0])], "conf": float(b.conf[0])}
        for b in r.boxes
    ])
print(json.dumps(out))
"""


def _train_python() -> str | None:
    if TRAIN_PY.exists():
        return str(TRAIN_PY)
    if importlib.util.find_spec("ultralytics") is not None:
        return sys.executable
    return None


def test_yolo_adapter_matches_ultralytics_predict(tmp_path: Path) -> None:
    python = _train_python()
    if python is None or not WEIGHTS.exists():
        pytest.skip("needs the `train` extra (.venv-train) and the training run's weights in var/bins-train")
    sys.path.insert(0, str(ROOT))
    from models.binsynth import render_station_sequence

    paths = []
    for i, (image, _truth) in enumerate(render_station_sequence(4242, 40)[::8]):
        path = tmp_path / f"scene-{i}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    out = subprocess.run(
        [python, "-c", PREDICT, str(ROOT), str(WEIGHTS), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reference = json.loads(out.stdout.strip().splitlines()[-1])
    ours = load_detector("bins", ROOT / "models", precision="fp32")
    compared = 0
    for path, ref in zip(paths, reference, strict=True):
        image = cv2.imread(str(path))
        det = ours.detect([image])[0]
        for r in ref:
            same = np.array([LABELS[int(c)] == r["label"] for c in det.class_id], bool)
            ious = box_iou(np.array([r["box"]], np.float32), det.xyxy)[0]
            best = float(ious[same].max()) if same.any() else 0.0
            assert best >= 0.9, (path.name, r, det)
            compared += 1
    assert compared >= 5
