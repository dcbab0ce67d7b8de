#!/usr/bin/env python3
"""Reads criterion's estimates under target/criterion and prints medians, events/s and the
ratio of each guard row to its group's floor; writes the same table to benches/RESULTS.md
with the machine, versions and date. The Python peers measured by `make bench-peers`
(target/criterion-peers/python.json), when present, join the `redis` group."""
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRIT = os.path.join(ROOT, "target", "criterion")
PEERS = os.path.join(ROOT, "target", "criterion-peers", "python.json")
# Duplicates are compared with the one-round-trip floor, new events with the two.
DUPLICATE_FLOORS = {"redis": "floor: SET NX PX (1 round trip)"}
FLOORS = {
    "memory": "floor: moka insert",
    "redis": "floor: SET NX PX + EVALSHA (2 round trips)",
    "postgres": "floor: INSERT ON CONFLICT (1 statement)",
}


def median_ns(group, bench):
    for dirname in os.listdir(os.path.join(CRIT, group)):
        path = os.path.join(CRIT, group, dirname, "new")
        try:
            with open(os.path.join(path, "benchmark.json")) as f:
                if json.load(f)["function_id"] != bench:
                    continue
            with open(os.path.join(path, "estimates.json")) as f:
                return json.load(f)["median"]["point_estimate"]
        except (OSError, KeyError, ValueError):
            continue
    return None


def benches(group):
    out = []
    for dirname in sorted(os.listdir(os.path.join(CRIT, group))):
        try:
            with open(os.path.join(CRIT, group, dirname, "new", "benchmark.json")) as f:
                out.append(json.load(f)["function_id"])
        except (OSError, KeyError, ValueError):
            pass
    return out


def python_peers():
    """The rows `benches/peers.py` wrote, and a sentence on where they come from; no rows
    and a sentence saying so when it has not run."""
    try:
        with open(PEERS) as f:
            data = json.load(f)
        rows = [r for r in data["rows"] if r.get("median_ns")]
    except (OSError, KeyError, ValueError):
        return [], "The Python peers were not measured: run `make bench-peers`."
    versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
    note = (
        f"Python peer rows: `make bench-peers` ({data.get('measured', '?')}; {versions}), "
        f"{data.get('events_per_row', '?')} events per row each timed alone; their median is "
        "the p50 of those timings, not criterion's estimate, from a run of their own. Powertools runs with its local "
        "cache off. The v2 decorator's new event is one round trip (it never marks the key "
        "completed), so its ratio to the two-round-trip floor can exceed 1."
    )
    return rows, note


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - a missing tool is reported as such
        return "not found"


def main():
    if not os.path.isdir(CRIT):
        sys.exit("no criterion results: run `make bench`")
    peer_rows, peer_note = python_peers()
    rows = ["| group | benchmark | median | events/s | vs floor |", "|---|---|---:|---:|---:|"]
    for group in ("memory", "redis", "postgres"):
        measured = os.path.isdir(os.path.join(CRIT, group))
        extra = [(r["benchmark"], r["median_ns"]) for r in peer_rows if r.get("group") == group]
        if not measured and not extra:
            continue
        floor = median_ns(group, FLOORS[group]) if measured else None
        names = sorted(benches(group), key=lambda n: (not n.startswith("floor"), n)) if measured else []
        medians = [(name, median_ns(group, name)) for name in names] + extra
        for name, m in medians:
            if m is None:
                continue
            base = floor
            if "duplicate" in name and group in DUPLICATE_FLOORS:
                base = median_ns(group, DUPLICATE_FLOORS[group]) if measured else None
            ratio = f"{base / m:.2f}x" if base and not name.startswith("floor") else ""
            rows.append(f"| {group} | {name} | {m / 1000:.1f} us | {1e9 / m:,.0f} | {ratio} |")
    table = "\n".join(rows)
    print(table)
    print(peer_note)
    cpu = version(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip()
    header = (
        "# Benchmark results\n\n"
        f"Measured {datetime.date.today().isoformat()} on {os.cpu_count()} cores ({cpu}), "
        f"{platform.system()} {platform.release()}; {version(['rustc', '--version'])}; "
        f"{version(['redis-server', '--version'])}; {version(['psql', '--version'])}.\n"
        "One task, one event at a time, servers on loopback. `vs floor` is events/s of the row "
        "divided by events/s of the group's floor (the same work with the raw client; for "
        "PostgreSQL the floor is one statement, the guard runs two). Rows named `peer` are "
        "other libraries doing the same work for one event.\n"
        f"{peer_note}\n\n"
    )
    with open(os.path.join(ROOT, "benches", "RESULTS.md"), "w") as f:
        f.write(header + table + "\n")


main()
