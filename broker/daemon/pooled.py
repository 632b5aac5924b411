"""The listeners' common base: requests on a fixed thread pool, admitted per peer.

Both the Unix socket (server.py) and the TLS listener (tls.py) build on it, so it lives
apart from either.
"""

from __future__ import annotations

import logging
import socketserver
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker.daemon.admission import Admission, Deadlines, refuse_busy
from broker.daemon.http import Service

log = logging.getLogger("broker.daemon")


class PooledServer(socketserver.BaseServer):
    """A socketserver whose requests run on a fixed thread pool, with admission caps per
    peer and a deadline for receiving each request (see admission.py)."""

    request_queue_size = 1024
    allow_reuse_address = True
    daemon_threads = True
    service: Service
    pool: ThreadPoolExecutor
    admission: Admission
    deadlines: Deadlines

    def peer_key(self, request: Any, client_address: Any) -> Hashable:
        raise NotImplementedError

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            peer = self.peer_key(request, client_address)
        except OSError:
            self.shutdown_request(request)
            return
        if not self.admission.enter(peer):
            refuse_busy(request)
            return
        try:
            self.pool.submit(self._work, request, client_address, peer)
        except RuntimeError:  # the pool is shutting down
            self.admission.leave(peer)
            self.shutdown_request(request)

    def _work(self, request: Any, client_address: Any, peer: Hashable) -> None:
        self.deadlines.track(request, self.service.request_timeout)
        try:
            self.finish_request(request, client_address)
        except Exception:
            log.exception("connection failed")
        finally:
            self.deadlines.release()
            self.admission.leave(peer)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection failed")
