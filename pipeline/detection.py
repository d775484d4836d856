"""The detector: one ONNX Runtime session per model, shared by all cameras of the process.

``load_detector("vehicles")`` reads ``models/manifest.yaml``, picks the execution providers (TensorRT → CUDA →
OpenVINO → CPU among those installed) and the precision (INT8 on CPU, FP16 on GPU where the manifest lists
such a variant), verifies the file's sha256 and the model's input/output contract, and returns an
``OnnxDetector`` that implements the ``Detector`` protocol. Nothing here downloads anything, and nothing
imports torch, ultralytics or tensorflow.
"""

from __future__ import annotations

import functools
import logging
import platform
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from pipeline.adapters import NanoDetLevel, fit, from_nanodet_output, from_yolo_output, preprocess
from pipeline.detections import Detections
from pipeline.errors import DetectorError, ModelError
from pipeline.manifest import ModelEntry, Precision, check_contract, model_entry, probe_outputs, verify_file

log = logging.getLogger(__name__)

# OpenCV's own thread pool competes with ORT and the decoders for the same few cores; resizes are small.
cv2.setNumThreads(1)

PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)
SHORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
DEFAULT_MAX_BATCH = 8


def cross_camera_batch(detectors: Iterable[object], configured: int | None = None) -> int:
    """How many cameras' frames one detector call takes: ``configured`` when set, else ``DEFAULT_MAX_BATCH``
    when any detector runs on a GPU provider and 1 on CPU, where a batch costs what its frames cost one by
    one (measured: ``batch_8`` in ``pingan bench cameras --levers``)."""
    if configured is not None:
        return configured
    on_gpu = any((getattr(d, "providers", None) or [""])[0] in GPU_PROVIDERS for d in detectors)
    return DEFAULT_MAX_BATCH if on_gpu else 1


def choose_providers(
    requested: Sequence[str] | None = None, available: Sequence[str] | None = None
) -> list[str]:
    """Requested providers (short or full names) in the given order, else TensorRT → CUDA → OpenVINO → CPU,
    keeping only those this onnxruntime build has. CPU always ends the list as the fallback."""
    available = list(ort.get_available_providers() if available is None else available)
    wanted = [SHORT_NAMES.get(p.lower(), p) for p in requested] if requested else list(PROVIDER_ORDER)
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if requested and missing:
        log.warning("execution provider(s) %s not available here (have %s)", missing, available)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first ``flags`` line of /proc/cpuinfo text, as a set (empty where there is none)."""
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "flags:")
    return set(line.split(":", 1)[1].split())


def int8_without_saturation(cpuinfo: str, machine: str) -> bool:
    """Whether ONNX Runtime's INT8 kernels compute exactly on this CPU. On x86 without VNNI (AVX2, or
    AVX-512 without VNNI) they multiply u8×s8 with VPMADDUBSW, whose 16-bit sums saturate (ORT's own
    quantization notes): on a Zen 3 box the INT8 320-wide model lost 2 of 7 vehicles the 416 model finds
    (tests/models/test_vehicles_320.py), exact with VNNI. Other architectures have no such path."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    flags = cpu_flags(cpuinfo)
    return "avx512_vnni" in flags or "avx_vnni" in flags


