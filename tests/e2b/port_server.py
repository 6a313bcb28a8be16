"""A small HTTP server the port tests start inside a sandbox (tests/e2b and
tests/sdk/test_ports.py): it listens on 127.0.0.1 only, so it is reachable
only through hostd's relay over the agent channel.

  GET /big           1 MiB of a known pattern (more than the relay's windows)
  GET /<anything>    "hello <path> host=<Host> auth=<credential headers seen>"
  POST               "<sha256 of the body> <its length>" (Content-Length or chunked)
  GET with Upgrade: echo   101, then every byte sent is echoed until EOF
"""

import hashlib
import http.server
import sys


def big():
    return bytes(i % 251 for i in range(1 << 20))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Upgrade") == "echo":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
            return
        if self.path == "/big":
            body = big()
        else:
            seen = [h for h in ("X-Access-Token", "e2b-traffic-access-token", "Authorization", "X-API-KEY") if self.headers.get(h)]
            body = f"hello {self.path} host={self.headers.get('Host')} auth={','.join(seen) or 'none'}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        digest = hashlib.sha256()
        length = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                digest.update(data)
                length += len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                data = self.rfile.read(min(remaining, 65536))
                digest.update(data)
                length += len(data)
                remaining -= len(data)
        body = f"{digest.hexdigest()} {length}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
