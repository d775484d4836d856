"""cameras.yaml: pydantic v2 models (extra="forbid", units in names) and a loader naming path and line."""

from __future__ import annotations

import os
import re
from datetime import time as dtime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError
from pipeline.lag import LATE_S, SHED_SHARE

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
GridPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,7}$")]
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(v: Any) -> Any:
    """Fill ``${ENV}`` placeholders of a string field; a missing variable is a config error naming it."""
    if not isinstance(v, str):
        return v
    for m in _ENV_RE.finditer(v):
        if m.group(1) not in os.environ:
            raise ValueError(f"environment variable {m.group(1)} is not set")
    return _ENV_RE.sub(lambda m: os.environ[m.group(1)], v)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ZoneType(StrEnum):
    NO_PARKING = "no_parking"
    FIRE_LANE = "fire_lane"
    BIN_STATION = "bin_station"
    PARKING_BAY = "parking_bay"


# Fire lanes get a short grace; ordinary no-parking zones tolerate a drop-off.
DEFAULT_DWELL_S = {
    ZoneType.FIRE_LANE: 60.0,
    ZoneType.NO_PARKING: 300.0,
    ZoneType.BIN_STATION: 120.0,
    ZoneType.PARKING_BAY: 30.0,
}


def _point_list(v: Any) -> Any:
    if isinstance(v, list) and all(isinstance(p, list | tuple) for p in v):
        return [tuple(p) for p in v]
    return v


Point = tuple[Annotated[float, Field(ge=0, le=100_000)], Annotated[float, Field(ge=0, le=100_000)]]


