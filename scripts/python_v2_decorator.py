#!/usr/bin/env python3
"""Plays the Python "idempotency v2" decorator on a real Redis, for the mixed-fleet test.

Reads one Kafka message value (an event envelope as JSON) per line on stdin and does what
the decorator does with it (docs/migration-from-python.md lists the facts):

1. ``event = json.loads(value)``; ``event_id = event.get("event_id")``,
   ``event_type = event.get("event_type", "unknown")``, ``data = event.get("data")``;
   ``data is None`` -> the decorator logs an error and runs the handler unprotected.
2. hash input ``{"event_id": event_id, "data": data}`` when ``event_id`` is truthy, else
   ``data``; ``sha256(json.dumps(hash_input, sort_keys=True).encode("utf-8")).hexdigest()``.
3. key ``f"{prefix}:{service}:{event_type.replace('.', '_')}:{hash}"``.
4. ``SET key <JSON metadata> NX EX ttl`` with ``ttl = event_type_ttls.get(event_type,
   default_ttl)``: set -> the handler runs (here it does nothing) and the key stays;
   not set -> a duplicate, skipped.

Writes one JSON line per message: ``{"key", "outcome", "ttl"}`` with outcome
``processed``, ``duplicate`` or ``unprotected``. Needs the ``redis`` package only.
"""
import argparse
import hashlib
import json
import sys
import time

import redis

TTL_QUICK = 3_600
TTL_BATCH = 43_200
TTL_ASSESSMENT = 86_400
TTL_AGGREGATION = 259_200

# The decorator's default per-event-type TTLs.
EVENT_TYPE_TTLS = {
    "huleedu.essay.spellcheck.requested.v1": TTL_QUICK,
    "huleedu.essay.spellcheck.completed.v1": TTL_QUICK,
    "huleedu.file.essay.content.provisioned.v1": TTL_QUICK,
    "huleedu.file.essay.validation.failed.v1": TTL_QUICK,
    "huleedu.batch.essays.registered.v1": TTL_BATCH,
    "huleedu.els.batch.essays.ready.v1": TTL_BATCH,
    "huleedu.els.batch.phase.outcome.v1": TTL_BATCH,
    "huleedu.cj_assessment.completed.v1": TTL_ASSESSMENT,
    "huleedu.batch.cj_assessment.initiate.command.v1": TTL_ASSESSMENT,
    "huleedu.batch.spellcheck.initiate.command.v1": TTL_ASSESSMENT,
    "huleedu.result_aggregator.batch.completed.v1": TTL_AGGREGATION,
    "huleedu.result_aggregator.class.summary.updated.v1": TTL_AGGREGATION,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--prefix", default="huleedu:idempotency:v2")
    parser.add_argument("--service", required=True)
    parser.add_argument("--default-ttl", type=int, default=86_400)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)

    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        event = json.loads(line)
        event_id = event.get("event_id")
        event_type = event.get("event_type", "unknown")
        data = event.get("data")
        ttl = EVENT_TYPE_TTLS.get(event_type, args.default_ttl)
        if data is None:
            answer = {"key": None, "outcome": "unprotected", "ttl": ttl}
        else:
            hash_input = {"event_id": event_id, "data": data} if event_id else data
            digest = hashlib.sha256(
                json.dumps(hash_input, sort_keys=True).encode("utf-8")
            ).hexdigest()
            key = f"{args.prefix}:{args.service}:{event_type.replace('.', '_')}:{digest}"
            value = json.dumps(
                {
                    "processed_at": time.time(),
                    "processed_by": args.service,
                    "event_id": event_id,
                    "correlation_id": event.get("correlation_id"),
                    "source_service": event.get("source_service"),
                }
            )
            claimed = client.set(key, value, nx=True, ex=ttl)
            answer = {
                "key": key,
                "outcome": "processed" if claimed else "duplicate",
                "ttl": ttl,
            }
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
