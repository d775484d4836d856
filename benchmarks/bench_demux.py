"""What reading N RTSP cameras costs before any decoding: PyAV demux in one process, one thread per camera.

    pingan bench demux [--cameras 27,54,108] [--window-s 15] [--quick] [--out FILE]
    .venv/bin/python -m benchmarks.bench_demux …                                     (the same)

Each row runs in a fresh sub-process: N threads, each ``av.open(rtsp://…)`` with pingan's options and a
``for packet in container.demux(stream)`` loop that only counts bytes. It measures the process's CPU over
``--window-s`` (after a warm-up), the RTSP server's CPU, and the bytes each camera received (a row whose
cameras fell behind the stream's ~0.52 MB/s did not keep up, and its CPU figure is not comparable).

Variants, at each N:

- ``pyav_read_timeout``: ``av.open(timeout=(5, 5))``, what ``pipeline.sources.Source`` did before: PyAV
  installs an interrupt callback that takes the GIL on every FFmpeg I/O call (several per RTP packet);
- ``socket_timeout``: ``av.open(timeout=(5, None))`` plus FFmpeg's ``timeout`` option, what Source does now
  (reads on a silent socket still fail after the option's time);
- ``udp``: as ``socket_timeout`` over RTP/UDP instead of RTSP-interleaved TCP (for comparison; pingan
  defaults to TCP: no loss on busy networks).

``--clients-per-path K`` adds rows where K cameras share a server path, so their packets arrive at the same
instant (the worst case for GIL traffic). Ratios are to ``pyav_read_timeout`` at the same N, in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CACHE_DIR,
    cpu_seconds,
    loadavg,
    machine_info,
    note,
    now_iso,
    result_path,
    rounded,
    write_json,
)

VARIANTS = ("pyav_read_timeout", "socket_timeout", "udp")


def _open(url: str, variant: str) -> Any:
    import av

    from pipeline.sources import open_rtsp

    if variant != "pyav_read_timeout":
        return open_rtsp(url, "udp" if variant == "udp" else "tcp", 5.0, 5.0)
    options = {"rtsp_transport": "tcp", "timeout": "5000000", "analyzeduration": "0", "probesize": "32768"}
    return av.open(url, options=options | {"fpsprobesize": "0"}, timeout=(5.0, 5.0))  # Source before 9aa4128


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    urls: list[str] = spec["urls"]
    stop = threading.Event()
    got = [0] * len(urls)
    errors: list[str] = []

    def reader(i: int) -> None:
        try:
            with _open(urls[i], spec["variant"]) as container:
                stream = container.streams.video[0]
                for pkt in container.demux(stream):
                    got[i] += pkt.size
                    if stop.is_set():
                        return
        except Exception as err:  # reported in the row, the others go on
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(len(urls))]
    for t in threads:
        t.start()
        time.sleep(1.0 / len(urls))  # connections spread over a second, like independent cameras
    time.sleep(spec["warmup_s"])
    b0, c0, t0 = list(got), time.process_time(), time.monotonic()  # not /proc ticks: 10 ms steps
    time.sleep(spec["window_s"])
    wall = time.monotonic() - t0
    cores = (time.process_time() - c0) / wall
    rates = [(b - a) / wall / 1e6 for a, b in zip(b0, got, strict=True)]
    stop.set()
    for t in threads:
        t.join(10)
    return {
        "client_cores": cores,
        "client_cores_per_camera": cores / len(urls),
        "mb_per_s_per_camera": {"min": min(rates), "mean": sum(rates) / len(rates)},
        "errors": errors[:5],
    }


def _row(server: Any, variant: str, n: int, per_path: int, opts: argparse.Namespace) -> dict[str, Any]:
    paths = max(1, n // per_path)
    spec = {
        "variant": variant,
        "urls": [f"{server.url}/s{i % paths}" for i in range(n)],
        "warmup_s": opts.warmup_s,
        "window_s": opts.window_s,
    }
    s0, t0 = cpu_seconds(server.pid), time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_demux", "--row", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120 + opts.warmup_s + opts.window_s,
        check=False,
    )
    wall = time.monotonic() - t0
    row: dict[str, Any] = {"variant": variant, "cameras": n, "clients_per_path": per_path}
    if proc.returncode != 0:
        row["error"] = proc.stderr[-1500:]
    else:
        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    row["server_cpu_cores"] = (cpu_seconds(server.pid) - s0) / wall  # over the whole row, start-up included
    note(
        f"{variant:>18} N={n:<4} per_path={per_path} "
        f"client={row.get('client_cores', float('nan')):.3f} cores "
        f"({1000 * row.get('client_cores_per_camera', float('nan')):.2f} m/camera) "
        f"min={row.get('mb_per_s_per_camera', {}).get('min', float('nan')):.2f} MB/s "
        f"server={row['server_cpu_cores']:.2f}"
    )
    return row


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bench_cameras import Server, make_clips

    started = now_iso()
    clips = make_clips(opts.cache_dir, seconds=12.0)
    counts = [int(x) for x in opts.cameras.split(",")]
    log_dir = opts.cache_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = Server({f"s{i}": clips["street"] for i in range(max(counts))}, log_dir / "demux-server.log")
    server.start()
    rows: list[dict[str, Any]] = []
    try:
        for n in counts:
            for variant in VARIANTS:
                rows.append(_row(server, variant, n, 1, opts))
            if opts.clients_per_path > 1:
                for variant in ("pyav_read_timeout", "socket_timeout"):
                    rows.append(_row(server, variant, n, opts.clients_per_path, opts))
    finally:
        server.stop()
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["variant"] == "pyav_read_timeout"
                and r["cameras"] == row["cameras"]
                and r["clients_per_path"] == row["clients_per_path"]
            ),
            None,
        )
        if base and "client_cores" in base and "client_cores" in row and row["client_cores"] > 0:
            row["cost_vs_pyav_read_timeout"] = row["client_cores"] / base["client_cores"]
    return rounded(
        {
            "bench": "demux",
            "started": started,
            "finished": now_iso(),
            "command": "pingan bench demux " + " ".join(opts.argv),
            "machine": machine_info(),
            "loadavg_at_end": loadavg(),
            "clip": {"path": clips["street"], **clips["format"]},
            "what": __doc__.split("\n\n")[2].strip() if __doc__ else "",
            "options": _options(opts),
            "rows": rows,
        }
    )


def _options(opts: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items() if k != "argv"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pingan bench demux", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", default="27,54,108", help="comma-separated camera counts")
    ap.add_argument("--window-s", type=float, default=15.0)
    ap.add_argument("--warmup-s", type=float, default=4.0)
    ap.add_argument("--clients-per-path", type=int, default=6, help="rows with K cameras per path (1: none)")
    ap.add_argument("--quick", action="store_true", help="2 cameras, 2 s windows: a smoke run for tests")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    if opts.row:
        print(json.dumps(run_row(json.loads(opts.row))))
        return 0
    opts.argv = argv
    if opts.quick:
        opts.cameras, opts.window_s, opts.warmup_s, opts.clients_per_path = "2", 2.0, 1.0, 2
    result = run(opts)
    path = result_path("demux", opts.out, quick=opts.quick)
    write_json(path, result)
    note(f"wrote {path}")
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
