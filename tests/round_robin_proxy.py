"""A load balancer on loopback: each new connection goes to the next server in turn,
and a server that refuses the connection (a console that died) is skipped, as nginx's
`proxy_next_upstream error` does. Counts where each connection went."""

from __future__ import annotations

import socket
import threading
from collections import Counter

from tests.silent_proxy import SilentProxy


class RoundRobinProxy(SilentProxy):
    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = list(upstreams)
        self.turn = 0
        self.forwarded: Counter[tuple[str, int]] = Counter()
        self.turn_lock = threading.Lock()
        super().__init__(self.upstreams[0])

    def connect_upstream(self) -> socket.socket:
        with self.turn_lock:
            first = self.turn
            self.turn += 1
        error: OSError | None = None
        for step in range(len(self.upstreams)):
            upstream = self.upstreams[(first + step) % len(self.upstreams)]
            try:
                server = socket.create_connection(upstream, timeout=5)
            except OSError as exc:
                error = exc
                continue
            with self.turn_lock:
                self.forwarded[upstream] += 1
            return server
        raise error or OSError("no upstream")
