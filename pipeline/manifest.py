"""``models/manifest.yaml``: what each shipped model is, where it came from, and how to feed and read it.

Validated once (pydantic, unknown keys rejected). ``verify_file`` and ``check_contract`` run when a detector
is loaded, so an altered file or a model whose inputs/outputs do not match its entry fails at startup with a
``ModelError`` that says what differs, instead of producing wrong boxes later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.adapters import NanoDetLevel, Preprocess, nanodet_levels
from pipeline.detections import LABEL_IDS, IntArray
from pipeline.errors import ModelError

MANIFEST = "manifest.yaml"
Precision = Literal["fp32", "fp16", "int8"]
Sha256 = Field(pattern=r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str = "images"  # the ONNX input's name (ultralytics exports and our NanoDet build both use it)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["BGR", "RGB"]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # 0–255 pixel units, in the model's channel order
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    letterbox: bool
    pad_value: int = Field(default=114, ge=0, le=255)
    # True: the model's batch dim is symbolic (checked at load); lets TensorRT build one engine for 1..max.
    dynamic_batch: bool = False
    # True: the height dim is symbolic and ``height`` is the most it is given. A frame keeps its aspect at
    # ``width`` wide and is padded only to the next multiple of the coarsest stride (16:9 at 416: 416×256).
    dynamic_height: bool = False


class NanoDetHead(_Strict):
    """Decoding constants of a NanoDet (GFL) head."""

    strides: list[int] = [8, 16, 32]
    reg_max: int = 10  # distance bins per side = reg_max + 1
    cell_offset: float = 0.5  # cell point = (x + offset) * stride


class Provenance(_Strict):
    package: str | None = None
    version: str | None = None
    command: str
    source: str | None = None
    notes: str | None = None


class Variant(_Strict):
    file: str
    sha256: str = Sha256
    # INT8 only: 7 when the weights use 7 bits (|w| ≤ 64, ORT's reduce_range), which x86 CPUs without VNNI
    # compute exactly; 8-bit weights saturate there (pipeline/detection.py, int8_without_saturation).
    weight_bits: Literal[7, 8] = 8
    evaluation: dict[str, Any] = {}


class ModelEntry(_Strict):
    file: str
    sha256: str = Sha256
    input: InputSpec
    adapter: Literal["nanodet", "yolo"]
    classes: list[str] = Field(min_length=1)
    labels: dict[str, str]  # model class name → canonical label; classes not listed are dropped
    score_threshold: float = Field(default=0.35, gt=0, lt=1)
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    max_detections: int = Field(default=100, gt=0)
    head: NanoDetHead | None = None
    provenance: Provenance
    licence: str
    evaluation: dict[str, Any] = {}
    variants: dict[Literal["fp16", "int8"], Variant] = {}

    @field_validator("labels")
    @classmethod
    def _canonical(cls, labels: dict[str, str]) -> dict[str, str]:
        bad = sorted(v for v in labels.values() if v not in LABEL_IDS)
        if bad:
            raise ValueError(f"unknown canonical label(s) {bad}; allowed: {sorted(LABEL_IDS)}")
        return labels

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        unknown = sorted(set(self.labels) - set(self.classes))
        if unknown:
            raise ValueError(f"labels name classes the model does not have: {unknown}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        if self.adapter == "nanodet" and self.head is None:
            raise ValueError("adapter nanodet needs a head: {strides, reg_max, cell_offset}")
        m = self.height_multiple()
        if self.input.dynamic_height and (self.input.width % m or self.input.height % m):
            raise ValueError(f"dynamic_height: input width and height must be multiples of {m} (the stride)")
        return self

    def height_multiple(self) -> int:
        """What a dynamic input height is rounded up to: the coarsest stride of the head (YOLO: 32)."""
        return max(self.head.strides) if self.head is not None else 32

    def class_map(self) -> IntArray:
        """Model class index → canonical label id, -1 where the class is dropped."""
        return np.array([LABEL_IDS.get(self.labels.get(c, ""), -1) for c in self.classes], np.int64)

    def preprocess(self) -> Preprocess:
        i = self.input
        return Preprocess(
            i.width,
            i.height,
            mean=i.mean,
            std=i.std,
            rgb=i.color == "RGB",
            letterbox=i.letterbox,
            pad_value=i.pad_value,
            dynamic_height=i.dynamic_height,
            height_multiple=self.height_multiple(),
        )

    def file_for(self, precision: Precision) -> tuple[str, str]:
        """(file, sha256) of the requested precision; ModelError if the manifest lists no such variant."""
        if precision == "fp32":
            return self.file, self.sha256
        variant = self.variants.get(precision)
        if variant is None:
            listed = ["fp32", *self.variants]
            raise ModelError(f"{self.file}: no {precision} variant in the manifest (listed: {listed})")
        return variant.file, variant.sha256


class Manifest(_Strict):
    models: dict[str, ModelEntry]


def load_manifest(models_dir: Path) -> Manifest:
    path = Path(models_dir) / MANIFEST
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelError(f"{path}: cannot read the model manifest ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ModelError(f"{path}: not valid YAML: {err}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ModelError(f"{path}: invalid model manifest\n" + "\n".join(lines)) from None


def model_entry(name: str, models_dir: Path) -> ModelEntry:
    manifest = load_manifest(models_dir)
    entry = manifest.models.get(name)
    if entry is None:
        raise ModelError(
            f"model {name!r} is not in {Path(models_dir) / MANIFEST} (has {sorted(manifest.models)})"
        )
    return entry


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, sha256: str) -> None:
    """The file exists and is the one the manifest pins."""
    if not path.is_file():
        raise ModelError(
            f"{path}: model file missing (build it with the command in the manifest's provenance)"
        )
    actual = sha256_file(path)
    if actual != sha256:
        raise ModelError(f"{path}: sha256 {actual} does not match the manifest ({sha256}); file altered?")


class _Arg(Protocol):
    """What ONNX Runtime's ``NodeArg`` offers (name, shape with ints or symbolic dims)."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[Any]: ...


