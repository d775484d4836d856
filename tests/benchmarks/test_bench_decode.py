"""benchmarks.bench_decode's file part: what it times is what it says it times."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_decode import bench_file
from pipeline.devtools.clips import make_clip


def test_file_decode_rows_count_every_frame_and_every_keyframe(tmp_path: Path) -> None:
    # B-frames: the readers' keyframe decoder gives nothing for a keyframe until drained, and a bench that
    # did not drain it would time 2 keyframes fewer than it counts (and report a lower cost per keyframe)
    clip = make_clip(tmp_path / "b.mp4", seconds=3, fps=10, size=(320, 180), gop=10, bframes=2)
    rows = bench_file(clip)
    assert rows["full_1thread"]["frames"] == 30
    assert rows["keyframes_pipeline_decoder"]["frames"] == 3
    assert rows["keyframes_1thread"]["frames"] == 3
    assert all(r["cpu_ms_per_frame"] > 0 for r in rows.values())
