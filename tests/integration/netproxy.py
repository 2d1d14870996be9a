"""A TCP proxy whose link can be cut and restored: a kiosk's network outage, for tests."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.conftest import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``. ``cut()`` drops every connection and
    refuses new ones (no FIN reaches the broker: like a cable pulled), ``restore()`` heals."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._up = True
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._up = False
            pairs, self._pairs = self._pairs, []
        for client, _ in pairs:
            # only the kiosk side is closed; the broker side stays silent, as on a dead link
            with contextlib.suppress(OSError):
                client.close()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                if not self._up:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                except OSError:
                    client.close()
                    continue
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data or not self._up:
                with contextlib.suppress(OSError):
                    src.close()
                return
            try:
                dst.sendall(data)
            except OSError:
                return
