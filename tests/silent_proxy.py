"""A TCP proxy in front of a server that can be told to go silent: connections are still
accepted, and nothing more is forwarded either way (a database host whose server hangs,
or a proxy in front of a dead one). Told to forward again, it carries on as before."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class SilentProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def go_silent(self) -> None:
        self.forwarding.clear()

    def forward_again(self) -> None:
        self.forwarding.set()

    def close(self) -> None:
        self.stopped.set()
        self.forwarding.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        for thread in self.threads:
            thread.join(timeout=5)

    def connect_upstream(self) -> socket.socket:
        """The server side of a new connection (tests/round_robin_proxy.py picks one)."""
        return socket.create_connection(self.upstream, timeout=5)

    def _track(self, sock: socket.socket) -> socket.socket:
        with self.lock:
            self.sockets.append(sock)
        return sock

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._pump, args=(self._track(client),), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket) -> None:
        # Accepted while silent: connected upstream only once forwarding resumes.
        while not self.forwarding.wait(0.2):
            if self.stopped.is_set():
                return
        try:
            server = self._track(self.connect_upstream())
        except OSError:
            client.close()
            return
        peer = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(client, selectors.EVENT_READ)
                selector.register(server, selectors.EVENT_READ)
            except ValueError:  # closed meanwhile (the proxy is closing)
                return
            while not self.stopped.is_set():
                if not self.forwarding.is_set():
                    # Silent: read nothing, send nothing; the bytes wait in the kernel.
                    self.forwarding.wait(0.2)
                    continue
                for key, _ in selector.select(0.2):
                    try:
                        data = key.fileobj.recv(65536)
                        if data:
                            peer[key.fileobj].sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        client.close()
                        server.close()
                        return
