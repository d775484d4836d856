"""Static INT8 (QDQ, per-channel) quantisation of a manifest model, kept if it agrees with FP32 and is faster.

    .venv/bin/python models/quantize.py vehicles    # writes models/<file stem>-int8.onnx, prints a report
    .venv/bin/python models/quantize.py vehicles --fp16    # an FP16 copy for GPUs (agreement checked here)

Calibration uses real CCTV frames (Debian opencv-doc ``vtest.avi``, first half) plus generated street scenes;
agreement and speed are measured on held-out frames (second half of ``vtest.avi`` and the street photo), never
the calibration frames. Agreement = matched-box recall: the share of FP32 detections that the INT8 model also
reports with the same label at IoU ≥ 0.5 (and the reverse, for extra boxes). A build step: needs the ``onnx``
package (dev extra) and the opencv-doc files; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.detection import OnnxDetector, session_options
from pipeline.detections import LABELS, Detections, box_iou
from pipeline.manifest import model_entry, sha256_file

MODELS = Path(__file__).resolve().parent
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
PHOTOS = [Path("/usr/share/doc/opencv-doc/opencv4/html/pexels_double_decker_bus.jpg")]
Image = npt.NDArray[np.uint8]
OP_TYPES = ["Conv", "Add", "Concat", "LeakyRelu", "Resize"]


def video_frames(path: Path, start: int, stop: int, every: int) -> list[Image]:
    out: list[Image] = []
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= stop:
                break
            if i >= start and (i - start) % every == 0:
                out.append(np.asarray(frame.to_ndarray(format="bgr24"), np.uint8))
    return out


def street_scene(rng: np.random.Generator, w: int = 960, h: int = 540) -> Image:
    """A crude street: sky/buildings, asphalt with lane marks, box-shaped vehicles with windows and wheels,
    a few upright 'pedestrians', sensor noise. Widens the calibration ranges beyond one CCTV scene."""
    img = np.empty((h, w, 3), np.uint8)
    horizon = int(h * rng.uniform(0.25, 0.45))
    img[:horizon] = rng.integers(120, 230, 3)
    for x in range(0, w, int(rng.integers(60, 140))):  # buildings
        top = int(rng.integers(0, horizon))
        img[top:horizon, x : x + int(rng.integers(40, 130))] = rng.integers(40, 200, 3)
    img[horizon:] = rng.integers(60, 110)
    for x in range(0, w, 80):
        cv2.line(img, (x, h - 40), (x + 40, h - 40), (230, 230, 230), 4)
    for _ in range(int(rng.integers(2, 7))):  # vehicles
        vw = int(rng.integers(w // 10, w // 3))
        vh = int(vw * rng.uniform(0.4, 0.9))
        x0 = int(rng.integers(0, w - vw))
        y0 = int(rng.integers(horizon, h - vh // 2)) - vh // 2
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(img, (x0, y0), (x0 + vw, y0 + vh), color, -1)
        cv2.rectangle(img, (x0 + vw // 8, y0 + vh // 8), (x0 + 7 * vw // 8, y0 + vh // 2), (40, 40, 50), -1)
        for wx in (x0 + vw // 5, x0 + 4 * vw // 5):
            cv2.circle(img, (wx, y0 + vh), max(4, vh // 5), (20, 20, 20), -1)
    for _ in range(int(rng.integers(0, 5))):  # pedestrians
        px, py = int(rng.integers(0, w - 20)), int(rng.integers(horizon, h - 60))
        cv2.rectangle(
            img, (px, py + 12), (px + 14, py + 55), tuple(int(c) for c in rng.integers(0, 256, 3)), -1
        )
        cv2.circle(img, (px + 7, py + 6), 6, (150, 170, 200), -1)
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


class Reader(CalibrationDataReader):
    def __init__(self, blobs: Sequence[npt.NDArray[np.float32]], input_name: str) -> None:
        self._it: Iterator[npt.NDArray[np.float32]] = iter(blobs)
        self._name = input_name

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        blob = next(self._it, None)
        return None if blob is None else {self._name: blob}


def matched_recall(ref: Sequence[Detections], test: Sequence[Detections], iou: float = 0.5) -> float:
    """Share of ``ref`` boxes matched one-to-one (greedy by IoU) by a ``test`` box of the same label."""
    hit = total = 0
    for r, t in zip(ref, test, strict=True):
        total += len(r)
        m = box_iou(r.xyxy, t.xyxy) * (r.class_id[:, None] == t.class_id[None, :])
        used: set[int] = set()
        for i in np.argsort(-r.confidence):
            order = [j for j in np.argsort(-m[i]) if m[i, j] >= iou and j not in used]
            if order:
                used.add(int(order[0]))
                hit += 1
    return hit / max(total, 1)


def time_ms(dets: Sequence[OnnxDetector], images: Sequence[Image], repeats: int) -> list[float]:
    """Median ms per image for each detector, one image per call (the CPU case: batching does not pay there).
    Runs interleaved so that load from other processes on the box hits all detectors alike."""
    for det in dets:
        det.detect(images[:1])  # warm-up
    samples: list[list[float]] = [[] for _ in dets]
    for _ in range(repeats):
        for im in images:
            for k, det in enumerate(dets):
                t = time.perf_counter()
                det.detect([im])
                samples[k].append((time.perf_counter() - t) * 1000)
    return [statistics.median(s) for s in samples]


def int8_weight_range(path: Path) -> tuple[int, int]:
    """(min, max) over the int8 weight initializers that DequantizeLinear nodes read (needs ``onnx``)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    values = [
        numpy_helper.to_array(inits[n.input[0]])
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    if not values:
        raise ValueError(f"{path.name}: no int8 weights")
    return min(int(v.min()) for v in values), max(int(v.max()) for v in values)


def make_detector(name: str, entry_file: str, path: Path, threads: int) -> OnnxDetector:
    entry = model_entry(name, MODELS)
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    precision = "fp32" if path.name == entry_file else "fp16" if path.stem.endswith("-fp16") else "int8"
    return OnnxDetector(name, entry, session, sha256_file(path), precision)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", default="vehicles")
    parser.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    parser.add_argument("--min-recall", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="instead: an FP16 copy for GPUs (FP32 inputs/outputs), agreement only",
    )
    args = parser.parse_args()

    entry = model_entry(args.model, MODELS)
    fp32 = MODELS / entry.file
    out = MODELS / f"{fp32.stem}-int8.onnx"
    pre = entry.preprocess()

    rng = np.random.default_rng(20261126)
    calib = video_frames(VTEST, 0, 400, 8) + [street_scene(rng) for _ in range(16)]
    photos = [cv2.imread(str(p)) for p in PHOTOS if p.is_file()]
    held = video_frames(VTEST, 400, 795, 20) + [np.asarray(p, np.uint8) for p in photos if p is not None]
    print(f"calibration images: {len(calib)}, held-out images: {len(held)}")
    if args.fp16:
        make_fp16(args.model, entry.file, fp32, held, args.min_recall)
        return

    from pipeline.adapters import preprocess

    blobs = [preprocess([im], pre)[0] for im in calib]
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[args.method]
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped),
            str(out),
            Reader(blobs, "images"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            # 7-bit weights: x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8×s8 pairs with
            # VPMADDUBSW, whose 16-bit sum saturates for 8-bit weights (2·255·127 > 32767): a Zen 3 box lost
            # 2 of 7 vehicles to it. With |w| ≤ 64 the sum fits (2·255·64 = 32640), so every CPU computes
            # the same result; per-channel scales keep the lost bit cheap (recall in the report).
            reduce_range=True,
            # Not Pad/MaxPool: NanoDet's stem pads with -inf before its max-pool, which would give that
            # tensor an infinite range (NaN scales). Max-pool and pad are cheap in float anyway.
            op_types_to_quantize=OP_TYPES,
        )

    lo, hi = int8_weight_range(out)
    if lo < -64 or hi > 64:
        raise SystemExit(
            f"{out.name}: int8 weights span [{lo}, {hi}], not 7-bit: would saturate without VNNI"
        )
    d32 = make_detector(args.model, entry.file, fp32, args.threads)
    d8 = make_detector(args.model, entry.file, out, args.threads)
    r32 = [d32.detect([im])[0] for im in held]
    r8 = [d8.detect([im])[0] for im in held]
    recall = matched_recall(r32, r8)
    precision = matched_recall(r8, r32)
    ms32, ms8 = time_ms([d32, d8], held, args.repeats)
    report = {
        "method": f"static QDQ per-channel, {args.method} calibration, 7-bit weights (reduce_range)",
        "int8_weight_range": [lo, hi],
        "calibration": f"{len(calib)} images: vtest.avi frames 0-399 every 8th + 16 generated street scenes",
        "held_out": f"{len(held)} images: vtest.avi frames 400-794 every 20th + street photo",
        "fp32_boxes": int(sum(len(r) for r in r32)),
        "int8_boxes": int(sum(len(r) for r in r8)),
        "matched_recall_iou50": round(recall, 3),
        "matched_precision_iou50": round(precision, 3),
        "matched_recall_iou50_by_label": {
            LABELS[k]: round(matched_recall([r[r.class_id == k] for r in r32], r8), 3)
            for k in sorted({int(c) for r in r32 for c in r.class_id})
        },
        "ms_per_image_fp32": round(ms32, 1),
        "ms_per_image_int8": round(ms8, 1),
        "threads": args.threads,
        "cpu": cpu_model(),
        "onnxruntime": ort.__version__,
    }
    print(json.dumps(report, indent=2))
    keep = recall >= args.min_recall and ms8 < ms32
    if not keep:
        out.unlink()
        print(f"INT8 rejected (recall {recall:.3f} < {args.min_recall} or not faster); removed {out.name}")
        raise SystemExit(1)
    print(f"keep: {out.name} sha256 {sha256_file(out)}  ({out.stat().st_size / 1e6:.1f} MB)")


