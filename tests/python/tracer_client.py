#!/usr/bin/env python3
"""An external client of the tracer agent's API, written against the .proto
alone: stubs are generated at run time with grpcio-tools (no protoc, nothing
checked in), so this proves the API is usable from another language.

It subscribes to Watch and Findings, waits for what it is told to expect,
checks the stream invariants (strictly increasing sequence numbers, deltas
that equal the change in totals, drop accounting), parses /metrics with
prometheus_client's own parser and checks every histogram's structure.
It prints one JSON summary line and exits 0, or prints why and exits 1.

Run with the venv `cargo xtask setup` installs (<cache>/python/bin/python).
"""

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def generate_stubs(proto_root):
    """Compiles tracer/v1/tracer.proto into a temp dir and imports it."""
    from grpc_tools import protoc
    import importlib.resources

    out = tempfile.mkdtemp(prefix="tracer-py-stubs-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "tracer/v1/tracer.proto",
        ]
    )
    if rc != 0:
        fail(f"protoc failed on {proto_root}/tracer/v1/tracer.proto (rc {rc})")
    sys.path.insert(0, out)
    from tracer.v1 import tracer_pb2, tracer_pb2_grpc  # noqa: E402

    return tracer_pb2, tracer_pb2_grpc


def follow(stream, q, name):
    """Moves a server stream's messages into a queue (the gRPC iterator blocks)."""
    try:
        for msg in stream:
            q.put((name, msg))
    except Exception as e:  # the stream is cancelled at exit
        q.put((name + "_error", e))


def lock_key(row):
    return (row.pid, row.address, row.kind, row.site.function, row.site.file, row.site.line)


def check_watch(snap, prev, errors):
    """Stream invariants between two consecutive delivered snapshots."""
    if prev is None:
        if snap.seq != 1 + snap.dropped:
            errors.append(f"first snapshot seq {snap.seq} with dropped {snap.dropped}")
        return
    if snap.seq != prev.seq + 1 + snap.dropped:
        errors.append(f"seq {prev.seq} -> {snap.seq} but dropped={snap.dropped}")
    before = {lock_key(r): r for r in prev.locks}
    for r in snap.locks:
        p = before.get(lock_key(r))
        if p is None:
            continue
        if r.contentions < p.contentions:
            continue  # a restarted counter (pid reuse): delta is the new total
        if r.delta_contentions != r.contentions - p.contentions:
            errors.append(
                f"lock {lock_key(r)}: delta_contentions {r.delta_contentions} != "
                f"{r.contentions} - {p.contentions}"
            )
        if r.delta_wait_ns != r.wait_ns_total - p.wait_ns_total:
            errors.append(f"lock {lock_key(r)}: delta_wait_ns mismatch")
    for r in snap.locks:
        if sum(b.count for b in r.histogram) != r.contentions:
            errors.append(f"lock {lock_key(r)}: histogram does not add up to contentions")


