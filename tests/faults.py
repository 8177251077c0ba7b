"""Fault injection helpers for the reliability tests."""
from __future__ import annotations

import socket
import threading

import pytest


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port``. ``stop()`` closes
    the listener and every open connection (clients get refused/reset, as
    when a server goes away); ``start()`` listens again on the same port."""

    def __init__(self, target_port: int, port: int):
        self.target_port, self.port = target_port, port
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
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def put_many_then_fail(store, n_good: int) -> None:
    """``store.put_many`` over ``n_good`` objects ``weights/p/o<i>.bin``, then
    an item that fails to encode; the error must come out."""
    def items():
        for i in range(n_good):
            yield f"weights/p/o{i}.bin", bytes([i]) * 1000
        raise RuntimeError("encoding failed (injected)")

    with pytest.raises(RuntimeError, match="injected"):
        store.put_many(items(), workers=3)