def make_fp16(name: str, entry_file: str, fp32: Path, held: Sequence[Image], min_recall: float) -> None:
    """FP16 weights and arithmetic with FP32 inputs/outputs (so pre/post-processing stay as they are).

    Only agreement can be checked here (ORT's CPU provider runs it, slowly); speed needs a GPU:
    ``python -m benchmarks.bench_models --providers cuda``."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = MODELS / f"{fp32.stem}-fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))
    d32 = make_detector(name, entry_file, fp32, 1)
    d16 = make_detector(name, entry_file, out, 1)
    r32 = [d32.detect([im])[0] for im in held]
    r16 = [d16.detect([im])[0] for im in held]
    recall, precision = matched_recall(r32, r16), matched_recall(r16, r32)
    worst = max(
        (
            float(np.abs(a.xyxy - b.xyxy).max())
            for a, b in zip(r32, r16, strict=True)
            if len(a) == len(b) and len(a)
        ),
        default=0.0,
    )
    report = {
        "method": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)",
        "held_out": f"{len(held)} images: vtest.avi frames 400-794 every 20th + street photo",
        "matched_recall_iou50": round(recall, 3),
        "matched_precision_iou50": round(precision, 3),
        "max_box_shift_px": round(worst, 2),
        "speed": "not measured: needs a GPU",
    }
    print(json.dumps(report, indent=2))
    if recall < min_recall:
        out.unlink()
        print(f"FP16 rejected (recall {recall:.3f} < {min_recall}); removed {out.name}")
        raise SystemExit(1)
    print(f"keep: {out.name} sha256 {sha256_file(out)}  ({out.stat().st_size / 1e6:.1f} MB)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
