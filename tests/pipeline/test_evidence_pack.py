"""Evidence packs: a pack made of real JPEG stills verifies; tampering and thin evidence are reported."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.evidence import chain_hash, crop_upscaled, format_caption, render_still, sha256_hex
from pipeline.evidence_pack import MANIFEST, SUMS, build_manifest, pack_bytes, verify_pack

BOX = (120.0, 90.0, 260.0, 170.0)


def _scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((240, 320, 3), 90, np.uint8)
    img[:, :, 1] = np.linspace(40, 200, 320, dtype=np.uint8)[None, :]
    img[90:170, 120:260] = (30, 30, 200)  # the parked vehicle
    img[150:162, 170:210] = (200, 80, 20)  # its plate
    noise = rng.integers(0, 12, img.shape, dtype=np.uint8)
    return np.asarray(img + noise, dtype=np.uint8)


def make_stills(start: datetime, dwell_s: float = 60.0) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """What the incident builder makes for one stay: scene-1 at first sighting, scene-2 at open (dwell later),
    plate-1 with it, scene-3 half a dwell (≥ 30 s) after that. Real JPEGs from ``render_still``."""
    times = {
        "scene-1.jpg": start,
        "scene-2.jpg": start + timedelta(seconds=dwell_s),
        "plate-1.jpg": start + timedelta(seconds=dwell_s),
        "scene-3.jpg": start + timedelta(seconds=dwell_s + max(30.0, dwell_s / 2)),
    }
    files: dict[str, bytes] = {}
    evidence: list[dict[str, Any]] = []
    for n, (name, t) in enumerate(times.items()):
        img = _scene(n)
        if name.startswith("plate"):
            crop = crop_upscaled(img, (170, 150, 210, 162))
            data = render_still(crop, ["京A12345"])
        else:
            data = render_still(
                img, format_caption(t, "gate-east", "fire-lane-3", "fangshan/xilu"), [(BOX, "car")]
            )
        files[name] = data
        evidence.append(
            {
                "name": name,
                "taken_at": t.isoformat().replace("+00:00", "Z"),
                "sha256": sha256_hex(data),
                "kind": "plate" if name.startswith("plate") else "scene",
            }
        )
    return evidence, files


def make_event(start: datetime, dwell_s: float = 60.0, **over: Any) -> dict[str, Any]:
    last = start + timedelta(seconds=dwell_s + max(30.0, dwell_s / 2))
    ev: dict[str, Any] = {
        "id": "0192f1c2-0000-7000-8000-000000000001",
        "type": "illegal_parking",
        "state": "update",
        "camera_id": "gate-east",
        "zone_id": "fire-lane-3",
        "started_at": start.isoformat().replace("+00:00", "Z"),
        "updated_at": last.isoformat().replace("+00:00", "Z"),
        "dwell_s": (last - start).total_seconds(),
        "allowed_dwell_s": dwell_s,
        "violation_code": "1039",
        "object": {
            "label": "vehicle",
            "track_id": 7,
            "confidence": 0.9,
            "box_xyxy": list(BOX),
            "plate": {"text": "京A12345", "confidence": 0.88},
        },
        "grid": "fangshan/xilu/haiyi/0421",
        "seq": 1,
    }
    ev.update(over)
    return ev


START = datetime(2026, 11, 26, 8, 0, 5, tzinfo=UTC)


def _pack(dwell_s: float = 60.0, drop: tuple[str, ...] = (), **over: Any) -> bytes:
    evidence, files = make_stills(START, dwell_s)
    evidence = [e for e in evidence if e["name"] not in drop]
    ev = make_event(START, dwell_s, evidence=evidence, **over)
    manifest = build_manifest(ev, evidence, present=files, camera_name="东门", timezone="Asia/Shanghai")
    return pack_bytes(manifest, {k: v for k, v in files.items() if k not in drop})


def _rewrite(data: bytes, changes: dict[str, bytes]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, changes.get(info.filename, src.read(info)))
    return buf.getvalue()


def test_pack_layout_and_manifest():
    data = _pack()
    assert verify_pack(data) == []
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(zf.namelist()) == [
        SUMS,
        "evidence/plate-1.jpg",
        "evidence/scene-1.jpg",
        "evidence/scene-2.jpg",
        "evidence/scene-3.jpg",
        MANIFEST,
    ]
    m = json.loads(zf.read(MANIFEST))
    assert m["plate_text"] == "京A12345" and m["plate_confidence"] == 0.88
    assert (m["device_id"], m["device_name"], m["location_code"]) == (
        "gate-east",
        "东门",
        "fangshan/xilu/haiyi/0421",
    )
    assert (m["violation_code"], m["zone_id"], m["allowed_dwell_s"]) == ("1039", "fire-lane-3", 60.0)
    assert m["start_time"] == "2026-11-26T08:00:05Z" and m["start_time_local"].endswith("+08:00")
    assert [i["name"] for i in m["images"]] == ["scene-1.jpg", "scene-2.jpg", "plate-1.jpg", "scene-3.jpg"]
    assert m["chain_hash"] == chain_hash([(i["name"], i["sha256"]) for i in m["images"]])
    for line in zf.read(SUMS).decode().splitlines():  # sha256sum -c format
        digest, path = line.split("  ")
        assert sha256_hex(zf.read(path)) == digest


def test_tampered_image_is_detected():
    data = _pack()
    zf = zipfile.ZipFile(io.BytesIO(data))
    jpeg = bytearray(zf.read("evidence/scene-2.jpg"))
    jpeg[len(jpeg) // 2] ^= 0xFF
    problems = verify_pack(_rewrite(data, {"evidence/scene-2.jpg": bytes(jpeg)}))
    assert any("scene-2.jpg" in p and "manifest" in p for p in problems), problems
    assert any("scene-2.jpg" in p and SUMS in p for p in problems), problems


def test_tampered_manifest_is_detected():
    data = _pack()
    zf = zipfile.ZipFile(io.BytesIO(data))
    m = json.loads(zf.read(MANIFEST))
    m["plate_text"] = "京B99999"
    problems = verify_pack(_rewrite(data, {MANIFEST: json.dumps(m).encode()}))
    assert problems == [f"sha256 of {MANIFEST} does not match {SUMS}"]


def test_forged_image_with_rewritten_hashes_breaks_the_chain():
    """Swap an image and fix up its sha256 in the manifest and SHA256SUMS: the chain hash still tells."""
    data = _pack()
    zf = zipfile.ZipFile(io.BytesIO(data))
    forged = render_still(_scene(99), ["forged"])
    m = json.loads(zf.read(MANIFEST))
    for im in m["images"]:
        if im["name"] == "scene-3.jpg":
            im["sha256"] = sha256_hex(forged)
    doc = json.dumps(m).encode()
    sums = (
        "".join(
            f"{sha256_hex(b)}  {p}\n"
            for p, b in [
                (MANIFEST, doc),
                *((n, zf.read(n)) for n in zf.namelist() if n.startswith("evidence/")),
            ]
            if p != "evidence/scene-3.jpg"
        )
        + f"{sha256_hex(forged)}  evidence/scene-3.jpg\n"
    )
    problems = verify_pack(
        _rewrite(data, {MANIFEST: doc, SUMS: sums.encode(), "evidence/scene-3.jpg": forged})
    )
    assert problems == ["the chain hash does not match the images listed in the manifest"]


@pytest.mark.parametrize(
    ("kw", "expect"),
    [
        ({"drop": ("scene-3.jpg",)}, "2 scene stills"),
        ({"drop": ("plate-1.jpg",)}, "no plate close-up"),
        ({"allowed_dwell_s": 300.0}, "more than the allowed dwell (300.0 s) apart"),
        ({"allowed_dwell_s": None}, "allowed dwell"),
    ],
)
def test_thin_evidence_is_reported(kw, expect):
    problems = verify_pack(_pack(**kw))
    assert any(expect in p for p in problems), problems


def test_stills_outside_the_stay_do_not_count():
    later = (START + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    problems = verify_pack(_pack(started_at=later, updated_at=later))
    assert any("0 scene stills" in p for p in problems), problems


def test_missing_image_and_junk():
    evidence, files = make_stills(START)
    ev = make_event(START, evidence=evidence)
    present = [n for n in files if n != "scene-1.jpg"]
    data = pack_bytes(build_manifest(ev, evidence, present=present), files)
    assert "image scene-1.jpg is not in the pack" in verify_pack(data)
    assert verify_pack(b"not a zip")[0].startswith("not a zip file")
    assert verify_pack(_rewrite(_pack(), {})) == []  # re-zipped with other compression: still fine


def test_cli_verify_pack(tmp_path):
    from pipeline.cli import app

    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    good.write_bytes(_pack())
    bad.write_bytes(_pack(drop=("plate-1.jpg",)))
    runner = CliRunner()
    r = runner.invoke(app, ["verify-pack", str(good)])
    assert r.exit_code == 0 and "ok" in r.output
    r = runner.invoke(app, ["verify-pack", str(good), str(bad)])
    assert r.exit_code == 1 and "FAILED" in r.output and "plate" in r.output