class ScheduleWindow(_Strict):
    """Weekday time window in the site's time zone; ``end`` before ``start`` runs past midnight."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = list(_DAYS)  # type: ignore[assignment,arg-type]
    start: dtime = dtime(0, 0)
    end: dtime = dtime(23, 59, 59)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hhmm(cls, v: Any) -> Any:
        if isinstance(v, int):  # YAML reads 07:30 as sexagesimal 450
            return dtime(v // 60 % 24, v % 60)
        return v


class Zone(_Strict):
    id: Ident
    type: ZoneType
    polygon: Annotated[list[Point], BeforeValidator(_point_list)]
    dwell_s: Annotated[float, Field(gt=0, le=7 * 86400)] | None = None
    clear_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    inertia_s: Annotated[float, Field(ge=0, le=3600)] = 90.0
    schedule: list[ScheduleWindow] | None = None
    labels: list[Literal["vehicle", "person", "bin", "bin_overflow", "litter"]] | None = None
    exempt_plates: list[Annotated[str, StringConstraints(min_length=2, max_length=16)]] = []
    violation_code: Annotated[str, StringConstraints(max_length=32)] | None = None
    bin_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = []
    capacity: Annotated[int, Field(ge=1, le=10_000)] | None = None
    grid: GridPath | None = None
    min_confidence: Annotated[float, Field(ge=0, le=1)] = 0.3

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, v: list[Point]) -> list[Point]:
        if len(v) < 3:
            raise ValueError("needs ≥ 3 points")
        xs, ys = [p[0] for p in v], [p[1] for p in v]
        area = abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(v)))) / 2
        if area < 1.0:
            raise ValueError("has no area (points are collinear or repeated)")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> Zone:
        if self.dwell_s is None:
            self.dwell_s = DEFAULT_DWELL_S[self.type]
        if self.labels is None:
            self.labels = ["vehicle"] if self.type is not ZoneType.BIN_STATION else ["bin_overflow", "litter"]
        if self.bin_ids and self.type is not ZoneType.BIN_STATION:
            raise ValueError("bin_ids belong to bin_station zones only")
        if self.clear_s and self.type is ZoneType.BIN_STATION and self.clear_s > self.dwell_s:
            raise ValueError("clear_s should not exceed dwell_s")
        return self

    @property
    def dwell(self) -> float:
        assert self.dwell_s is not None
        return self.dwell_s


class FileSource(_Strict):
    path: Path
    loop: bool = True
    realtime: bool = True


class RtspSource(_Strict):
    url: Annotated[str, StringConstraints(min_length=8, max_length=2048)]
    transport: Literal["tcp", "udp"] = "tcp"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("rtsp", "rtsps"):
            raise ValueError("must be an rtsp:// or rtsps:// URL")
        if not parts.hostname:
            raise ValueError("has no host")
        for m in _ENV_RE.finditer(v):
            if m.group(1) not in os.environ:
                raise ValueError(f"environment variable {m.group(1)} is not set")
        return v

    def resolved(self) -> str:
        """The URL with ``${ENV}`` placeholders filled in, credentials percent-encoded."""
        return _ENV_RE.sub(lambda m: quote(os.environ[m.group(1)], safe=""), self.url)

    def secrets(self) -> list[str]:
        """Values that must never appear in logs: the password, raw and percent-encoded. (User names are
        not secret, and masking a short one would mangle every log line that contains those letters.)"""
        out: list[str] = []
        userinfo = self.url.split("://", 1)[-1].rpartition("@")[0]
        if ":" in userinfo:
            template = userinfo.split(":", 1)[1]
            for m in _ENV_RE.finditer(template):
                val = os.environ.get(m.group(1), "")
                if val:
                    out += [val, quote(val, safe="")]
        password = urlsplit(self.resolved()).password
        if password:
            out.append(password)
        return sorted(set(out), key=len, reverse=True)


def _source_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "rtsp" if "url" in v else "file"
    return "rtsp" if isinstance(v, RtspSource) else "file"


StreamSource = Annotated[
    Annotated[RtspSource, Tag("rtsp")] | Annotated[FileSource, Tag("file")],
    Discriminator(_source_kind),
]


class Camera(_Strict):
    id: Ident
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    source: StreamSource
    # The camera's analytics sub-stream (e.g. 640×360), where it has one: frames are decoded and detected
    # from it, while ``source`` (the main stream) is only demuxed and its keyframes decoded when evidence is
    # taken (pipeline/evidence_stream.py). Zones, boxes and stills stay in the main stream's pixels.
    detect_source: StreamSource | None = None
    detect_fps: Annotated[float, Field(gt=0, le=30)] = 1.0
    # Where the camera's keyframes come less often than detect_fps asks, detect on keyframes alone as long as
    # they come at least this often (an I-frame interval of 2 s at detect_fps 1: 0.5 det/s); below it every
    # frame is decoded to sample between keyframes: ~4× the camera's CPU (README, "Long keyframe
    # intervals"). Unset: half of detect_fps. Set it to detect_fps to have detect_fps whatever it costs.
    min_detect_fps: Annotated[float, Field(gt=0, le=30)] | None = None
    stall_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    open_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    backoff_max_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    models: list[Ident] = ["vehicles"]
    grid: GridPath | None = None
    enabled: bool = True
    # Skip inference while the zones look unchanged (detections carry forward); re-detect at least this often.
    static_gate: bool = True
    gate_refresh_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # Skip *decoding* due keyframes while packet sizes say nothing moved and no object is in a zone
    # (pipeline/packet_gate.py). Off by default: it saves most on quiet cameras with variable-bitrate
    # encoders, and it needs the static gate to check it against the pixels.
    packet_gate: bool = False
    zones: list[Zone] = []

    def streams(self) -> list[RtspSource | FileSource]:
        """The main stream, then the detection sub-stream where there is one."""
        return [s for s in (self.source, self.detect_source) if s is not None]

    @field_validator("models", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, zones: list[Zone]) -> list[Zone]:
        ids = [z.id for z in zones]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"zone ids repeat: {', '.join(sorted(dup))}")
        return zones

    @field_validator("min_detect_fps")
    @classmethod
    def _at_most_detect_fps(cls, v: float | None, info: ValidationInfo) -> float | None:
        detect = info.data.get("detect_fps")
        if v is not None and detect is not None and v > detect:
            raise ValueError(
                f"{v:g} is above detect_fps ({detect:g}): the lowest rate, detect_fps the highest"
            )
        return v

    def keyframe_floor_fps(self) -> float:
        """The lowest detection rate keyframe-only decoding may give this camera (``min_detect_fps``)."""
        return self.detect_fps / 2 if self.min_detect_fps is None else self.min_detect_fps

    @model_validator(mode="after")
    def _packet_gate_needs_static_gate(self) -> Camera:
        if self.packet_gate and not self.static_gate:
            raise ValueError("packet_gate needs static_gate: the pixels check what the packets suggest")
        return self


class SlaRule(_Strict):
    """How long an event of one type may stay ``new`` (unacknowledged) before it is escalated."""

    ack_within_s: Annotated[float, Field(gt=0, le=30 * 86400)]


SlaEventType = Literal["illegal_parking", "bin_overflow", "camera_offline"]


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    url: str | None = None  # where workers post events; defaults to http://host:port
    worker_key: Annotated[str, StringConstraints(min_length=16)] | None = None
    media_max_mb: Annotated[int, Field(ge=1)] = 20_000
    sla: dict[SlaEventType, SlaRule] = {}  # e.g. {illegal_parking: {ack_within_s: 300}}
    # bearer token for GET /metrics (Prometheus); write ${ENV}; env PINGAN_METRICS_TOKEN overrides
    metrics_token: Annotated[str, StringConstraints(min_length=16)] | None = None

    @field_validator("worker_key", "metrics_token", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        return expand_env(v)

    @property
    def base_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


class StorageConfig(_Strict):
    data_dir: Path = Path("var")
    database_url: str | None = None  # default: SQLite in data_dir

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pingan.db'}"


class BusConfig(_Strict):
    """How workers deliver events: ``http`` to the API (one box), or ``nats`` JetStream (a district)."""

    kind: Literal["http", "nats"] = "http"
    nats_url: Annotated[str, StringConstraints(min_length=7, max_length=2048)] = "nats://127.0.0.1:4222"
    stream: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "PINGAN"
    subject_prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "pingan"
    replicas: Annotated[int, Field(ge=1, le=5)] = 1  # JetStream copies of the stream (3 in a NATS cluster)

    @field_validator("nats_url", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        v = expand_env(v)
        if isinstance(v, str) and not v.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError("must be nats://, tls://, ws:// or wss:// URLs (comma-separated: a cluster)")
        return v


class WebhookConfig(_Strict):
    """A push endpoint (traffic police, a cleaning contractor): the API POSTs every stored event message of
    ``event_types`` (within ``grid_prefix``, if set) to ``url``, signed with HMAC-SHA256 under ``secret``."""

    id: Ident
    url: Annotated[str, StringConstraints(min_length=8, max_length=2048)]
    secret: SecretStr  # write ${ENV}; at least 16 characters
    event_types: Annotated[
        list[Literal["illegal_parking", "bin_overflow", "camera_offline"]], Field(min_length=1)
    ] = ["illegal_parking"]
    grid_prefix: GridPath | None = None
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 30
    backoff_base_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    backoff_max_s: Annotated[float, Field(gt=0, le=86400)] = 600.0

    @field_validator("url", "secret", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        return expand_env(v)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname:
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("secret")
    @classmethod
    def _long(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("webhook secrets need at least 16 characters")
        return v


TopicPrefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")]


class MqttConfig(_Strict):
    """Publishing to an MQTT broker in Frigate's style (api.mqtt): ``<prefix>/events``,
    ``<prefix>/<camera>/status``, ``<prefix>/available``, ``<prefix>/escalations``."""

    enabled: bool = True
    host: Annotated[str, StringConstraints(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    password: SecretStr | None = None  # write ${ENV}
    topic_prefix: TopicPrefix = "pingan"
    client_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000  # waiting messages; the oldest go first

    @field_validator("username", "password", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        return expand_env(v)


class SiteConfig(_Strict):
    id: Ident = "site"
    name: str = "pingan"
    timezone: str = "Asia/Shanghai"
    grid: GridPath | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {v!r}") from err
        return v


# Past capacity every camera's frame used to queue behind every other's: 76 cameras at 0.5 det/s on a box
# that serves 61, ~22 detector calls a second, frames ~3.5 s old when detected, hardly one result within 2 s
# of its frame. 1.2 s leaves ~0.8 s of a 2 s frame-to-event target for detection and the event; 1.7 s no
# longer bounded latency past capacity (benchmarks/LOG.md, the Zen 4 entries).
MAX_FRAME_AGE_S = 1.2


class DetectorConfig(_Strict):
    providers: list[Literal["tensorrt", "cuda", "openvino", "cpu"]] | None = None
    intra_op_threads: Annotated[int, Field(ge=1, le=64)] = 1
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    # threads running the shared detectors (and each result's tracker, rules and stills): two, so one
    # frame's after-work overlaps the next one's inference; what the benchmarks measure
    inference_threads: Annotated[int, Field(ge=1, le=16)] = 2
    # cameras' frames per detector call; unset: 8 on a GPU provider, 1 on CPU (pipeline.inference)
    max_batch: Annotated[int, Field(ge=1, le=64)] | None = None
    # a camera's due frame is not decoded when it would be older than this by the time the detector took it
    # (pipeline.inference.InferenceScheduler.admit): past the box's capacity results stay fresh, fewer of
    # them, instead of every camera's coming late; null: no bound (every result, however late)
    max_frame_age_s: Annotated[float, Field(gt=0, le=600)] | None = MAX_FRAME_AGE_S
    # A camera is reported behind (pipeline/lag.py: health "behind", the dashboard tile, a warning) when, over
    # the last 30 s (or 15 due frames; not in its first 10 s), its results' p95 capture → result exceeds
    # this, or more than this share of its due frames were shed. A site whose rules wait minutes may accept
    # later results than the 2 s default.
    behind_result_age_s: Annotated[float, Field(gt=0, le=600)] = LATE_S
    behind_shed_share: Annotated[float, Field(gt=0, lt=1)] = SHED_SHARE


class Config(_Strict):
    site: SiteConfig = SiteConfig()
    api: ApiConfig = ApiConfig()
    storage: StorageConfig = StorageConfig()
    bus: BusConfig = BusConfig()
    detector: DetectorConfig = DetectorConfig()
    cameras: list[Camera]
    webhooks: list[WebhookConfig] = []
    mqtt: MqttConfig | None = None

    @field_validator("webhooks")
    @classmethod
    def _unique_webhooks(cls, hooks: list[WebhookConfig]) -> list[WebhookConfig]:
        ids = [h.id for h in hooks]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"webhook ids repeat: {', '.join(sorted(dup))}")
        return hooks

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[Camera]) -> list[Camera]:
        ids = [c.id for c in cameras]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"camera ids repeat: {', '.join(sorted(dup))}")
        return cameras

    def camera(self, camera_id: str) -> Camera:
        for c in self.cameras:
            if c.id == camera_id:
                return c
        raise KeyError(camera_id)


# ---- loading with line numbers -------------------------------------------------------------------


def _construct(node: yaml.Node) -> Any:
    """The Python value of one node, as ``yaml.safe_load`` would make it (an empty scalar is None).
    Re-serialising the node instead fails on empty scalars (it emits a bare '...')."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _to_python(node: yaml.Node, lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):  # '? [a, b]': a list or mapping as a key
                raise ConfigError([f"{_fmt(path)}: keys must be plain names (line {k.start_mark.line + 1})"])
            key = k.value
            if key in out:
                raise ConfigError([f"{_fmt((*path, key))}: key appears twice (line {k.start_mark.line + 1})"])
            lines[(*path, key)] = k.start_mark.line + 1
            out[key] = _to_python(v, lines, (*path, key))
            lines[(*path, key)] = min(lines[(*path, key)], k.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, lines, (*path, i)) for i, v in enumerate(node.value)]
    try:
        return _construct(node)
    except (yaml.YAMLError, ValueError, TypeError) as err:  # e.g. !!binary that is not base64, month 13
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            [f"{_fmt(path)}: cannot read the value: {problem} (line {node.start_mark.line + 1})"]
        ) from err


