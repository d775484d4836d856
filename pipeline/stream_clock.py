"""A live stream's capture times on the box's wall clock.

A camera stamps its frames with its own clock (RTP timestamps). ``Frame.ts`` puts them on ours: capture =
anchor + stream time, where the anchor is the smallest (read time − stream time) seen, so that no frame is
stamped later than its packet was read and one read late (from a socket's backlog) shows how late it is.

The smallest over the whole connection is not good enough: two crystals never agree. When the camera's clock
runs slower than ours (tens to hundreds of ppm for a good one, 0.1 % for a camera that counts frames at a
nominal rate it does not quite keep), read − stream time grows steadily, and an anchor fixed at the
connection's start stamps every frame later and later behind its real capture time: hours in, every
keyframe looks seconds late, a reader that sheds stale keyframes sheds them all, and evidence carries a
drifted time. So the anchor is the minimum over the last ``window_s`` of stream time: a backlog shorter than
the window still shows in full (long enough to be shed), and a drifting clock costs at most window × drift
(30 s × 0.1 % = 0.03 s). A faster camera clock is followed at once (the minimum drops).
"""

from __future__ import annotations

from collections import deque

_RESET_S = 1.0  # stream time going back further than this is a new clock (a reset), not B-frame reordering


class StreamClock:
    """Sliding-window minimum of (read time − stream time), by stream time. Amortised O(1) per packet."""

    def __init__(self, window_s: float = 30.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        # (stream time, offset), offsets increasing from the front: the front is the window's minimum
        self._q: deque[tuple[float, float]] = deque()
        self._last_t: float | None = None

    def anchor(self, t: float, read_at: float) -> float:
        """Record a packet of stream time ``t`` read at ``read_at`` (wall seconds); return the anchor, so that
        the packet's capture time is ``anchor + t``, never after ``read_at``."""
        q, last = self._q, self._last_t
        if last is not None and t < last - _RESET_S:
            q.clear()
            last = None
        self._last_t = last = t if last is None else max(t, last)
        offset = read_at - t
        while q and q[-1][1] >= offset:
            q.pop()
        q.append((t, offset))
        horizon = last - self.window_s
        while len(q) > 1 and q[0][0] < horizon:
            q.popleft()
        return q[0][1]
