"""A TCP proxy on loopback that delays every chunk by half a round trip each way.

It stands for a database in another zone: each round trip between the client and the server
takes ``rtt_ms`` longer, while bytes keep flowing (a chunk read is sent when its time comes, so
pipelined traffic is not serialised). The idea of tests/integration/tcp_proxy.py, with time.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time


class LatencyProxy:
    def __init__(self, upstream_port: int, rtt_ms: float, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = rtt_ms / 2000  # seconds, each way
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="latency-proxy", daemon=True).start()

    def _accept(self) -> None:
        # close() closes the listener: accept() then raises and the thread ends.
        with contextlib.suppress(OSError):
            while True:
                self._connect(self._listener.accept()[0])

    def _connect(self, client: socket.socket) -> None:
        """Open the upstream side of a new client's connection and pump both ways."""
        server = socket.create_connection(self.upstream)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pipe(client, server)
        self._pipe(server, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    chunks.put((time.monotonic() + self.delay, data))
            chunks.put((0.0, b""))

        def write() -> None:
            with contextlib.suppress(OSError):
                while True:
                    due, data = chunks.get()
                    if not data:
                        break
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
