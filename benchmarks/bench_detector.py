"""Detector throughput: ms per image and images/s by batch size, execution provider, precision and threads.

    pingan bench detector [--quick] [--model vehicles] [--batches 1,2,4,8] [--providers cpu,cuda] [--out FILE]

For every provider ``onnxruntime.get_available_providers()`` offers (CPU here; CUDA and TensorRT on a GPU box,
so this is also the GPU benchmark), every precision the manifest lists, and (CPU) 1 intra-op thread and all
cores, it times:

- ``raw``: ``session.run`` on a ready float32 NCHW batch (the model alone);
- ``detector``: ``OnnxDetector.detect`` on 1080p BGR frames (letterbox/normalise + model + decode + NMS);
- ``iobinding`` (CUDA/TensorRT only): the input already on the device, outputs left there
  (``run_with_iobinding``), and ``iobinding_cpu_input`` (host input copied in by ORT).

Models exported with a fixed batch of 1 get an in-memory copy with the batch dimension freed (their leading
``Reshape`` constants 1 → 0, i.e. "copy the batch dim"); outputs of that copy are checked against batch-1 runs
before any timing. Sessions use pingan's options (``pipeline.detection.session_options``: no spinning).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, machine_info, note, now_iso, result_path, write_json

SHORT = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
SKIP_PROVIDERS = {"AzureExecutionProvider"}
GPU = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}


@dataclass
class Options:
    quick: bool = False
    model: str = "vehicles"
    models_dir: Path = ROOT / "models"
    batches: list[int] | None = None
    providers: list[str] | None = None
    seconds: float = 3.0
    out: Path | None = None


def free_batch(model_bytes: bytes) -> tuple[bytes, bool]:
    """A copy of the model with a symbolic batch dim; (bytes, changed). Leading-1 Reshape targets become 0."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model_bytes)
    dims = [v.type.tensor_type.shape.dim[0] for v in [*m.graph.input, *m.graph.output]]
    if all(d.dim_param for d in dims):
        return model_bytes, False
    for d in dims:
        d.ClearField("dim_value")
        d.dim_param = "batch"
    del m.graph.value_info[:]
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            init = inits[node.input[1]]
            shape = numpy_helper.to_array(init).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                init.CopyFrom(numpy_helper.from_array(shape, init.name))
    return m.SerializeToString(), True


VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
FRAME_NOTE = "detector rows: vtest.avi frame 0 (real CCTV) resized to 1920×1080; random pixels without it"


def sample_frame() -> np.ndarray:
    """A realistic 1080p BGR frame (so decoding and NMS see real detections), or noise without opencv-doc."""
    import cv2

    cap = cv2.VideoCapture(str(VTEST))
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    cap.release()
    if ok and frame is not None:
        return cv2.resize(frame, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    return (np.random.default_rng(0).random((1080, 1920, 3)) * 255).astype(np.uint8)


def _timeit(fn: Callable[[], Any], seconds: float, min_runs: int = 3) -> tuple[float, int]:
    """Median ms of ``fn`` over ~``seconds`` (after two warm-up calls) and the number of timed runs."""
    for _ in range(2):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), len(times)


def _row(kind: str, batch: int, ms: float, runs: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "batch": batch,
        "ms_per_batch": ms,
        "ms_per_image": ms / batch,
        "images_per_s": 1000.0 * batch / ms,
        "runs": runs,
        **extra,
    }


def _session(model: bytes, provider: str, threads: int, precision: str) -> Any:
    import onnxruntime as ort

    from pipeline.detection import _provider_options, session_options

    so = session_options(threads)
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    opts = _provider_options(providers, precision)  # type: ignore[arg-type]
    return ort.InferenceSession(model, sess_options=so, providers=providers, provider_options=opts)


def bench_config(
    entry: Any, sha: str, model: bytes, provider: str, precision: str, threads: int, opts: Options
) -> dict[str, Any]:
    from pipeline.detection import OnnxDetector

    freed, changed = free_batch(model)
    sess = _session(freed, provider, threads, precision)
    inp = sess.get_inputs()[0]
    h, w = entry.input.height, entry.input.width
    dtype = np.float16 if "float16" in inp.type else np.float32
    rng = np.random.default_rng(0)
    config: dict[str, Any] = {
        "provider": provider,
        "precision": precision,
        "intra_op_threads": threads,
        "session_providers": sess.get_providers(),
        "batch_dim_freed": changed,
        "rows": [],
    }
    if changed:  # the freed copy must give what the original gives, image by image
        x = rng.random((2, 3, h, w), dtype=np.float32).astype(dtype)
        ref = _session(model, provider, threads, precision)
        got = sess.run(None, {inp.name: x})
        want = [ref.run(None, {inp.name: x[i : i + 1]}) for i in range(2)]
        err = max(float(np.abs(got[k][i] - want[i][k][0]).max()) for k in range(len(got)) for i in range(2))
        config["batch_copy_max_abs_diff"] = err
    frame = sample_frame()
    outputs = [o.name for o in sess.get_outputs()]
    for b in opts.batches or [1]:
        blob = rng.random((b, 3, h, w), dtype=np.float32).astype(dtype)
        try:
            feed = {inp.name: blob}
            ms, runs = _timeit(partial(sess.run, outputs, feed), opts.seconds)
            config["rows"].append(_row("raw", b, ms, runs))
            det = OnnxDetector(opts.model, entry, sess, sha, precision, max_batch=b)  # type: ignore[arg-type]
            frames = [frame] * b
            ms, runs = _timeit(partial(det.detect, frames), opts.seconds)
            config["rows"].append(_row("detector", b, ms, runs, input="1080p BGR frames"))
            if provider in GPU:
                config["rows"] += _iobinding(sess, inp.name, outputs, blob, b, opts.seconds)
        except Exception as err:  # out of memory at a large batch, a provider that cannot run the graph, …
            config["rows"].append(
                {"kind": "error", "batch": b, "error": f"{type(err).__name__}: {err}"[:300]}
            )
        last = config["rows"][-1]
        note(
            f"{provider} {precision} t={threads} b={b}: "
            f"{last.get('ms_per_image', float('nan')):.2f} ms/image ({last.get('kind')})"
        )
    return config


