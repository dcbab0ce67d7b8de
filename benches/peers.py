#!/usr/bin/env python3
"""The Python peers of the benchmark table, on the same Redis as `benches/guard.rs`.

`make bench-peers` installs `redis` and `aws-lambda-powertools[redis]` into a virtualenv
under target/ and runs this script. Two peers, each doing the work the guard does for one
event, one event at a time:

- "python v2 decorator": the shape of the production Python "idempotency v2" decorator,
  written again here on `redis.asyncio`: the key
  `huleedu:idempotency:v2:{service}:{event_type}:{sha256 of the canonical JSON of
  {event_id, data}}`, `SET key metadata NX EX ttl` with the full TTL, run the handler,
  `DEL` on failure; on success the key stays set with its metadata.
- "aws powertools": `idempotent_function` from Powertools for AWS Lambda (Python) with its
  Redis persistence layer (`CachePersistenceLayer`, the current name of
  `RedisCachePersistenceLayer`), the key taken from `{event_id, data}` by JMESPath, and the
  in-memory local cache off so every call goes to Redis.

Rows per peer: new event (claim and complete), duplicate (the same event again), handler
failure (claim, the handler raises, release). Each event is timed alone with
`time.perf_counter_ns`; rows report p50 and p99 per event and events/s (events over the
row's wall time). Before the timed events each row runs a warm-up of its own. A separate,
untimed pass counts the Redis commands one event sends.

Results: a markdown table on stdout and target/criterion-peers/python.json, which
`benches/summary.py` adds to the `redis` group of its table.
"""
import argparse
import asyncio
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from importlib import metadata

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "target", "criterion-peers", "python.json")
EVENT_TYPE = "bench.order.placed.v1"
# The guard's default TTL, and the v2 tier for this kind of event.
TTL_SECONDS = 86_400


class HandlerFailed(Exception):
    """The failure a handler raises in the failure rows."""


def event(run, n):
    """The envelope the Rust rows use: an id, a type and a small payload."""
    return {
        "event_id": f"bench-{run}-{n}",
        "event_type": EVENT_TYPE,
        "data": {"order": n, "lines": [1, 2, 3]},
    }


def percentile(sorted_ns, q):
    """Nearest-rank percentile of sorted timings."""
    if not sorted_ns:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_ns)))
    return sorted_ns[min(rank, len(sorted_ns)) - 1]


def row(peer, case, timings_ns, wall_ns, commands):
    timings_ns = sorted(timings_ns)
    p50 = percentile(timings_ns, 50)
    return {
        "group": "redis",
        "benchmark": f"peer {peer}: {case}",
        "median_ns": p50,
        "p50_ns": p50,
        "p99_ns": percentile(timings_ns, 99),
        "events_per_s": len(timings_ns) * 1e9 / wall_ns if wall_ns else 0.0,
        "events": len(timings_ns),
        "redis_commands_per_event": commands,
    }


class CommandCounter:
    """Counts the commands a redis-py client (sync or asyncio) sends, by wrapping
    `execute_command` on that one client object; `stop()` takes the wrapper off again."""

    def __init__(self, client, is_async):
        self.client = client
        self.count = 0
        inner = client.execute_command
        if is_async:

            async def counted(*args, **kwargs):
                self.count += 1
                return await inner(*args, **kwargs)

        else:

            def counted(*args, **kwargs):
                self.count += 1
                return inner(*args, **kwargs)

        client.execute_command = counted

    def stop(self):
        del self.client.execute_command


# --- "python v2 decorator" -------------------------------------------------------------


def v2_idempotent(client, service, ttl_seconds, key_prefix="huleedu:idempotency:v2"):
    """The v2 decorator's shape: claim with `SET NX EX` for the full TTL, run, `DEL` on
    failure. The wrapped handler takes the event dict; a duplicate returns None without
    running it."""

    def decorate(handler):
        async def wrapper(event):
            canonical = json.dumps(
                {"event_id": event.get("event_id"), "data": event.get("data")},
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
            )
            digest = hashlib.sha256(canonical.encode()).hexdigest()
            event_type = event["event_type"].replace(".", "_")
            key = f"{key_prefix}:{service}:{event_type}:{digest}"
            value = json.dumps(
                {
                    "processed_at": time.time(),
                    "service": service,
                    "event_type": event["event_type"],
                    "event_id": event.get("event_id"),
                }
            )
            claimed = await client.set(key, value, nx=True, ex=ttl_seconds)
            if not claimed:
                return None
            try:
                return await handler(event)
            except Exception:
                await client.delete(key)
                raise

        return wrapper

    return decorate


async def bench_v2(url, run, n, warmup):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        calls = {"n": 0}
        service = f"bench-peers-{run}"

        @v2_idempotent(client, service, TTL_SECONDS)
        async def ok(event):
            calls["n"] += 1

        @v2_idempotent(client, service, TTL_SECONDS)
        async def failing(event):
            calls["n"] += 1
            raise HandlerFailed("failed")

        async def new_event(e):
            await ok(e)

        async def failure(e):
            try:
                await failing(e)
            except HandlerFailed:
                pass

        dup = event(run, "v2-dup")
        await ok(dup)

        async def duplicate(_e):
            await ok(dup)

        cases = [("new event", new_event, "v2-new"), ("duplicate", duplicate, "v2-dup-run"),
                 ("handler failure", failure, "v2-fail")]
        rows = []
        for case, call, tag in cases:
            counter = CommandCounter(client, is_async=True)
            await call(event(run, f"{tag}-count"))
            counter.stop()
            for i in range(warmup):
                await call(event(run, f"{tag}-warm-{i}"))
            before = calls["n"]
            events = [event(run, f"{tag}-{i}") for i in range(n)]
            timings = []
            start = time.perf_counter_ns()
            for e in events:
                t0 = time.perf_counter_ns()
                await call(e)
                timings.append(time.perf_counter_ns() - t0)
            wall = time.perf_counter_ns() - start
            ran = calls["n"] - before
            expected = 0 if case == "duplicate" else n
            if ran != expected:
                sys.exit(f"v2 {case}: the handler ran {ran} times, expected {expected}")
            rows.append(row("python v2 decorator", case, timings, wall, counter.count))
        return rows
    finally:
        await client.aclose()


