"""Open incidents on disk, so a restarted worker continues an event instead of reporting the same stay twice.

The rules' state lives in memory; after a restart a car still parked starts a new stay. The incident
builder matches such a stay to a journalled open incident (same zone, overlapping box) and continues that
event: same id, next seq, original start, the stills already sent. Incidents nobody claims are closed as of
when they were last seen.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS open_incidents (
    camera_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (camera_id, event_id)
)
"""


@dataclass
class OpenIncident:
    camera_id: str
    event_id: str
    rule: str
    zone_id: str
    started_ts: float
    last_ts: float
    seq: int  # the next seq to send
    label: str = "vehicle"
    box_xyxy: tuple[float, float, float, float] | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    scene_count: int = 0
    plate: tuple[str, float] | None = None
    severity: int = 1

    @classmethod
    def from_json(cls, text: str) -> OpenIncident:
        raw = json.loads(text)
        if raw.get("box_xyxy") is not None:
            raw["box_xyxy"] = tuple(raw["box_xyxy"])
        if raw.get("plate") is not None:
            raw["plate"] = tuple(raw["plate"])
        return cls(**raw)


class IncidentJournal:
    """A small SQLite table of open incidents; thread-safe; one per worker process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._closed = False

    def save(self, inc: OpenIncident) -> None:
        with self._lock:
            if self._closed:  # a straggling inference thread at shutdown: the rules will redo it
                return
            self._db.execute(
                "INSERT OR REPLACE INTO open_incidents (camera_id, event_id, body) VALUES (?, ?, ?)",
                (inc.camera_id, inc.event_id, json.dumps(asdict(inc), ensure_ascii=False)),
            )

    def drop(self, camera_id: str, event_id: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._db.execute(
                "DELETE FROM open_incidents WHERE camera_id = ? AND event_id = ?", (camera_id, event_id)
            )

    def load(self, camera_id: str) -> list[OpenIncident]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM open_incidents WHERE camera_id = ? ORDER BY event_id", (camera_id,)
            ).fetchall()
        return [OpenIncident.from_json(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
