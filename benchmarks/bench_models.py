"""Detector cost per image: each manifest model × precision × batch size × ORT intra-op threads.

    .venv/bin/python -m benchmarks.bench_models [--models vehicles] [--batches 1,4,8] [--threads 1]
                                                [--providers cpu] [--repeats 5] [--out FILE]

For each configuration it loads the detector exactly as the pipeline does (``load_detector``: sha256 and
contract checked, 1-thread session without spinning unless ``--threads`` says otherwise) and times, per image:
pre-processing (resize + normalise), the ONNX Runtime call, and decoding (+NMS), on real CCTV frames (Debian
opencv-doc ``vtest.avi``, 768×576; generated frames where it is missing, as the JSON says). A model with a
fixed batch of 1 runs a "batch" as that many single calls. Configurations are interleaved within each repeat
so that load from other processes on a shared box hits them alike; medians are reported.

Writes ``benchmarks/results/models-<hostname>.json`` with machine info (CPU model, cores, library versions,
load average).
"""

from __future__ import annotations

import argparse
import itertools
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.common import RESULTS_DIR, loadavg, machine_info, note, now_iso, write_json
from pipeline.adapters import from_nanodet_output, from_yolo_output, preprocess
from pipeline.detection import OnnxDetector, load_detector
from pipeline.manifest import load_manifest

MODELS = Path(__file__).resolve().parent.parent / "models"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
Image = npt.NDArray[np.uint8]


def frames(n: int) -> tuple[list[Image], str]:
    if VTEST.is_file():
        import av

        out: list[Image] = []
        with av.open(str(VTEST)) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i % 25 == 0:
                    out.append(np.asarray(f.to_ndarray(format="bgr24"), np.uint8))
                if len(out) == n:
                    break
        return out, f"vtest.avi every 25th frame ({out[0].shape[1]}x{out[0].shape[0]})"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (576, 768, 3), np.uint8) for _ in range(n)], "random noise 768x576"


def timed_batch(det: OnnxDetector, images: list[Image]) -> dict[str, float]:
    """One batch through the detector's own steps, timing each (ms for the whole batch)."""
    e = det.entry
    t0 = time.perf_counter()
    blob, resizes = preprocess(images, e.preprocess())
    t1 = time.perf_counter()
    if det.max_batch >= len(images):
        outs = [det.session.run(None, {det.session.get_inputs()[0].name: blob})]
    else:  # fixed batch: one call per image
        outs = [
            det.session.run(None, {det.session.get_inputs()[0].name: blob[i : i + 1]})
            for i in range(len(images))
        ]
    t2 = time.perf_counter()
    for k, o in enumerate(outs):
        if e.adapter == "yolo":
            from_yolo_output(o[0], e.class_map(), resizes if len(outs) == 1 else resizes[k : k + 1])
        else:
            assert e.head is not None
            for i in range(o[0].shape[0]):
                from_nanodet_output(
                    [a[i] for a in o],
                    det._levels,
                    e.class_map(),
                    resizes[k + i],
                    reg_max=e.head.reg_max,
                    cell_offset=e.head.cell_offset,
                    score_threshold=e.score_threshold,
                )
    t3 = time.perf_counter()
    return {
        "pre": (t1 - t0) * 1e3,
        "infer": (t2 - t1) * 1e3,
        "post": (t3 - t2) * 1e3,
        "total": (t3 - t0) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="", help="comma-separated manifest names (default: all)")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--threads", default="1", help="ORT intra-op threads, comma-separated")
    parser.add_argument("--providers", default="cpu", help="comma-separated: tensorrt,cuda,openvino,cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    manifest = load_manifest(MODELS)
    names = [n for n in args.models.split(",") if n] or list(manifest.models)
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    providers = [p for p in args.providers.split(",") if p]
    images, source = frames(max(batches))

    detectors: dict[tuple[str, str, int], OnnxDetector] = {}
    for name, th in itertools.product(names, threads):
        for prec in ["fp32", *manifest.models[name].variants]:
            try:
                detectors[(name, prec, th)] = load_detector(name, MODELS, providers, th, prec, max(batches))
            except Exception as err:  # a variant may not load on this provider: record and go on
                note(f"skip {name} {prec}: {err}")
    samples: dict[tuple[str, str, int, int], list[dict[str, float]]] = {}
    for det in detectors.values():
        timed_batch(det, images[:1])  # warm-up
    for r in range(args.repeats):
        note(f"repeat {r + 1}/{args.repeats}")
        for (name, prec, th), det in detectors.items():
            for b in batches:
                samples.setdefault((name, prec, th, b), []).append(timed_batch(det, images[:b]))

    rows: list[dict[str, Any]] = []
    for (name, prec, th, b), runs in samples.items():
        det = detectors[(name, prec, th)]
        row: dict[str, Any] = {
            "model": name,
            "precision": prec,
            "provider": det.providers[0],
            "intra_op_threads": th,
            "batch": b,
            "batched_call": det.max_batch >= b,
            "input": f"{det.entry.input.width}x{det.entry.input.height}",
        }
        for part in ("pre", "infer", "post", "total"):
            row[f"{part}_ms_per_image"] = statistics.median(s[part] for s in runs) / b
        rows.append(row)
        note(f"{name:10s} {prec:5s} threads={th} batch={b}: {row['total_ms_per_image']:.1f} ms/image")

    payload = {
        "benchmark": "models",
        "finished_at": now_iso(),
        "images": source,
        "repeats": args.repeats,
        "machine": machine_info(),
        "loadavg_at_end": loadavg(),
        "results": rows,
    }
    path = args.out or RESULTS_DIR / f"models-{socket.gethostname()}.json"
    write_json(path, payload)
    note(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
