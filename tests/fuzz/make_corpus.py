#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/).

The seeds are the well-formed messages each parser meets in normal use,
plus a few edge cases from the unit tests, so the fuzzer starts from inputs
that reach deep into each parser. Run it after changing a format; its output
is committed. Protobuf messages are encoded by hand (the wire format is
small) so no Python protobuf package is needed; the TLS ClientHellos are
real ones from Python's ssl module.
"""
import os
import shutil
import ssl
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    """One protobuf field: int -> varint, bytes/str -> length-delimited."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


def event(id_, *fields):
    return field(1, id_) + b"".join(fields)


def guest_events():
    display = field(1, field(1, "text/plain") + field(2, "<Figure>")) + field(
        1, field(1, "image/png") + field(2, b"\x89PNG\r\n\x1a\n\0\0")
    ) + field(2, 1)
    exit_ = field(1, 0) + field(6, 123456)
    return {
        "stdout": frame(event(7, field(10, "hello\n"))),
        "utf8_split": frame(event(7, field(10, b"caf\xc3"))) + frame(event(7, field(10, b"\xa9\n"))),
        "stderr_binary": frame(event(7, field(11, b"\xff\xfe\x00bin"))),
        "result": frame(event(7, field(12, "42"))),
        "error": frame(event(7, field(13, field(1, "ZeroDivisionError") + field(2, "division by zero")
                                      + field(3, "Traceback ...")))),
        "display": frame(event(7, field(20, display))),
        "exit": frame(event(7, field(10, "x")) ) + frame(event(7, field(14, exit_))),
        "failure": frame(event(7, field(17, field(1, 4) + field(2, 2) + field(3, "open /x: No such file")))),
        "done_pong_info": frame(event(1, field(16, field(1, 10) + field(2, 0o644) + field(3, 1))))
        + frame(event(2, field(18, field(1, 99))))
        + frame(event(3, field(19, field(1, "6.1.0") + field(2, 5) + field(7, "sandbox")))),
        "file_data": frame(event(9, field(15, b"\0\1\2\3" * 8))),
        "empty": b"",
    }


def frame_decoder():
    seeds = {}
    for i, (name, stream) in enumerate(guest_events().items()):
        seeds[name] = bytes([i * 5 % 256]) + stream
    seeds["oversized"] = b"\x03" + struct.pack("<I", (4 << 20) + 1) + b"x"
    seeds["truncated"] = b"\x00" + struct.pack("<I", 10) + b"abc"
    seeds["zero_length"] = b"\x01" + struct.pack("<I", 0) * 3
    return seeds


