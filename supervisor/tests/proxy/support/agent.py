"""The agent's side of the proxy tests: runs inside the sandbox, talks to the proxy the way an
agent's HTTP client would, and prints what happened as one JSON document on stdout.

It reports and never judges (the Rust test does). Anything unexpected ends it with a traceback
and no JSON on stdout, which fails the test: a crashed client never passes for a refusal.

Usage: agent.py COMMAND ARGS... (see the functions named in COMMANDS at the bottom).
"""

import asyncio
import errno
import json
import os
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time

PROXY = ("127.0.0.1", 3128)


def authority(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def read_response(sock, buf=b""):
    """One response (head and Content-Length body) and the bytes after it; None when the peer
    closed before sending anything."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                raise EOFError(f"closed inside a response head: {buf!r}")
            return None, b""
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed inside a response body")
        rest += chunk
    body = rest[:length].decode("utf-8", "replace")
    return {"status": status, "headers": headers, "body": body}, rest[length:]


def fetch(mode, host, port, path, timeout=15):
    """One request on a fresh connection to the proxy. mode: connect (CONNECT, then GET through
    the tunnel), forward (absolute-form http://) or https-forward (absolute-form https://).
    For an established tunnel the result is the upstream's response, with "tunnel": true."""
    target = authority(host, port)
    try:
        with socket.create_connection(PROXY, timeout=timeout) as sock:
            if mode == "connect":
                sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                response, rest = read_response(sock)
                if response is None or response["status"] != 200:
                    return response or {"status": None, "error": "closed without a response"}
                if rest:
                    raise ValueError(f"bytes after the CONNECT response: {rest!r}")
                request = f"GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
                sock.sendall(request.encode())
                response, _ = read_response(sock)
                return dict(response, tunnel=True)
            scheme = {"forward": "http", "https-forward": "https"}[mode]
            request = (
                f"GET {scheme}://{target}{path} HTTP/1.1\r\nHost: {target}\r\n"
                "Connection: close\r\n\r\n"
            )
            sock.sendall(request.encode())
            response, _ = read_response(sock)
            return response or {"status": None, "error": "closed without a response"}
    except OSError as e:
        return {"status": None, "error": repr(e)}


def batch(requests):
    """Each of a JSON list of {mode, host, port, path[, timeout]}, one after the other."""
    return [
        fetch(r["mode"], r["host"], r["port"], r["path"], r.get("timeout", 15))
        for r in json.loads(requests)
    ]


def session(*urls):
    """Absolute-form GETs of each host:port/path on ONE keep-alive connection, in order, until
    the proxy closes it. Reports each response and whether the connection was still open."""
    responses = []
    with socket.create_connection(PROXY, timeout=15) as sock:
        rest = b""
        for url in urls:
            request = f"GET http://{url} HTTP/1.1\r\nHost: {url.split('/')[0]}\r\n\r\n"
            try:
                sock.sendall(request.encode())
                response, rest = read_response(sock, rest)
            except (BrokenPipeError, ConnectionResetError) as e:
                response = {"status": None, "error": repr(e)}
            if response is None:
                response = {"status": None, "error": "closed without a response"}
            responses.append(response)
            if response["status"] is None:
                break
        sock.settimeout(0.5)
        try:
            open_at_end = sock.recv(1) != b""
        except socket.timeout:
            open_at_end = True
        except ConnectionResetError:
            open_at_end = False
    return {"responses": responses, "open_at_end": open_at_end}


# A DNS query for example.com, type A: what a resolver would send.
DNS_QUERY = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")


def direct(kind, host, port):
    """One attempt to reach host:port around the proxy; how it failed and how long it took.
    kind: tcp, udp (a datagram), dns (a DNS query over UDP); IPv6 when host has a colon."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    stream = kind == "tcp"
    sock = socket.socket(family, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
    sock.settimeout(5)
    started = time.perf_counter_ns()
    try:
        if stream:
            sock.connect((host, int(port)))
        else:
            sock.sendto(DNS_QUERY if kind == "dns" else b"direct", (host, int(port)))
        outcome = None
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e.errno))
    elapsed_ms = (time.perf_counter_ns() - started) / 1e6
    sock.close()
    return {"kind": kind, "host": host, "port": int(port), "errno": outcome, "ms": elapsed_ms}


def directs(*specs):
    """direct() for each KIND:HOST:PORT (the host in brackets for IPv6)."""
    results = []
    for spec in specs:
        kind, rest = spec.split(":", 1)
        host, _, port = rest.rpartition(":")
        results.append(direct(kind, host.strip("[]"), port))
    return results


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def open_tunnel(target):
    reader, writer = await asyncio.open_connection(*PROXY)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if status != 200:
        raise ConnectionError(f"CONNECT answered {status}")
    return reader, writer


async def get_through(tunnel, target, path):
    reader, writer = tunnel
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, _ = parse_head(head)
    if status != 200 or path.encode() not in body:
        raise ValueError(f"unexpected answer for {path}: {data[:200]!r}")


async def flood_async(count, host, port):
    target = authority(host, port)
    started = time.monotonic()
    opened = await asyncio.gather(
        *(asyncio.wait_for(open_tunnel(target), 60) for _ in range(count)), return_exceptions=True
    )
    tunnels = [(i, t) for i, t in enumerate(opened) if not isinstance(t, BaseException)]
    open_seconds = time.monotonic() - started
    # Every tunnel that opened is open at this point, all at once; only now does any of them
    # carry a request.
    served = await asyncio.gather(
        *(asyncio.wait_for(get_through(t, target, f"/flood/{i}"), 60) for i, t in tunnels),
        return_exceptions=True,
    )
    failures = [repr(e) for e in opened if isinstance(e, BaseException)]
    failures += [repr(e) for e in served if isinstance(e, BaseException)]
    return {
        "opened_at_once": len(tunnels),
        "served": sum(1 for s in served if not isinstance(s, BaseException)),
        "failures": failures[:20],
        "open_seconds": open_seconds,
        "seconds": time.monotonic() - started,
    }


def flood(count, host, port):
    """COUNT CONNECT tunnels opened concurrently and held open together, then one GET each."""
    raise_fd_limit()
    return asyncio.run(flood_async(int(count), host, int(port)))


def slow_client(target, interval, deadline, result):
    """Dribbles a request head that never ends, one byte per interval, until the proxy answers
    or closes."""
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode()
    padding = b"X-Padding: slow\r\n"
    started = time.monotonic()
    received = b""
    with socket.create_connection(PROXY) as sock:
        sock.setblocking(False)
        sent = 0
        while time.monotonic() - started < deadline:
            data = head + padding * (1 + sent // len(padding))
            try:
                sock.send(data[sent : sent + 1])
                sent += 1
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            sel = selectors.DefaultSelector()
            sel.register(sock, selectors.EVENT_READ)
            ready = sel.select(interval)
            sel.close()
            if ready:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    break
                received += chunk
    result.update(
        closed_after=time.monotonic() - started,
        sent=sent,
        answer=received.decode("latin-1"),
    )


def silent_client(deadline, result):
    """Connects and sends nothing."""
    started = time.monotonic()
    with socket.create_connection(PROXY, timeout=deadline) as sock:
        try:
            received = sock.recv(65536)
        except socket.timeout:
            received = None
    result.update(
        closed_after=time.monotonic() - started,
        answer=None if received is None else received.decode("latin-1"),
    )


def slowloris(slow, silent, normal, host, port):
    """SLOW clients dribbling heads and SILENT ones sending nothing, while NORMAL requests are
    made one after the other on fresh connections."""
    target = authority(host, port)
    deadline = 20.0
    slow_results = [{} for _ in range(int(slow))]
    silent_results = [{} for _ in range(int(silent))]
    threads = [
        threading.Thread(target=slow_client, args=(target, 0.05, deadline, r)) for r in slow_results
    ] + [threading.Thread(target=silent_client, args=(deadline, r)) for r in silent_results]
    for t in threads:
        t.start()
    time.sleep(0.2)
    normal_results = []
    for i in range(int(normal)):
        started = time.monotonic()
        response = fetch("connect", host, port, f"/normal/{i}")
        response["seconds"] = time.monotonic() - started
        response["while_slow_pending"] = any(not r for r in slow_results)
        normal_results.append(response)
        time.sleep(0.05)
    for t in threads:
        t.join()
    return {"slow": slow_results, "silent": silent_results, "normal": normal_results}


def exhaust(count, host, port, settle):
    """Opens COUNT tunnels at once and holds them: records what each CONNECT got within SETTLE
    seconds and whether each established tunnel really carries a request; closes the tunnels
    and waits for the queued CONNECTs' answers; then retries one fetch until it succeeds (at
    most 10 s)."""
    raise_fd_limit()
    target = authority(host, port)
    socks = []
    for _ in range(int(count)):
        sock = socket.create_connection(PROXY, timeout=5)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        sock.setblocking(False)
        socks.append(sock)
    answers = {}

    def record(data):
        answer = "closed"
        if data:
            status, headers = parse_head(data.partition(b"\r\n\r\n")[0])
            answer = f"{status} {headers.get('x-openshell-error', '')}".strip()
        answers[answer] = answers.get(answer, 0) + 1
        return answer

    established = []
    pending = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
    stop = time.monotonic() + float(settle)
    while pending and time.monotonic() < stop:
        for key, _ in sel.select(max(0.0, stop - time.monotonic())):
            sock = key.fileobj
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, ConnectionResetError):
                chunk = b""
            pending[sock] += chunk
            if b"\r\n\r\n" in pending[sock] or not chunk:
                if record(pending.pop(sock)) == "200":
                    established.append(sock)
                sel.unregister(sock)
    sel.close()
    # A 200 is only a tunnel if a request gets through it; the tunnels stay open after it.
    tunnels = {"served": 0, "dead": 0}
    for i, sock in enumerate(established):
        sock.settimeout(2)
        try:
            sock.sendall(f"GET /held/{i} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            response, _ = read_response(sock)
            served = response is not None and response["status"] == 200
        except (OSError, EOFError):
            served = False
        tunnels["served" if served else "dead"] += 1
    # Closing the tunnels frees the proxy's descriptors; the connections still queued (not
    # accepted while it had none) must then be answered too. They stay open until they are:
    # a client that gives up is the subject of a test of its own (abandon).
    queued = len(pending)
    for sock in established:
        sock.close()
    stop = time.monotonic() + 5
    while pending and time.monotonic() < stop:
        for sock in list(pending):
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            pending[sock] += chunk
            if b"\r\n\r\n" in pending[sock] or not chunk:
                record(pending.pop(sock))
        time.sleep(0.01)
    unanswered = len(pending)
    for sock in socks:
        sock.close()
    started = time.monotonic()
    after = fetch("connect", host, port, "/after")
    while after.get("status") != 200 and time.monotonic() - started < 10:
        time.sleep(0.2)
        after = fetch("connect", host, port, "/after")
    return {
        "answers": answers,
        "tunnels": tunnels,
        "queued": queued,
        "unanswered": unanswered,
        "after": after,
        "after_seconds": time.monotonic() - started,
    }


def abandon(count, host, port):
    """COUNT clients, one after the other, each sending a complete CONNECT and closing its
    connection at once, without waiting for the answer; then a normal request."""
    target = authority(host, port)
    for _ in range(int(count)):
        with socket.create_connection(PROXY) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    # Whatever the proxy does with them, it has done it by now.
    time.sleep(0.5)
    return {"after": fetch("connect", host, port, "/after")}


def trusting_nothing():
    """TLS that does not check the proxy's certificate: these clients test the proxy's memory,
    not trust (the real-client tests check that)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_client(host, port, tls):
    """A connection on which origin-form requests to host:port can be sent: a CONNECT tunnel
    with TLS inside when tls, otherwise the proxy itself (absolute-form requests)."""
    reader, writer = await asyncio.open_connection(*PROXY)
    target = authority(host, port)
    if tls:
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        status, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
        if status != 200:
            writer.close()
            raise ConnectionError(f"CONNECT answered {status}")
        await writer.start_tls(trusting_nothing(), server_hostname=host)
    return reader, writer


def request_line(host, port, tls, path):
    target = authority(host, port)
    url = path if tls else f"http://{target}{path}"
    return f"GET {url} HTTP/1.1\r\nHost: {target}\r\n"


async def timed_get(client, host, port, tls, path):
    """One keep-alive GET on client; its status and how long it took."""
    reader, writer = client
    started = time.monotonic()
    try:
        writer.write((request_line(host, port, tls, path) + "\r\n").encode())
        status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(int(headers.get("content-length", "0")))
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as e:
        return {"status": None, "error": repr(e), "seconds": time.monotonic() - started}
    return {"status": status, "seconds": time.monotonic() - started}


PADDING = memoryview(b"a" * (1 << 20))


async def hold_head(host, port, tls, size, release, outcome):
    """Sends SIZE bytes of a request head that never ends and holds the connection until
    release; outcome["state"] says how it ended: held, answered STATUS-LINE, closed (without
    an answer), or what failed."""
    writer = None
    try:
        reader, writer = await open_client(host, port, tls)
        line = request_line(host, port, tls, "/flood").encode() + b"X-Pad: "
        outcome["state"] = "sending"
        # One padding for all: the agent's own memory stays small, whatever the flood.
        writer.write(line)
        writer.write(PADDING[: max(0, size - len(line) - 2)])
        writer.write(b"\r\n")
        await writer.drain()
        outcome["state"] = "held"
        outcome["held_at"] = time.monotonic()
        answer = asyncio.ensure_future(reader.read(65536))
        done, _ = await asyncio.wait({answer, release}, return_when=asyncio.FIRST_COMPLETED)
        if answer in done:
            data = answer.result()
            first = data.split(b"\r\n", 1)[0].decode("latin-1")
            outcome["state"] = f"answered {first}" if data else "closed"
        else:
            answer.cancel()
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as e:
        outcome["state"] = f"failed while {outcome['state']}: {type(e).__name__}"
    finally:
        if writer is not None:
            writer.close()


async def heads_async(count, size, host, port, tls):
    old = await open_client(host, port, tls)
    before = await timed_get(old, host, port, tls, "/old/before")
    release = asyncio.get_running_loop().create_future()
    outcomes = [{"state": "connecting"} for _ in range(count)]
    started = time.monotonic()
    tasks = [
        asyncio.create_task(hold_head(host, port, tls, size, release, o)) for o in outcomes
    ]
    # Every head sent (or its connection refused) well within the proxy's header timeout.
    unsettled = ("connecting", "sending")
    while time.monotonic() - started < 8 and any(o["state"] in unsettled for o in outcomes):
        await asyncio.sleep(0.05)
    flood_seconds = time.monotonic() - started
    await asyncio.sleep(0.5)
    old_during = await timed_get(old, host, port, tls, "/old/during")
    connecting = time.monotonic()
    try:
        new = await asyncio.wait_for(open_client(host, port, tls), 30)
        new_during = await timed_get(new, host, port, tls, "/new/during")
        new[1].close()
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
        new_during = {"status": None, "error": repr(e)}
    new_during["seconds_with_connect"] = time.monotonic() - connecting
    states = {}
    for o in outcomes:
        state = o["state"]
        states[state] = states.get(state, 0) + 1
    release.set_result(None)
    await asyncio.gather(*tasks)
    old[1].close()
    return {
        "flood_seconds": flood_seconds,
        "states": states,
        "old": {"before": before, "during": old_during},
        "new": new_during,
    }


def heads(count, size, host, port, tls):
    """A well-behaved keep-alive client makes a request; then COUNT connections each send SIZE
    bytes of a request head that never ends (to the proxy itself, or with tls inside a TLS
    tunnel to an inspected endpoint) and hold; while they hold, the old client and a new one
    each make a request (timed). Reports how the flooding connections ended."""
    raise_fd_limit()
    return asyncio.run(heads_async(int(count), int(size), host, int(port), tls == "tls"))


def heads_then_hog(count, size, host, port, tls):
    """heads, its result printed as one line; then the agent's own memory grows, 8 MiB at a
    time (touched), each step printed, until it is killed (at most 4 GiB)."""
    print(json.dumps(heads(count, size, host, port, tls)), flush=True)
    hog = []
    while len(hog) < 512:
        hog.append(b"\x01" * (8 << 20))
        print(json.dumps({"hogged_mib": 8 * len(hog)}), flush=True)
    return {"hogged_mib": 8 * len(hog), "not_killed": True}


def spawn(*argv):
    """Runs argv as a child of this interpreter and exits with its status."""
    sys.exit(subprocess.run(argv).returncode)


def get_over(sock, host, path):
    """One GET on a connected socket; the response (or what went wrong)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    response, _ = read_response(sock)
    return response or {"status": None, "error": "closed without a response"}


def direct_get(host, port, path, timeout="10"):
    """A GET to host:port by a plain socket.create_connection: no proxy, the way a program
    that knows nothing of proxies connects. host may be a name or an IP literal."""
    started = time.perf_counter()
    try:
        with socket.create_connection((host, int(port)), timeout=float(timeout)) as sock:
            peer = sock.getpeername()
            response = get_over(sock, host, path)
            response["peer"] = [peer[0], peer[1]]
    except OSError as e:
        response = {"status": None, "error": errno.errorcode.get(e.errno, repr(e))}
    response["ms"] = (time.perf_counter() - started) * 1000
    return response


def directs_get(*specs):
    """direct_get for each HOST:PORT:PATH (IPv6 literals in brackets)."""
    results = []
    for spec in specs:
        rest, _, path = spec.partition("/")
        host, _, port = rest.rpartition(":")
        results.append(direct_get(host.strip("[]"), port, "/" + path))
    return results


def resolve(*names):
    """getaddrinfo for each name: its addresses, or the resolver's error."""
    out = {}
    for name in names:
        try:
            infos = socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)
            out[name] = sorted({info[4][0] for info in infos})
        except socket.gaierror as e:
            out[name] = {"gaierror": e.errno, "message": str(e)}
    return out


