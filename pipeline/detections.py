"""The one value that flows from detector to rules: ``Detections``, numpy arrays in parallel."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# Canonical labels. Model adapters map their own class names onto these ids; rules only ever see these.
LABELS: tuple[str, ...] = ("vehicle", "person", "bin", "bin_overflow", "litter")
VEHICLE, PERSON, BIN, BIN_OVERFLOW, LITTER = range(len(LABELS))
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def _f32(a: object, shape: tuple[int, ...]) -> FloatArray:
    arr = np.asarray(a, dtype=np.float32)
    return arr.reshape(shape)


@dataclass(frozen=True, slots=True)
class Detections:
    """N detections: ``xyxy`` (N,4) pixels in the source frame, ``confidence`` (N,), ``class_id`` (N,)
    canonical label ids, ``track_id`` (N,) with -1 where untracked."""

    xyxy: FloatArray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    confidence: FloatArray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_id: IntArray = field(default_factory=lambda: np.zeros((0,), np.int64))
    track_id: IntArray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        object.__setattr__(self, "xyxy", _f32(self.xyxy, (n, 4)))
        object.__setattr__(self, "confidence", _f32(self.confidence, (n,)))
        object.__setattr__(self, "class_id", np.asarray(self.class_id, np.int64).reshape(n))
        tid = self.track_id if len(self.track_id) == n else np.full(n, -1)
        object.__setattr__(self, "track_id", np.asarray(tid, np.int64).reshape(n))

    @classmethod
    def empty(cls) -> Detections:
        return cls()

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.int64] | slice) -> Detections:
        return Detections(
            self.xyxy[index], self.confidence[index], self.class_id[index], self.track_id[index]
        )

    def with_labels(self, *names: str) -> Detections:
        ids = [LABEL_IDS[n] for n in names]
        return self[np.isin(self.class_id, ids)]

    def with_tracks(self, track_id: IntArray) -> Detections:
        return Detections(self.xyxy, self.confidence, self.class_id, track_id)

    def scaled(self, sx: float, sy: float) -> Detections:
        """The same detections in a frame ``sx`` times as wide and ``sy`` times as tall (another stream of
        the same view)."""
        xyxy = self.xyxy * np.array([sx, sy, sx, sy], np.float32)
        return Detections(xyxy, self.confidence, self.class_id, self.track_id)

    @property
    def anchors(self) -> FloatArray:
        """Bottom-centre of each box: where a vehicle touches the ground."""
        x = (self.xyxy[:, 0] + self.xyxy[:, 2]) / 2
        return np.stack([x, self.xyxy[:, 3]], axis=1).astype(np.float32)

    @property
    def centers(self) -> FloatArray:
        return np.stack(
            [(self.xyxy[:, 0] + self.xyxy[:, 2]) / 2, (self.xyxy[:, 1] + self.xyxy[:, 3]) / 2], axis=1
        ).astype(np.float32)

    @property
    def sizes(self) -> FloatArray:
        """Geometric mean of width and height, a scale for movement thresholds."""
        w = np.maximum(self.xyxy[:, 2] - self.xyxy[:, 0], 1.0)
        h = np.maximum(self.xyxy[:, 3] - self.xyxy[:, 1], 1.0)
        return np.sqrt(w * h).astype(np.float32)

    def label(self, i: int) -> str:
        return LABELS[int(self.class_id[i])]


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU matrix between boxes ``a`` (N,4) and ``b`` (M,4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return (inter / np.maximum(union, 1e-9)).astype(np.float32)
