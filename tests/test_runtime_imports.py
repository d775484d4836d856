"""The runtime never imports ultralytics or torch (they are the optional `train` extra)."""

from __future__ import annotations

import subprocess
import sys

RUNTIME_MODULES = [
    "pipeline.cli",
    "pipeline.supervisor",
    "pipeline.worker",
    "pipeline.detection",
    "pipeline.sources",
    "pipeline.outbox",
    "pipeline.evidence",
    "api.app",
]


def test_runtime_does_not_import_training_stacks() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics', 'tensorflow'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
