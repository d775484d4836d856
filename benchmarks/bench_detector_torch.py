"""Detector throughput on a GPU with PyTorch but no onnxruntime-gpu: the shipped ONNX graphs run by PyTorch.

    python -m benchmarks.bench_detector_torch [--models vehicles-nanodet-m.onnx,bins-yolov8.onnx]
        [--batches 1,8,32,64] [--precisions fp32,fp16] [--seconds 3] [--device cuda] [--out FILE]

The GPU machine this project is sometimes lent has PyTorch, ONNX and ONNX Runtime's CPU build, and nothing can
be installed there from the network (onnxruntime-gpu is too large to carry): ``pingan bench detector`` would
only measure its CPU. So each model file is converted once with onnx2torch (a small pure-Python wheel that
can travel with the repo), and

- its outputs are checked against ONNX Runtime's CPU provider on the same input before anything is timed
  (``max_abs_diff`` per output, recorded): a converter that changed what the graph computes would time the
  wrong thing, so a model whose outputs differ by more than ``--tolerance`` is reported and not timed;
- each batch size and precision is timed as ``model`` (the batch already on the device; the forward pass,
  synchronised) and ``with_copy`` (a float32 NCHW batch copied from host memory first, as a camera frame is).

What the figures say about a GPU box with onnxruntime-gpu: the ``model`` rows are what this graph costs on
that GPU through cuDNN, in FP32 and FP16 — the kernels ONNX Runtime's CUDA provider calls too, so close to
what it gives but not the same figure (each fuses some layers its own way; TensorRT fuses more and usually
does better). They are the detector's, not the pipeline's: decoding (NVDEC is not built) and the CPU-side
steps stay.

Imports only numpy, onnx, onnxruntime, torch and onnx2torch (not ``pipeline``: the GPU machine lacks the
runtime's other dependencies). CPU works too (``--device cpu``, FP32 only), which is how it is tested.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_detector import _row, _timeit
from benchmarks.common import ROOT, machine_info, note, now_iso, result_path, write_json

DEFAULT_MODELS = ["vehicles-nanodet-m.onnx", "vehicles-nanodet-m-320.onnx", "bins-yolov8.onnx"]
STRIDE = 32  # the detectors' coarsest stride: a dynamic input height is a multiple of it


@dataclass
class Options:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    models_dir: Path = ROOT / "models"
    batches: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16"])
    seconds: float = 3.0
    device: str = "cuda"
    tolerance: float = 1e-3
    out: Path | None = None


def input_shape(model: Any) -> tuple[int, int, int]:
    """(channels, height, width) to feed: the graph's own, a dynamic height filled as pingan fills it for a
    16:9 camera (its width's 9/16, rounded up to the stride: 416 → 256)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    c, h, w = (d.dim_value if d.HasField("dim_value") else None for d in list(dims)[1:4])
    if c is None or w is None:
        raise ValueError(f"{model.graph.name}: channels and width must be fixed, got {dims}")
    if h is None:
        h = math.ceil(w * 9 / 16 / STRIDE) * STRIDE
    return c, h, w


def fixed_batch(model: Any) -> int | None:
    """The batch size the graph was exported for, or None when its batch dimension is symbolic."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def _synced(torch: Any, device: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    if device.startswith("cuda"):

        def run() -> Any:
            out = fn()
            torch.cuda.synchronize()
            return out

        return run
    return fn


def reference(onnx_bytes: bytes, x: np.ndarray) -> list[np.ndarray]:
    """ONNX Runtime's (CPU, FP32) outputs for ``x``: what the converted graph must reproduce."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return list(sess.run(None, {sess.get_inputs()[0].name: x}))


def parity(
    torch_model: Any, want: list[np.ndarray], x: np.ndarray, torch: Any, device: str, half: bool = False
) -> list[float]:
    """Per output, the largest |PyTorch − ``want``| on the same batch (fed to PyTorch in half precision with
    ``half``)."""
    with torch.inference_mode():
        got = torch_model(torch.from_numpy(x).to(device, torch.float16 if half else torch.float32))
    got = got if isinstance(got, list | tuple) else [got]
    if len(got) != len(want):
        raise ValueError(f"PyTorch gave {len(got)} outputs, ONNX Runtime {len(want)}")
    return [float(np.abs(g.float().cpu().numpy() - w).max()) for g, w in zip(got, want, strict=True)]


def sci(values: list[float]) -> list[str]:
    """``3.1e-06``: differences this small would round to 0 in the results' JSON (4 decimals)."""
    return [f"{v:.1e}" for v in values]


def bench_model(path: Path, opts: Options) -> dict[str, Any]:
    import onnx
    import torch
    from onnx2torch import convert

    raw = path.read_bytes()
    model = onnx.load_from_string(raw)
    c, h, w = input_shape(model)
    fixed = fixed_batch(model)
    # a graph exported for one batch size is run at that size, as pingan runs it (one call per frame)
    batches = opts.batches if fixed is None else [fixed]
    out: dict[str, Any] = {"model": path.name, "input": [c, h, w], "fixed_batch": fixed, "rows": []}
    net = convert(model).eval().to(opts.device)
    rng = np.random.default_rng(0)
    # pixels normalised as pingan feeds them: roughly zero-mean, unit-spread
    probe = rng.standard_normal((fixed or 2, c, h, w)).astype(np.float32)
    want = reference(raw, probe)
    diffs = parity(net, want, probe, torch, opts.device)
    out["max_abs_diff_vs_onnxruntime"] = sci(diffs)
    if max(diffs) > opts.tolerance:
        out["error"] = f"outputs differ from ONNX Runtime's by up to {max(diffs):.3g}: not timed"
        note(f"{path.name}: {out['error']}")
        return out
    for precision in opts.precisions:
        if precision == "fp16" and not opts.device.startswith("cuda"):
            continue  # FP16 convolutions on a CPU time a slow path no one deploys
        typed = net.to(torch.float16 if precision == "fp16" else torch.float32)
        if precision == "fp16":  # what half precision costs in the outputs, beside what it saves in time
            diff = parity(typed, want, probe, torch, opts.device, half=True)
            out["fp16_max_abs_diff_vs_onnxruntime"] = sci(diff)
        for b in batches:
            host = torch.from_numpy(rng.standard_normal((b, c, h, w)).astype(np.float32))
            try:
                out["rows"] += time_batch(typed, host, precision, opts, torch)
            except Exception as err:  # out of memory at a large batch, an op without a half kernel, …
                out["rows"].append(
                    {"kind": "error", "precision": precision, "batch": b, "error": str(err)[:300]}
                )
            last = out["rows"][-1]
            note(
                f"{path.name} {precision} b={b}: {last.get('ms_per_image', float('nan')):.3f} ms/image "
                f"({last.get('images_per_s', 0):.0f}/s, {last['kind']})"
            )
        if opts.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def time_batch(net: Any, host: Any, precision: str, opts: Options, torch: Any) -> list[dict[str, Any]]:
    """``model`` (the batch already on the device) and ``with_copy`` (copied from host memory first) rows."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    b = int(host.shape[0])
    with torch.inference_mode():
        x = host.to(opts.device, dtype)
        ms, runs = _timeit(_synced(torch, opts.device, lambda: net(x)), opts.seconds)
        rows = [_row("model", b, ms, runs, precision=precision)]
        pinned = host.pin_memory() if opts.device.startswith("cuda") else host

        def copy_and_run() -> Any:
            return net(pinned.to(opts.device, non_blocking=True).to(dtype))

        ms, runs = _timeit(_synced(torch, opts.device, copy_and_run), opts.seconds)
        rows.append(_row("with_copy", b, ms, runs, precision=precision))
    return rows


def run(opts: Options) -> dict[str, Any]:
    import torch

    started = now_iso()
    cuda = opts.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(torch.device(opts.device)) if cuda else "cpu"
    # fixed shapes: let cuDNN time its algorithms once per shape, as ONNX Runtime's CUDA provider does by
    # default (cudnn_conv_algo_search EXHAUSTIVE)
    torch.backends.cudnn.benchmark = cuda
    with warnings.catch_warnings():
        # onnx2torch's Slice indexes with a list, which PyTorch deprecates; were its meaning to change, the
        # parity check against ONNX Runtime would report it
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        models = [bench_model(opts.models_dir / name, opts) for name in opts.models]
    return {
        "bench": "detector_torch",
        "started": started,
        "finished": now_iso(),
        "command": " ".join(["python -m benchmarks.bench_detector_torch", *sys.argv[1:]]),
        "machine": machine_info(),
        "device": opts.device,
        "device_name": device_name,
        "versions": {"torch": torch.__version__, "onnx2torch": metadata.version("onnx2torch")},
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "options": {
            "batches": opts.batches,
            "precisions": opts.precisions,
            "seconds": opts.seconds,
            "tolerance": opts.tolerance,
        },
        "maps_to": (
            "model rows: this graph through cuDNN on this GPU, the kernels onnxruntime-gpu's CUDA provider "
            "calls too, so close to its figure but not the same (each fuses layers its own way; TensorRT "
            "fuses more). Detector only: decoding and the CPU-side steps are not in these figures."
        ),
        "models": models,
    }


def build_parser() -> argparse.ArgumentParser:
    d = Options()
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_detector_torch", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--models", default=",".join(d.models), help="ONNX files in --models-dir, comma-separated"
    )
    ap.add_argument("--models-dir", type=Path, default=d.models_dir)
    ap.add_argument("--batches", default=",".join(map(str, d.batches)))
    ap.add_argument("--precisions", default=",".join(d.precisions), help="fp32,fp16 (fp16 on CUDA only)")
    ap.add_argument("--seconds", type=float, default=d.seconds, help="timing per row")
    ap.add_argument("--device", default=d.device, help="cuda, cuda:1, cpu")
    ap.add_argument("--tolerance", type=float, default=d.tolerance, help="largest |PyTorch − ORT| accepted")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/…)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = Options(
        models=[m for m in a.models.split(",") if m],
        models_dir=a.models_dir,
        batches=[int(b) for b in a.batches.split(",") if b],
        precisions=[p for p in a.precisions.split(",") if p],
        seconds=a.seconds,
        device=a.device,
        tolerance=a.tolerance,
        out=a.out,
    )
    result = run(opts)
    path = result_path("detector-torch", opts.out)
    write_json(path, result)
    note(f"wrote {path}")
    return 1 if any("error" in m for m in result["models"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