def fidelity(host, port, family):
    """Socket state across the transparent path: TCP_NODELAY and SO_KEEPALIVE set before a
    non-blocking connect, the connect completed with poll, then the options, the peer and a
    request read back."""
    fam = socket.AF_INET6 if family == "6" else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setblocking(False)
    first = sock.connect_ex((host, int(port)))
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_WRITE)
    ready = bool(sel.select(10))
    sel.close()
    result = {
        "connect": errno.errorcode.get(first, first),
        "writable": ready,
        "so_error": sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR),
        "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "nonblocking": not sock.getblocking(),
        "peer": list(sock.getpeername()[:2]),
    }
    sock.setblocking(True)
    sock.settimeout(10)
    result["response"] = get_over(sock, host, "/fidelity")
    sock.close()
    return result


def libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def clone_parent_exec(*argv):
    """clone(CLONE_PARENT): a child whose parent is this process's parent; the child execs
    argv. Reports the clone's outcome (the child's pid and its parent, or the errno)."""
    import ctypes

    CLONE_PARENT, SIGCHLD, SYS_clone = 0x8000, 17, 56
    lib = libc()
    pid = lib.syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os.execv(argv[0], list(argv))
    if pid < 0:
        return {"errno": errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    return {"pid": pid, "ppid": ppid, "my_parent": os.getppid()}


def subreaper_then_exec(*argv):
    """PR_SET_CHILD_SUBREAPER, then exec argv (the subreaper becomes argv's program). Prints
    the prctl's outcome first."""
    import ctypes

    rc = libc().prctl(36, 1, 0, 0, 0)
    outcome = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())
    print(json.dumps({"subreaper": outcome}), flush=True)
    os.execv(argv[0], list(argv))


