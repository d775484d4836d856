from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pipeline.stream_socket import Opener, _hex_address, endpoint, shut, sockets_to, still_ours


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.05)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            accepted.append(conn)  # held open, never written to: a peer that keeps the session and is quiet

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv
    done.set()
    t.join(2)
    srv.close()
    for conn in accepted:
        conn.close()


def test_endpoint_of_rtsp_urls() -> None:
    assert endpoint("rtsp://user:pw@10.0.0.5:8554/main") == ("10.0.0.5", 8554)
    assert endpoint("rtsp://cam.local/stream1") == ("cam.local", 554)
    assert endpoint("rtsps://[fe80::1]/x") == ("fe80::1", 322)
    assert endpoint("/var/clips/a.mp4") is None
    assert endpoint("rtsp://host:notaport/x") is None


def test_proc_net_tcp_addresses() -> None:
    # /proc/net/tcp writes 127.0.0.1:554 as 0100007F:022A (address in host order, port big-endian)
    assert _hex_address("0100007F:022A") == (ipaddress.ip_address("127.0.0.1"), 554)
    # tcp6: ::ffff:10.0.0.5 (an IPv4 peer of a dual-stack socket) is the IPv4 address
    assert _hex_address("0000000000000000FFFF00000500000A:1F90") == (ipaddress.ip_address("10.0.0.5"), 8080)
    assert _hex_address("00000000000000000000000001000000:0016") == (ipaddress.ip_address("::1"), 22)


def test_the_socket_an_open_made_is_found_and_shutting_it_ends_a_blocked_read(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    other = socket.create_connection(("127.0.0.1", port))  # another reader's connection to the same address
    try:
        conn, found = Opener().open(
            f"rtsp://127.0.0.1:{port}/cam", lambda: socket.create_connection(("127.0.0.1", port))
        )
        assert found is not None and found.fd == conn.fileno()
        assert {s.fd for s in sockets_to("127.0.0.1", port)} >= {conn.fileno(), other.fileno()}
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(conn.recv(1)), daemon=True)
        reader.start()
        time.sleep(0.2)
        assert reader.is_alive()  # blocked: the peer is quiet
        assert shut(found)
        reader.join(2)
        assert got == [b""]  # the read ended (end of stream); the descriptor is still the caller's
        assert still_ours(found)
        conn.close()
        assert not still_ours(found)
        assert not shut(found)  # a closed (maybe reused) descriptor is never touched
        other.settimeout(0.2)
        with pytest.raises(TimeoutError):
            other.recv(1)  # the other connection was left alone
    finally:
        other.close()


def test_no_socket_is_claimed_when_the_open_fails_or_makes_none(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    opener = Opener()
    result, found = opener.open(f"rtsp://127.0.0.1:{port}/cam", lambda: 42)
    assert (result, found) == (42, None)
    assert opener.open("/a/file.mp4", lambda: 1) == (1, None)
    with pytest.raises(ConnectionRefusedError):
        opener.open("rtsp://127.0.0.1:1/cam", lambda: socket.create_connection(("127.0.0.1", 1)))


def test_opens_to_one_address_take_turns(listener: socket.socket) -> None:
    # Two readers opening the same NVR at once would each see both sockets appear; they take turns, and
    # each gets its own.
    port = listener.getsockname()[1]
    opener = Opener()
    results: list[tuple[socket.socket, object]] = []

    def slow_open() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.2)
        return s

    def reader(i: int) -> None:
        results.append(opener.open(f"rtsp://127.0.0.1:{port}/ch{i}", slow_open))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(results) == 3
    for conn, found in results:
        assert found is not None and found.fd == conn.fileno()  # type: ignore[attr-defined]
        conn.close()


def test_opens_to_one_address_overlap_once_each_has_its_socket(listener: socket.socket) -> None:
    # An RTSP open connects in milliseconds and then probes the stream for up to a second: an NVR's channels
    # must not open strictly one after another. The second open runs while the first is still in its open.
    port = listener.getsockname()[1]
    opener = Opener()
    connected, second_done = threading.Event(), threading.Event()
    overlapped: list[bool] = []
    first: list[tuple[socket.socket, object]] = []

    def first_open() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        connected.set()
        overlapped.append(second_done.wait(5))  # "probing" until the second open has finished
        return s

    t = threading.Thread(target=lambda: first.append(opener.open(f"rtsp://127.0.0.1:{port}/ch1", first_open)))
    t.start()
    assert connected.wait(5)
    conn2, found2 = opener.open(
        f"rtsp://127.0.0.1:{port}/ch2", lambda: socket.create_connection(("127.0.0.1", port))
    )
    second_done.set()
    t.join(10)
    assert overlapped == [True]
    conn1, found1 = first[0]
    assert found1 is not None and found1.fd == conn1.fileno()  # type: ignore[attr-defined]
    assert found2 is not None and found2.fd == conn2.fileno()
    conn1.close()
    conn2.close()


def test_a_socket_that_closed_during_its_open_is_not_claimed(listener: socket.socket) -> None:
    # The open reconnected within itself: the first socket's number may be anyone's by the time the open ends.
    port = listener.getsockname()[1]
    opener = Opener(poll_s=0.001)

    def reconnecting_open() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.1)  # the watcher (polling every millisecond) has seen it and ended the turn
        s.close()
        return socket.create_connection(("127.0.0.1", port))

    conn, found = opener.open(f"rtsp://127.0.0.1:{port}/cam", reconnecting_open)
    assert found is None
    conn.close()
