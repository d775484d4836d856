"""The benchmarks' quick modes run end to end and write well-formed JSON with sane values.

Timing targets live in the benchmarks' results (benchmarks/results/), never here: these tests only prove that
the harness works on this machine, whatever its load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.rtsp import require_gst_rtsp

pytestmark = pytest.mark.slow


def _load(path: Path, kind: str) -> dict[str, Any]:
    files = sorted(path.glob("*.json"))
    assert len(files) == 1, files
    assert files[0].name.startswith(f"{kind}-"), files[0].name
    return json.loads(files[0].read_text())


def _machine_ok(machine: dict[str, Any]) -> None:
    assert machine["cpu_model"] and machine["cores"] >= 1
    assert machine["memory_mib"] > 0
    assert "CPUExecutionProvider" in machine["onnxruntime_providers"]
    for lib in ("onnxruntime", "av", "opencv", "numpy"):
        assert machine["versions"][lib], lib


@pytest.mark.rtsp
def test_bench_cameras_quick(tmp_path: Path) -> None:
    require_gst_rtsp()
    from benchmarks import bench_cameras

    out = tmp_path / "out"
    out.mkdir()
    levers = "parking_gate_on,event_to_api,substream,full_decode,gop2s_keyframes"
    args = [
        "--quick",
        "--levers",
        "--lever-names",
        levers,
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert bench_cameras.main(args) == 0
    result = _load(out, "cameras")
    _machine_ok(result["machine"])
    assert result["bench"] == "cameras" and result["quick"] is True
    assert result["clips"]["format"] == {
        "width": 1920,
        "height": 1080,
        "fps": 25,
        "gop": 25,
        "bitrate_bps": 4_000_000,
    }
    sub = result["clips"]["sub_format"]
    assert (sub["width"], sub["height"], sub["gop"], sub["bitrate_bps"]) == (640, 360, 25, 512_000)
    assert 0 < result["clips"]["bytes"]["street_sub"] < result["clips"]["bytes"]["street"]
    assert 0 < result["clips"]["bytes"]["lot_sub"] < result["clips"]["bytes"]["lot"]
    summary = result["summary"]
    for key in ("pingan_max_cameras", "naive_max_cameras", "ratio_pingan_over_naive", "pingan_at_max"):
        assert key in summary
    modes = {row["mode"] for row in result["trials"]}
    assert modes == {"pingan", "naive"}
    cores = result["machine"]["cores"]
    ran = [row for row in result["trials"] if "error" not in row]
    assert ran, result["trials"]
    for row in ran:
        assert 0 <= row["cpu_cores"] <= cores + 0.5
        assert row["rss_mib"]["end"] > 0
        assert row["results_per_s_per_camera"]["min"] >= 0
        assert row["dropped_frames"] >= 0
        if row["mode"] == "pingan":  # decoded, then replaced while waiting (counted apart from the rest)
            assert row["dropped_after_decode"] >= 0
        if row["latency_s"]["samples"]:
            assert 0 <= row["latency_s"]["p50"] <= row["latency_s"]["p95"] <= row["latency_s"]["max"]
        assert row["server_cpu_cores"] >= 0
    # the real pipeline produced results: frames went through source, detector, tracker and rules
    assert any(row["latency_s"]["samples"] > 0 for row in ran if row["mode"] == "pingan")
    assert any(row["latency_s"]["samples"] > 0 for row in ran if row["mode"] == "naive")
    # where pingan's CPU went: its readers read and decoded, and the roles add up to no more than the process
    # used (threads that ended in the window are missing, not invented); where the detector ran (a gate
    # lever may carry a whole window forward: none) its threads' CPU is theirs — ~15 ms a call here, and
    # CPU time is counted in 10 ms ticks, so a few calls
    for row in (r for r in ran if r["mode"] == "pingan"):
        roles = {k: v["user"] + v["system"] for k, v in row["cpu_cores_by_thread_role"].items()}
        assert roles["source"] > 0, roles
        assert sum(roles.values()) <= row["cpu_cores"] + 0.05, (roles, row["cpu_cores"])
        if row["inference_calls"] >= 3:
            assert roles["infer"] > 0, (roles, row["label"], row["inference_calls"])
    assert any(r["inference_calls"] >= 3 for r in ran if r["mode"] == "pingan"), "the check above ran"
    # levers: rows for the ones asked for; the gate on a static scene carries results forward
    rows = {row["lever"]: row for row in result["levers"]}
    assert {"baseline", "parking_gate_on", "event_to_api", "substream"} <= set(rows)
    gate = rows["parking_gate_on"]
    assert gate["static_gate"] is True and gate["inference_calls"] + gate["gated"] > 0
    api = rows["event_to_api"]["event_to_api_s"]
    assert api["readable"] <= api["opened"]
    if api["readable"]:
        assert 0 <= api["p50"] <= api["max"]
    # detection on the sub-stream; the main stream only demuxed, its keyframes kept for evidence
    sub_row = rows["substream"]
    assert sub_row["substream"] is True and "sub_urls" not in sub_row["settings"]
    assert sub_row["latency_s"]["samples"] > 0 and sub_row["evidence_keyframes"] > 0
    assert sub_row["main_stream_connects"] >= 0 and set(sub_row["main_streams_connected"]) == {"start", "end"}
    # every frame decoded: the bench's own reader joins the stream mid-GOP (random phase) and still decodes
    assert rows["full_decode"]["latency_s"]["samples"] > 0, rows["full_decode"].get("error")
    assert rows["baseline"]["cameras_decoding_every_frame"] == 0
    # a keyframe every 2 s at 1 det/s: each keyframe detected alone, held to half the rate
    gop = rows["gop2s_keyframes"]
    assert gop["expect_fps"] == 0.5 and gop["cameras_decoding_every_frame"] == 0, gop.get("error")
    assert gop["latency_s"]["samples"] > 0 and result["clips"]["bytes"]["street_gop2s"] > 0
    assert [b["lever"] for b in result["summary"]["levers"]] == [r["lever"] for r in result["levers"]]


def _lever_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: str
) -> tuple[Any, list[str], dict[str, dict[str, Any]]]:
    """The lever table for ``names`` at 2 cameras, its trials faked: (runner, levers run, each trial's
    keyword arguments by label)."""
    from benchmarks import bench_cameras

    opts = bench_cameras.Options(levers=True, lever_names=names)
    server = bench_cameras.Server({}, tmp_path / "server.log")
    server.url = "rtsp://127.0.0.1:8554"
    runner = bench_cameras.Runner(opts, server, tmp_path)
    calls: dict[str, dict[str, Any]] = {}

    def trial(mode: str, n: int, **kw: Any) -> dict[str, Any]:
        calls[kw["label"]] = kw
        return {"mode": mode, "n": n, "label": kw["label"], "keeps_up": True}

    monkeypatch.setattr(runner, "trial", trial)
    return runner, [r["lever"] for r in runner.levers(2)], calls


def test_bench_cameras_lot_substream_lever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quiet-camera sub-stream lever is the packet-gate lever plus the lot clip's sub-stream paths."""
    runner, ran, calls = _lever_calls(tmp_path, monkeypatch, "lot_packet_gate,lot_substream")
    assert ran == ["baseline", "lot_packet_gate", "lot_substream"]
    gate, sub = calls["lot_packet_gate"], calls["lot_substream"]
    assert sub.pop("sub_clip") == "lsub" and sub.pop("label") == "lot_substream"
    gate.pop("label")
    assert sub == gate and gate["clip"] == "l" and gate["packet_gate"] is True
    assert runner.urls("lsub", 2) == ["rtsp://127.0.0.1:8554/lsub0", "rtsp://127.0.0.1:8554/lsub1"]


