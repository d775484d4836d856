"""The ONNX Runtime detector: providers, precision, real inference on real footage, import hygiene."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from pipeline.adapters import preprocess
from pipeline.detection import (
    DEFAULT_MAX_BATCH,
    OnnxDetector,
    choose_precision,
    choose_providers,
    cross_camera_batch,
    load_detector,
)
from pipeline.detections import BIN, PERSON, VEHICLE, box_iou
from pipeline.errors import DetectorError, ModelError
from pipeline.manifest import Variant, load_manifest
from pipeline.protocols import Detector

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
# Real footage from Debian's opencv-doc package (Apache-2.0/BSD), never downloaded by the tests.
BUS_JPG = Path("/usr/share/doc/opencv-doc/opencv4/html/pexels_double_decker_bus.jpg")
VTEST_AVI = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def _require(path: Path) -> Path:
    """Skip where opencv-doc is not installed, but fail under CI, which must have it."""
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing (install Debian's opencv-doc; CI requires it)")
        pytest.skip(f"{path} not installed (Debian opencv-doc)")
    return path


def _bus() -> npt.NDArray[np.uint8]:
    import cv2

    image = cv2.imread(str(_require(BUS_JPG)))
    assert image is not None
    return np.asarray(image, np.uint8)


def _vtest_frame0() -> npt.NDArray[np.uint8]:
    import av

    with av.open(str(_require(VTEST_AVI))) as container:
        frame = next(container.decode(video=0))
        return np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)


PRECISIONS = ["fp32", *load_manifest(MODELS).models["vehicles"].variants]


@pytest.fixture(scope="module", params=PRECISIONS)
def detector(request: pytest.FixtureRequest) -> OnnxDetector:
    """Every shipped file of the model must pass the same real-footage checks."""
    return load_detector("vehicles", MODELS, providers=["cpu"], precision=request.param)


# ---- providers and precision ----------------------------------------------------------------------------

ALL = [
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
]


def test_provider_order_prefers_tensorrt_then_cuda_then_openvino() -> None:
    assert choose_providers(None, list(reversed(ALL))) == ALL
    assert choose_providers(None, ["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_requested_providers_override_and_cpu_is_the_fallback() -> None:
    assert choose_providers(["openvino", "cuda"], ALL) == [
        "OpenVINOExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(["cuda"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["cpu"], ALL) == ["CPUExecutionProvider"]


def test_auto_precision_picks_int8_on_cpu_fp16_on_gpu_when_listed() -> None:
    entry = load_manifest(MODELS).models["vehicles"]
    bare = entry.model_copy(update={"variants": {}})
    assert choose_precision(bare, ["CPUExecutionProvider"], "auto") == "fp32"
    assert choose_precision(bare, ["CUDAExecutionProvider"], "auto") == "fp32"
    v = Variant(file="x.onnx", sha256="0" * 64)
    both = entry.model_copy(update={"variants": {"int8": v, "fp16": v}})
    assert choose_precision(both, ["CPUExecutionProvider"], "auto") == "int8"
    assert choose_precision(both, ["OpenVINOExecutionProvider", "CPUExecutionProvider"], "auto") == "int8"
    assert choose_precision(both, ["CUDAExecutionProvider", "CPUExecutionProvider"], "auto") == "fp16"
    assert choose_precision(both, ["CPUExecutionProvider"], "fp32") == "fp32"


def test_auto_on_cpu_loads_the_int8_variant_when_listed() -> None:
    entry = load_manifest(MODELS).models["vehicles"]
    det = load_detector("vehicles", MODELS, providers=["cpu"])
    assert det.precision == ("int8" if "int8" in entry.variants else "fp32")


class _On:
    def __init__(self, *providers: str) -> None:
        self.providers = list(providers)


def test_cameras_are_batched_on_a_gpu_provider_only() -> None:
    cpu, cuda = _On("CPUExecutionProvider"), _On("CUDAExecutionProvider")
    trt = _On("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert cross_camera_batch([cpu]) == 1
    assert cross_camera_batch([cpu, cuda]) == DEFAULT_MAX_BATCH > 1
    assert cross_camera_batch([trt]) == DEFAULT_MAX_BATCH
    assert cross_camera_batch([object()]) == 1  # a detector that names no provider: as on CPU
    assert cross_camera_batch([cpu], configured=4) == 4 and cross_camera_batch([trt], configured=1) == 1


def test_tensorrt_gets_a_batch_profile_and_fp16_flag() -> None:
    from pipeline.detection import _provider_options

    entry = load_manifest(MODELS).models["vehicles"]
    trt, cpu = _provider_options(["TensorrtExecutionProvider", "CPUExecutionProvider"], "fp16", entry, 8)
    assert cpu == {} and trt["trt_fp16_enable"] is True
    # the height is free: one engine from a 32-row strip up to the square, tuned for 16:9 (416×256)
    assert trt["trt_profile_min_shapes"] == "images:1x3x32x416"
    assert trt["trt_profile_opt_shapes"] == "images:8x3x256x416"
    assert trt["trt_profile_max_shapes"] == "images:8x3x416x416"


def test_a_16_9_frame_runs_at_its_own_aspect_and_keeps_the_vehicles(detector: OnnxDetector) -> None:
    """The shipped model's height is free: a 1080p frame goes in as 416×256 (not stretched to 416×416) and
    vtest's parked van and car come back in 1080p pixels where the 4:3 frame has them."""
    assert detector.entry.input.dynamic_height
    crop = np.ascontiguousarray(_vtest_frame0()[:432])  # 768×432: a 16:9 camera's aspect
    wide = cv2.resize(crop, (1920, 1080))
    blob, _ = preprocess([wide], detector.entry.preprocess())
    assert blob.shape == (1, 3, 256, 416)
    want = detector.detect([crop])[0]
    want = want[want.class_id == VEHICLE]
    assert len(want) >= 2  # the parked van and car
    cars = detector.detect([wide])[0]
    cars = cars[cars.class_id == VEHICLE]
    for box in want.xyxy * 2.5:
        assert box_iou(box[None], cars.xyxy).max() > 0.8


