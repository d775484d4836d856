#!/usr/bin/python3
"""Thin alias of the looping RTSP test server in pipeline/devtools/rtsp_server.py (run with /usr/bin/python3).

    /usr/bin/python3 tests/rtsp_server.py [--port 0] [--user U --password P] NAME=FILE.mp4 ...

Tests normally use the ``rtsp_server`` fixture (tests/fixtures/rtsp.py) instead.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "pipeline" / "devtools" / "rtsp_server.py"

if __name__ == "__main__":
    sys.argv[0] = str(SCRIPT)
    runpy.run_path(str(SCRIPT), run_name="__main__")