@functools.cache
def this_cpu_int8_exact() -> bool:
    """``int8_without_saturation`` for this machine (True where /proc/cpuinfo cannot be read)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return int8_without_saturation(cpuinfo, platform.machine())


def choose_precision(entry: ModelEntry, providers: Sequence[str], precision: str) -> Precision:
    """``auto``: FP16 on a GPU provider, INT8 otherwise, where the manifest lists that variant; else FP32."""
    if precision != "auto":
        if precision not in ("fp32", "fp16", "int8"):
            raise ModelError(f"precision {precision!r}: expected auto, fp32, fp16 or int8")
        return precision  # type: ignore[return-value]
    on_gpu = providers[0] in GPU_PROVIDERS
    preferred: Precision = "fp16" if on_gpu else "int8"
    return preferred if preferred in entry.variants else "fp32"


def _provider_options(
    providers: Sequence[str], precision: Precision, entry: ModelEntry | None = None, max_batch: int = 1
) -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            # Engines take minutes to build; cache them across restarts.
            cache = Path(tempfile.gettempdir()) / "pingan-trt-cache"
            trt: dict[str, Any] = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": precision == "fp16",
            }
            if entry is not None and entry.input.dynamic_batch:
                # One engine for every batch size up to max_batch, instead of a rebuild per new size.
                i = entry.input
                shape = f"{i.name}:{{}}x3x{{}}x{i.width}"
                pre = entry.preprocess()
                # A dynamic height ranges over every multiple of the stride; 16:9 frames are the common case.
                opt_h = pre.rows(fit(1920, 1080, pre))
                trt["trt_profile_min_shapes"] = shape.format(
                    1, pre.height_multiple if i.dynamic_height else i.height
                )
                trt["trt_profile_opt_shapes"] = shape.format(max_batch, opt_h)
                trt["trt_profile_max_shapes"] = shape.format(max_batch, i.height)
            options.append(trt)
        else:
            options.append({})
    return options


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads next to video decoders made both 1.75× slower on this box (DESIGN §6).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class OnnxDetector:
    """Runs one model on batches of BGR frames; thread-safe (ORT sessions are)."""

    def __init__(
        self,
        name: str,
        entry: ModelEntry,
        session: ort.InferenceSession,
        sha256: str,
        precision: Precision,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.name = name
        self.sha256: str | None = sha256
        self.entry = entry
        self.precision = precision
        self.session = session
        self.providers: list[str] = session.get_providers()
        inp = session.get_inputs()[0]
        self._input = inp.name
        self._outputs = [o.name for o in session.get_outputs()]
        # A model exported with a fixed batch of 1 is looped over; a dynamic batch dim is used in chunks.
        self.max_batch = max_batch if not isinstance(inp.shape[0], int) or inp.shape[0] < 0 else inp.shape[0]
        self._levels: list[NanoDetLevel] = check_contract(
            entry, session.get_inputs(), session.get_outputs(), probe=probe_outputs(session)
        )
        self._pre = entry.preprocess()
        self._class_map = entry.class_map()

    def detect(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        results: list[Detections] = []
        for start in range(0, len(images), self.max_batch):
            results.extend(self._detect_batch(images[start : start + self.max_batch]))
        return results

    def _detect_batch(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DetectorError(
                    f"{self.name}: expected H×W×3 uint8 BGR images, got {image.shape} {image.dtype}"
                )
        blob, resizes = preprocess(images, self._pre)
        try:
            outputs = self.session.run(self._outputs, {self._input: blob})
        except Exception as err:  # ORT raises its own (non-Python-hierarchy) error types
            raise DetectorError(f"{self.name}: inference failed: {err}") from err
        e = self.entry
        if e.adapter == "yolo":
            return from_yolo_output(
                outputs[0],
                self._class_map,
                resizes,
                score_threshold=e.score_threshold,
                nms_iou=e.nms_iou,
                max_detections=e.max_detections,
            )
        assert e.head is not None
        return [
            from_nanodet_output(
                [o[i] for o in outputs],
                self._levels,
                self._class_map,
                resize,
                reg_max=e.head.reg_max,
                cell_offset=e.head.cell_offset,
                score_threshold=e.score_threshold,
                nms_iou=e.nms_iou,
                max_detections=e.max_detections,
            )
            for i, resize in enumerate(resizes)
        ]

    def __repr__(self) -> str:
        return f"OnnxDetector({self.name!r}, {self.precision}, {self.providers[0]}, batch≤{self.max_batch})"


def load_detector(
    name: str,
    models_dir: Path = Path("models"),
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 1,
    precision: str = "auto",
    max_batch: int = DEFAULT_MAX_BATCH,
) -> OnnxDetector:
    """Load model ``name`` from ``models_dir/manifest.yaml``; raises ``ModelError`` if it is missing,
    altered, or does not match its manifest entry."""
    entry = model_entry(name, models_dir)
    chosen = choose_providers(providers)
    prec = choose_precision(entry, chosen, precision)
    session, sha256 = _open(entry, Path(models_dir), chosen, prec, intra_op_threads, max_batch)
    actual = session.get_providers()
    if precision == "auto" and chosen[0] in GPU_PROVIDERS and actual[0] not in GPU_PROVIDERS:
        # The GPU provider is installed but did not come up (no device, CUDA libraries missing): ORT fell
        # back to the CPU, where the CPU's precision choice (INT8) is the right one, not the GPU's.
        log.warning("detector %s: %s did not start, running on %s", name, chosen[0], actual[0])
        prec = choose_precision(entry, actual, precision)
        session, sha256 = _open(entry, Path(models_dir), actual, prec, intra_op_threads, max_batch)
    detector = OnnxDetector(name, entry, session, sha256, prec, max_batch)
    if (
        prec == "int8"
        and entry.variants["int8"].weight_bits == 8
        and detector.providers[0] == "CPUExecutionProvider"
        and not this_cpu_int8_exact()
    ):
        log.warning(
            "detector %s: INT8 with 8-bit weights on a CPU without VNNI, where ONNX Runtime's INT8 kernels "
            "saturate and can lose detections; requantize with 7-bit weights (models/quantize.py) or set "
            "precision: fp32",
            name,
        )
    log.info("detector %s: %s, %s on %s", name, entry.file_for(prec)[0], prec, detector.providers)
    return detector


def _open(
    entry: ModelEntry,
    models_dir: Path,
    providers: Sequence[str],
    prec: Precision,
    threads: int,
    max_batch: int,
) -> tuple[ort.InferenceSession, str]:
    file, sha256 = entry.file_for(prec)
    path = models_dir / file
    verify_file(path, sha256)
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(threads),
            providers=list(providers),
            provider_options=_provider_options(providers, prec, entry, max_batch),
        )
    except Exception as err:  # ORT's exceptions are not PinganErrors; the caller needs one
        raise ModelError(f"{path}: ONNX Runtime cannot load it: {err}") from None
    return session, sha256
