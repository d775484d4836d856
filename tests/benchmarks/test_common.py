"""The benchmarks' /proc accounting (benchmarks/common.py)."""

from __future__ import annotations

import threading
import time

from benchmarks.common import ThreadCpuWindow, thread_role


def test_thread_roles_come_from_the_name_before_its_instance_suffix() -> None:
    assert thread_role("source-cam3") == "source"
    assert thread_role("infer-r2") == "infer"
    assert thread_role("MainThread") == "MainThread"
    assert thread_role("") == "native"


def test_a_busy_threads_cpu_is_charged_to_its_role_and_an_idle_ones_is_not() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    busy = threading.Thread(target=spin, name="spin-1")
    idle = threading.Thread(target=stop.wait, name="idle-1")
    busy.start()
    idle.start()
    try:
        window = ThreadCpuWindow().start()
        time.sleep(1.0)
        roles = window.cores({t.native_id or 0: t.name for t in threading.enumerate()})
    finally:
        stop.set()
        busy.join(5)
        idle.join(5)
    spin_cores = roles["spin"]["user"] + roles["spin"]["system"]
    # it holds the GIL while the main thread sleeps: most of a core, on any box with one free
    assert spin_cores > 0.5, roles
    assert roles.get("idle", {"user": 0.0, "system": 0.0})["user"] < 0.05, roles
    assert next(iter(roles)) == "spin", "roles are listed costliest first"
