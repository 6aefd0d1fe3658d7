"""The agent's side of the L7 tests: raw HTTP/1.1 over CONNECT tunnels (TLS or not), byte for
byte, so that the tests control exactly what reaches the proxy (pipelining, smuggling shapes,
a forged SNI, a websocket, a stream with an idle gap). Prints one JSON document.

The TLS here does not verify the proxy's certificate on purpose: these tests are about what
the proxy does with requests; trusting its CA through the environment alone is what the
real-client tests check.

Usage: l7agent.py COMMAND JSON
"""

import json
import socket
import ssl
import sys
import time

# The proxy tests' client, written next to this one by every lab.
from agent import PROXY, parse_head


def tunnel(host, port, tls, sni=None, alpn=None, timeout=15, direct=False, verify=None):
    """A connection to host:port through a CONNECT tunnel, or with DIRECT a plain connect()
    (the transparent path), TLS on top when asked. VERIFY names a CA file the server's
    certificate must chain to (for the host's name); without it nothing is verified."""
    if direct:
        sock = socket.create_connection((host, port), timeout=timeout)
    else:
        sock = socket.create_connection(PROXY, timeout=timeout)
        target = f"{host}:{port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise ConnectionError(f"proxy closed during CONNECT: {head!r}")
            head += chunk
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise ConnectionError(f"CONNECT answered {status}")
    if not tls:
        return sock
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        context.load_verify_locations(verify)
        if sni == "":
            context.check_hostname = False
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    # An empty SNI sends none (server_hostname=None).
    return context.wrap_socket(sock, server_hostname=None if sni == "" else (sni or host))


def read_response(sock, buf):
    """One response; returns (response or None, rest). Handles Content-Length, chunked and
    bodies that end with the connection."""
    while b"\r\n\r\n" not in buf:
        chunk = recv(sock)
        if not chunk:
            return None, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    if 100 <= status < 200 and status != 101:
        response, rest = read_response(sock, rest)
        if response is not None:
            response.setdefault("interim", []).insert(0, status)
        return response, rest
    body = b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = recv(sock)
            if not chunk:
                break
            rest += chunk
        body, rest = rest[:length], rest[length:]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in rest:
                rest += recv(sock)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += recv(sock)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                break
    elif status != 101 and status != 204 and status != 304:
        while True:
            chunk = recv(sock)
            if not chunk:
                break
            body += chunk
        rest = b""
    result = {"status": status, "headers": headers, "body": body.decode("utf-8", "replace")}
    if headers.get("content-type") == "application/json" and body:
        result["json"] = json.loads(body)
    return result, rest


def recv(sock):
    try:
        return sock.recv(65536)
    except (ConnectionResetError, ssl.SSLError, socket.timeout):
        return b""


def closed(sock):
    sock.settimeout(0.3)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True


def session(spec):
    """spec: {host, port, tls, sni?, alpn?, direct?, verify?, requests: [raw request text],
    pipeline: bool}.
    Sends the requests on one connection (all at once when pipelined, else one after the
    other) and reports every response and whether the proxy closed the connection."""
    try:
        sock = tunnel(
            spec["host"],
            spec["port"],
            spec.get("tls", True),
            spec.get("sni"),
            spec.get("alpn"),
            direct=spec.get("direct", False),
            verify=spec.get("verify"),
        )
    except (OSError, ssl.SSLError, ConnectionError) as e:
        return {"error": repr(e), "responses": []}
    result = {"responses": [], "alpn": getattr(sock, "selected_alpn_protocol", lambda: None)()}
    requests = [r.encode("latin-1") for r in spec["requests"]]
    buf = b""
    try:
        if spec.get("pipeline"):
            sock.sendall(b"".join(requests))
            for _ in requests:
                response, buf = read_response(sock, buf)
                if response is None:
                    break
                result["responses"].append(response)
        else:
            for request in requests:
                sock.sendall(request)
                response, buf = read_response(sock, buf)
                if response is None:
                    break
                result["responses"].append(response)
    except (OSError, ssl.SSLError) as e:
        result["error"] = repr(e)
    result["closed"] = closed(sock)
    sock.close()
    return result


def sessions(specs):
    return [session(s) for s in specs]


def websocket(spec):
    """Upgrades, sends a masked text frame (spec['text'], or a greeting), reads the bytes
    that come back (the test host echoes them) and the frames they make, unmasked."""
    sock = tunnel(spec["host"], spec["port"], spec.get("tls", True))
    sock.sendall(
        (
            f"GET {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    response, rest = read_response(sock, b"")
    if response is None or response["status"] != 101:
        return {"upgrade": response}
    mask = b"\x01\x02\x03\x04"
    payload = spec.get("text", "hello frames").encode()
    length = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    frame = bytes([0x81]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(frame)
    echoed = rest
    sock.settimeout(spec.get("wait", 15))
    while len(echoed) < len(frame):
        chunk = recv(sock)
        if not chunk:
            break
        echoed += chunk
    sock.close()
    return {"upgrade": response, "echoed": echoed == frame, "frames": frames(echoed)}


def frames(data):
    """The frames in `data`: opcode and payload (unmasked; a close frame's code apart)."""
    out = []
    while len(data) >= 2:
        opcode, size, at = data[0] & 0x0F, data[1] & 0x7F, 2
        if size == 126:
            size, at = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, at = int.from_bytes(data[2:10], "big"), 10
        key = None
        if data[1] & 0x80:
            key, at = data[at : at + 4], at + 4
        payload = data[at : at + size]
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        frame = {"opcode": opcode, "text": payload.decode("utf-8", "replace")}
        if opcode == 8 and len(payload) >= 2:
            frame["code"] = int.from_bytes(payload[:2], "big")
            frame["text"] = payload[2:].decode("utf-8", "replace")
        out.append(frame)
        data = data[at + size :]
    return out


def stream(spec):
    """GETs spec['path'] (an event stream) and reports each event with the time it arrived,
    relative to the request."""
    sock = tunnel(spec["host"], spec["port"], spec.get("tls", True))
    started = time.monotonic()
    sock.sendall(f"GET {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n\r\n".encode())
    data = b""
    events = []
    sock.settimeout(30)
    while True:
        chunk = recv(sock)
        if not chunk:
            break
        data += chunk
        for n in (b"data: 1", b"data: 2"):
            if n in data and n.decode() not in [e["event"] for e in events]:
                events.append({"event": n.decode(), "seconds": time.monotonic() - started})
        if len(events) == 2 and (data.endswith(b"0\r\n\r\n") or b"chunked" not in data.lower()):
            break
    sock.close()
    return {"events": events, "head": data.split(b"\r\n\r\n")[0].decode("latin-1")}


COMMANDS = {"sessions": sessions, "websocket": websocket, "stream": stream}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](json.loads(sys.argv[2]))))