def _dynamic(dim: object) -> bool:
    return not isinstance(dim, int) or dim < 0


def check_contract(
    entry: ModelEntry,
    inputs: Sequence[_Arg],
    outputs: Sequence[_Arg],
    where: str = "",
    probe: Callable[[list[int]], list[list[Any]]] | None = None,
) -> list[NanoDetLevel]:
    """Check the model's inputs/outputs against its entry; returns the NanoDet layout (empty for YOLO).

    A model with a dynamic height has symbolic output sizes: ``probe(input_shape)`` runs it once on a blank
    input of its full height and returns the real output shapes (required then for NanoDet)."""
    where = where or entry.file
    if len(inputs) != 1:
        raise ModelError(f"{where}: expected one input, got {[i.name for i in inputs]}")
    if inputs[0].name != entry.input.name:
        raise ModelError(f"{where}: input is named {inputs[0].name!r}, manifest says {entry.input.name!r}")
    shape = list(inputs[0].shape)
    dyn_h = entry.input.dynamic_height
    want: list[Any] = [3, "(symbolic)" if dyn_h else entry.input.height, entry.input.width]
    # A file with a free height also runs at a fixed one: the manifest may pin it (a square input).
    height_ok = len(shape) == 4 and (_dynamic(shape[2]) or (not dyn_h and shape[2] == entry.input.height))
    if len(shape) != 4 or not height_ok or [shape[1], shape[3]] != [3, entry.input.width]:
        raise ModelError(
            f"{where}: input {inputs[0].name} is {shape}, manifest says [batch, {', '.join(map(str, want))}]"
        )
    if not (_dynamic(shape[0]) or shape[0] >= 1):
        raise ModelError(f"{where}: input {inputs[0].name} has batch dim {shape[0]}")
    if entry.input.dynamic_batch and not _dynamic(shape[0]):
        raise ModelError(f"{where}: batch dim is fixed ({shape[0]}), manifest says dynamic_batch: true")
    out_shapes = [list(o.shape) for o in outputs]
    nc = len(entry.classes)
    if entry.adapter == "yolo":
        if len(outputs) != 1 or len(out_shapes[0]) != 3 or out_shapes[0][1] != 4 + nc:
            raise ModelError(f"{where}: YOLO output should be one [batch, {4 + nc}, N], got {out_shapes}")
        return []
    if any(len(sh) >= 2 and _dynamic(sh[-2]) for sh in out_shapes):  # cells follow a free height
        if probe is None:
            raise ModelError(f"{where}: NanoDet outputs with a free cell count need a probe run to pair them")
        try:
            out_shapes = probe([1, 3, entry.input.height, entry.input.width])
        except Exception as err:  # ORT's own error types: the model cannot run at its declared size
            raise ModelError(f"{where}: a probe run at {entry.input.height} rows failed: {err}") from None
    assert entry.head is not None  # enforced by the entry's validator
    try:
        return nanodet_levels(
            out_shapes, (entry.input.width, entry.input.height), entry.head.strides, nc, entry.head.reg_max
        )
    except ValueError as err:
        raise ModelError(f"{where}: NanoDet outputs {out_shapes} break the manifest: {err}") from None


def verify_model(name: str, models_dir: Path) -> None:
    """Check every file of a model (fp32 and listed variants): sha256 and input/output contract."""
    import onnxruntime as ort  # only here: loading the manifest must stay light

    entry = model_entry(name, models_dir)
    files = [(entry.file, entry.sha256)] + [(v.file, v.sha256) for v in entry.variants.values()]
    for file, sha in files:
        path = Path(models_dir) / file
        verify_file(path, sha)
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for unreadable graphs
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {err}") from None
        check_contract(entry, session.get_inputs(), session.get_outputs(), str(path), probe_outputs(session))


def probe_outputs(session: Any) -> Callable[[list[int]], list[list[Any]]]:
    """A ``check_contract`` probe: run ``session`` once on a blank float32 input of the given shape."""

    def run(shape: list[int]) -> list[list[Any]]:
        blank = np.zeros(shape, np.float32)
        return [list(o.shape) for o in session.run(None, {session.get_inputs()[0].name: blank})]

    return run
