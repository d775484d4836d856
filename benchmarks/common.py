"""Shared benchmark helpers: machine facts, CPU/RSS accounting from /proc, percentiles, the JSON writer.

Nothing here is imported by the runtime (``pipeline``/``api``); benchmarks import the runtime, never back.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
CACHE_DIR = ROOT / "var" / "bench"
_TICK = os.sysconf("SC_CLK_TCK")


# ---- /proc accounting --------------------------------------------------------------------------------------


def _ticks(stat: Path) -> tuple[int, int]:
    """(utime, stime) clock ticks from a /proc …/stat file (fields 14, 15); OSError if it is gone."""
    text = stat.read_text()
    fields = text[text.rindex(")") + 2 :].split()  # fields after the command name; state is fields[0]
    return int(fields[11]), int(fields[12])


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat; 0.0 if it is gone."""
    try:
        return sum(_ticks(Path(f"/proc/{pid}/stat"))) / _TICK
    except OSError:
        return 0.0


def children_of(pid: int) -> list[int]:
    """Direct and indirect child processes of ``pid`` (by scanning /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            parents[int(entry.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its living descendants."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children_of(pid))


def rss_mib(pid: int | str = "self", peak: bool = False) -> float:
    """Resident set size (VmRSS, or VmHWM with ``peak``) in MiB; 0.0 if unknown."""
    key = "VmHWM:" if peak else "VmRSS:"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_stat() -> tuple[int, int]:
    """The whole box's (total, idle) CPU ticks so far, from /proc/stat (idle includes iowait)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)


