"""Fixtures of the reliability suite: real CCTV footage for `pingan run` (as tests/integration uses)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.devtools.demo import VTEST, courtyard_clip


@pytest.fixture(scope="session")
def courtyard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not VTEST.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{VTEST} missing: scripts/setup-system.sh installs opencv-doc")
        pytest.skip(f"{VTEST} missing")
    path = tmp_path_factory.mktemp("reliability") / "courtyard.mp4"
    courtyard_clip(path)
    return path
