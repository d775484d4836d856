"""How ``pingan bench cameras`` runs a trial's processes (benchmarks/bench_cameras.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench_cameras import Options, Runner, _communicate_all, _sum_roles


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


class ScriptedRunner(Runner):
    """The search without cameras: N keeps up when N ≤ ``knee``, except the scripted outcomes, taken in
    turn per N (a lucky pass at the knee, say)."""

    def __init__(self, knee: int, confirm: int, lucky: dict[int, list[bool]] | None = None) -> None:
        super().__init__(Options(confirm=confirm, budget_s=1e9), server=None, log_dir=Path("."))  # type: ignore[arg-type]
        self.knee, self.lucky = knee, {n: list(v) for n, v in (lucky or {}).items()}

    def trial(self, mode: str, n: int, **kw: Any) -> dict[str, Any]:
        script = self.lucky.get(n)
        return {"keeps_up": script.pop(0) if script else n <= self.knee}


def test_the_search_bisects_to_the_knee_and_confirms_it() -> None:
    r = ScriptedRunner(knee=40, confirm=1).search("pingan", 32, 64)
    assert r["max_cameras"] == 40 and r["confirmed"] is True
    assert r["tried"] == [32, 64, 48, 40, 44, 40]
    assert r["confirmations"] == [{"n": 40, "keeps_up": True}]


@pytest.mark.parametrize(("confirm", "want"), [(0, 44), (1, 40), (2, 40)])
def test_a_lucky_pass_at_the_knee_counts_only_without_confirmation(confirm: int, want: int) -> None:
    # 44 keeps up once by chance, then never again: with a confirmation the figure is the N that keeps up
    r = ScriptedRunner(knee=40, confirm=confirm, lucky={44: [True]}).search("pingan", 32, 64)
    assert r["max_cameras"] == want
    assert r["confirmed"] is (None if confirm == 0 else True)
    if confirm:
        assert r["confirmations"][0] == {"n": 44, "keeps_up": False}
        assert [c["n"] for c in r["confirmations"][1:]] == [40] * confirm


def test_processes_thread_roles_add_up_when_a_trial_is_split_across_processes() -> None:
    a = {"source": {"user": 0.5, "system": 0.1}, "infer": {"user": 0.3, "system": 0.0}}
    b = {"infer": {"user": 0.4, "system": 0.1}, "camera": {"user": 0.02, "system": 0.0}}
    merged = _sum_roles([a, b])
    assert merged == {
        "infer": {"user": 0.7, "system": 0.1},
        "source": {"user": 0.5, "system": 0.1},
        "camera": {"user": 0.02, "system": 0.0},
    }
    assert list(merged) == ["infer", "source", "camera"], "costliest first"
