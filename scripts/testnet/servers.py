#!/usr/bin/env python3
"""The servers of vesicle's test internet (tests/net/testnet.cpp runs this
inside the test internet's network namespace; it binds only the addresses it
is given there, so it never touches the host's network).

  --http LABEL=IP:PORT       HTTP/1.1 (keep-alive): "hello from LABEL host=HOST", or
                             /bytes/N: N bytes (throughput benchmark)
  --https LABEL=IP:PORT      the same over TLS (--cert/--key)
  --banner LABEL=IP:PORT     TCP: writes "banner LABEL" and closes
  --files LABEL=IP:PORT=DIR  HTTP/1.1: the files under DIR (a package index,
                             a git repository over "dumb" HTTP, tarballs)
  --udp-echo IP:PORT         UDP: echoes each datagram
  --dns IP:PORT              authoritative DNS for the --record/--rebind names
  --record NAME=IPV4         an A record (TTL 60)
  --aaaa NAME=IPV6           an AAAA record
  --rebind NAME=IP1,IP2      answers IP1 the first time, IP2 afterwards (TTL 1)
  --log PATH                 one line per request: "LABEL CLIENT HOST PATH"

Prints "ready" once everything listens. Standard library only.
"""
import argparse
import functools
import hashlib
import http.server
import ipaddress
import socket
import socketserver
import ssl
import struct
import sys
import threading

log_lock = threading.Lock()
log_file = None


def log(line):
    if log_file is None:
        return
    with log_lock:
        log_file.write(line + "\n")
        log_file.flush()


def address(spec):
    host, port = spec.rsplit(":", 1)
    return host, int(port)


def labelled(spec):
    label, rest = spec.split("=", 1)
    return label, address(rest)


class Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1: a client may keep the connection for more requests (the
    # allowlist proxy checks every request head on it).
    protocol_version = "HTTP/1.1"
    label = "?"

    def do_GET(self):
        host = self.headers.get("Host", "")
        log(f"{self.label} {self.client_address[0]} {host} {self.path}")
        if self.path.startswith("/bytes/"):
            count = int(self.path[len("/bytes/"):])
            self.send_response(200)
            self.send_header("Content-Length", str(count))
            self.end_headers()
            chunk = b"x" * (1 << 20)
            while count > 0:
                piece = chunk[: min(count, len(chunk))]
                self.wfile.write(piece)
                count -= len(piece)
            return
        # The Authorization header the server saw, echoed so the secrets
        # tests can tell what the egress proxy set; /auth-digest echoes only
        # its SHA-256, so a sandbox can check it without ever holding it.
        auth = self.headers.get("Authorization")
        if self.path == "/auth-digest":
            digest = hashlib.sha256(auth.encode()).hexdigest() if auth is not None else "none"
            seen = f" authorization-sha256={digest}"
        else:
            seen = f" authorization={auth}" if auth is not None else ""
        body = f"hello from {self.label} host={host}{seen}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        # Reads the body (so a kept-alive connection stays in step), then
        # answers like GET.
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.do_GET()

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # floods of connections (caps tests) are not dropped here


def http_server(label, where, tls_context=None):
    handler = type(f"Handler_{label}", (Handler,), {"label": label})
    server = Server(where, handler)
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    return server


class FilesHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    label = "?"

    def do_GET(self):
        log(f"{self.label} {self.client_address[0]} {self.headers.get('Host', '')} {self.path}")
        super().do_GET()

    def log_message(self, *args):
        pass


def files_server(spec):
    label, rest = spec.split("=", 1)
    where, directory = rest.split("=", 1)
    handler = type(f"Files_{label}", (FilesHandler,), {"label": label})
    return Server(address(where), functools.partial(handler, directory=directory))


class BannerHandler(socketserver.BaseRequestHandler):
    label = "?"

    def handle(self):
        log(f"{self.label} {self.client_address[0]} - banner")
        self.request.sendall(f"banner {self.label}\n".encode())


class TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


class Zone:
    def __init__(self, records, aaaa, rebind):
        self.records = records
        self.aaaa = aaaa
        self.rebind = rebind
        self.asked = {}
        self.lock = threading.Lock()

    def answer(self, query):
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if flags & 0x8000 or qdcount != 1:
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos] != 0:
            length = query[pos]
            labels.append(query[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
            pos += 1 + length
        pos += 1
        qtype, qclass = struct.unpack("!HH", query[pos : pos + 4])
        question = query[12 : pos + 4]
        name = ".".join(labels).lower()
        answers = []
        rcode = 0
        if qtype == 1 and name in self.rebind:
            with self.lock:
                count = self.asked.get(name, 0)
                self.asked[name] = count + 1
            first, later = self.rebind[name]
            answers.append((1, 1, socket.inet_aton(first if count == 0 else later)))
        elif qtype == 1 and name in self.records:
            answers.append((1, 60, socket.inet_aton(self.records[name])))
        elif qtype == 28 and name in self.aaaa:
            answers.append((28, 60, ipaddress.IPv6Address(self.aaaa[name]).packed))
        elif name not in self.records and name not in self.rebind and name not in self.aaaa:
            rcode = 3
        log(f"dns - {name} type={qtype} answers={len(answers)}")
        header = struct.pack("!HHHHHH", ident, 0x8400 | (flags & 0x0100) | rcode, 1,
                             len(answers), 0, 0)
        body = question
        for rtype, ttl, data in answers:
            body += encode_name(name) + struct.pack("!HHIH", rtype, 1, ttl, len(data)) + data
        return header + body


def serve_dns(sock, zone):
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            reply = zone.answer(data)
        except Exception:  # a malformed query gets no answer
            reply = None
        if reply:
            sock.sendto(reply, peer)


def serve_udp_echo(sock):
    while True:
        data, peer = sock.recvfrom(4096)
        log(f"udp-echo {peer[0]} - {len(data)}")
        sock.sendto(data, peer)


def main():
    global log_file
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="append", default=[])
    parser.add_argument("--https", action="append", default=[])
    parser.add_argument("--banner", action="append", default=[])
    parser.add_argument("--files", action="append", default=[])
    parser.add_argument("--udp-echo", action="append", default=[])
    parser.add_argument("--dns")
    parser.add_argument("--record", action="append", default=[])
    parser.add_argument("--aaaa", action="append", default=[])
    parser.add_argument("--rebind", action="append", default=[])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--log")
    args = parser.parse_args()
    if args.log:
        log_file = open(args.log, "a", buffering=1)

    servers = []
    for spec in args.http:
        label, where = labelled(spec)
        servers.append(http_server(label, where))
    if args.https:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        for spec in args.https:
            label, where = labelled(spec)
            servers.append(http_server(label, where, context))
    for spec in args.files:
        servers.append(files_server(spec))
    for spec in args.banner:
        label, where = labelled(spec)
        handler = type(f"Banner_{label}", (BannerHandler,), {"label": label})
        servers.append(TcpServer(where, handler))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    for spec in args.udp_echo:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(address(spec))
        threading.Thread(target=serve_udp_echo, args=(sock,), daemon=True).start()
    if args.dns:
        records = dict(r.lower().split("=", 1) for r in args.record)
        aaaa = dict(r.lower().split("=", 1) for r in args.aaaa)
        rebind = {}
        for spec in args.rebind:
            name, ips = spec.lower().split("=", 1)
            rebind[name] = tuple(ips.split(",", 1))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(address(args.dns))
        zone = Zone(records, aaaa, rebind)
        threading.Thread(target=serve_dns, args=(sock, zone), daemon=True).start()

    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
