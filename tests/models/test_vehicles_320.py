"""``vehicles-320``: the NanoDet-m weights re-shaped to 320×320 (models/build_nanodet.py --input-size 320)
verify against the manifest, compute what the 416 graph computes at 320, and find the vehicles the 416 model
finds."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.detection import OnnxDetector, load_detector
from pipeline.detections import box_iou
from pipeline.manifest import model_entry, verify_model
from tests.pipeline.test_detection import BUS_JPG, MODELS, VTEST_AVI, _require

Image = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def images() -> list[Image]:
    import av
    import cv2

    out: list[Image] = []
    with av.open(str(_require(VTEST_AVI))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in (0, 150):
                out.append(np.asarray(frame.to_ndarray(format="bgr24"), np.uint8))
            if i >= 150:
                break
    bus = cv2.imread(str(_require(BUS_JPG)))
    assert bus is not None
    return [*out, np.asarray(bus, np.uint8)]


@pytest.fixture(scope="module")
def reference() -> OnnxDetector:
    return load_detector("vehicles", MODELS, providers=["cpu"], precision="fp32")


def test_manifest_entry_verifies() -> None:
    verify_model("vehicles-320", MODELS)  # sha256 and input/output contract of every listed file
    small, big = model_entry("vehicles-320", MODELS), model_entry("vehicles", MODELS)
    assert (small.input.width, small.input.height) == (320, 320)
    assert set(small.variants) >= {"int8"}
    # Only the size differs: same classes, labels, decoding and normalisation as the 416 entry.
    assert small.classes == big.classes and small.labels == big.labels and small.head == big.head
    assert small.input.model_copy(update={"width": 416, "height": 416}) == big.input


def test_same_ops_as_the_416_graph_at_320() -> None:
    from models.build_nanodet import check_same_ops

    diff = check_same_ops(MODELS / "vehicles-nanodet-m.onnx", MODELS / "vehicles-nanodet-m-320.onnx", 320)
    assert diff == 0.0


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_finds_the_vehicles_the_416_model_finds(
    precision: str, images: list[Image], reference: OnnxDetector
) -> None:
    # The 8-bit INT8 file found 5 of 7 on a Zen 3 (AVX2) host, where ORT's u8s8 kernels saturate; the 7-bit
    # one cannot (tests/models/test_int8_weights.py), so this runs on every CPU.
    det = load_detector("vehicles-320", MODELS, providers=["cpu"], precision=precision)
    assert det.precision == precision
    assert [(lv.grid_w, lv.grid_h) for lv in det._levels] == [(40, 40), (20, 20), (10, 10)]
    found = total = 0
    for ref, got in zip(reference.detect(images), det.detect(images), strict=True):
        want, have = ref.with_labels("vehicle"), got.with_labels("vehicle")
        total += len(want)
        if len(want) and len(have):
            found += int((box_iou(want.xyxy, have.xyxy).max(axis=1) >= 0.5).sum())
    # vtest: the parked van and car in both frames; the bus photo: the bus and a car.
    assert total >= 5
    assert found == total, f"{precision}: {found}/{total} of the 416 model's vehicles found at 320"
