"""A tiny Kerberos service for the lab: run inside a node (`lab exec NODE -- /usr/bin/python3
keytab_acceptor.py ADDRESS PORT KEYTAB`), it accepts each client's GSS-API token with
the node's keytab (re-read on every accept, as real services do) and answers OK or NO.
Protocol: 4-byte big-endian length, the token; reply 2 bytes."""

from __future__ import annotations

import socketserver
import struct
import sys

sys.path.insert(0, "/usr/libexec/broker")
import broker_keytab

KEYTAB = sys.argv[3]


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        head = self.rfile.read(4)
        if len(head) != 4:
            return
        (size,) = struct.unpack(">I", head)
        token = self.rfile.read(min(size, 65536))
        ok, why = broker_keytab.accept(token, KEYTAB)
        self.wfile.write(b"OK" if ok else b"NO")
        if not ok:
            print(f"refused: {why}", file=sys.stderr, flush=True)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    with Server((sys.argv[1], int(sys.argv[2])), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()
