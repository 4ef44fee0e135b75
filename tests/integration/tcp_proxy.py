"""A TCP proxy on loopback that a test steers, to break the path to a real database server.

Modes (``proxy.mode = ...``):

- ``"pass"``: bytes flow both ways;
- ``"blackhole"``: the connections stay open, everything sent is accepted and nothing
  ever comes back (a dead peer behind a stuck NAT or proxy); new connections are
  accepted and never answered either;
- ``"down"``: as a stopped server: open connections are reset, new ones are reset at once;

and one-shot faults:

- ``proxy.cut_after_commit()``: the next ``COMMIT`` a client sends reaches the server,
  which commits; its answer is thrown away and the connection reset, so the client
  cannot know the outcome. With ``answer``, the chunk thrown away is the first one from
  the server that holds ``answer`` (PostgreSQL's ``COMMIT`` completion, for a client that
  sends ``COMMIT`` in one query with statements the server answers first);
  ``proxy.cuts`` counts the answers thrown away;
- ``proxy.reset_all()``: every open connection is reset (RST) at once;
- ``proxy.silence_after(marker)``: the next client message containing ``marker`` reaches the
  server; from then on that one connection is silent both ways, never closed nor reset (a peer
  gone mid-transaction behind a stuck NAT): the server keeps the session and its locks until a
  timeout of its own ends it. Other connections are not affected.

``proxy.round_trips`` counts the times a client spoke after the server had (or first on its
connection): each is a wait for the server's answer, a round trip on a network with latency.

Leaving the black hole resets the connections caught in it, as a recovering network
path does to connections whose peers gave up.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from typing import Any

# The statement, not a word that holds it: PyMySQL opens each connection with SET AUTOCOMMIT = 0.
_COMMIT = re.compile(rb"(?<![A-Za-z_])commit(?![A-Za-z_])", re.IGNORECASE)


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._mode = "pass"
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._cut_armed = False
        self._cut_answer: bytes | None = None
        self.cuts = 0
        self._silence_marker: bytes | None = None
        self.silenced = 0
        self.connections = 0
        self.round_trips = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    # -- steering ----------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        assert value in ("pass", "blackhole", "down")
        with self._lock:
            leaving_blackhole = self._mode == "blackhole" and value != "blackhole"
            self._mode = value
            pairs = list(self._pairs)
        if leaving_blackhole or value == "down":
            for pair in pairs:
                pair.reset()

    def cut_after_commit(self, answer: bytes | None = None) -> None:
        with self._lock:
            self._cut_armed = True
            self._cut_answer = answer

    def silence_after(self, marker: bytes) -> None:
        with self._lock:
            self._silence_marker = marker

    def reset_all(self) -> int:
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.reset(everything=True)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset_all()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self._mode == "down":
                _reset(client)
                continue
            if self._mode == "blackhole":
                pair = _Pair(self, client, None)
            else:
                try:
                    server = socket.create_connection(self.upstream, timeout=5)
                    server.settimeout(None)
                except OSError:
                    _reset(client)
                    continue
                pair = _Pair(self, client, server)
            with self._lock:
                self._pairs.append(pair)
            pair.start()

    def _take_silence(self, data: bytes) -> bool:
        with self._lock:
            if self._silence_marker is not None and self._silence_marker in data:
                self._silence_marker = None
                self.silenced += 1
                return True
        return False

    def _take_cut(self, data: bytes) -> bytes | None:
        """The answer to wait for (``b""``: the next chunk) when ``data`` carries the armed COMMIT, else None."""
        with self._lock:
            if self._cut_armed and _COMMIT.search(data):
                self._cut_armed = False
                return self._cut_answer or b""
        return None

    def _count_cut(self) -> None:
        with self._lock:
            self.cuts += 1

    def _turn(self, pair: _Pair, up: bool) -> None:
        """``pair``'s bytes now flow ``up`` (client to server) or down; a client speaking after an answer
        is a round trip."""
        with self._lock:
            if up and not pair.client_spoke_last:
                self.round_trips += 1
            pair.client_spoke_last = up

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)


class _Pair:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, server: socket.socket | None) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.cut_pending: bytes | None = None  # the answer to throw away (b"": the next chunk)
        self.blackholed = server is None
        self.silent = False
        self.client_spoke_last = False
        self._done = False
        self._server_closed = False

    def start(self) -> None:
        threading.Thread(target=self._pump_up, daemon=True).start()
        if self.server is not None:
            threading.Thread(target=self._pump_down, daemon=True).start()

    def _pump_up(self) -> None:
        """Client to server."""
        try:
            while True:
                data = self.client.recv(65536)
                if not data:
                    break
                if self.blackholed or self.proxy.mode == "blackhole":
                    self.blackholed = True
                    continue  # swallowed: the client hears nothing back
                if (answer := self.proxy._take_cut(data)) is not None:
                    self.cut_pending = answer
                assert self.server is not None
                self.proxy._turn(self, up=True)
                if self.proxy._take_silence(data):
                    # This reaches the server; nothing more goes either way, not its answer, not even
                    # the client's giving up: the server's end stays open until the server ends it.
                    self.blackholed = self.silent = True
                self.server.sendall(data)
        except OSError:
            pass
        self.reset()

    def _pump_down(self) -> None:
        """Server to client."""
        assert self.server is not None
        try:
            while True:
                data = self.server.recv(65536)
                if not data:
                    break
                if self.cut_pending is not None and self.cut_pending in data:
                    self.proxy._count_cut()
                    break  # the server answered the COMMIT: it committed; the client never learns it
                if self.blackholed or self.proxy.mode == "blackhole":
                    self.blackholed = True
                    continue
                self.proxy._turn(self, up=False)
                self.client.sendall(data)
        except OSError:
            pass
        self.reset(everything=True)

    def reset(self, everything: bool = False) -> None:
        """Reset both ends; a silenced connection's server end only with ``everything`` (the proxy closing,
        or the server having ended it)."""
        with self.proxy._lock:
            client = not self._done
            self._done = True
            server = self.server is not None and not self._server_closed and (everything or not self.silent)
            self._server_closed = self._server_closed or server
        if client:
            _reset(self.client)
        if server:
            _reset(self.server)  # type: ignore[arg-type]
        if everything or not self.silent:
            self.proxy._forget(self)


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a peer that gave up does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