def check_metrics(url, lock_function):
    from prometheus_client.parser import text_string_to_metric_families

    try:
        ready = urllib.request.urlopen(url + "/readyz", timeout=5).status
    except urllib.error.HTTPError as e:
        ready = e.code
    if ready != 200:
        fail(f"/readyz answered {ready} while the agent serves snapshots")
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    histograms = 0
    for fam in families.values():
        if fam.type != "histogram":
            continue
        series = {}
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            key = tuple(sorted(labels.items()))
            e = series.setdefault(key, {"buckets": [], "count": None, "sum": None})
            if s.name.endswith("_bucket"):
                e["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                e["count"] = s.value
            elif s.name.endswith("_sum"):
                e["sum"] = s.value
        for key, e in series.items():
            b = e["buckets"]
            if not b or b[-1][0] != float("inf"):
                fail(f"{fam.name}{dict(key)}: no +Inf bucket")
            for (le1, c1), (le2, c2) in zip(b, b[1:]):
                if not le1 < le2:
                    fail(f"{fam.name}{dict(key)}: le not increasing: {le1} then {le2}")
                if c2 < c1:
                    fail(f"{fam.name}{dict(key)}: bucket counts not cumulative")
            if e["count"] != b[-1][1]:
                fail(f"{fam.name}{dict(key)}: _count {e['count']} != +Inf bucket {b[-1][1]}")
            if e["sum"] is None or e["sum"] < 0:
                fail(f"{fam.name}{dict(key)}: bad _sum")
            histograms += 1
    lock = families.get("tracer_lock_wait_seconds")
    if lock is None:
        fail("no tracer_lock_wait_seconds family")
    sites = [
        s for s in lock.samples
        if s.name == "tracer_lock_wait_seconds_count"
        and s.labels.get("site", "").split(" ")[0] == lock_function
    ]
    if lock_function and not sites:
        fail(f"no tracer_lock_wait_seconds series with site {lock_function}")
    for name in ("tracer_agent_processes", "tracer_agent_rss_bytes", "tracer_tcp_bytes"):
        if name not in families:
            fail(f"no {name} family in /metrics")
    return {"histogram_series": histograms, "lock_site_count": sites[0].value if sites else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grpc", required=True, help="host:port or unix:/path")
    ap.add_argument("--metrics", help="host:port of the HTTP endpoint")
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--interval-ms", type=int, default=500)
    ap.add_argument("--lock-function", help="wait for a lock row whose site is this function")
    ap.add_argument("--lock-line", type=int)
    ap.add_argument("--lock-pid", type=int)
    ap.add_argument(
        "--finding",
        action="append",
        default=[],
        help="KIND[:FUNCTION]: wait for a finding of KIND with FUNCTION in its stack (repeatable)",
    )
    ap.add_argument("--min-snapshots", type=int, default=3)
    args = ap.parse_args()

    import grpc

    pb, pb_grpc = generate_stubs(args.proto_root)
    # grpc-core puts the socket path into :authority for unix: targets, which
    # the agent's HTTP/2 stack (h2) rejects as malformed: name a host instead.
    options = [("grpc.default_authority", "localhost")] if args.grpc.startswith("unix:") else []
    channel = grpc.insecure_channel(args.grpc, options=options)
    stub = pb_grpc.TracerStub(channel)
    info = stub.Info(pb.InfoRequest(), timeout=10)

    q = queue.Queue()
    watch = stub.Watch(pb.WatchRequest(interval_ms=args.interval_ms, top_n=50))
    findings = stub.Findings(pb.FindingsRequest(after_seq=0))
    for stream, name in ((watch, "watch"), (findings, "finding")):
        threading.Thread(target=follow, args=(stream, q, name), daemon=True).start()

    errors = []
    prev = None
    snapshots = 0
    last_seq = 0
    lock_row = None
    wanted = [tuple(f.split(":", 1)) if ":" in f else (f, None) for f in args.finding]
    found = {}
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        done = (
            (not args.lock_function or lock_row is not None)
            and len(found) == len(wanted)
            and snapshots >= args.min_snapshots
        )
        if done:
            break
        try:
            name, msg = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if name.endswith("_error"):
            fail(f"{name}: {msg}")
        if name == "watch":
            snapshots += 1
            check_watch(msg, prev, errors)
            prev = msg
            for r in msg.locks:
                if (
                    args.lock_function
                    and r.site.function == args.lock_function
                    and (args.lock_line is None or r.site.line == args.lock_line)
                    and (args.lock_pid is None or r.pid == args.lock_pid)
                    and r.contentions > 0
                ):
                    lock_row = r
        else:
            if msg.seq <= last_seq:
                errors.append(f"finding seq {msg.seq} after {last_seq}")
            last_seq = msg.seq
            for kind, function in wanted:
                if msg.kind == kind and (
                    function is None or any(s.function == function for s in msg.stack)
                ):
                    found.setdefault((kind, function), msg)
    watch.cancel()
    findings.cancel()

    if errors:
        fail("; ".join(errors[:10]))
    if snapshots < args.min_snapshots:
        fail(f"{snapshots} snapshots in {args.timeout}s")
    if args.lock_function and lock_row is None:
        fail(f"no lock row at {args.lock_function}:{args.lock_line} within {args.timeout}s")
    missing = [f"{k}:{f}" for k, f in wanted if (k, f) not in found]
    if missing:
        fail(f"no finding {missing} within {args.timeout}s (last seq {last_seq})")
    summary = {
        "node": info.node,
        "version": info.version,
        "snapshots": snapshots,
        "last_finding_seq": last_seq,
    }
    if lock_row is not None:
        summary["lock"] = {
            "pid": lock_row.pid,
            "function": lock_row.site.function,
            "line": lock_row.site.line,
            "contentions": lock_row.contentions,
            "wait_ns_total": lock_row.wait_ns_total,
        }
    summary["findings"] = [
        {
            "seq": m.seq,
            "kind": m.kind,
            "pid": m.pid,
            "message": m.message,
            "function": f,
            "goroutine": m.goroutine,
        }
        for (k, f), m in found.items()
    ]
    if args.metrics:
        summary["metrics"] = check_metrics("http://" + args.metrics, args.lock_function)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