def test_bench_cameras_gop2s_levers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2 s GOP levers: the same clip, every frame decoded (floor = detect_fps) or keyframes at half."""
    runner, ran, calls = _lever_calls(tmp_path, monkeypatch, "gop2s_every_frame,gop2s_keyframes")
    assert ran == ["baseline", "gop2s_every_frame", "gop2s_keyframes"]
    every, keys = calls["gop2s_every_frame"], calls["gop2s_keyframes"]
    rate = runner.opts.target_fps
    assert every["clip"] == keys["clip"] == "g"
    assert every["min_detect_fps"] == rate and "expect_fps" not in every
    assert keys["expect_fps"] == rate / 2 and "min_detect_fps" not in keys


@pytest.mark.rtsp
def test_bench_demux_quick(tmp_path: Path) -> None:
    require_gst_rtsp()
    from benchmarks import bench_demux

    out = tmp_path / "out"
    out.mkdir()
    assert bench_demux.main(["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    result = _load(out, "demux")
    _machine_ok(result["machine"])
    rows = result["rows"]
    variants = ["pyav_read_timeout", "socket_timeout", "udp"]
    assert [(r["variant"], r["clients_per_path"]) for r in rows] == [(v, 1) for v in variants] + [
        ("pyav_read_timeout", 2),
        ("socket_timeout", 2),
    ]
    for r in rows:
        assert not r["errors"] and r["cameras"] == 2
        assert 0 < r["client_cores"] < 2.5 and r["server_cpu_cores"] > 0
        assert r["mb_per_s_per_camera"]["min"] > 0.1  # every camera was read (the clip sends ~0.52 MB/s)
        assert r["cost_vs_pyav_read_timeout"] > 0


def test_bench_detector_quick(tmp_path: Path) -> None:
    from benchmarks import bench_detector

    assert bench_detector.main(["--quick", "--out", str(tmp_path)]) == 0
    result = _load(tmp_path, "detector")
    _machine_ok(result["machine"])
    cpu = [c for c in result["configs"] if c["provider"] == "CPUExecutionProvider"]
    assert cpu and "error" not in cpu[0], cpu
    rows = cpu[0]["rows"]
    assert {r["kind"] for r in rows} == {"raw", "detector"}
    assert {r["batch"] for r in rows} == {1, 2}
    for r in rows:
        assert r["ms_per_image"] > 0 and r["images_per_s"] > 0
        assert abs(r["ms_per_image"] * r["images_per_s"] - 1000) < 1
    if cpu[0]["batch_dim_freed"]:
        assert cpu[0]["batch_copy_max_abs_diff"] < 1e-3
    assert result["fastest_detector_rows"]


def test_bench_api_quick(tmp_path: Path) -> None:
    from benchmarks import bench_api

    out = tmp_path / "out"
    out.mkdir()
    args = ["--quick", "--events", "2000", "--ingest-s", "2", "--out", str(out), "--work-dir", str(tmp_path)]
    assert bench_api.main(args) == 0
    result = _load(out, "api")
    _machine_ok(result["machine"])
    assert result["database"]["backend"] == "sqlite"
    assert result["fill"]["events"] == 2000 and "not via HTTP" in result["fill"]["method"]
    gets = result["get_events"]
    assert gets["newest_page"]["items"] == 50
    for name in ("newest_page", "by_camera", "by_type", "one_day_range", "cursor_10_pages"):
        assert 0 < gets[name]["p50_ms"] <= gets[name]["p95_ms"], name
    ingest = result["ingest"]
    assert ingest["errors"] == 0, ingest["error_samples"]
    assert ingest["events_per_s"] > 0 and set(ingest["status_counts"]) == {"201"}
    assert ingest["server_cpu_cores"] >= 0
    batched = result["ingest_batch"]
    assert batched["route"] == "POST /api/events/batch" and batched["events_per_request"] == 100
    assert batched["errors"] == 0, batched["error_samples"]
    assert set(batched["status_counts"]) == {"200"} and set(batched["event_counts"]) == {"created"}
    assert batched["events_per_s"] > 0 and batched["event_counts"]["created"] == 100 * batched["requests"]
    assert result["ingest_batch_over_single"] == pytest.approx(
        batched["events_per_s"] / ingest["events_per_s"], rel=1e-3
    )
