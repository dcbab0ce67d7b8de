#!/usr/bin/env python3
"""Reads criterion's estimates under target/criterion (and the per-event p50/p99 the bench
wrote under target/criterion-latency) and prints, per row: median per event, events/s,
p50, p99 and the ratio to the group's floor; then the issue's targets, each with its
measured ratio. Writes the same tables to benches/RESULTS.md with the machine, versions
and date. The Python peers measured by `make bench-peers`
(target/criterion-peers/python.json), when present, join the `redis` group."""
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRIT = os.path.join(ROOT, "target", "criterion")
LATENCY = os.path.join(ROOT, "target", "criterion-latency")
PEERS = os.path.join(ROOT, "target", "criterion-peers", "python.json")
# PostgreSQL at scale (`make bench-postgres`, backend-postgres/benches/scale.rs).
PG_SCALE = os.path.join(LATENCY, "postgres-scale", "scale.json")
# The bytes per record the issue measured on the layout before migration 0003.
PG_BYTES_BEFORE = 346
GROUPS = ("memory", "redis", "postgres")
ONE_RT = "floor: SET NX PX (1 round trip)"
TWO_RT = "floor: SET NX PX + EVALSHA (2 round trips)"
PG_FLOOR = "floor: INSERT ON CONFLICT (1 statement)"
# Rows compared with the one-round-trip floor (one round trip is all they can need); the
# rest of a group is compared with its main floor.
FLOORS = {"memory": "floor: MemoryStore claim + complete", "redis": TWO_RT, "postgres": PG_FLOOR}


def slug(name):
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name)


def load(group):
    """{benchmark: {median_ns per event, p50_ns, p99_ns}} for one group."""
    rows = {}
    gdir = os.path.join(CRIT, group)
    if os.path.isdir(gdir):
        for dirname in os.listdir(gdir):
            path = os.path.join(gdir, dirname, "new")
            try:
                with open(os.path.join(path, "benchmark.json")) as f:
                    bench = json.load(f)
                with open(os.path.join(path, "estimates.json")) as f:
                    median = json.load(f)["median"]["point_estimate"]
            except (OSError, KeyError, ValueError):
                continue
            per = (bench.get("throughput") or {}).get("Elements") or 1
            rows[bench["function_id"]] = {"median_ns": median / per}
    for name, row in rows.items():
        try:
            with open(os.path.join(LATENCY, group, slug(name) + ".json")) as f:
                lat = json.load(f)
            row["p50_ns"], row["p99_ns"] = lat["p50_ns"], lat["p99_ns"]
        except (OSError, KeyError, ValueError):
            pass
    return rows


def python_peers():
    """The rows `benches/peers.py` wrote, and a sentence on where they come from."""
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
        "the p50 of those timings, from a run of their own. Powertools runs with its local "
        "cache off. The v2 decorator's new event is one round trip (it never marks the key "
        "completed), so its ratio to the two-round-trip floor can exceed 1."
    )
    return rows, note


def batch_floor(size):
    """The raw floor of a Redis batch: one script claiming the keys, one completing them."""
    return f"floor: 2 scripts, batch of {size} (claim, complete)"


def floor_for(group, name, data=None):
    if group == "redis" and ("duplicate" in name or "fail open" in name):
        return ONE_RT
    if group == "redis" and name.startswith("guard: batch of ") and data is not None:
        floor = batch_floor(name[len("guard: batch of "):])
        if floor in data[group]:
            return floor
    return FLOORS[group]


def us(ns):
    return f"{ns / 1000:.1f} us" if ns is not None else ""


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - a missing tool is reported as such
        return "not found"


def ratio(data, group, name, floor):
    row, base = data[group].get(name), data[group].get(floor)
    if not row or not base:
        return None
    return base["median_ns"] / row["median_ns"]


def load_paired():
    """{(group, name): ratio of p50s} of the paired comparisons (floor / ours)."""
    out = {}
    for group in GROUPS:
        gdir = os.path.join(LATENCY, group)
        if not os.path.isdir(gdir):
            continue
        for f in os.listdir(gdir):
            if not f.startswith("paired"):
                continue
            try:
                with open(os.path.join(gdir, f)) as fh:
                    row = json.load(fh)
                out[(group, row["name"])] = row
            except (OSError, KeyError, ValueError):
                pass
    return out


