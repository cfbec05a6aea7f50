"""A TCP proxy in front of Postgres that loses the answer to a COMMIT, for fault tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any


class CommitSwallowingProxy:
    """Forwards Postgres traffic. On a connection that copied rows in (`COPY ... FROM STDIN`;
    ADBC reads results with `COPY ... TO STDOUT` too), it forwards the COMMIT, lets the server
    commit, and cuts the client off before the answer: a lost acknowledgement."""

    def __init__(self, upstream: tuple[int, Any]) -> None:
        self.upstream = upstream  # (address family, address)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.swallowed = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(self.upstream[0])
            server.connect(self.upstream[1])
            cut = threading.Event()
            threading.Thread(
                target=self._to_server, args=(client, server, cut), daemon=True
            ).start()
            threading.Thread(
                target=self._to_client, args=(server, client, cut), daemon=True
            ).start()

    def _to_server(
        self, client: socket.socket, server: socket.socket, cut: threading.Event
    ) -> None:
        copied = False
        try:
            while data := client.recv(65536):
                copied = copied or b"FROM STDIN" in data
                if copied and b"COMMIT" in data:
                    cut.set()  # from now on nothing goes back to the client
                    server.sendall(data)
                    self.swallowed += 1
                    time.sleep(0.5)
                    break
                server.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.close()

    def _to_client(
        self, server: socket.socket, client: socket.socket, cut: threading.Event
    ) -> None:
        try:
            while (data := server.recv(65536)) and not cut.is_set():
                client.sendall(data)
        except OSError:
            pass