def lend(lender, target, cork):
    """Socket lending: this process connects a socket to the proxy, parks it in flight over
    SCM_RIGHTS (so no process holds it) while LENDER, which inherited it, sends the CONNECT
    (or, with cork=1, only uncorks the CONNECT this process wrote with TCP_CORK), then takes
    it back and uses the tunnel."""
    import array

    sock = socket.create_connection(PROXY, timeout=10)
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    if cork == "1":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(request)
    park, keep = socket.socketpair()
    inherited = os.dup(sock.fileno())
    os.set_inheritable(inherited, True)
    code = (
        "import socket, sys, time\n"
        f"s = socket.socket(fileno={inherited})\n"
        + (
            "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)\n"
            if cork == "1"
            else f"time.sleep(0.3)\ns.sendall({request!r})\n"
        )
        + "time.sleep(0.5)\n"
    )
    helper = subprocess.Popen([lender, "-c", code], pass_fds=(inherited,))
    os.close(inherited)
    park.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))])
    sock.close()
    helper.wait()
    msg, ancdata, _, _ = keep.recvmsg(1, socket.CMSG_SPACE(4))
    back = socket.socket(fileno=array.array("i", ancdata[0][2])[0])
    back.settimeout(10)
    response, rest = read_response(back)
    result = {"connect": response}
    if response and response["status"] == 200:
        result["tunnel"] = get_over(back, target, "/lent")
    return result


COMMANDS = {
    "clone_parent_exec": clone_parent_exec,
    "subreaper_then_exec": subreaper_then_exec,
    "lend": lend,
    "batch": batch,
    "direct_get": direct_get,
    "directs_get": directs_get,
    "resolve": resolve,
    "fidelity": fidelity,
    "session": session,
    "directs": directs,
    "flood": flood,
    "slowloris": slowloris,
    "exhaust": exhaust,
    "abandon": abandon,
    "heads": heads,
    "heads_then_hog": heads_then_hog,
    "spawn": spawn,
}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
