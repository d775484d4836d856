"""How ``pingan bench cameras`` runs a trial's processes (benchmarks/bench_cameras.py)."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.bench_cameras import _communicate_all


def test_a_trials_processes_run_at_the_same_time() -> None:
    # Each reads its spec from stdin, works 1 s, answers. Fed and read in turn, three took 3 s: the
    # "2 processes × N/2 cameras" lever ran each half alone on the box and summed their CPU.
    code = "import sys, time; spec = sys.stdin.read(); time.sleep(1.0); print('got', spec)"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    t0 = time.monotonic()
    outs = _communicate_all(procs, ["a", "b", "c"], timeout_s=30)
    wall = time.monotonic() - t0
    assert [o.strip() for o in outs] == ["got a", "got b", "got c"]
    assert wall < 2.5, f"three 1 s processes took {wall:.1f} s: they ran one after another"
