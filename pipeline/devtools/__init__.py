"""Developer tools: the looping RTSP test server (run with /usr/bin/python3)."""