def dns_name(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dns_header(id_, flags, qd, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", id_, flags, qd, an, ns, ar)


def dns():
    q = dns_name("allowed.test") + struct.pack(">HH", 1, 1)
    www = dns_name("www.example.com") + struct.pack(">HH", 1, 1)
    a_rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([93, 184, 216, 34])
    return {
        "query_a": dns_header(0x1234, 0x0100, 1) + q,
        "query_aaaa": dns_header(0x1234, 0x0100, 1) + dns_name("allowed.test") + struct.pack(">HH", 28, 1),
        "query_edns": dns_header(0x22, 0x0100, 1, 0, 0, 1) + www + b"\0" + struct.pack(">HHIH", 41, 4096, 0, 0),
        "answer_a": dns_header(7, 0x8180, 1, 1) + www + a_rr,
        "answer_private": dns_header(7, 0x8180, 1, 1) + www + b"\xc0\x0c"
        + struct.pack(">HHIH", 1, 1, 5, 4) + bytes([10, 0, 0, 1]),
        # From tests/net/dns_test.cpp: a CNAME chain with compressed names.
        "answer_cname": bytes([0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0, 3]) + b"www"
        + bytes([7]) + b"allowed" + bytes([4]) + b"test" + bytes([0, 0, 1, 0, 1])
        + bytes([0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 0x3C, 0, 2, 0xC0, 16])
        + bytes([0xC0, 16, 0, 1, 0, 1, 0, 0, 0, 0x3C, 0, 4, 198, 18, 1, 10]),
        "pointer_loop": dns_header(1, 0x0100, 1) + b"\xc0\x0c\0\1\0\1",
        "nxdomain": dns_header(9, 0x8183, 1) + q,
    }


def client_hellos():
    seeds = {}
    for name, sni, newest in [
        ("openssl_tls13", "www.example.com", ssl.TLSVersion.TLSv1_3),
        ("openssl_tls12", "pypi.org", ssl.TLSVersion.TLSv1_2),
        ("openssl_no_sni", None, ssl.TLSVersion.TLSv1_3),
    ]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = newest
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn = context.wrap_bio(incoming, outgoing, server_hostname=sni)
        try:
            conn.do_handshake()
        except ssl.SSLWantReadError:
            pass
        # The first byte is the read size the target cuts the bytes into.
        seeds[name] = b"\xff" + outgoing.read()
    hello = seeds["openssl_tls13"]
    seeds["split_reads"] = b"\x01" + hello[1:]
    # The same ClientHello split over two handshake records.
    record = hello[1:]
    handshake = record[5:]
    half = len(handshake) // 2
    seeds["two_records"] = (b"\xff" + b"\x16\x03\x01" + struct.pack(">H", half) + handshake[:half]
                            + b"\x16\x03\x01" + struct.pack(">H", len(handshake) - half)
                            + handshake[half:])
    return seeds


def http_heads():
    heads = {
        "get": b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        "port": b"GET /simple/ HTTP/1.1\r\nHost: pypi.org:80\r\n\r\n",
        "post_body": b"POST /x HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\n\r\nhello",
        "two_hosts": b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        "http10": b"GET / HTTP/1.0\r\nhost: Example.COM.\r\n\r\n",
        "ipv6": b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        "keepalive": b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    }
    return {name: b"\x08" + head for name, head in heads.items()}


def queries():
    return {
        "path": b"path=%2Fdata%2Fx%20y.csv&mode=0644",
        "plus": b"path=/tmp/a+b&mode=755",
        "bad_percent": b"path=%2",
        "encoded_key": b"p%61th=/x&path=/y",
        "space_route": b"v1/spaces/sp-0123456789abcdef0123456789abcdef/resume",
        "space_short": b"v1/spaces/sp-0123456789ab",
        "space_traversal": b"v1/spaces/sp-../../etc/pa",
    }


def api_json():
    bodies = [
        (0, b'{"template":"default","egress":true,"egress_allow":["pypi.org","*.example.com"],'
            b'"persistent":false,"idle_timeout_s":300,"max_lifetime_s":1800,"vcpus":2,'
            b'"memory_mib":1024,"disk_mib":2048,"region":""}'),
        (0, b'{}'),
        (1, b'{"code":"print(1+1)","language":"python","timeout_s":30}'),
        (1, b'{"code":"ls -la","language":"bash","env":{"A":"1","B":"\\u00e9"},"cwd":"/tmp"}'),
        (2, b'{"n":4}'),
        (3, b'{"persistent":true}'),
        (0, b'{"vcpus":"2","memory_mib":1e3}'),
    ]
    return {f"body{i}": bytes([pick]) + body for i, (pick, body) in enumerate(bodies)}


def json_texts():
    return {
        "initialize": b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
                      b'"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}',
        "tools_call": b'{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"exec",'
                      b'"arguments":{"sandbox_id":"sb-1","code":"print(\\"\\u00e9\\ud83d\\ude00\\")",'
                      b'"timeout_s":30}}}',
        "qmp_event": b'{"event": "STOP", "timestamp": {"seconds": 1700000000, "microseconds": 5}}',
        "qmp_return": b'{"return": {"status": "running", "running": true, "singlestep": false}}',
        "numbers": b'[0, -1, 1.5, -2.5e-3, 1E10, 9223372036854775807, null, true, false, ""]',
        "nested": b"[[[[[[[[[[{}]]]]]]]]]]",
    }


def mcp_messages():
    def call(id_, name, arguments):
        return ('{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"%s","arguments":%s}}'
                % (id_, name, arguments)).encode()
    return {
        "initialize": b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":'
                      b'"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}',
        "initialized": b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        "ping": b'{"jsonrpc":"2.0","id":"p","method":"ping"}',
        "tools_list": b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}',
        "create": call(3, "create_sandbox", '{"egress":"allowlist","allow":["pypi.org","*.example.com"]}'),
        "run_python": call(4, "run_python", '{"sandbox_id":"sb-1","code":"print(1)","timeout_s":30}'),
        "run_bash": call(5, "run_bash", '{"sandbox_id":"sb-1","command":"ls","cwd":"/tmp","timeout_s":86401}'),
        "upload": call(6, "upload_file", '{"sandbox_id":"sb-1","path":"/x","content":"aGVsbG8=",'
                                         '"encoding":"base64"}'),
        "fork": call(7, "fork", '{"sandbox_id":"sb-1","n":1e300}'),
        "response": b'{"jsonrpc":"2.0","id":9,"result":{}}',
        "batch": b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
        "base64": b"AAECAwQFBgc=",
    }


def main():
    corpora = {
        "fuzz_frame_decoder": frame_decoder(),
        "fuzz_guest_event": guest_events(),
        "fuzz_dns": dns(),
        "fuzz_peek_tls": client_hellos(),
        "fuzz_peek_http": http_heads(),
        "fuzz_query": queries(),
        "fuzz_api_json": api_json(),
        "fuzz_json": json_texts(),
        "fuzz_mcp": mcp_messages(),
    }
    for target, seeds in corpora.items():
        directory = os.path.join(CORPUS, target)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        for name, data in seeds.items():
            with open(os.path.join(directory, name), "wb") as out:
                out.write(data)
    print(f"make_corpus: {sum(len(s) for s in corpora.values())} seeds in {CORPUS}", file=sys.stderr)


if __name__ == "__main__":
    main()
