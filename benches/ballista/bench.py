#!/usr/bin/env python3
"""Local engine vs a Ballista cluster on the same generated exports, on this machine.

Generates exports with `patron generate`, runs the default pipeline once on the local
engine, then starts `patron ballista-scheduler` and two `patron ballista-executor`
processes on 127.0.0.1 and runs the same pipeline on them (`--engine df://...`). Prints
wall time, CPU time and peak RSS of every process (client, scheduler, executors), each
SQL stage's time on both engines, and whether the published tables agree; writes the same
as JSON.

    python3 benches/ballista/bench.py --patron target/release/patron --lines 5000000
    python3 benches/ballista/bench.py --patron ... --lines 50000000 --work /big/disk/bench

Both runs use the pipeline's defaults (`engine.deterministic = true`: one partition per
query), so the cluster runs each query as one task chain; the executors get one slot per
core between them.
"""

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import compare  # noqa: E402  (benches/compare.py: measuring, pipeline file, fact totals)

REPO = compare.REPO


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


class Cluster:
    """A scheduler and two executors of `patron`, on 127.0.0.1; stopped with SIGTERM and
    reaped with os.wait4, so each process's CPU time and peak RSS are known."""

    def __init__(self, patron, work, slots):
        self.procs = {}
        self.logs = work / "logs"
        self.scheduler = free_port()
        self.spawn("scheduler", [patron, "ballista-scheduler", "--bind", f"127.0.0.1:{self.scheduler}"])
        wait_for_port(self.scheduler, "the scheduler")
        flights = []
        for name in ("executor-a", "executor-b"):
            flight, grpc = free_port(), free_port()
            self.spawn(name, [
                patron, "ballista-executor", "--scheduler", f"127.0.0.1:{self.scheduler}",
                "--bind", f"127.0.0.1:{flight}", "--grpc-port", str(grpc),
                "--work-dir", str(work / name), "--slots", str(slots),
            ])
            flights.append(flight)
        for port in flights:
            wait_for_port(port, "an executor")
        self.started = time.perf_counter()

    def spawn(self, name, cmd):
        log = open(self.logs / f"{name}.log", "w")
        env = dict(os.environ, RUST_LOG="warn")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def engine(self):
        return f"df://127.0.0.1:{self.scheduler}"

    def stop(self):
        usage = {}
        for name, proc in self.procs.items():
            proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                _, _, ru = os.wait4(proc.pid, 0)
            except ChildProcessError:
                continue
            usage[name] = {
                "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
            }
        return usage


def published_totals(warehouse):
    """fct_customer's column totals, read from the Delta table's files (one version)."""
    return compare.fact_totals(f"{warehouse}/tables/fct_customer/*.parquet")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patron", required=True, help="patron binary (release)")
    ap.add_argument("--lines", type=int, default=5_000_000, help="sales lines to generate")
    ap.add_argument("--slots", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="task slots per executor")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "bench-results"), help="folder for the JSON result")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and warehouses")
    args = ap.parse_args()
    patron = str(Path(args.patron).resolve())
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="patron-ballista-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    data = work / "data"
    customers = round(args.lines / compare.LINES_PER_CUSTOMER)
    try:
        print(f"generating {compare.human(args.lines)} sales lines ({customers} customers)", flush=True)
        compare.measure(
            [patron, "generate", "--customers", str(customers), "--seed", str(compare.SEED), "--clean",
             "--out", str(data)],
            work / "logs" / "generate.log",
        )
        pipeline = compare.write_pipeline(data, work)
        env = dict(os.environ, RUST_LOG="patron=warn")
        runs = {}
        print("local engine", flush=True)
        local_wh = work / "warehouse-local"
        runs["local"] = {"client": compare.measure(
            [patron, "run", "--pipeline", str(pipeline), "--warehouse", str(local_wh)], work / "logs" / "local.log", env)}
        print(f"Ballista: scheduler + 2 executors x {args.slots} slots on 127.0.0.1", flush=True)
        cluster = Cluster(patron, work, args.slots)
        cluster_wh = work / "warehouse-ballista"
        try:
            runs["ballista"] = {"client": compare.measure(
                [patron, "run", "--pipeline", str(pipeline), "--engine", cluster.engine, "--warehouse", str(cluster_wh)],
                work / "logs" / "ballista.log", env)}
        finally:
            runs.setdefault("ballista", {})["cluster"] = cluster.stop()
        manifests = {k: json.loads((wh / "runs" / "latest.json").read_text())
                     for k, wh in (("local", local_wh), ("ballista", cluster_wh))}
        totals = {k: published_totals(wh) for k, wh in (("local", local_wh), ("ballista", cluster_wh))}
        agree = compare.totals_agree(totals["local"], totals["ballista"])

        print(f"\n{compare.human(args.lines)} sales lines, {customers} customers; {os.cpu_count()} cores")
        print(f"{'engine':10} {'process':12} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9}")
        for engine, r in runs.items():
            c = r["client"]
            print(f"{engine:10} {'patron run':12} {c['wall_s']:8.2f} {c['cpu_s']:8.2f} {c['peak_rss_mib']:9.0f}")
            for name, u in r.get("cluster", {}).items():
                print(f"{'':10} {name:12} {'':>8} {u['cpu_s']:8.2f} {u['peak_rss_mib']:9.0f}")
        ratio = runs["ballista"]["client"]["wall_s"] / runs["local"]["client"]["wall_s"]
        print(f"ballista / local wall time: {ratio:.2f}x")
        print(f"\n{'phase or stage':28} {'local s':>9} {'ballista s':>11}")
        for phase in manifests["local"].get("phase_ms", {}):
            a = manifests["local"]["phase_ms"][phase] / 1000
            b = manifests["ballista"].get("phase_ms", {}).get(phase, 0) / 1000
            print(f"{'phase ' + phase:28} {a:9.2f} {b:11.2f}")
        stage_b = {s["name"]: s["duration_ms"] for s in manifests["ballista"]["stages"]}
        for s in manifests["local"]["stages"]:
            print(f"{s['name']:28} {s['duration_ms'] / 1000:9.2f} {stage_b.get(s['name'], 0) / 1000:11.2f}")
        print(f"\nsame fct_customer totals on both engines: {agree}")
        result = {
            "date": dt.date.today().isoformat(),
            "lines": args.lines,
            "customers": customers,
            "cores": os.cpu_count(),
            "slots_per_executor": args.slots,
            "runs": runs,
            "phase_ms": {k: m.get("phase_ms", {}) for k, m in manifests.items()},
            "stage_ms": {k: {s["name"]: s["duration_ms"] for s in m["stages"]} for k, m in manifests.items()},
            "fct_customer_totals_agree": agree,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"ballista-{result['date']}.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
        if not agree:
            raise SystemExit("the engines published different fct_customer totals")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
