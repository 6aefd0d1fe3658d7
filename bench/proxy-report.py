"""Prints bench/proxy.sh's table: medians of the rounds' figures, with the goals.

Usage: proxy-report.py RESULTS RUNS SIZE_MB WORKERS TUNNELS NGINX_VERSION CURL_VERSION CPUS PROCS
RESULTS has one "name value" line per figure and round.
"""

import statistics
import sys
from collections import defaultdict

path, runs, size_mb, workers, tunnels, nginx, curl, cpus, procs = sys.argv[1:]
rounds = defaultdict(list)
with open(path) as results:
    for line in results:
        name, value = line.split()
        rounds[name].append(float(value))
m = {name: statistics.median(values) for name, values in rounds.items()}


def verdict(ok):
    return "met" if ok else "MISSED"


def line(label, cells, note=""):
    print(f"{label:<44}" + "".join(f"{c:>11}" for c in cells) + (f"   {note}" if note else ""))


print(f"egress proxy vs direct: medians of {runs} interleaved rounds; {cpus} CPUs, {procs} processes")
print(f"server: {nginx.split(': ')[-1]} (sendfile) on the test host; bulk client: {curl.split(' (')[0]}")
print()
d, c, f = m["bulk_direct"], m["bulk_connect"], m["bulk_forward"]
line("bulk transfer", ["direct", "CONNECT", "absolute"], "goal")
line(f"  {size_mb} MiB, MB/s", [f"{d:.0f}", f"{c:.0f}", f"{f:.0f}"], ">= 90% of direct")
line("  ratio to direct", ["", f"{c / d:.0%}", f"{f / d:.0%}"], verdict(min(c, f) >= 0.9 * d))
print()
line("connect [+ CONNECT] + GET 64 B + close", ["direct", "proxy", "pod pidns"],
     "goal: proxy / pod pidns")
GOALS = {
    ("lat", "p50"): ("<= 0.5 ms", lambda v: v <= 0.5),
    ("rate", "per_second"): (">= 2000/s", lambda v: v >= 2000),
}
for prefix, who in (("lat", "1 worker"), ("rate", f"{workers} workers")):
    for stat, label, fmt in (
        ("p50", "latency p50, ms", ".3f"),
        ("p99", "latency p99, ms", ".3f"),
        ("per_second", "exchanges/s", ".0f"),
    ):
        values = [m[f"{prefix}_{side}_{stat}"] for side in ("direct", "proxy", "pidns")]
        note = ""
        if (prefix, stat) in GOALS:
            target, ok = GOALS[(prefix, stat)]
            note = f"{target}: {verdict(ok(values[1]))} / {verdict(ok(values[2]))}"
        line(f"  {label} ({who})", [format(v, fmt) for v in values], note)
print()


def mib(key):
    return m[key] / 1024


line("supervisor memory", ["MiB"], "goal")
line("  VmRSS idle", [f"{mib('rss_idle'):.1f}"], f"<= 8 MiB: {verdict(mib('rss_idle') <= 8)}")
line(f"  VmRSS, {tunnels} open tunnels", [f"{mib('rss_tunnels'):.1f}"],
     f"<= 48 MiB: {verdict(mib('rss_tunnels') <= 48)}")
line(f"  VmHWM, {tunnels} open tunnels", [f"{mib('hwm_tunnels'):.1f}"])
line("  seconds to open them one by one", [f"{m['tunnels_open_seconds']:.2f}"])
