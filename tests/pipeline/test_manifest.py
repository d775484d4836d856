"""models/manifest.yaml: validation, sha256 pinning, model contract."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.detections import LABEL_IDS
from pipeline.errors import ModelError
from pipeline.manifest import (
    ModelEntry,
    check_contract,
    load_manifest,
    model_entry,
    verify_file,
    verify_model,
)

MODELS = Path(__file__).resolve().parents[2] / "models"


def _write(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return tmp_path


def _vehicles_raw() -> dict[str, Any]:
    raw = yaml.safe_load((MODELS / "manifest.yaml").read_text(encoding="utf-8"))
    return {"models": {"vehicles": raw["models"]["vehicles"]}}


def test_shipped_manifest_loads_and_maps_coco_to_canonical() -> None:
    entry = load_manifest(MODELS).models["vehicles"]
    assert entry.adapter == "nanodet" and (entry.input.width, entry.input.height) == (416, 416)
    assert len(entry.classes) == 80 and entry.licence.startswith("Apache-2.0")
    cmap = entry.class_map()
    by_name = dict(zip(entry.classes, cmap.tolist(), strict=True))
    assert {k: by_name[k] for k in ("car", "truck", "bus", "motorcycle")} == dict.fromkeys(
        ("car", "truck", "bus", "motorcycle"), LABEL_IDS["vehicle"]
    )
    assert by_name["person"] == LABEL_IDS["person"]
    assert by_name["dog"] == by_name["bicycle"] == -1


def test_shipped_vehicles_model_verifies() -> None:
    verify_model("vehicles", MODELS)


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    raw = _vehicles_raw()
    raw["models"]["vehicles"]["colour"] = "BGR"
    with pytest.raises(ModelError, match=r"vehicles\.colour"):
        load_manifest(_write(tmp_path, raw))


def test_unknown_canonical_label_is_rejected(tmp_path: Path) -> None:
    raw = _vehicles_raw()
    raw["models"]["vehicles"]["labels"]["car"] = "automobile"
    with pytest.raises(ModelError, match="unknown canonical label"):
        load_manifest(_write(tmp_path, raw))


def test_label_for_a_class_the_model_lacks_is_rejected(tmp_path: Path) -> None:
    raw = _vehicles_raw()
    raw["models"]["vehicles"]["labels"]["tractor"] = "vehicle"
    with pytest.raises(ModelError, match="tractor"):
        load_manifest(_write(tmp_path, raw))


def test_missing_manifest_and_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_manifest(tmp_path)
    with pytest.raises(ModelError, match="'bikes' is not in"):
        model_entry("bikes", MODELS)


def test_sha256_mismatch_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"not the model")
    with pytest.raises(ModelError, match="does not match the manifest"):
        verify_file(f, "0" * 64)
    with pytest.raises(ModelError, match="missing"):
        verify_file(tmp_path / "absent.onnx", "0" * 64)


def test_altered_model_file_fails_verify(tmp_path: Path) -> None:
    shutil.copy(MODELS / "manifest.yaml", tmp_path / "manifest.yaml")
    data = bytearray((MODELS / "vehicles-nanodet-m.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "vehicles-nanodet-m.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        verify_model("vehicles", tmp_path)


def test_precision_variant_lookup() -> None:
    entry = load_manifest(MODELS).models["vehicles"]
    assert entry.file_for("fp32") == (entry.file, entry.sha256)
    for prec, variant in entry.variants.items():
        assert entry.file_for(prec) == (variant.file, variant.sha256)
    with pytest.raises(ModelError, match="no fp16 variant"):
        entry.model_copy(update={"variants": {}}).file_for("fp16")


@dataclass
class Arg:
    name: str
    shape: list[Any]


NANODET_OUTPUTS = [
    Arg(f"{kind}_s{s}", [1, (416 // s) ** 2, n])
    for kind, n in (("scores", 80), ("distances", 44))
    for s in (8, 16, 32)
]


def _entry(adapter: str = "nanodet", dynamic_height: bool = False) -> ModelEntry:
    entry = load_manifest(MODELS).models["vehicles"]
    inp = entry.input.model_copy(update={"dynamic_height": dynamic_height})
    return entry.model_copy(update={"adapter": adapter, "input": inp})


def _probe(heights: list[int]) -> Any:
    """A probe that answers like the real graph (cells = W/s × H/s) and records the heights it was run at."""

    def run(shape: list[int]) -> list[list[int]]:
        heights.append(shape[2])
        return [[1, (shape[3] // s) * (shape[2] // s), n] for n in (80, 44) for s in (8, 16, 32)]

    return run


SYMBOLIC_OUTPUTS = [Arg(o.name, [1, f"cells_{o.name}", o.shape[2]]) for o in NANODET_OUTPUTS]


def test_dynamic_height_contract_pairs_outputs_by_a_probe_run_at_full_height() -> None:
    heights: list[int] = []
    levels = check_contract(
        _entry(dynamic_height=True),
        [Arg("images", ["batch", 3, "height", 416])],
        SYMBOLIC_OUTPUTS,
        probe=_probe(heights),
    )
    assert heights == [416]
    assert [(lv.stride, lv.grid_w) for lv in levels] == [(8, 52), (16, 26), (32, 13)]


def test_dynamic_height_claim_is_checked() -> None:
    with pytest.raises(ModelError, match="symbolic"):  # the manifest says dynamic, the file has 416
        check_contract(
            _entry(dynamic_height=True),
            [Arg("images", ["b", 3, 416, 416])],
            NANODET_OUTPUTS,
            probe=_probe([]),
        )
    with pytest.raises(ModelError, match="probe"):
        check_contract(_entry(dynamic_height=True), [Arg("images", ["b", 3, "h", 416])], SYMBOLIC_OUTPUTS)


def test_a_free_height_file_may_be_pinned_to_the_square() -> None:
    heights: list[int] = []
    square = _entry(dynamic_height=False)
    levels = check_contract(
        square, [Arg("images", ["b", 3, "h", 416])], SYMBOLIC_OUTPUTS, probe=_probe(heights)
    )
    assert heights == [416] and len(levels) == 3
    narrow = square.model_copy(update={"input": square.input.model_copy(update={"width": 320})})
    with pytest.raises(ModelError, match="manifest says"):  # the width is never free
        check_contract(narrow, [Arg("images", ["b", 3, "h", 416])], SYMBOLIC_OUTPUTS, probe=_probe([]))


def test_dynamic_height_needs_sizes_on_the_stride_grid(tmp_path: Path) -> None:
    raw = _vehicles_raw()
    raw["models"]["vehicles"]["input"].update(width=400, dynamic_height=True)
    with pytest.raises(ModelError, match="multiples of 32"):
        load_manifest(_write(tmp_path, raw))


def test_contract_accepts_the_real_layout_and_dynamic_batch() -> None:
    levels = check_contract(_entry(), [Arg("images", ["batch", 3, 416, 416])], NANODET_OUTPUTS)
    fixed = _entry().model_copy(update={"input": _entry().input.model_copy(update={"dynamic_batch": False})})
    assert len(check_contract(fixed, [Arg("images", [1, 3, 416, 416])], NANODET_OUTPUTS)) == 3
    assert [lv.stride for lv in levels] == [8, 16, 32]


@pytest.mark.parametrize(
    ("inputs", "outputs", "match"),
    [
        ([Arg("images", [1, 3, 320, 320])], NANODET_OUTPUTS, "manifest says"),
        ([Arg("input_1", [1, 3, 416, 416])], NANODET_OUTPUTS, "named 'input_1'"),
        ([Arg("images", [1, 416, 416, 3])], NANODET_OUTPUTS, "manifest says"),
        ([Arg("images", ["batch", 3, 416, 416])], NANODET_OUTPUTS[:5], "NanoDet outputs"),
        ([Arg("images", ["batch", 3, 416, 416])], [Arg("o", [1, 79, 3549])], "NanoDet"),
    ],
)
def test_contract_violations_raise_model_error(inputs: list[Arg], outputs: list[Arg], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        check_contract(_entry(), inputs, outputs)


def test_dynamic_batch_claim_is_checked() -> None:
    entry = _entry()
    assert entry.input.dynamic_batch
    with pytest.raises(ModelError, match="dynamic_batch"):
        check_contract(entry, [Arg("images", [1, 3, 416, 416])], NANODET_OUTPUTS)


def test_yolo_contract() -> None:
    entry = _entry("yolo")
    assert check_contract(entry, [Arg("images", ["b", 3, 416, 416])], [Arg("output0", [1, 84, 3549])]) == []
    with pytest.raises(ModelError, match="YOLO output"):
        check_contract(entry, [Arg("images", ["b", 3, 416, 416])], [Arg("output0", [1, 85, 3549])])