def test_unlisted_precision_is_a_model_error(tmp_path: Path) -> None:
    import yaml

    raw = yaml.safe_load((MODELS / "manifest.yaml").read_text(encoding="utf-8"))
    raw["models"]["vehicles"]["variants"] = {}
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ModelError, match="no fp16 variant"):
        load_detector("vehicles", tmp_path, providers=["cpu"], precision="fp16")


def test_altered_model_fails_at_load(tmp_path: Path) -> None:
    shutil.copy(MODELS / "manifest.yaml", tmp_path / "manifest.yaml")
    for f in MODELS.glob("vehicles-*.onnx"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        (tmp_path / f.name).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_detector("vehicles", tmp_path, providers=["cpu"])


# ---- the detector ---------------------------------------------------------------------------------------


def test_detector_implements_protocol(detector: OnnxDetector) -> None:
    assert isinstance(detector, Detector)
    assert detector.name == "vehicles"
    assert detector.sha256 == load_manifest(MODELS).models["vehicles"].file_for(detector.precision)[1]
    assert detector.providers[0] == "CPUExecutionProvider"
    assert detector.detect([]) == []


def test_finds_the_double_decker_bus(detector: OnnxDetector) -> None:
    image = _bus()
    (d,) = detector.detect([image])
    vehicles = d.with_labels("vehicle")
    assert len(vehicles) >= 1
    # The bus spans about x 62–465, y 113–388 of the 546×413 photo.
    iou = box_iou(vehicles.xyxy, np.array([[62, 113, 465, 388]], np.float32))[:, 0]
    best = int(np.argmax(iou))
    assert iou[best] > 0.7 and vehicles.confidence[best] > 0.6
    assert d.xyxy[:, [0, 2]].max() <= image.shape[1] and d.xyxy[:, [1, 3]].max() <= image.shape[0]


def test_finds_parked_vehicles_in_vtest_frame0(detector: OnnxDetector) -> None:
    (d,) = detector.detect([_vtest_frame0()])
    vehicles = d.with_labels("vehicle")
    # The van and the car parked at the top right of the plaza (x > 600, y < 120 in the 768×576 frame).
    parked = vehicles[(vehicles.centers[:, 0] > 600) & (vehicles.centers[:, 1] < 120)]
    assert len(parked) >= 2
    assert (d.class_id == PERSON).sum() >= 2  # and pedestrians, labelled person
    assert set(d.class_id.tolist()) <= {VEHICLE, PERSON}


def test_batch_equals_one_by_one(detector: OnnxDetector) -> None:
    images = [_bus(), _vtest_frame0()]
    batched = detector.detect(images)
    single = [detector.detect([im])[0] for im in images]
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_array_equal(a.class_id, b.class_id)


def test_bad_image_is_a_detector_error(detector: OnnxDetector) -> None:
    with pytest.raises(DetectorError, match="uint8 BGR"):
        detector.detect([np.zeros((10, 10), np.uint8)])


def test_import_does_not_pull_training_frameworks() -> None:
    code = (
        "import sys, pipeline.detection, pipeline.adapters, pipeline.manifest\n"
        "heavy = sorted(m for m in ('torch', 'ultralytics', 'tensorflow') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# ---- a YOLO-layout model with a dynamic batch, end to end -----------------------------------------------


def _toy_yolo(path: Path, size: int = 64) -> None:
    """An ONNX graph that outputs the same [b, 4+2, 3] prediction for every image of a dynamic batch:
    one box (cx 32, cy 16, w 16, h 8) of class 0 at 0.9, a duplicate at 0.6, a class-1 box at 0.1."""
    import onnx
    from onnx import TensorProto, helper

    pred = np.array(
        [[32, 33, 10], [16, 16, 10], [16, 16, 4], [8, 8, 4], [0.9, 0.6, 0.0], [0.0, 0.0, 0.1]], np.float32
    )[None]
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "rest"], ["out_shape"], axis=0),
        helper.make_node("Expand", ["pred", "out_shape"], ["output0"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(pred, "pred"),
        onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
        onnx.numpy_helper.from_array(np.array([6, 3], np.int64), "rest"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 6, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_yolo_model_with_dynamic_batch_end_to_end(tmp_path: Path) -> None:
    import yaml

    from pipeline.manifest import sha256_file

    _toy_yolo(tmp_path / "toy.onnx")
    entry = {
        "file": "toy.onnx",
        "sha256": sha256_file(tmp_path / "toy.onnx"),
        "input": {"width": 64, "height": 64, "color": "RGB", "letterbox": True},
        "adapter": "yolo",
        "classes": ["bin", "bin_overflow"],
        "labels": {"bin": "bin", "bin_overflow": "bin_overflow"},
        "score_threshold": 0.25,
        "provenance": {"command": "tests"},
        "licence": "test",
    }
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump({"models": {"toy": entry}}), encoding="utf-8")
    det = load_detector("toy", tmp_path, providers=["cpu"], max_batch=2)
    assert det.max_batch == 2 and det.precision == "fp32"
    images = [np.zeros((h, w, 3), np.uint8) for w, h in [(64, 64), (128, 64), (128, 128)]]
    results = det.detect(images)  # two calls: a batch of 2, then 1
    assert len(results) == 3
    # Model box (24, 12)-(40, 20). 128×64 is scaled by 0.5 and padded by 16 rows (y1 = (12-16)/0.5 = -8,
    # clipped to 0); 128×128 is scaled by 0.5.
    expected = [[24, 12, 40, 20], [48, 0, 80, 8], [48, 24, 80, 40]]
    for d, box in zip(results, expected, strict=True):
        assert d.class_id.tolist() == [BIN]  # the duplicate is suppressed, the 0.1 box is under threshold
        np.testing.assert_allclose(d.xyxy[0], box, atol=1e-4)


def test_gpu_provider_that_does_not_start_falls_back_to_cpu_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CUDA listed by onnxruntime but unusable: ORT runs on CPU, so auto precision must not stay on FP16."""
    import pipeline.detection as detection

    gpu_first = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(detection, "choose_providers", lambda requested=None: gpu_first)
    real = detection.ort.InferenceSession

    def cpu_only(path: str, sess_options: object = None, providers: object = None, **kw: object) -> object:
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(detection.ort, "InferenceSession", cpu_only)
    entry = load_manifest(MODELS).models["vehicles"]
    det = load_detector("vehicles", MODELS)
    assert det.providers[0] == "CPUExecutionProvider"
    assert det.precision == ("int8" if "int8" in entry.variants else "fp32")


def test_int8_is_exact_only_with_vnni_on_x86() -> None:
    from pipeline.detection import int8_without_saturation

    zen3 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma sha_ni vaes\n"
    zen4 = "flags\t\t: fpu avx avx2 avx512f avx512bw avx512_vnni\n"
    alder_lake = "flags\t\t: fpu avx avx2 avx_vnni\n"
    assert not int8_without_saturation(zen3, "x86_64")
    assert int8_without_saturation(zen4, "x86_64")
    assert int8_without_saturation(alder_lake, "x86_64")
    assert int8_without_saturation("", "aarch64")  # no u8s8 saturation path on Arm


def test_cameras_batched_by_the_scheduler_get_what_they_get_alone(detector: OnnxDetector) -> None:
    """Three cameras' frames in one call — a 16:9 1080p frame padded to the height of two 4:3 ones — each
    come back with the detections of its frame run alone."""
    import threading

    from pipeline.inference import InferenceScheduler
    from pipeline.protocols import Frame

    wide = cv2.resize(np.ascontiguousarray(_vtest_frame0()[:432]), (1920, 1080))
    images = [wide, _vtest_frame0(), _bus()]
    alone = [detector.detect([im])[0] for im in images]
    stop = threading.Event()
    sched = InferenceScheduler({"m": detector}, stop, max_batch=3)
    got: dict[int, object] = {}
    done = threading.Event()

    def result(k: int, dets: object) -> None:
        got[k] = dets
        if len(got) == 3:
            done.set()

    for k in range(3):
        sched.register(f"cam{k}", ["m"], lambda f, d, k=k: result(k, d))
        sched.submit(f"cam{k}", Frame(images[k], ts=1000.0, index=0))
    calls = []
    real = detector.detect
    detector.detect = lambda ims: (calls.append(len(ims)), real(ims))[1]  # type: ignore[method-assign]
    sched.start()
    try:
        assert done.wait(30)
    finally:
        del detector.detect
        stop.set()
        sched.join(2)
    assert calls == [3]
    for k, want in enumerate(alone):
        d = got[k]
        assert isinstance(d, type(want)) and len(d) == len(want) >= 1, (k, len(d), len(want))
        # the same boxes; not to the bit: the wide frame's padding rows reach the bottom cells' receptive
        # fields, and INT8 rounds differently there (≤ 2 px at 1080p)
        np.testing.assert_array_equal(d.class_id, want.class_id)
        assert np.diag(box_iou(d.xyxy, want.xyxy)).min() > 0.95
        np.testing.assert_allclose(d.confidence, want.confidence, atol=0.03)
