"""API settings (pydantic), built from ``pipeline.config.Config`` by :func:`settings_from_config`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from pipeline.config import BusConfig, Config, MqttConfig, SlaRule, WebhookConfig, ZoneType

# Secrets that ship in docs or examples; refusing them catches copy-paste deployments.
_KNOWN_BAD_SECRETS = {"changeme", "secret", "change-me-please", "pingan", "default"}
MIN_SECRET_LEN = 32
SECRET_FILE = "api-secret.key"
WORKER_KEY_FILE = "worker.key"


class WorkerKey(BaseModel):
    """A bearer key for workers; ``cameras`` None means every camera of the site."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "worker"
    key: SecretStr
    cameras: frozenset[str] | None = None

    @field_validator("key")
    @classmethod
    def _long(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("worker keys need at least 16 characters")
        return v


class CameraInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    name: str
    grid: str | None = None
    zones: list[str] = []


class BinStation(BaseModel):
    """A bin station (zone of type bin_station) as the dashboard lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    camera_id: str
    zone_id: str
    bin_ids: list[str] = []
    grid: str | None = None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str
    media_dir: Path
    secret: SecretStr
    worker_keys: list[WorkerKey] = []
    cameras: list[CameraInfo] = []
    site_name: str = "pingan"
    timezone: str = "Asia/Shanghai"
    session_ttl_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 12 * 3600
    cookie_secure: bool = False
    max_json_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024 * 1024
    max_evidence_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    sse_heartbeat_s: Annotated[float, Field(gt=0)] = 15.0
    sse_queue_size: Annotated[int, Field(ge=1)] = 256
    camera_stale_s: Annotated[float, Field(gt=0)] = 30.0
    health_check_s: Annotated[float, Field(gt=0)] = 5.0  # how often silent cameras are re-assessed
    page_limit_max: Annotated[int, Field(ge=1)] = 500
    media_max_bytes: Annotated[int, Field(ge=1)] | None = None  # retention cap for evidence on disk
    retention_every_s: Annotated[float, Field(gt=0)] = 600.0
    site_id: str = "site"
    bus: BusConfig = BusConfig()  # kind nats: consume events from JetStream (api.bus_consumer)
    webhooks: list[WebhookConfig] = []  # signed push of stored event messages (api.webhooks)
    webhook_poll_s: Annotated[float, Field(gt=0)] = 1.0
    webhook_lookback_s: Annotated[float, Field(gt=0)] = 3600.0  # at start, messages this old still get pushed
    mqtt: MqttConfig | None = None  # Frigate-style MQTT publishing (api.mqtt)
    sla: dict[str, SlaRule] = {}  # event type -> ack_within_s; unacknowledged past it: escalated (api.sla)
    sla_check_s: Annotated[float, Field(gt=0)] = 10.0
    metrics_token: SecretStr | None = None  # bearer token for GET /metrics besides admins
    bin_stations: list[BinStation] = []

    @field_validator("secret")
    @classmethod
    def _strong(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if len(s) < MIN_SECRET_LEN:
            raise ValueError(f"the session secret needs at least {MIN_SECRET_LEN} characters")
        if s.lower() in _KNOWN_BAD_SECRETS or len(set(s)) < 8:
            raise ValueError("the session secret is a default or trivially guessable value")
        return v

    @field_validator("database_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("sqlite:", "postgresql")):
            raise ValueError("database_url must be sqlite:/// or postgresql+psycopg://")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        return v

    def camera_ids(self) -> set[str]:
        return {c.id for c in self.cameras}


def _read_or_create(path: Path, nbytes: int) -> str:
    """Read a secret from ``path`` or create it (mode 0600) with ``nbytes`` of randomness."""
    try:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    os.replace(tmp, path)
    return value


def session_secret(cfg: Config) -> str:
    """``PINGAN_SECRET`` if set, else a random secret kept in ``<data_dir>/api-secret.key`` (created once)."""
    return os.environ.get("PINGAN_SECRET") or _read_or_create(cfg.storage.data_dir / SECRET_FILE, 48)


def worker_key_for(cfg: Config) -> str:
    """The worker key both sides use: env ``PINGAN_WORKER_KEY``, else ``api.worker_key``, else one
    generated once and kept in ``<data_dir>/worker.key`` (embedded: worker and API share a data dir)."""
    return (
        os.environ.get("PINGAN_WORKER_KEY")
        or cfg.api.worker_key
        or _read_or_create(cfg.storage.data_dir / WORKER_KEY_FILE, 32)
    )


def settings_from_config(cfg: Config, **overrides: object) -> Settings:
    """API settings for one site. The single configured worker key is scoped to the cameras of the config."""
    data_dir = cfg.storage.data_dir
    values: dict[str, object] = {
        "database_url": cfg.storage.db_url(),
        "media_dir": data_dir / "media",
        "secret": session_secret(cfg),
        "worker_keys": [
            WorkerKey(
                name="worker",
                key=SecretStr(worker_key_for(cfg)),
                cameras=frozenset(c.id for c in cfg.cameras),
            )
        ],
        "cameras": [
            CameraInfo(id=c.id, name=c.name, grid=c.grid or cfg.site.grid, zones=[z.id for z in c.zones])
            for c in cfg.cameras
        ],
        "media_max_bytes": cfg.api.media_max_mb * 1024 * 1024,
        # behind a TLS-terminating proxy, mark the session cookie Secure
        "cookie_secure": os.environ.get("PINGAN_COOKIE_SECURE", "").lower() in ("1", "true", "yes"),
        "site_name": cfg.site.name,
        "timezone": cfg.site.timezone,
        "site_id": cfg.site.id,
        "bus": cfg.bus,
        "webhooks": cfg.webhooks,
        "mqtt": cfg.mqtt,
        "sla": cfg.api.sla,
        "metrics_token": os.environ.get("PINGAN_METRICS_TOKEN") or cfg.api.metrics_token,
        "bin_stations": [
            BinStation(
                camera_id=c.id, zone_id=z.id, bin_ids=list(z.bin_ids), grid=z.grid or c.grid or cfg.site.grid
            )
            for c in cfg.cameras
            for z in c.zones
            if z.type == ZoneType.BIN_STATION
        ],
    }
    values.update(overrides)
    return Settings.model_validate(values)
