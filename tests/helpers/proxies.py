"""A TCP proxy in front of a real Redis that holds its replies back: a slow Redis, on demand."""

from __future__ import annotations

import socket
import threading
import time


class SlowProxy:
    """Forwards to a real Redis, holding every reply back for ``delay`` seconds (adjustable)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            self.sockets += (client, upstream)
            for source, target, late in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, target, late), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, late: bool) -> None:
        try:
            while data := source.recv(65536):
                if late:
                    time.sleep(self.delay)  # simulated latency of a slow Redis, not a wait
                target.sendall(data)
        except OSError:
            pass
        finally:
            target.close()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()
