"""The TCP socket under an FFmpeg RTSP connection, found so that a read stuck on it can be ended.

FFmpeg's socket timeout ends a read on a silent socket, but not on one that stays busy without video: a
camera whose encoder hung while its RTSP stack lives on (or a server media that never started) sends an
RTCP report every few seconds and nothing else, and FFmpeg's RTSP-over-TCP demuxer reads those for ever
without returning a packet (measured: GStreamer's server, 10 minutes and counting). PyAV's read timeout
would end it, but PyAV's interrupt callback takes the GIL on every FFmpeg I/O call, which costs a box full
of cameras a tenth of its CPU (README, Performance).

So a reader learns which socket is its own: the TCP socket to the camera's address and port that appeared
in this process while it opened the stream. Opens to the same address and port (an NVR serving 64 channels
on one port) take turns only until each one's socket appears — the TCP connect, milliseconds — not for the
whole open, which then waits for the stream to be probed (up to a second on a 512 kb/s sub-stream: 64
channels opened strictly in turn took a minute to start). Its watchdog then shuts that socket
down (``shutdown(2)``, not close: FFmpeg still owns the descriptor); the blocked read returns, and the
reader reconnects. The owner must ``forget`` the socket before FFmpeg closes it, so that a descriptor
number reused by someone else is never touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_LISTEN = "0A"  # /proc/net/tcp state


@dataclass(frozen=True)
class StreamSocket:
    fd: int
    inode: int


def endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) an RTSP URL connects to; None when it has no host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port or (322 if parts.scheme == "rtsps" else 554)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addresses(host: str, port: int) -> set[Address]:
    with contextlib.suppress(OSError, UnicodeError):
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return set()


def _hex_address(text: str) -> tuple[Address, int]:
    """/proc/net/tcp{,6} ``ADDR:PORT``: the address in host-order 32-bit words, the port big-endian hex."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def _remote_inodes(table: str, ips: set[Address], port: int) -> set[int]:
    out: set[int] = set()
    for line in table.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] == _LISTEN:
            continue
        with contextlib.suppress(ValueError):
            ip, rport = _hex_address(f[2])
            if rport == port and ip in ips:
                out.add(int(f[9]))
    return out


def _own_sockets() -> Iterator[StreamSocket]:
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                link = os.readlink(f"/proc/self/fd/{name}")
                if link.startswith("socket:["):
                    yield StreamSocket(int(name), int(link[8:-1]))


def sockets_to(host: str, port: int) -> set[StreamSocket]:
    """This process's TCP sockets connected (or connecting) to ``host:port``."""
    return _sockets_to(_addresses(host, port), port)


def _sockets_to(ips: set[Address], port: int) -> set[StreamSocket]:
    if not ips:
        return set()
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            inodes |= _remote_inodes(f.read(), ips, port)
    return {s for s in _own_sockets() if s.inode in inodes}


class Opener:
    """Opens to one address take turns until each one's socket appears, so that the socket each open made is
    known. One per process: descriptors are per process, and two of its readers connecting to the same address
    at once would each see both sockets appear."""

    def __init__(self, poll_s: float = 0.005) -> None:
        self.poll_s = poll_s
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, int], threading.Lock] = {}

    def open(self, url: str, fn: Callable[[], T]) -> tuple[T, StreamSocket | None]:
        """``fn()`` (which connects to ``url``), and the one new socket to its address, or None when there
        is not exactly one (a URL without a host, a redirect elsewhere, no /proc) or it closed during the
        open (the descriptor may be someone else's by now)."""
        ep = endpoint(url)
        if ep is None:
            return fn(), None
        with self._guard:
            lock = self._locks.setdefault(ep, threading.Lock())
        host, port = ep
        # the address's addresses: looked up once per open
        turn = _Turn(lock, _addresses(host, port), port, self.poll_s)
        try:
            result = fn()
        finally:
            sock = turn.finish()
        return result, sock


class _Turn:
    """One open's turn at its address: held from before the open until its socket appears (seen by a
    watcher thread polling /proc while ``fn`` blocks in FFmpeg without the GIL) or the open ends.

    Not covered: an open that connects to the same address a second time within itself (an RTSP redirect
    to the same host and port) after its turn ended; the next open in line may claim that second socket.
    The first open then finds its own socket gone and claims none, and the other holds the wrong one: a read
    stuck on either's own socket cannot be ended (shutting the wrong one only makes its owner reconnect)."""

    def __init__(self, lock: threading.Lock, ips: set[Address], port: int, poll_s: float) -> None:
        self._lock, self._ips, self._port, self._poll_s = lock, ips, port, poll_s
        lock.acquire()
        self._held = True  # under _mu: the address's lock is still ours to release
        self._mu = threading.Lock()
        self._before = _sockets_to(ips, port)
        self._done = threading.Event()
        self.sock: StreamSocket | None = None
        self._watcher = threading.Thread(target=self._watch, name="socket-watch", daemon=True)
        self._watcher.start()

    def _new(self) -> set[StreamSocket]:
        return _sockets_to(self._ips, self._port) - self._before

    def _watch(self) -> None:
        while not self._done.wait(self._poll_s):
            new = self._new()
            if new:
                with self._mu:
                    if self._held:
                        self.sock = _only(new)
                        self._release()
                return

    def _release(self) -> None:
        self._held = False
        self._lock.release()

    def finish(self) -> StreamSocket | None:
        self._done.set()
        self._watcher.join(timeout=2.0)
        with self._mu:
            if self._held:  # the watcher saw none (an open faster than its poll): still our turn, look now
                self.sock = _only(self._new())
                self._release()
            elif self.sock is not None and self.sock not in _sockets_to(self._ips, self._port):
                # closed during the open (it reconnected): whose the number is now is unknown
                self.sock = None
        return self.sock


def _only(new: set[StreamSocket]) -> StreamSocket | None:
    """The socket an open made: the one new socket, or None when there is not exactly one."""
    return next(iter(new)) if len(new) == 1 else None


# Process-wide by nature (see Opener); it holds only locks, one per address ever opened.
OPENER = Opener()


def still_ours(sock: StreamSocket) -> bool:
    """The descriptor still refers to the same socket (a closed and reused number would not)."""
    try:
        return os.readlink(f"/proc/self/fd/{sock.fd}") == f"socket:[{sock.inode}]"
    except OSError:
        return False


def shut(sock: StreamSocket) -> bool:
    """Shut the socket down both ways, so that a read blocked on it returns; the descriptor stays open for
    its owner to close. False when it is no longer the same socket or shutdown failed."""
    if not still_ours(sock):
        return False
    s = socket.socket(fileno=sock.fd)
    try:
        s.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        s.detach()  # FFmpeg owns the descriptor: never close it here
