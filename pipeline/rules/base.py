"""What rules emit. The worker turns signals into wire events and evidence; rules never see frames."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SignalKind(StrEnum):
    CANDIDATE = "candidate"  # a stay/episode began: keep a still, send nothing yet
    OPEN = "open"  # threshold crossed: open the event
    UPDATE = "update"  # still going (severity or dwell changed, or a periodic still is due)
    CLOSE = "close"  # really over: close the event with the total dwell
    CANCEL = "cancel"  # a candidate ended before its threshold: discard its stills


@dataclass(frozen=True, slots=True)
class RuleSignal:
    kind: SignalKind
    rule: str  # "parking" | "bins" | "bays"
    zone_id: str
    key: str  # stable within a camera for one stay/episode, e.g. "fire-lane-3#4"
    ts: float  # timestamp of the frame that caused the signal
    started_ts: float
    dwell_s: float
    label: str = "vehicle"
    track_id: int = -1
    box_xyxy: tuple[float, float, float, float] | None = None
    confidence: float = 0.0
    severity: int = 1
    snapshot: bool = False  # the worker should keep a still of this frame for this key
    # bins: ts of the last clean observation before the episode (the ideal "before" still, if the worker still
    # holds that frame; BinRule.last_clean_ts tells it which frame to hold)
    ref_ts: float | None = None