def _fmt(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top)"


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts union member names (e.g. 'RtspSource', 'function-after[...]') into loc; drop them.
    return tuple(p for p in loc if isinstance(p, int) or (p not in ("rtsp", "file") and "[" not in p))


def parse_config(text: str, source: str = "cameras.yaml") -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(err, "problem", err)
        if isinstance(err, yaml.reader.ReaderError):  # a control character: it has a position, not a mark
            where = f" (line {text.count(chr(10), 0, max(0, err.position)) + 1})"
            problem = f"character {err.character!r} is not allowed"
        raise ConfigError([f"{source}: not valid YAML: {problem}{where}"]) from err
    if node is None:
        raise ConfigError([f"{source}: file is empty"])
    lines: dict[tuple[Any, ...], int] = {}
    data = _to_python(node, lines, ())
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping with a 'cameras' list"])
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        messages = []
        seen = set()
        for e in err.errors(include_url=False):
            loc = _clean_loc(tuple(e["loc"]))
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field"
            elif e["type"] == "missing":
                msg = "required field is missing"
            line = _line_for(loc, lines)
            text_ = f"{_fmt(loc)}: {msg}" + (f" (line {line})" if line else "")
            if text_ not in seen:
                seen.add(text_)
                messages.append(text_)
        raise ConfigError(messages) from err


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{p}: cannot read: {err}"]) from err
    cfg = parse_config(text, str(p))
    base = p.resolve().parent
    for cam in cfg.cameras:
        for src in cam.streams():
            if isinstance(src, FileSource) and not src.path.is_absolute():
                src.path = base / src.path
    if not cfg.storage.data_dir.is_absolute():
        cfg.storage.data_dir = base / cfg.storage.data_dir
    return cfg


def config_schema() -> dict[str, Any]:
    return Config.model_json_schema()
