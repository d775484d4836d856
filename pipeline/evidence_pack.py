"""Evidence packs for the traffic police: one ZIP per violation, and the verifier that checks one.

Ground-floor safe: imports only ``pipeline.evidence`` (hashing) and the standard library, so ``api/``
builds packs and ``pingan verify-pack`` checks them with the same code, and nothing here imports ``api``.

Pack layout (version 1)::

    manifest.json        the record: see :func:`build_manifest` (GA/T 832-minded fields)
    evidence/<name>      each still and the plate close-up, bytes exactly as the camera's worker made them
    SHA256SUMS           ``sha256sum -c`` format, over manifest.json and every file under evidence/

``manifest.chain_hash`` is :func:`pipeline.evidence.chain_hash` over ``(name, sha256)`` of ``manifest.images``
in their order (the order the worker took them): dropping, adding, reordering or altering an image changes it.

:func:`verify_pack` checks what Beijing's rule for automatic illegal-parking records asks of the evidence: at
least three scene stills taken while the vehicle stood in the zone, two of them more than the zone's allowed
dwell apart, a plate close-up, and that every hash (files, SHA256SUMS, chain) matches.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, Any
from zoneinfo import ZoneInfo

from pipeline.evidence import CHAIN_SEED, chain_hash, sha256_hex

PACK_FORMAT = "pingan-evidence-pack"
PACK_VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
EVIDENCE_DIR = "evidence/"
MIN_SCENE_STILLS = 3
# a still stamped a little outside the stay (clock rounding between frame and message) still counts
TIME_SLACK = timedelta(seconds=1)
# the verifier refuses packs that would unpack to more than this (a zip bomb is not evidence)
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_FILES = 256
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v if v.tzinfo else None
    if not isinstance(v, str):
        return None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else None


def _time_str(v: Any) -> str | None:
    dt = _parse_time(v)
    return _iso(dt) if dt is not None else None


def build_manifest(
    event: Mapping[str, Any],
    images: Sequence[Mapping[str, Any]],
    *,
    present: Iterable[str] = (),
    camera_name: str | None = None,
    timezone: str = "UTC",
    exported_at: datetime | None = None,
    exported_by: str | None = None,
    site: str | None = None,
) -> dict[str, Any]:
    """The manifest of one violation.

    ``event`` is the stored wire message (``Event.to_wire()`` form); ``images`` are its evidence items
    (name, kind, taken_at, sha256, optional size) in the event's order; ``present`` names the images whose
    bytes go into the pack (the others are listed with ``present: false``; the pack then fails verification).
    """
    have = set(present)
    obj = event.get("object") or {}
    plate = obj.get("plate") or {}
    started = _parse_time(event.get("started_at"))
    tz = ZoneInfo(timezone)
    items: list[dict[str, Any]] = []
    for im in images:
        items.append(
            {
                "name": str(im["name"]),
                "path": EVIDENCE_DIR + str(im["name"]),
                "kind": str(im["kind"]),
                "taken_at": _time_str(im["taken_at"]),
                "sha256": str(im["sha256"]),
                "size": im.get("size"),
                "present": str(im["name"]) in have,
            }
        )
    chain = chain_hash([(i["name"], i["sha256"]) for i in items])
    exported = exported_at or datetime.now(UTC)
    return {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "violation_id": event["id"],
        "event_type": event.get("type"),
        "event_seq": event.get("seq"),
        "state": event.get("state"),
        "plate_text": plate.get("text"),
        "plate_confidence": plate.get("confidence"),
        "violation_code": event.get("violation_code"),
        "device_id": event.get("camera_id"),
        "device_name": camera_name,
        "location_code": event.get("grid"),
        "zone_id": event.get("zone_id"),
        "site": site,
        "timezone": timezone,
        "start_time": _time_str(event.get("started_at")),
        "start_time_local": started.astimezone(tz).isoformat() if started else None,
        "end_time": _time_str(event.get("ended_at")),
        "last_seen_time": _time_str(event.get("updated_at")),
        "dwell_s": event.get("dwell_s"),
        "allowed_dwell_s": event.get("allowed_dwell_s"),
        "vehicle": {k: obj.get(k) for k in ("label", "track_id", "confidence", "box_xyxy")} if obj else None,
        "model": event.get("model"),
        "images": items,
        "chain_hash_alg": CHAIN_SEED,
        "chain_hash": chain,
        "exported_at": _iso(exported),
        "exported_by": exported_by,
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=False) + "\n").encode()


def write_pack(out: IO[bytes], manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
    """Write one pack to ``out`` (which need not be seekable). ``files``: image name → bytes, for the images
    the manifest marks present."""
    doc = manifest_bytes(manifest)
    sums = [f"{sha256_hex(doc)}  {MANIFEST}"]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_info(MANIFEST, manifest.get("exported_at"), zipfile.ZIP_DEFLATED), doc)
        for im in manifest["images"]:
            if not im["present"]:
                continue
            data = files[im["name"]]
            zf.writestr(_info(im["path"], im.get("taken_at")), data)  # JPEG does not deflate
            sums.append(f"{sha256_hex(data)}  {im['path']}")
        zf.writestr(_info(SUMS, manifest.get("exported_at"), zipfile.ZIP_DEFLATED), "\n".join(sums) + "\n")


def pack_bytes(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    write_pack(buf, manifest, files)
    return buf.getvalue()


def _info(name: str, when: Any, compress: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    dt = _parse_time(when) or datetime(1980, 1, 1, tzinfo=UTC)
    t = dt.astimezone(UTC)
    info = zipfile.ZipInfo(name, date_time=(max(t.year, 1980), t.month, t.day, t.hour, t.minute, t.second))
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


# ---- verification ------------------------------------------------------------------------------------------


def _read_sums(text: str) -> tuple[dict[str, str], list[str]]:
    sums: dict[str, str] = {}
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, path = line.partition("  ")
        if not sep or not _SHA_RE.match(digest) or not path:
            problems.append(f"{SUMS} line {n} is not '<sha256>  <path>'")
            continue
        if path in sums:
            problems.append(f"{SUMS} lists {path} twice")
        sums[path] = digest
    return sums, problems


def verify_pack(data: bytes) -> list[str]:
    """Check one evidence pack; returns the problems found (an empty list: the pack verifies)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as err:
        return [f"not a zip file: {err}"]
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_FILES:
            return [f"too many files in the pack ({len(infos)} > {MAX_FILES})"]
        if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
            return [f"the pack unpacks to more than {MAX_UNPACKED_BYTES} bytes"]
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            return ["the pack holds a file name twice"]
        contents: dict[str, bytes] = {}
        try:
            for i in infos:
                if not i.is_dir():
                    contents[i.filename] = zf.read(i)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as err:  # CRC errors included
            return [f"the zip is damaged: {err}"]
    return _verify_contents(contents)