def busy_cores(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Cores the whole box was busy between two ``proc_stat()`` snapshots."""
    total, idle = b[0] - a[0], b[1] - a[1]
    return (1 - idle / max(total, 1)) * (os.cpu_count() or 1)


@dataclass
class CpuWindow:
    """CPU cores used by a process over a wall-clock window: ``Δ(utime+stime) / Δwall``; and the whole
    box's busy cores over the same window (``box_cores``)."""

    pid: int | str = "self"
    t0: float = 0.0
    c0: float = 0.0
    box0: tuple[int, int] = (0, 0)

    def start(self) -> CpuWindow:
        self.t0, self.c0, self.box0 = time.monotonic(), cpu_seconds(self.pid), proc_stat()
        return self

    def cores(self) -> float:
        dt = max(time.monotonic() - self.t0, 1e-6)
        return (cpu_seconds(self.pid) - self.c0) / dt

    def box_cores(self) -> float:
        return busy_cores(self.box0, proc_stat())


def thread_ticks() -> dict[int, tuple[int, int]]:
    """This process's threads' (utime, stime) clock ticks so far, by native thread id."""
    out: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            out[int(entry.name)] = _ticks(entry / "stat")
    return out


def thread_role(name: str) -> str:
    """A Python thread's role from its name: the part before a per-instance suffix (``source-cam3`` →
    ``source``, ``infer-0`` → ``infer``); threads Python did not start (FFmpeg's, ONNX Runtime's) are
    ``native``."""
    return name.split("-", 1)[0] if name else "native"


@dataclass
class ThreadCpuWindow:
    """Where a process's CPU went over a window, by thread role (see ``thread_role``), user and system
    apart: which work — reading and decoding, inference, tracking and rules — costs what. Threads that
    ended inside the window are missing from it (their time is in the process total, not here)."""

    t0: float = 0.0
    ticks0: dict[int, tuple[int, int]] | None = None

    def start(self) -> ThreadCpuWindow:
        self.t0, self.ticks0 = time.monotonic(), thread_ticks()
        return self

    def cores(self, names: dict[int, str]) -> dict[str, dict[str, float]]:
        """``{role: {"user": cores, "system": cores}}`` over the window; ``names`` maps native thread ids to
        Python thread names (``{t.native_id: t.name for t in threading.enumerate()}``)."""
        dt = max(time.monotonic() - self.t0, 1e-6)
        before = self.ticks0 or {}
        out: dict[str, dict[str, float]] = {}
        for tid, (u1, s1) in thread_ticks().items():
            u0, s0 = before.get(tid, (0, 0))
            role = out.setdefault(thread_role(names.get(tid, "")), {"user": 0.0, "system": 0.0})
            role["user"] += (u1 - u0) / _TICK / dt
            role["system"] += (s1 - s0) / _TICK / dt
        return costliest_first(out)


def costliest_first(roles: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Thread roles ordered by their cores, user and system together, the costliest first."""
    return dict(sorted(roles.items(), key=lambda kv: -sum(kv[1].values())))


def loadavg() -> list[float]:
    with contextlib.suppress(OSError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return []


# ---- statistics --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rounded(value: Any, digits: int = 4) -> Any:
    """Round floats (recursively in dicts/lists) for readable JSON."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


# ---- machine facts -----------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        from pipeline.detection import cpu_flags
    except ImportError:  # a GPU box without the runtime's dependencies (benchmarks/bench_detector_torch.py)
        return []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    with contextlib.suppress(OSError):
        flags = cpu_flags(Path("/proc/cpuinfo").read_text())
        return [f for f in wanted if f in flags]
    return []


def _mem_total_mib() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return None


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return [line.strip() for line in r.stdout.splitlines() if line.strip()]
    return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return r.stdout.strip() or None
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU, accelerator providers, library versions, load at the time of asking."""
    providers: list[str] = []
    with contextlib.suppress(Exception):
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_mib": _mem_total_mib(),
        "gpus": _gpus(),
        "onnxruntime_providers": providers,
        "versions": {
            name: _version(dist)
            for name, dist in (
                ("onnxruntime", "onnxruntime"),
                ("onnxruntime_gpu", "onnxruntime-gpu"),
                ("av", "av"),
                ("opencv", "opencv-python-headless"),
                ("numpy", "numpy"),
                ("fastapi", "fastapi"),
                ("uvicorn", "uvicorn"),
                ("sqlalchemy", "sqlalchemy"),
                ("httpx", "httpx"),
            )
        },
        "git_commit": _git_commit(),
        "loadavg_at_start": loadavg(),
    }


# ---- output ------------------------------------------------------------------------------------------------


def result_path(
    kind: str, out: Path | None = None, when: datetime | None = None, quick: bool = False
) -> Path:
    """``benchmarks/results/<kind>-<hostname>-<YYYY-MM-DD>.json``, or ``out`` (a file, or a folder for it).
    Quick (smoke) runs default to ``var/bench/results/`` so they never overwrite a committed result."""
    when = when or datetime.now(UTC)
    name = f"{kind}-{socket.gethostname()}-{when:%Y-%m-%d}.json"
    if out is None:
        return (CACHE_DIR / "results" if quick else RESULTS_DIR) / name
    return out / name if out.is_dir() or out.suffix != ".json" else out


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rounded(payload), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def note(message: str) -> None:
    """Progress to stderr (stdout carries machine-readable lines in trial sub-processes)."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def first(items: Iterable[Any], default: Any = None) -> Any:
    return next(iter(items), default)


def reshaped_nanodet(src: Path, size: int, keep_square: bool = False) -> Path:
    """``src`` (a NanoDet ONNX file) re-shaped to ``size`` wide by models/build_nanodet.py's re-shape (same
    weights and ops; ``keep_square``: a fixed square input, else a free height), built once into the cache."""
    import contextlib
    import importlib.util
    import sys

    out = CACHE_DIR / f"{src.stem}-{size}{'-square' if keep_square else ''}.onnx"
    if not out.exists():
        spec = importlib.util.spec_from_file_location("build_nanodet", ROOT / "models" / "build_nanodet.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.onnx")
        with contextlib.redirect_stdout(sys.stderr):
            mod.reshape_build(src, tmp, size, keep_square=keep_square)
        tmp.replace(out)
    return out


def same_session(det: Any, threshold: float | None = None, square: bool = False) -> Any:
    """``det`` (an OnnxDetector) on the same ORT session with another score threshold and/or its free input
    height pinned to the full square (frames stretched, as before the height was free)."""
    from pipeline.detection import OnnxDetector

    update: dict[str, Any] = {}
    if threshold is not None:
        update["score_threshold"] = threshold
    if square:
        update["input"] = det.entry.input.model_copy(update={"dynamic_height": False})
    entry = det.entry.model_copy(update=update)
    return OnnxDetector(det.name, entry, det.session, det.sha256 or "", det.precision)
