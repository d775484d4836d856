"""Chinese licence-plate reading for police evidence.

- :func:`is_valid_plate` — the formats of GA 36: blue / yellow (7 chars: province hanzi, issuing-authority
  letter, 5 letters-or-digits; letters never I or O), the same with a special last hanzi (学警挂港澳领试超),
  and new-energy green (8 chars: province, letter, then ``D|F`` + letter-or-digit + 4 digits for small
  cars, or 5 digits + ``D|F`` for large vehicles).
- :func:`normalize_plate` — cleans OCR output (spaces, the separator dot, full-width forms, lower case) and
  fixes the usual confusions by position (``O→0``, ``I→1`` where a digit may stand, ``0→D``/``8→B``… where
  only a letter may stand).
- :func:`vote` — combines readings of one vehicle across frames into one text.
- :class:`PlateReader` — PP-OCRv4 (Chinese) via ``rapidocr-onnxruntime``, imported lazily: without the package
  the runtime still works and reports "plate reading unavailable".
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, no O
DIGITS = "0123456789"
ALNUM = LETTERS + DIGITS
SPECIAL_SUFFIX = "学警挂港澳领试超"

_P, _L, _A = f"[{PROVINCES}]", f"[{LETTERS}]", f"[{ALNUM}]"
_STANDARD = re.compile(rf"^{_P}{_L}{_A}{{5}}$")
_SPECIAL = re.compile(rf"^{_P}{_L}{_A}{{4}}[{SPECIAL_SUFFIX}]$")
_NEV_SMALL = re.compile(rf"^{_P}{_L}[DF]{_A}[0-9]{{4}}$")
_NEV_LARGE = re.compile(rf"^{_P}{_L}[0-9]{{5}}[DF]$")

# Position classes: P province, L letter, A letter-or-digit, D digit, E new-energy D/F, S special hanzi.
_LAYOUTS: tuple[str, ...] = ("PLAAAAA", "PLEADDDD", "PLDDDDDE", "PLAAAAS")

_TO_LETTER = dict(zip("08526471OI", "DBSZGATTDJ", strict=True))
_TO_DIGIT = dict(zip("ODQUILJTZSBGA", "0000111725864", strict=True))
_TO_ALNUM = {"O": "0", "I": "1"}
_TO_NEV = {"0": "D", "O": "D", "Q": "D", "E": "F", "P": "F"}
_DROP = re.compile(r"[\s·•・.\-_:：,，'\"`|]")


def is_valid_plate(text: str) -> bool:
    """True when ``text`` is a well-formed Chinese civil plate (see module doc). Exact: no normalisation."""
    return bool(
        _STANDARD.match(text) or _NEV_SMALL.match(text) or _NEV_LARGE.match(text) or _SPECIAL.match(text)
    )


def clean_plate(text: str) -> str:
    """Full-width → half-width, upper case, separators and spaces removed."""
    t = unicodedata.normalize("NFKC", text).upper()
    return _DROP.sub("", t)


def _apply(text: str, layout: str) -> str:
    out = []
    for ch, cls in zip(text, layout, strict=True):
        if cls == "L":
            ch = _TO_LETTER.get(ch, ch)
        elif cls == "D":
            ch = _TO_DIGIT.get(ch, ch)
        elif cls == "A":
            ch = _TO_ALNUM.get(ch, ch)
        elif cls == "E":
            ch = _TO_NEV.get(ch, ch)
        out.append(ch)
    return "".join(out)


def normalize_plate(text: str) -> str:
    """The valid plate the OCR text most likely means, or the cleaned text when no layout fits.

    Tries each layout of the text's length in the order standard → new-energy small → large → special and
    keeps the first that is valid after position-wise confusion fixes. An already valid text is returned as
    is.
    """
    t = clean_plate(text)
    if is_valid_plate(t):
        return t
    for layout in _LAYOUTS:
        if len(layout) == len(t):
            cand = _apply(t, layout)
            if is_valid_plate(cand):
                return cand
    return t


class PlateReading(NamedTuple):
    text: str
    confidence: float


def vote(readings: Sequence[tuple[str, float]]) -> PlateReading | None:
    """One plate text from several readings ``(text, confidence)`` of the same vehicle (e.g. across frames).

    Readings are normalised; only valid ones count (None when there is none). The length with the largest
    summed confidence wins; then each position takes the character with the largest summed confidence. If that
    per-character result is not a valid plate, the whole string with the largest summed confidence is taken.
    The confidence is the *weakest position's* support: min over positions of (sum of confidences agreeing
    with the chosen character) / (number of readings of that length) — equal to the mean confidence when all
    agree, lower the more they disagree.
    """
    valid = [(normalize_plate(t), float(c)) for t, c in readings]
    valid = [(t, min(1.0, max(0.0, c))) for t, c in valid if is_valid_plate(t)]
    if not valid:
        return None
    by_len: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for t, c in valid:
        by_len[len(t)].append((t, c))
    group = max(by_len.values(), key=lambda g: (sum(c for _, c in g), len(g)))
    n = len(group)
    length = len(group[0][0])
    chars: list[str] = []
    support: list[float] = []
    for i in range(length):
        w: dict[str, float] = defaultdict(float)
        for t, c in group:
            w[t[i]] += c
        ch = max(w, key=lambda k: (w[k], k))
        chars.append(ch)
        support.append(w[ch] / n)
    text = "".join(chars)
    if not is_valid_plate(text):
        whole: dict[str, float] = defaultdict(float)
        for t, c in group:
            whole[t] += c
        text = max(whole, key=lambda k: (whole[k], k))
        support = [sum(c for t, c in group if t[i] == text[i]) / n for i in range(length)]
    return PlateReading(text, round(min(support), 4))


class PlateReader:
    """Reads one plate crop (BGR) with PP-OCRv4 via ``rapidocr-onnxruntime`` (models ship inside the wheel).

    ``read`` first runs recognition alone on the crop (~20–40 ms here; right for a plate crop with a little
    margin); when that gives no valid plate with confidence >= ``fast_accept``, it also runs text detection +
    recognition (~0.3–1.8 s here; copes with loose crops and split lines) and keeps the more confident valid
    reading. It returns the normalised valid text with the recogniser's confidence, or None. Read a few frames
    per event and combine them with :func:`vote`.

    The engine loads on first use. Without the package, ``available`` is False, ``unavailable_reason`` says
    why, and ``read`` returns None (logged once): the rest of the runtime is unaffected.
    """

    def __init__(
        self,
        min_confidence: float = 0.5,
        fast_accept: float = 0.95,
        rec_height: int = 48,
        use_detection: bool = True,
    ) -> None:
        self.min_confidence = min_confidence
        self.fast_accept = fast_accept
        self.rec_height = rec_height
        self.use_detection = use_detection
        self._engine: Any = None
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._loaded = False
        # reads: crops read; fast: answered by recognition alone; detector: needed detection + recognition
        self.stats = {"reads": 0, "fast": 0, "detector": 0, "found": 0}

    def _load(self) -> Any:
        if self._loaded:
            return self._engine
        self._loaded = True
        try:
            from rapidocr_onnxruntime import RapidOCR  # lazy: optional dependency (extra "plates")
        except Exception as e:  # ImportError, or a broken install
            self._reason = (
                f"rapidocr-onnxruntime not importable ({type(e).__name__}: {e}); install extra 'plates'"
            )
            log.warning("plate reading unavailable: %s", self._reason)
            return None
        try:
            self._engine = RapidOCR()
        except Exception as e:
            self._reason = f"rapidocr failed to load its models ({type(e).__name__}: {e})"
            log.warning("plate reading unavailable: %s", self._reason)
        return self._engine

    @property
    def available(self) -> bool:
        with self._lock:
            return self._load() is not None

    @property
    def unavailable_reason(self) -> str | None:
        with self._lock:
            self._load()
            return self._reason

    def _prep(self, crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        import cv2

        h, w = crop.shape[:2]
        if h < self.rec_height:
            f = self.rec_height / h
            resized = cv2.resize(crop, (max(1, round(w * f)), self.rec_height), interpolation=cv2.INTER_CUBIC)
            return np.ascontiguousarray(resized, dtype=np.uint8)
        return np.ascontiguousarray(crop)

    @staticmethod
    def _texts(result: Any) -> list[tuple[str, float, float, float]]:
        """(text, score, x_left, y_top) of each recognised line."""
        out: list[tuple[str, float, float, float]] = []
        for item in result or []:
            if len(item) == 3:  # det+rec: [box, text, score]
                box, text, score = item
                xs = [p[0] for p in box]
                ys = [p[1] for p in box]
                out.append((str(text), float(score), float(min(xs)), float(min(ys))))
            elif len(item) == 2:  # rec only: [text, score]
                out.append((str(item[0]), float(item[1]), 0.0, 0.0))
        return out

    def _best(self, lines: list[tuple[str, float, float, float]]) -> PlateReading | None:
        cands: list[PlateReading] = []
        for text, score, _, _ in lines:
            t = normalize_plate(text)
            if is_valid_plate(t):
                cands.append(PlateReading(t, score))
        if len(lines) > 1:
            # A plate split in two (at the dot, or a two-row yellow plate): rows top→bottom, left→right.
            rows = sorted(lines, key=lambda r: (round(r[3] / 20), r[2]))
            joined = normalize_plate("".join(r[0] for r in rows))
            if is_valid_plate(joined):
                cands.append(PlateReading(joined, min(r[1] for r in rows)))
        cands = [c for c in cands if c.confidence >= self.min_confidence]
        return max(cands, key=lambda c: c.confidence) if cands else None

    def read(self, crop_bgr: npt.NDArray[np.uint8]) -> PlateReading | None:
        """The plate in ``crop_bgr`` (H×W×3 BGR), normalised and valid, or None."""
        if crop_bgr.ndim != 3 or crop_bgr.shape[0] < 4 or crop_bgr.shape[1] < 4:
            return None
        with self._lock:
            engine = self._load()
            if engine is None:
                return None
            self.stats["reads"] += 1
            img = self._prep(crop_bgr)
            rec, _ = engine(img, use_det=False, use_cls=False, use_rec=True)
            fast = self._best(self._texts(rec))
            if (fast is not None and fast.confidence >= self.fast_accept) or not self.use_detection:
                self.stats["fast"] += 1
                self.stats["found"] += fast is not None
                return fast
            self.stats["detector"] += 1
            full, _ = engine(crop_bgr, use_det=True, use_cls=False, use_rec=True)
            slow = self._best(self._texts(full))
            cands = [c for c in (fast, slow) if c is not None]
            got = max(cands, key=lambda c: c.confidence) if cands else None
            self.stats["found"] += got is not None
            return got