def _verify_contents(contents: Mapping[str, bytes]) -> list[str]:
    problems: list[str] = []
    if MANIFEST not in contents:
        return [f"{MANIFEST} is missing"]
    if SUMS not in contents:
        problems.append(f"{SUMS} is missing")
        sums: dict[str, str] = {}
    else:
        try:
            sums, bad = _read_sums(contents[SUMS].decode("utf-8"))
        except UnicodeDecodeError:
            sums, bad = {}, [f"{SUMS} is not UTF-8 text"]
        problems += bad
    for path, digest in sums.items():
        if path not in contents:
            problems.append(f"{SUMS} lists {path}, which is not in the pack")
        elif sha256_hex(contents[path]) != digest:
            problems.append(f"sha256 of {path} does not match {SUMS}")
    for path in contents:
        if path != SUMS and path not in sums:
            problems.append(f"{path} is not covered by {SUMS}")
    try:
        manifest = json.loads(contents[MANIFEST])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return [*problems, f"{MANIFEST} is not valid JSON: {err}"]
    if not isinstance(manifest, dict):
        return [*problems, f"{MANIFEST} is not a JSON object"]
    if manifest.get("format") != PACK_FORMAT or manifest.get("version") != PACK_VERSION:
        problems.append(f"{MANIFEST} is not a {PACK_FORMAT} v{PACK_VERSION} manifest")
    images = manifest.get("images")
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        return [*problems, f"{MANIFEST} has no list of images"]
    problems += _verify_images(manifest, images, contents)
    problems += _verify_rules(manifest, images, contents)
    return problems


def _image_ok(im: Mapping[str, Any], contents: Mapping[str, bytes]) -> bool:
    path = EVIDENCE_DIR + str(im.get("name"))
    return path in contents and sha256_hex(contents[path]) == im.get("sha256")


def _verify_images(
    manifest: Mapping[str, Any], images: list[dict[str, Any]], contents: Mapping[str, bytes]
) -> list[str]:
    problems: list[str] = []
    items: list[tuple[str, str]] = []
    for n, im in enumerate(images):
        name, digest = im.get("name"), im.get("sha256")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems.append(f"image {n} has no valid name")
            continue
        if not isinstance(digest, str) or not _SHA_RE.match(digest):
            problems.append(f"image {name} has no valid sha256")
            continue
        items.append((name, digest))
        path = EVIDENCE_DIR + name
        if im.get("path") not in (None, path):
            problems.append(f"image {name} is listed at {im.get('path')!r}, not {path}")
        if path not in contents:
            problems.append(f"image {name} is not in the pack")
        elif sha256_hex(contents[path]) != digest:
            problems.append(f"sha256 of image {name} does not match the manifest")
    listed = {EVIDENCE_DIR + n for n, _ in items}
    for path in contents:
        if path.startswith(EVIDENCE_DIR) and path not in listed:
            problems.append(f"{path} is in the pack but not in the manifest")
    if len(items) == len(images) and chain_hash(items) != manifest.get("chain_hash"):
        problems.append("the chain hash does not match the images listed in the manifest")
    return problems


def _verify_rules(
    manifest: Mapping[str, Any], images: list[dict[str, Any]], contents: Mapping[str, bytes]
) -> list[str]:
    """Beijing's evidence rule for illegal parking (see the module doc)."""
    problems: list[str] = []
    start = _parse_time(manifest.get("start_time"))
    end = _parse_time(manifest.get("end_time")) or _parse_time(manifest.get("last_seen_time"))
    if start is None or end is None:
        return ["the manifest lacks the start time or the end / last-seen time of the stay"]
    allowed = manifest.get("allowed_dwell_s")
    if isinstance(allowed, bool) or not isinstance(allowed, int | float) or allowed < 0:
        return ["the manifest does not state the zone's allowed dwell (allowed_dwell_s)"]
    stills: list[datetime] = []
    for im in images:
        if im.get("kind") != "scene" or not _image_ok(im, contents):
            continue
        t = _parse_time(im.get("taken_at"))
        if t is not None and start - TIME_SLACK <= t <= end + TIME_SLACK:
            stills.append(t)
    if len(stills) < MIN_SCENE_STILLS:
        problems.append(
            f"{len(stills)} scene stills taken during the stay; at least {MIN_SCENE_STILLS} are needed"
        )
    if stills and (max(stills) - min(stills)).total_seconds() <= float(allowed):
        problems.append(f"no two scene stills are more than the allowed dwell ({allowed} s) apart")
    if not any(im.get("kind") == "plate" and _image_ok(im, contents) for im in images):
        problems.append("no plate close-up in the pack")
    return problems
