"""Train, export and quantise the bin model (classes: bin, bin_overflow, litter).

Steps (each a subcommand; ``all`` runs data → train → export):

    # training venv (ultralytics + CPU torch; never imported by the runtime):
    python3 -m venv .venv-train && .venv-train/bin/pip install torch==2.13.0 && \
        .venv-train/bin/pip install --no-deps ultralytics && \
        .venv-train/bin/pip install matplotlib opencv-python-headless pillow pyyaml requests psutil polars \
        ultralytics-thop onnx onnxruntime
    .venv-train/bin/python -m models.train_bins data   --out var/binsynth --train 3000 --val 500
    .venv-train/bin/python -m models.train_bins train  --data var/binsynth/data.yaml --hours 0.4
    .venv-train/bin/python -m models.train_bins export --weights var/bins-train/run/weights/best.pt
    # runtime venv (onnxruntime only):
    .venv/bin/python -m models.train_bins quantize --data var/binsynth/data.yaml
    .venv/bin/python -m pipeline.evaluate --model bins --data var/binsynth/data.yaml --split val

To train on real labelled footage, point ``--data`` at a YOLO-format ``data.yaml`` with the same class order
(``0 bin, 1 bin_overflow, 2 litter``) and run ``train`` then ``export`` (and ``quantize``), unchanged.

Ultralytics is AGPL-3.0 and states that models trained with it are covered too: ``models/bins-yolov8*.onnx``
carry ``licence: AGPL-3.0`` in ``models/manifest.yaml``.

Torchvision is not installed in the training venv (its wheels pull CUDA builds): ultralytics only reads its
version number at import and falls back to its own NMS, so this script answers that lookup when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_YAML = ROOT / "models" / "bins_yolov8.yaml"
ONNX_OUT = ROOT / "models" / "bins-yolov8.onnx"
INT8_OUT = ROOT / "models" / "bins-yolov8.int8.onnx"
RUNS = ROOT / "var" / "bins-train"
# Static export shape (height, width): a 16:9 or 5:3 camera frame letterboxes into it with little padding.
EXPORT_HW = (192, 320)
FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)


def offline_ultralytics() -> None:
    """Environment for a fully offline ultralytics: no downloads, no pip, fonts and settings local."""
    cfg = ROOT / "var" / "yolo_cfg"
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    font = cfg / "Arial.ttf"
    if not font.exists():
        for f in FONTS:
            if Path(f).exists():
                shutil.copyfile(f, font)
                break
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "torchvision":
            try:
                return real_version(name)
            except importlib.metadata.PackageNotFoundError:
                return "0.28.0"  # the release paired with torch 2.13; only compared, never imported
        return real_version(name)

    importlib.metadata.version = version  # type: ignore[assignment]
    try:
        import torchvision  # noqa: F401
    except ImportError:
        _torchvision_stub()


def _torchvision_stub() -> None:
    """An in-process ``torchvision`` with only ``ops.nms``, backed by ultralytics' own torch NMS: the
    validator
    imports torchvision for NMS and for nothing else in detection training."""
    import types

    from ultralytics.utils.nms import TorchNMS

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = TorchNMS.nms  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    tv.__version__ = "0.28.0"  # type: ignore[attr-defined]
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = ops


def cmd_data(a: argparse.Namespace) -> None:
    from models.binsynth import write_dataset

    print(write_dataset(a.out, a.train, a.val, a.seed))


def cmd_train(a: argparse.Namespace) -> None:
    offline_ultralytics()
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(a.threads)
    model = YOLO(str(MODEL_YAML), task="detect")
    model.train(
        data=str(Path(a.data).resolve()),
        imgsz=a.imgsz,
        epochs=a.epochs,
        time=a.hours,
        batch=a.batch,
        nbs=a.batch,  # one optimiser step per batch: few epochs fit in a CPU budget, so take every step
        optimizer="AdamW",
        lr0=a.lr0,
        warmup_epochs=1,
        workers=a.workers,
        device="cpu",
        amp=False,
        plots=False,
        cache="ram",
        seed=0,
        deterministic=False,
        pretrained=False,
        project=str(RUNS),
        name="run",
        exist_ok=True,
        patience=100,
        close_mosaic=a.close_mosaic,
        mosaic=1.0,
        degrees=0.0,
        scale=0.4,
        fliplr=0.5,
        hsv_h=0.01,
        verbose=True,
    )


def cmd_export(a: argparse.Namespace) -> None:
    offline_ultralytics()
    from ultralytics import YOLO

    model = YOLO(a.weights)
    out = model.export(
        format="onnx",
        opset=17,
        imgsz=list(EXPORT_HW),
        dynamic=False,
        simplify=False,
        half=False,
        nms=False,
        batch=1,
    )
    shutil.copyfile(out, a.out)
    print(a.out)


def cmd_quantize(a: argparse.Namespace) -> None:
    import cv2
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    h, w = EXPORT_HW
    images = sorted((Path(a.data).parent / "images" / "train").glob("*.jpg"))[: a.calib]
    if not images:
        sys.exit(f"no calibration images next to {a.data}")

    def prep(path: Path) -> np.ndarray:
        img = cv2.imread(str(path))
        if img is None:
            sys.exit(f"{path}: not a readable image")
        s = min(w / img.shape[1], h / img.shape[0])
        nw, nh = round(img.shape[1] * s), round(img.shape[0] * s)
        canvas = np.full((h, w, 3), 114, np.uint8)
        top, left = (h - nh) // 2, (w - nw) // 2
        canvas[top : top + nh, left : left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1)[None], np.float32) / 255.0

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            p = next(self.it, None)
            return None if p is None else {"images": prep(p)}

    pre = Path(a.out).with_suffix(".pre.onnx")
    quant_pre_process(str(a.model), str(pre), skip_symbolic_shape=True)
    exclude = list(a.exclude) if a.exclude else head_decode_nodes(pre)
    quantize_static(
        str(pre),
        str(a.out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        reduce_range=True,  # 7-bit weights: exact on x86 without VNNI too (models/quantize.py says why)
        nodes_to_exclude=exclude,
    )
    pre.unlink(missing_ok=True)
    print(a.out)


def head_decode_nodes(model_path: Path) -> list[str]:
    """Nodes of the Detect head after its last convolutions (DFL, box decoding, sigmoid, concat): kept in
    float, since one output tensor carries both pixel coordinates (0–320) and scores (0–1), and a shared
    8-bit scale would round every score to a multiple of ~1.3."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    out = graph.output[0].name
    last = next(n for n in graph.node if out in n.output)
    prefix = last.name.rsplit("/", 1)[0] + "/"  # e.g. /model.22/
    return [
        n.name
        for n in graph.node
        if n.name.startswith(prefix) and "/cv2" not in n.name and "/cv3" not in n.name
    ]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the bin model")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", default=str(ROOT / "var" / "binsynth"))
    d.add_argument("--train", type=int, default=3000)
    d.add_argument("--val", type=int, default=500)
    d.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--data", default=str(ROOT / "var" / "binsynth" / "data.yaml"))
    t.add_argument("--imgsz", type=int, default=320)
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--hours", type=float, default=0.4, help="wall-clock budget; overrides --epochs")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr0", type=float, default=0.002)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--close-mosaic", type=int, default=3)
    e = sub.add_parser("export")
    e.add_argument("--weights", default=str(RUNS / "run" / "weights" / "best.pt"))
    e.add_argument("--out", default=str(ONNX_OUT))
    q = sub.add_parser("quantize")
    q.add_argument("--model", default=str(ONNX_OUT))
    q.add_argument("--out", default=str(INT8_OUT))
    q.add_argument("--data", default=str(ROOT / "var" / "binsynth" / "data.yaml"))
    q.add_argument("--calib", type=int, default=200)
    q.add_argument("--exclude", nargs="*", help="node names to keep in float")
    a = ap.parse_args(argv)
    {"data": cmd_data, "train": cmd_train, "export": cmd_export, "quantize": cmd_quantize}[a.cmd](a)


if __name__ == "__main__":
    main()