def kafka():
    """The Kafka consumer bench (`make bench-kafka`), when it ran:
    target/criterion-latency/kafka/consumer.json."""
    try:
        with open(os.path.join(LATENCY, "kafka", "consumer.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def kafka_table(k):
    """The Kafka bench's rows: events/s (median of the runs) and p50/p99 per batch of each
    loop, and the floor of the one-call loop: the store's own call for one batch."""
    if "one_call" not in k:  # a run of the bench before one-call batches
        loop = k.get("guarded_loop", "process_batch")
        rows = [f"{k['events']:,} pre-produced events on one topic, batches of {k['batch']}, "
                f"{k['rounds']} rounds alternating guarded and unguarded runs (`make bench-kafka`).",
                "",
                "| consumer loop | events/s (median) | runs | batch p50 | batch p99 |",
                "|---|---:|---|---:|---:|"]
        for name, side in (("without the guard", "unguarded"), (f"KafkaGuard::{loop}, Redis", "guarded")):
            runs = ", ".join(f"{r:,.0f}" for r in k.get(f"{side}_runs", []))
            ms = k[f"{side}_batch_ms"]
            rows.append(f"| {name} | {k[f'{side}_events_per_s']:,.0f} | {runs} | "
                        f"{ms['p50']:.2f} ms | {ms['p99']:.2f} ms |")
        return "\n".join(rows)
    floor = k["floor"]
    two = k.get("two_calls_loop", "process_batches (carry_wait: None, the default)")
    rows = [f"{k['events']:,} pre-produced events on one topic, batches of {k['batch']}, "
            f"{k['rounds']} rounds, each running the three loops in an order that rotates "
            "(`make bench-kafka`). The one-call loop's floor is the store's own call for one "
            "batch, timed alone on the guard's keys right after each round's runs: "
            f"`complete_then_claim_many` completing {k['batch']} events and claiming the next "
            f"{k['batch']} (one `SETTLE` script), {floor['one_call_ms']:.2f} ms (median of the "
            "rounds), against "
            + (f"{floor['two_calls_ms']:.2f} ms for the same work in the two calls it replaces "
               "(`complete_many`, then `try_claim_many`), timed alternating with it."
               if "two_calls_ms" in floor else
               f"{floor['claim_ms']:.2f} ms (`try_claim_many`) and {floor['complete_ms']:.2f} ms "
               "(`complete_many`) for the two calls it replaces, after the runs."),
            "",
            "| consumer loop | events/s (median) | runs | batch p50 | batch p99 |",
            "|---|---:|---|---:|---:|"]
    for name, side in (("without the guard (parse and commit, no store)", "unguarded"),
                       (f"KafkaGuard::{two}: two store calls per batch, Redis", "two_calls"),
                       ("KafkaGuard::process_batches (carry_wait: 10 ms): one store call per batch, "
                        "Redis", "one_call")):
        row = k[side]
        runs = ", ".join(f"{r:,.0f}" for r in row.get("runs", []))
        ms = row["batch_ms"]
        rows.append(f"| {name} | {row['events_per_s']:,.0f} | {runs} | "
                    f"{ms['p50']:.2f} ms | {ms['p99']:.2f} ms |")
    rows.append(f"| floor: `complete_then_claim_many` of one batch alone, Redis | "
                f"{floor['events_per_s']:,.0f} | | {floor['one_call_ms']:.2f} ms | |")
    cpu = k.get("cpu_per_batch")
    if cpu:
        def part(c):
            broker = f"{c['broker_ms']:.2f} ms" if c.get("broker_ms") is not None else "unknown"
            return (f"consumer {c['consumer_ms']:.2f} ms, broker {broker}, Redis "
                    f"{c['redis_ms']:.2f} ms: {c['total_ms']:.2f} ms in all, room for at most "
                    f"{c['cpu_floor_events_per_s']:,.0f} events/s on {c['cores']:.0f} cores")
        plain = f"; without the guard: {part(cpu['unguarded'])}" if cpu.get("unguarded") else ""
        rows += ["",
                 "CPU per batch (medians of the runs; Redis' main thread, any other client's "
                 f"work included): one call per batch: {part(cpu['one_call'])}; two calls per "
                 f"batch: {part(cpu['two_calls'])}{plain}. The loop without the guard spends "
                 "only the consumer's parsing and the broker's fetches: it is no floor for a "
                 "loop that also runs Redis' scripts and the guard's per-event work on the same "
                 "cores."]
    return "\n".join(rows)


def concurrency():
    """The concurrency bench (`cargo bench --bench concurrency`, part of `make bench`), when
    it ran: target/criterion-latency/concurrency/results.json."""
    try:
        with open(os.path.join(LATENCY, "concurrency", "results.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pg_scale():
    """The PostgreSQL scale bench's results, when it ran."""
    try:
        with open(PG_SCALE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def concurrency_table(c):
    """Events/s of the guard and of the bare store calls at each task count, and their
    ratio (median of the paired rounds, each round's ratio beside it)."""
    rows = [f"N tasks share one guard (or make the same store calls bare: `raw`), on a 2-thread "
            f"runtime; each side runs {c['secs']:g} s per round, {c['rounds']} rounds, the order "
            "alternating; the ratio is guard / raw events/s, the median of the rounds' ratios. "
            "`with neighbour`: a busy loop on one core beside the bench (a CPU-bound neighbour "
            "process). Raw sides: memory, `MemoryStore` claim + complete called bare; Redis, "
            "`SET NX PX` + `EVALSHA` on one shared multiplexed connection of the `redis` crate, "
            "keys and values as long as the guard's; PostgreSQL, the store's own claim and "
            "completion statements sent with sqlx on the same pool.",
            "",
            "| backend | machine | tasks | raw events/s | guard events/s | guard / raw | rounds |",
            "|---|---|---:|---:|---:|---:|---|"]
    for r in c["rows"]:
        rounds = ", ".join(f"{x:.2f}" for x in r["ratios"])
        rows.append(f"| {r['backend']} | {'with neighbour' if r['neighbour'] else 'quiet'} | "
                    f"{r['tasks']} | {r['raw_median']:,.0f} | {r['guard_median']:,.0f} | "
                    f"{r['ratio_median']:.2f}x | {rounds} |")
    return "\n".join(rows)


def svg_panel(out, box, title, xlabel, series, xlog, ylog, xfmt, yfmt):
    """One chart of the scale SVG, drawn into `out` inside `box` (x, y, width, height):
    `series` is a list of (label, colour, dashed, [(x, y)]); log or linear axes."""
    import math
    x0, y0, w, h = box
    left, right, top, bottom = 70, 170, 30, 40
    pw, ph = w - left - right, h - top - bottom
    xs = sorted({x for _, _, _, pts in series for x, _ in pts})
    ys = [y for _, _, _, pts in series for _, y in pts]
    if not xs or not ys:
        return
    if ylog:
        ylo, yhi = math.floor(math.log10(max(min(ys), 1))), math.ceil(math.log10(max(max(ys), 10)))
        if yhi == ylo:
            yhi += 1
        yticks = [10 ** e for e in range(ylo, yhi + 1)]
        yf = lambda v: (math.log10(max(v, 1)) - ylo) / (yhi - ylo)
    else:
        step = 10 ** math.floor(math.log10(max(max(ys), 1)))
        if max(ys) / step < 3:
            step /= 2
        yhi = math.ceil(max(ys) * 1.1 / step) * step
        yticks = [i * step for i in range(int(round(yhi / step)) + 1)]
        yf = lambda v: v / yhi
    if xlog:
        xf = lambda v: (math.log2(v) - math.log2(xs[0])) / max(math.log2(xs[-1]) - math.log2(xs[0]), 1)
        xticks = xs
    else:
        xf = lambda v: v / max(xs[-1], 1)
        xticks = sorted({0, *xs})
    tx = lambda v: x0 + left + pw * xf(v)
    ty = lambda v: y0 + top + ph * (1 - yf(v))
    out.append(f'<text x="{x0 + left}" y="{y0 + 18}" font-size="14">{title}</text>')
    for v in yticks:
        y = ty(v)
        out.append(f'<line x1="{x0 + left}" y1="{y:.1f}" x2="{x0 + left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 + left - 8}" y="{y + 4:.1f}" text-anchor="end">{yfmt(v)}</text>')
    for v in xticks:
        x = tx(v)
        out.append(f'<line x1="{x:.1f}" y1="{y0 + top}" x2="{x:.1f}" y2="{y0 + top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + top + ph + 18}" text-anchor="middle">{xfmt(v)}</text>')
    out.append(f'<text x="{x0 + left + pw / 2}" y="{y0 + h - 6}" text-anchor="middle">{xlabel}</text>')
    for i, (label, colour, dashed, pts) in enumerate(series):
        pts = sorted(pts)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        line = " ".join(f"{tx(x):.1f},{ty(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        if not dashed:
            for x, y in pts:
                out.append(f'<circle cx="{tx(x):.1f}" cy="{ty(y):.1f}" r="3" fill="{colour}"/>')
        ly = y0 + top + 10 + 20 * i
        out.append(f'<line x1="{x0 + left + pw + 12}" y1="{ly}" x2="{x0 + left + pw + 40}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{x0 + left + pw + 46}" y="{ly + 4}">{label}</text>')


def curves_svg(c, curve, path):
    """The scale curves as an SVG (no plotting library). Top: events/s against tasks (log
    scales) for each backend, the guard solid and the bare calls dashed, quiet machine.
    Below, when the PostgreSQL scale bench kept its curve: the p50 of a new key's claim and
    completion against the records held (the empty table's dashed), and bytes per record."""
    colours = {"memory": "#1b9e77", "redis": "#d95f02", "postgres": "#7570b3"}
    w = 760
    panels = []
    if c:
        series = {}
        for r in c["rows"]:
            if not r["neighbour"]:
                series.setdefault(r["backend"], []).append((r["tasks"], r["raw_median"], r["guard_median"]))
        lines = []
        for backend, pts in sorted(series.items()):
            colour = colours.get(backend, "#333")
            lines.append((f"{backend} guard", colour, False, [(t, g) for t, _, g in pts]))
            lines.append((f"{backend} bare", colour, True, [(t, r) for t, r, _ in pts]))
        if lines:
            panels.append(("Events/s against concurrent tasks (log scales)", "tasks", lines,
                           True, True, str, lambda v: f"{v:,.0f}"))
    if curve:
        millions = lambda v: f"{v / 1e6:g}M" if v else "0"
        at = lambda key: [(p["records"], p[key]) for p in curve]
        # The empty table's p50 drawn at 0 and along the curve (measured beside each point).
        lat = [("claim", "#e7298a", False, [(0, curve[0]["claim_empty_p50_us"])] + at("claim_p50_us")),
               ("claim, empty", "#e7298a", True, [(0, curve[0]["claim_empty_p50_us"])] + at("claim_empty_p50_us")),
               ("completion", "#66a61e", False, [(0, curve[0]["complete_empty_p50_us"])] + at("complete_p50_us")),
               ("completion, empty", "#66a61e", True, [(0, curve[0]["complete_empty_p50_us"])] + at("complete_empty_p50_us"))]
        panels.append(("PostgreSQL: p50 of a new key's call (us) against records held", "records held",
                       lat, False, False, millions, lambda v: f"{v:,.0f}"))
        panels.append(("PostgreSQL: bytes per record (table and indexes) against records held",
                       "records held", [("bytes per record", "#7570b3", False, at("bytes_per_record"))],
                       False, False, millions, lambda v: f"{v:,.0f}"))
    if not panels:
        return
    ph = 340
    h = ph * len(panels)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for i, (title, xlabel, lines, xlog, ylog, xfmt, yfmt) in enumerate(panels):
        svg_panel(out, (0, i * ph, w, ph), title, xlabel, lines, xlog, ylog, xfmt, yfmt)
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def pg_curve_table(curve):
    """The PostgreSQL curve as a table: latency and size against records held."""
    rows = ["| records held | bytes per record | claim p50 | claim p50, empty table | completion p50 | completion p50, empty table |",
            "|---:|---:|---:|---:|---:|---:|"]
    for p in curve:
        rows.append(f"| {p['records']:,} | {p['bytes_per_record']:.1f} | {p['claim_p50_us']:.0f} us | "
                    f"{p['claim_empty_p50_us']:.0f} us | {p['complete_p50_us']:.0f} us | {p['complete_empty_p50_us']:.0f} us |")
    return "\n".join(rows)


def pg_scale_section(s):
    """RESULTS.md's section on PostgreSQL at scale: paired latency, size, and the ingest and
    expiry run with the table's size over time."""
    lat, size, exp = s["latency"], s["size"], s["expiry"]
    filled = ("filled by generate_series in an earlier run and kept" if s["reused"]
              else f"filled by generate_series in {s['fill_s']:.0f} s")
    out = [f"`make bench-postgres` (backend-postgres/benches/scale.rs): a table of {s['records']:,} records "
           f"({filled}) and an \"empty\" one (10,000 records, analyzed, so it runs the plans of a table "
           "in use), each call alternating between them; the ratio is the full table's p50 over the "
           "empty one's."
           + (f" Connecting to the full table (the migrations included) took {s['connect_s']:.1f} s."
              if s.get("connect_s", 0) >= 1 else ""),
           "",
           "| call | empty p50 | empty p99 | full p50 | full p99 | full / empty | pairs |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for k in ("claim", "complete", "duplicate", "batch_100"):
        r = lat[k]
        out.append(f"| {r['name']} | {r['empty_p50_us']:.1f} us | {r['empty_p99_us']:.1f} us | "
                   f"{r['full_p50_us']:.1f} us | {r['full_p99_us']:.1f} us | {r['ratio']:.2f}x | {r['pairs']} |")
    out += ["",
            "| table | records | bytes per record (pg_total_relation_size / rows) |",
            "|---|---:|---:|",
            f"| layout of migrations 0001+0002 | {size['records']:,} | {size['old_layout_bytes_per_record']:.1f} |",
            f"| this version's layout | {size['records']:,} | {size['bytes_per_record']:.1f} |",
            f"| this version's layout, the full table | {s['records']:,} | {s['full_bytes_per_record']:.1f} |",
            "",
            f"Ingest and expiry together: the batch calls (claims and completions of 1,000 keys) on one "
            f"task, records kept {exp['ttl_s']} s; the reaper (one pass over the table a second, as "
            f"`spawn_reaper` runs it) starts at {exp['reaper_start_s']:.0f} s, a TTL behind, and runs beside "
            f"the ingest to {exp['run_s']:.0f} s. Ingest alone {exp['ingest_alone_per_s']:,.0f} events/s, "
            f"beside the reaper {exp['ingest_beside_reaper_per_s']:,.0f}; the reaper's first pass deleted "
            f"{exp['reaper_rows_per_s']:,.0f} rows/s (its VACUUM included)"
            + ((f" and caught up: it ended at {exp['caught_up_at_s']:.0f} s"
                + (f" leaving {exp['first_pass_left_expired']:,} expired records waiting, where it had found "
                   f"{exp['first_pass_found_expired']:,}" if exp.get("first_pass_found_expired") is not None
                   else " with fewer expired records waiting than it had found"))
               if exp["caught_up"] else ", and it never caught up (more expired records waited after it)")]
    out[-1] += (f"; at the end {exp['end_rows']:,} rows, {exp['end_bytes'] / max(exp['end_rows'], 1):,.0f} bytes "
                "per record (the space of deleted records awaiting reuse included).")
    if exp.get("updates"):
        out[-1] += (f" {exp['hot_updates']:,} of {exp['updates']:,} completions were HOT updates "
                    f"({100 * exp['hot_updates'] / exp['updates']:.0f}%).")
    out += ["",
            "| t | rows | expired, not yet deleted | table + indexes |",
            "|---:|---:|---:|---:|"]
    for p in exp["samples"]:
        out.append(f"| {p['t']:.0f} s | {p['rows']:,} | {p['expired']:,} | {p['bytes'] / 1e6:,.1f} MB |")
    curve = s.get("curve") or []
    if curve:
        out += ["",
                f"The curve: the fill stopped at each of these sizes and measured {curve[0]['pairs']} new keys "
                "claimed and completed, paired with the empty table (analyzed, not vacuumed: the table as "
                "a steady ingest leaves it)"
                + (" by the run that filled the table" if s["reused"] else "")
                + ". Plotted in `benches/scale.svg`.",
                "",
                pg_curve_table(curve)]
    return "\n".join(out)


def pg_scale_targets(s):
    """(target, measured, met) rows of issue 26's PostgreSQL-at-scale point."""
    lat, size, exp = s["latency"], s["size"], s["expiry"]
    out = []
    for key, what in (("claim", "claim"), ("complete", "completion")):
        r = lat[key]
        out.append((f"postgres {what} at {s['records']:,} records <= 1.2x an empty table (paired p50)",
                    f"{r['ratio']:.2f}x ({r['full_p50_us']:.0f} vs {r['empty_p50_us']:.0f} us)", r["ratio"] <= 1.2))
    want = PG_BYTES_BEFORE * 2 / 3
    for label, value in ((f"{size['records']:,} records", size["bytes_per_record"]),
                         (f"{s['records']:,} records", s["full_bytes_per_record"])):
        out.append((f"postgres bytes per record <= {want:.0f} (a third below {PG_BYTES_BEFORE}), {label}",
                    f"{value:.1f} B (layout before migration 0003: {size['old_layout_bytes_per_record']:.1f} B)",
                    value <= want))
    fastest = max(exp["ingest_alone_per_s"], 20_000)
    rate = exp["reaper_rows_per_s"]
    out.append(("postgres expiry >= 2x the fastest ingest path (the larger of the ingest measured alone "
                "and the guard's batch path, 20,000 events/s)",
                f"{rate:,.0f} rows/s, {rate / fastest:.2f}x {fastest:,.0f}"
                + ("" if exp["caught_up"] else " (never caught up)"),
                exp["caught_up"] and rate >= 2 * fastest))
    return out


def capacity():
    """The memory store at its capacity (`cargo bench -p eventonce-memory --bench capacity`,
    run by `make bench`), when it ran: target/criterion-latency/memory/capacity.json."""
    try:
        with open(os.path.join(LATENCY, "memory", "capacity.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def capacity_table(c):
    """Per run: events/s, latency while the store filled and once it was full, stalls."""
    rows = [f"{c['events']:,} new events per run through `{c['path']}` on a `MemoryStore` of "
            f"{c['capacity']:,} records: the first {c['capacity']:,} fill it (empty), every later one "
            "evicts its least recently used completed record (at capacity); tasks on a multi-thread "
            f"runtime of {c.get('cores', '?')} workers. A stall is an event over 5 ms; `own` counts "
            "those still over 5 ms once the time the runtime's workers waited for a core during it "
            "(their schedstat `run_delay`, summed) is taken out; `stolen` is the time the host took "
            "the machine's cores during the run.",
            "",
            "| tasks | events/s | empty p50 / p99 / p99.9 / max | at capacity p50 / p99 / p99.9 / max "
            "| p99 ratio | stalls (own) | longest own | stolen |",
            "|---:|---:|---|---|---:|---:|---:|---:|"]

    def lat(p):
        return " / ".join(us(p[k]) for k in ("p50_ns", "p99_ns", "p999_ns", "max_ns"))
    for r in c["runs"]:
        rows.append(f"| {r['tasks']} | {r['events_per_s']:,.0f} | {lat(r['empty'])} | {lat(r['full'])} | "
                    f"{r['p99_ratio']:.2f}x | {r['stalls']} ({r['stalls_own']}) | "
                    f"{r['longest_own_ns'] / 1e6:.2f} ms | {r.get('stolen_ms') or 0:.0f} ms |")
    return "\n".join(rows)


def targets(data, memory, pairs):
    """(target, measured, met) rows for the issue's targets. Ratios come from the paired
    comparisons (both sides alternating event by event) when there is one; criterion's
    medians, measured one row after the other, are shown beside them."""
    out = []

    def rel(label, group, name, floor, want, pair=None):
        r = ratio(data, group, name, floor)
        p = pairs.get((group, pair)) if pair else None
        if p:
            crit = f"; criterion medians {r:.2f}x" if r else ""
            out.append((label, f"{p['ratio']:.2f}x paired p50{crit}", p["ratio"] >= want))
            return
        out.append((label, f"{r:.2f}x" if r else "not measured", r is not None and r >= want))

    def rate(label, group, name, want):
        row = data[group].get(name)
        eps = 1e9 / row["median_ns"] if row else None
        out.append((label, f"{eps:,.0f} events/s" if eps else "not measured", eps is not None and eps >= want))

    rel("redis new event >= 0.95x the 2-round-trip floor", "redis", "guard: new event", TWO_RT, 0.95,
        "guard: new event / 2 round trips")
    rel("redis new event, deferred completion >= 1.7x the 2-round-trip floor", "redis",
        "guard: new event (deferred completion)", TWO_RT, 1.7,
        "guard: new event (deferred completion) / 2 round trips")
    rel("redis duplicate >= 0.95x the 1-round-trip floor", "redis", "guard: duplicate", ONE_RT, 0.95,
        "guard: duplicate / 1 round trip")
    for size in (100, 1000):
        rel(f"redis batch of {size} >= 0.9x the 2-script floor (claim script + complete script)",
            "redis", f"guard: batch of {size}", batch_floor(size), 0.9, f"guard: batch of {size} / 2 scripts")
    rate("redis batch of 100 >= 100,000 events/s (with completion)", "redis", "guard: batch of 100", 100_000)
    rate("MemoryStore new event >= 500,000 events/s on one task", "memory", "guard: new event", 500_000)
    rel("postgres new event >= 0.9x the 1-statement floor", "postgres", "guard: new event", PG_FLOOR, 0.9,
        "guard: new event / 1 statement")
    rel("postgres new event, deferred completion >= 0.8x the 1-statement floor", "postgres",
        "guard: new event (deferred completion)", PG_FLOOR, 0.8,
        "guard: new event (deferred completion) / 1 statement")
    for group, kind in (("memory", "new event"), ("memory", "duplicate"), ("memory", "handler failure"),
                        ("redis", "new event"), ("redis", "duplicate"), ("redis", "handler failure")):
        ours = data[group].get(f"guard: {kind}")
        for name, row in sorted(data[group].items()):
            if name.startswith("peer") and name.endswith(kind) and ours:
                peer = name[5:-len(kind) - 2]
                r = row["median_ns"] / ours["median_ns"]
                p = pairs.get((group, f"guard: {kind} / peer {peer}"))
                if p:
                    out.append((f"{group} {kind}: ahead of {peer}",
                                f"{p['ratio']:.2f}x as fast, paired p50; criterion medians {r:.2f}x",
                                p["ratio"] > 1))
                else:
                    how = " (separate run)" if "python" in peer or "powertools" in peer else ""
                    out.append((f"{group} {kind}: ahead of {peer}", f"{r:.2f}x as fast{how}", r > 1))
    k = kafka()
    if k and "one_call" in k:
        gain = k["one_call_over_two_calls"]
        out.append(("kafka process_batches, one store call per batch >= 1.6x two calls per batch "
                    "(Redis, paired by round)",
                    f"{gain:.2f}x ({k['one_call']['events_per_s']:,.0f} vs "
                    f"{k['two_calls']['events_per_s']:,.0f} events/s)", gain >= 1.6))
        of_floor = k["one_call_over_floor"]
        out.append(("kafka process_batches >= 0.9x its floor, the store's one call per batch timed alone",
                    f"{of_floor:.2f}x ({k['one_call']['events_per_s']:,.0f} vs "
                    f"{k['floor']['events_per_s']:,.0f} events/s)", of_floor >= 0.9))
    elif k:
        out.append(("kafka consumer through the guard (Redis) >= 0.8x the loop without it",
                    f"{k['ratio']:.2f}x ({k['guarded_events_per_s']:,.0f} vs "
                    f"{k['unguarded_events_per_s']:,.0f} events/s)", k["ratio"] >= 0.8))
    c = concurrency()
    if c:
        for r in c["rows"]:
            if r["backend"] == "memory" or r["tasks"] not in (1, 8, 64):
                continue
            machine = "with a CPU-bound neighbour" if r["neighbour"] else "quiet"
            out.append((f"{r['backend']} new events, {r['tasks']} concurrent tasks, {machine}: "
                        f"guard >= 0.9x the bare store calls",
                        f"{r['ratio_median']:.2f}x ({r['guard_median']:,.0f} vs {r['raw_median']:,.0f} events/s)",
                        r["ratio_median"] >= 0.9))
    cap = capacity()
    for r in (cap or {}).get("runs", []):
        n = f"{r['tasks']} task{'s' if r['tasks'] != 1 else ''}"
        ratio_ = r["p99_ratio"]
        out.append((f"memory p99 at capacity <= 3x empty ({n})",
                    f"{us(r['full']['p99_ns'])} vs {us(r['empty']['p99_ns'])} = {ratio_:.2f}x", ratio_ <= 3))
        own = [s for s in r.get("stalls_event_ms_wait_ms_ran_ms", []) if s[1] - s[2] > 5]
        ran = f"; the workers ran {max(s[3] for s in own):.1f} ms of one at most" if own else ""
        out.append((f"memory stalls over 5 ms: 0 in {r['events'] / 1e6:g}M events ({n})",
                    f"{r['stalls_own']} own (longest {r['longest_own_ns'] / 1e6:.2f} ms{ran}); "
                    f"{r['stalls']} in all, the rest the workers waiting for a core",
                    r["stalls_own"] == 0))
    scale = pg_scale()
    if scale:
        out += pg_scale_targets(scale)
    if memory:
        r = memory["completed_key_bytes"] / memory["bare_key_bytes"]
        out.append(("redis completed key <= 1.5x a bare key (MEMORY USAGE)",
                    f"{memory['completed_key_bytes']:.0f} B vs {memory['bare_key_bytes']:.0f} B = {r:.2f}x",
                    r <= 1.5))
    return out


def main():
    if not os.path.isdir(CRIT):
        sys.exit("no criterion results: run `make bench`")
    data = {g: load(g) for g in GROUPS}
    peer_rows, peer_note = python_peers()
    for r in peer_rows:
        data.setdefault(r["group"], {})[r["benchmark"]] = {
            "median_ns": r["median_ns"], "p50_ns": r.get("p50_ns"), "p99_ns": r.get("p99_ns")}
    memory = None
    try:
        with open(os.path.join(LATENCY, "redis", "memory_per_key.json")) as f:
            memory = json.load(f)
    except (OSError, ValueError):
        pass

    rows = ["| group | benchmark | median/event | events/s | p50 | p99 | vs floor |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for group in GROUPS:
        names = sorted(data[group], key=lambda n: (not n.startswith("floor"), n.startswith("peer"), n))
        for name in names:
            row = data[group][name]
            r = None if name.startswith("floor") else ratio(data, group, name, floor_for(group, name, data))
            rows.append(
                f"| {group} | {name} | {us(row['median_ns'])} | {1e9 / row['median_ns']:,.0f} | "
                f"{us(row.get('p50_ns'))} | {us(row.get('p99_ns'))} | {f'{r:.2f}x' if r else ''} |")
    table = "\n".join(rows)
    goal = ["| target | measured | met |", "|---|---|---|"]
    pairs = load_paired()
    goal += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in targets(data, memory, pairs)]
    goals = "\n".join(goal)
    paired_rows = ["| group | ours / floor (or peer) | floor p50 | ours p50 | ratio |", "|---|---|---:|---:|---:|"]
    for (group, name), row in sorted(pairs.items()):
        paired_rows.append(f"| {group} | {name} | {us(row['floor_p50_ns'])} | {us(row['ours_p50_ns'])} | {row['ratio']:.2f}x |")
    paired_table = "\n".join(paired_rows)
    k = kafka()
    kafka_section = ("## Kafka consumer\n\n" + kafka_table(k) + "\n\n") if k else ""
    c = concurrency()
    scale = pg_scale()
    curve = (scale or {}).get("curve") or []
    curves_svg(c, curve, os.path.join(ROOT, "benches", "scale.svg"))
    concurrency_section = ""
    if c:
        concurrency_section = ("## Concurrency\n\n" + concurrency_table(c)
                               + "\n\nThe curves (quiet machine): `benches/scale.svg`.\n\n")
        print()
        print(concurrency_table(c))
    cap = capacity()
    capacity_section = ("## Memory store at capacity\n\n" + capacity_table(cap) + "\n\n") if cap else ""
    scale_section = ("## PostgreSQL at scale\n\n" + pg_scale_section(scale) + "\n\n") if scale else ""
    print(table)
    if k:
        print()
        print(kafka_table(k))
    if cap:
        print()
        print(capacity_table(cap))
    print()
    print(paired_table)
    if scale:
        print()
        print(pg_scale_section(scale))
    print()
    print(goals)
    print()
    print(peer_note)
    cpu = version(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip()
    header = (
        "# Benchmark results\n\n"
        f"Measured {datetime.date.today().isoformat()} on {os.cpu_count()} cores ({cpu}), "
        f"{platform.system()} {platform.release()}; {version(['rustc', '--version'])}; "
        f"{version(['redis-server', '--version'])}; {version(['psql', '--version'])}.\n\n"
        "One task, servers on loopback. `median/event` is criterion's median divided by the "
        "events per iteration (a batch row's time divided by its size); `p50`/`p99` come from "
        "a second pass timing each event (or batch, divided by its size) alone. `vs floor` is "
        "events/s of the row divided by events/s of its floor, the same work with the raw "
        "client: new events and failures against the two-round-trip floor, duplicates and "
        "fail-open against the one-round-trip floor, Redis batches of 100 and 1,000 against "
        "one script claiming the keys plus one completing them (Redis floors write keys and values "
        "as long as the guard's); for PostgreSQL the floor is one statement; for memory it is "
        "`MemoryStore`'s claim and completion called bare. Rows named `peer` are other libraries doing the same work for one event.\n"
        f"{peer_note}\n\n"
    )
    results = os.path.join(ROOT, "benches", "RESULTS.md")
    # The HTTP layer's table (`make bench-http`) is its own run's: kept as it was.
    http_block = ""
    try:
        with open(results) as f:
            old = f.read()
        start, end = "<!-- http: written by make bench-http -->", "<!-- /http -->"
        if start in old and end in old:
            http_block = old[old.index(start):old.index(end) + len(end)] + "\n"
    except OSError:
        pass
    with open(results, "w") as f:
        f.write(header + table
                + "\n\n## Paired comparisons\n\n"
                "Each pair alternates the floor (or the peer) and the guard event by event, "
                "2000 pairs (a batch of 100: 200, of 1,000: 100), so both sides see the same moments of the machine; the ratio "
                "is the floor's p50 over ours (above 1: we are faster).\n\n"
                + paired_table + "\n\n" + kafka_section + concurrency_section + capacity_section + scale_section + "## Targets\n\n"
                "Each target not met is explained, with the profile or count behind it, in "
                "benches/PROFILES.md.\n\n" + goals + "\n" + http_block)


main()