# --- "aws powertools" --------------------------------------------------------------------


def bench_powertools(url, run, n, warmup):
    import redis
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.persistence.cache import CachePersistenceLayer

    client = redis.Redis.from_url(url, decode_responses=True)
    client.ping()
    store = CachePersistenceLayer(client=client)
    config = IdempotencyConfig(
        event_key_jmespath="{event_id: event_id, data: data}",
        expires_after_seconds=TTL_SECONDS,
        use_local_cache=False,
    )
    prefix = f"huleedu:idempotency:bench:peer-powertools:{run}"
    calls = {"n": 0}

    @idempotent_function(data_keyword_argument="event", persistence_store=store, config=config,
                         key_prefix=prefix)
    def ok(event):
        calls["n"] += 1

    @idempotent_function(data_keyword_argument="event", persistence_store=store, config=config,
                         key_prefix=prefix + ":fail")
    def failing(event):
        calls["n"] += 1
        raise HandlerFailed("failed")

    def new_event(e):
        ok(event=e)

    def failure(e):
        try:
            failing(event=e)
        except HandlerFailed:
            pass

    dup = event(run, "pt-dup")
    ok(event=dup)

    def duplicate(_e):
        ok(event=dup)

    cases = [("new event", new_event, "pt-new"), ("duplicate", duplicate, "pt-dup-run"),
             ("handler failure", failure, "pt-fail")]
    rows = []
    for case, call, tag in cases:
        counter = CommandCounter(client, is_async=False)
        call(event(run, f"{tag}-count"))
        counter.stop()
        for i in range(warmup):
            call(event(run, f"{tag}-warm-{i}"))
        before = calls["n"]
        events = [event(run, f"{tag}-{i}") for i in range(n)]
        timings = []
        start = time.perf_counter_ns()
        for e in events:
            t0 = time.perf_counter_ns()
            call(e)
            timings.append(time.perf_counter_ns() - t0)
        wall = time.perf_counter_ns() - start
        ran = calls["n"] - before
        expected = 0 if case == "duplicate" else n
        if ran != expected:
            sys.exit(f"powertools {case}: the handler ran {ran} times, expected {expected}")
        rows.append(row("aws powertools", case, timings, wall, counter.count))
    client.close()
    return rows


def version_of(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def purge(url, patterns):
    """Deletes this run's keys (SCAN, never KEYS), so that runs do not pile records up in a
    shared Redis and slow the next run down."""
    import redis as sync_redis
    client = sync_redis.Redis.from_url(url)
    for pattern in patterns:
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("PEERS_EVENTS", 5000)),
                        help="timed events per row (default 5000, or PEERS_EVENTS)")
    parser.add_argument("--warmup", type=int, default=int(os.environ.get("PEERS_WARMUP", 500)),
                        help="untimed events before each row (default 500, or PEERS_WARMUP)")
    parser.add_argument("--url", default=os.environ.get("EVENTONCE_REDIS_URL", "redis://127.0.0.1:6379"))
    args = parser.parse_args()
    run = f"{os.getpid()}-{int(time.time() * 1000)}"

    rows = asyncio.run(bench_v2(args.url, run, args.events, args.warmup))
    with warnings.catch_warnings():
        # Outside Lambda there is no context to give an in-progress record its own expiry,
        # and Powertools warns about that on every claim; RedisCachePersistenceLayer (which
        # CachePersistenceLayer names) is marked deprecated for v4 in favour of that name.
        warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left")
        warnings.simplefilter("ignore", DeprecationWarning)
        rows += bench_powertools(args.url, run, args.events, args.warmup)

    purge(args.url, [f"huleedu:idempotency:v2:bench-peers-{run}:*",
                     f"huleedu:idempotency:bench:peer-powertools:{run}*"])

    versions = {
        "python": platform.python_version(),
        "redis-py": version_of("redis"),
        "aws-lambda-powertools": version_of("aws-lambda-powertools"),
    }
    result = {
        "measured": datetime.datetime.now().isoformat(timespec="seconds"),
        "redis_url": args.url,
        "events_per_row": args.events,
        "warmup_per_row": args.warmup,
        "versions": versions,
        "notes": [
            "one event at a time; each event timed alone with time.perf_counter_ns",
            "powertools: local cache off (use_local_cache=False), so every call goes to Redis",
            "powertools: no Lambda context, so an in-progress record has no expiry of its own "
            "(it holds for the full TTL, as the v2 decorator's claim does)",
            "python v2 decorator: re-implemented here from its description, on redis.asyncio",
        ],
        "rows": rows,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print(f"Python peers on {args.url}: {args.events} events per row after {args.warmup} warm-up; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    print("Powertools: local cache off (every call goes to Redis); no Lambda context.")
    print()
    print("| benchmark | events/s | p50 | p99 | Redis commands/event |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['events_per_s']:,.0f} | {r['p50_ns'] / 1000:.1f} us "
              f"| {r['p99_ns'] / 1000:.1f} us | {r['redis_commands_per_event']} |")
    print()
    print(f"written to {os.path.relpath(OUT, ROOT)}")


main()
