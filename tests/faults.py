"""Fault injection helpers for the reliability tests."""
from __future__ import annotations

import socket
import threading

import pytest


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port``. ``stop()`` closes
    the listener and every open connection (clients get refused/reset, as
    when a server goes away); ``start()`` listens again on the same port."""

    def __init__(self, target_port: int, port: int, intercept=None):
        self.target_port, self.port = target_port, port
        self.intercept = intercept  # bytes a client sent → an answer instead of forwarding them (None: forward)
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._listener:
                try:  # wakes the thread blocked in accept(), which close() alone does not
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, intercept in ((client, upstream, self.intercept), (upstream, client, None)):
                threading.Thread(target=self._pipe, args=(a, b, intercept), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, intercept=None) -> None:
        try:
            while data := src.recv(65536):
                answer = intercept(data) if intercept else None
                if answer is not None:  # answered here; the connection closes, as a failing server's may
                    src.sendall(answer)
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class FailOnce:
    """A ``TcpProxy`` intercept: the first request starting with ``prefix``
    (e.g. ``b"POST /api/task_runs/ "``) is answered with a 500 and never
    reaches the server; ``hits`` counts the requests it failed."""

    def __init__(self, prefix: bytes):
        self.prefix, self.hits = prefix, 0

    def __call__(self, data: bytes) -> bytes | None:
        if self.hits or not data.startswith(self.prefix):
            return None
        self.hits += 1
        return b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def put_many_then_fail(store, n_good: int) -> None:
    """``store.put_many`` over ``n_good`` objects ``weights/p/o<i>.bin``, then
    an item that fails to encode; the error must come out."""
    def items():
        for i in range(n_good):
            yield f"weights/p/o{i}.bin", bytes([i]) * 1000
        raise RuntimeError("encoding failed (injected)")

    with pytest.raises(RuntimeError, match="injected"):
        store.put_many(items(), workers=3)