def _iobinding(
    sess: Any, name: str, outputs: list[str], blob: np.ndarray, b: int, seconds: float
) -> list[Any]:
    import onnxruntime as ort

    rows = []
    io = sess.io_binding()
    x = ort.OrtValue.ortvalue_from_numpy(blob, "cuda", 0)
    io.bind_ortvalue_input(name, x)
    for o in outputs:
        io.bind_output(o, "cuda")
    ms, runs = _timeit(lambda: sess.run_with_iobinding(io), seconds)
    rows.append(_row("iobinding", b, ms, runs, note="input on the device, outputs left there"))
    io2 = sess.io_binding()
    io2.bind_cpu_input(name, blob)
    for o in outputs:
        io2.bind_output(o, "cuda")
    ms, runs = _timeit(lambda: sess.run_with_iobinding(io2), seconds)
    rows.append(_row("iobinding_cpu_input", b, ms, runs, note="host input copied in, outputs left on device"))
    return rows


def run(opts: Options) -> dict[str, Any]:
    import os

    import onnxruntime as ort

    from pipeline.manifest import model_entry

    if opts.quick:
        opts.seconds = min(opts.seconds, 0.3)
    available = [p for p in ort.get_available_providers() if p not in SKIP_PROVIDERS]
    providers = [SHORT.get(p, p) for p in opts.providers] if opts.providers else available
    entry = model_entry(opts.model, opts.models_dir)
    precisions = ["fp32", *entry.variants]
    configs: list[dict[str, Any]] = []
    started = now_iso()
    for provider in providers:
        if provider not in available:
            configs.append({"provider": provider, "skipped": f"not available here (have {available})"})
            continue
        on_gpu = provider in GPU
        if opts.batches is None:
            batches = [1, 2] if opts.quick else ([1, 2, 4, 8, 16, 32] if on_gpu else [1, 2, 4, 8])
        else:
            batches = opts.batches
        threads_list = [1] if (opts.quick or on_gpu) else sorted({1, os.cpu_count() or 1})
        for precision in precisions:
            if precision == "fp16" and not on_gpu:
                continue
            file, sha = entry.file_for(precision)  # type: ignore[arg-type]
            model = (opts.models_dir / file).read_bytes()
            for threads in threads_list:
                sub = Options(**{**opts.__dict__, "batches": batches})
                try:
                    configs.append(bench_config(entry, sha, model, provider, precision, threads, sub))
                except Exception as err:
                    configs.append(
                        {
                            "provider": provider,
                            "precision": precision,
                            "intra_op_threads": threads,
                            "error": f"{type(err).__name__}: {err}"[:500],
                        }
                    )
                if opts.quick:
                    break
            if opts.quick:
                break
    best = [
        {
            "provider": c["provider"],
            "precision": c["precision"],
            "intra_op_threads": c["intra_op_threads"],
            **r,
        }
        for c in configs
        for r in c.get("rows", [])
        if r.get("kind") == "detector"
    ]
    best.sort(key=lambda r: r["ms_per_image"])
    return {
        "bench": "detector",
        "started": started,
        "finished": now_iso(),
        "command": "pingan bench detector" + (" --quick" if opts.quick else ""),
        "quick": opts.quick,
        "machine": machine_info(),
        "model": {
            "name": opts.model,
            "file": entry.file,
            "input": [entry.input.width, entry.input.height],
            "adapter": entry.adapter,
            "precisions": precisions,
        },
        "seconds_per_point": opts.seconds,
        "method": "median ms per call over ~seconds_per_point after 2 warm-up calls; one process, nothing "
        "else of pingan running; the machine may carry other load (machine.loadavg_at_start)",
        "frame": FRAME_NOTE,
        "fastest_detector_rows": best[:5],
        "configs": configs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="pingan bench detector",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="a fraction of a second per point, batch 1–2")
    ap.add_argument("--model", default="vehicles")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--batches", help="comma-separated batch sizes (default CPU 1,2,4,8; GPU up to 32)")
    ap.add_argument(
        "--providers", help="comma-separated: cpu,cuda,tensorrt,openvino (default: all available)"
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per point")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON file or folder (default benchmarks/results/)"
    )
    args = ap.parse_args(argv)
    opts = Options(
        quick=args.quick,
        model=args.model,
        models_dir=args.models_dir,
        batches=[int(b) for b in args.batches.split(",")] if args.batches else None,
        providers=args.providers.split(",") if args.providers else None,
        seconds=args.seconds,
        out=args.out,
    )
    payload = run(opts)
    payload["command"] = " ".join(["pingan bench detector", *(sys.argv[1:] if argv is None else argv)])
    path = write_json(result_path("detector", opts.out, quick=opts.quick), payload)
    note(f"wrote {path}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
