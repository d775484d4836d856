"""The GPU-without-onnxruntime-gpu detector bench (benchmarks/bench_detector_torch.py).

Its timing needs PyTorch and onnx2torch, which pingan does not install (the GPU machine it is for has
PyTorch; onnx2torch travels as a wheel): that test runs where both are importable and is skipped elsewhere.
What it feeds each shipped model is checked everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from benchmarks.bench_detector_torch import input_shape, main

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize(
    ("name", "want"),
    [
        # a dynamic height is filled as pingan fits a 16:9 frame: 416 × 9/16 = 234 → 256
        ("vehicles-nanodet-m.onnx", (3, 256, 416)),
        ("vehicles-nanodet-m-320.onnx", (3, 192, 320)),
        ("bins-yolov8.onnx", (3, 192, 320)),  # fixed in the graph
    ],
)
def test_each_model_is_fed_its_own_input_shape(name: str, want: tuple[int, int, int]) -> None:
    assert input_shape(onnx.load(str(MODELS / name), load_external_data=False)) == want


def bench_on_cpu(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    out = tmp_path / "r.json"
    rc = main(["--device", "cpu", "--seconds", "0.05", *args, "--out", str(out)])
    return rc, json.loads(out.read_text())


def test_pytorch_runs_the_shipped_graphs_as_onnx_runtime_does_and_is_timed(tmp_path: Path) -> None:
    rc, result = bench_on_cpu(tmp_path, "--batches", "1,2", "--precisions", "fp32,fp16")
    assert rc == 0
    assert [m["model"] for m in result["models"]] == [
        "vehicles-nanodet-m.onnx",
        "vehicles-nanodet-m-320.onnx",
        "bins-yolov8.onnx",
    ]
    for m in result["models"]:
        assert "error" not in m, m
        assert max(float(d) for d in m["max_abs_diff_vs_onnxruntime"]) <= 1e-3
        # FP16 is skipped on a CPU; every FP32 batch has both timings; a graph exported for batch 1 (the
        # bins model) is run at 1 only, as pingan runs it
        batches = (1, 2) if m["fixed_batch"] is None else (m["fixed_batch"],)
        assert {(r["kind"], r["precision"], r["batch"]) for r in m["rows"]} == {
            (k, "fp32", b) for k in ("model", "with_copy") for b in batches
        }
        assert all(r["ms_per_batch"] > 0 and r["images_per_s"] > 0 for r in m["rows"])
    assert [m["fixed_batch"] for m in result["models"]] == [None, None, 1]


def test_a_conversion_that_changes_the_outputs_is_reported_not_timed(tmp_path: Path) -> None:
    # a negative tolerance no difference can meet: every model counts as converted wrongly
    rc, result = bench_on_cpu(tmp_path, "--models", "bins-yolov8.onnx", "--tolerance", "-1")
    assert rc == 1
    (m,) = result["models"]
    assert "not timed" in m["error"] and m["rows"] == []
