#!/usr/bin/env python3
"""Instance delivery through the node agent: how many instances a node
starts a minute, and the time from the scheduler's decision to a ready
instance (p50/p99).

One node on this machine, as in production: a private docker-registry on
127.0.0.1, `loci snapshotter`, containerd with runc, `loci scheduler` and
`loci node`. A function runs a bench image (default: the Debian python
image of tools/bench.py) converted by loci, serving HTTP on $PORT with
Python's http.server. A fixed reservation policy asks for N instances at
once; the scheduler places them all in one tick and the agent starts them
through containerd. Measured twice:

  lazy   empty chunk cache: every instance's root is served lazily, the
         first ones fetch what the start reads
  warm   the policy is set to 0 (all stopped), then to N again: the chunk
         cache holds what the start reads

Per round: N / (time from the decision to the last instance ready) as
instances a minute, and the decision-to-ready percentiles from the
scheduler's log (`instance ready ... start_ms=`). Writes JSON with --json.
Run as root: ./tools/bench-delivery.py [--instances 20] [--image python]
"""
import argparse, json, os, re, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the images, the Env of processes)
from harness import wait_for  # noqa: E402

TOKEN = "bench-delivery-token"

SERVER = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers(); self.wfile.write(b'ok')
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), Handler).serve_forever()
"""


def api(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def function(image, instances, cpu_millis):
    return {"name": "svc", "image": image, "cpu_millis": cpu_millis, "memory_mib": 64, "timeout_s": 30,
            "start_timeout_s": 600, "command": ["python3", "-c", SERVER],
            "policy": {"kind": "fixed", "instances": instances}}


def percentile(values, q):
    s = sorted(values)
    return s[round((len(s) - 1) * q)] if s else None


def remove_instances(env, ns):
    """Kills and removes whatever instances are left (after a failure):
    their shims would outlive containerd."""
    if not hasattr(env, "sock"):
        return
    ctr = ["ctr", "--address", env.sock, "--namespace", ns]
    out = subprocess.run(ctr + ["container", "list", "-q"], stdout=subprocess.PIPE, text=True).stdout
    for name in out.split():
        subprocess.run(ctr + ["task", "delete", "--force", name], stdout=env.log, stderr=env.log)
        subprocess.run(ctr + ["container", "delete", name], stdout=env.log, stderr=env.log)


def running(env, ns):
    out = subprocess.run(["ctr", "--address", env.sock, "--namespace", ns, "task", "list"],
                         stdout=subprocess.PIPE, text=True).stdout
    return sum(1 for l in out.splitlines() if l.startswith("loci-instance-") and "RUNNING" in l)


def round_(env, base, image, n, cpu, sched_log, ns, name):
    offset = os.path.getsize(sched_log)
    t0 = time.time()
    api(base, "POST", "/v1/functions", function(image, n, cpu))

    def ready_lines():
        with open(sched_log) as f:
            f.seek(offset)
            text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())  # the log's colours
            return [int(m.group(1)) for m in re.finditer(r"instance ready.*?start_ms=(\d+)", text)]
    wait_for(lambda: len(ready_lines()) >= n, f"{n} instances ready ({name})", timeout=900)
    elapsed = time.time() - t0
    latencies = ready_lines()[:n]
    last = max(latencies) / 1000
    row = {"round": name, "instances": n, "last_ready_s": round(last, 2),
           "per_minute": round(n / last * 60, 1),
           "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
           "min_ms": min(latencies), "wall_s": round(elapsed, 2), "running": running(env, ns)}
    print(f"{name:5} {n} instances: last ready after {last:.2f} s = {row['per_minute']} a minute; "
          f"decision to ready p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms (min {row['min_ms']} ms)",
          file=sys.stderr)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="python", help=f"one of {','.join(bench.IMAGES)}")
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--loci", default=os.path.join(bench.ROOT, "target/release/loci"))
    ap.add_argument("--cpu-millis", type=int, default=500,
                    help="CPU each instance reserves, its cgroup quota (the node is overcommitted to hold them all)")
    ap.add_argument("--max-concurrent-starts", type=int, default=4, help="the agent's option of that name")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-delivery: run as root (containerd, FUSE, mounts)")
    # What bench.Env expects of its arguments.
    args.link, args.convert_args, args.fetch_config, args.nydus_validate = None, None, None, False
    args.tls, args.prefetch_config = False, None
    env = bench.Env(args)
    env.peers = {"nydus": {"found": False}}
    ns = "delivery"
    rows = []
    try:
        env.start_registry()
        env.start_snapshotter(fresh_cache=True)
        env.start_containerd()
        image = bench.Image(env, args.image, modes=[], quick=True).converted
        tokens = os.path.join(env.work, "tokens")
        with open(tokens, "w") as f:
            f.write(TOKEN + "\n")
        cfg = os.path.join(env.work, "scheduler.toml")
        with open(cfg, "w") as f:
            f.write(f'reconcile_interval_ms = 100\n[access]\ntoken_file = "{tokens}"\n')
        sched = env.spawn([args.loci, "scheduler", "--listen", "127.0.0.1:0", "--config", cfg], "scheduler")

        def addr():
            with open(sched.log_path) as f:
                m = re.search(r"^listening on (\S+)", f.read(), re.M)
            return m and m.group(1)
        wait_for(addr, "loci scheduler")
        base = f"http://{addr()}"
        ports = bench.free_port()
        env.spawn([args.loci, "node", "--scheduler", base, "--token-file", tokens, "--node-id", "bench-node",
                   "--address", env.sock, "--namespace", ns, "--plain-http",
                   "--ports", f"{ports}-{ports + 4 * args.instances}",
                   "--cpu-millis", str(args.instances * args.cpu_millis), "--memory-mib", str(args.instances * 64),
                   "--report-interval-secs", "1", "--max-concurrent-starts", str(args.max_concurrent_starts)],
                  "agent")
        wait_for(lambda: api(base, "GET", "/v1/cluster")["nodes"], "the node agent's first report")
        rows.append(round_(env, base, image, args.instances, args.cpu_millis, sched.log_path, ns, "lazy"))
        api(base, "POST", "/v1/functions", function(image, 0, args.cpu_millis))
        wait_for(lambda: running(env, ns) == 0, "every instance stopped", timeout=300)
        rows.append(round_(env, base, image, args.instances, args.cpu_millis, sched.log_path, ns, "warm"))
        api(base, "POST", "/v1/functions", function(image, 0, args.cpu_millis))
        wait_for(lambda: running(env, ns) == 0, "every instance stopped", timeout=300)
    finally:
        remove_instances(env, ns)
        env.close()
    out = {"image": args.image, "machine": f"{os.cpu_count()} CPUs", "cpu_millis": args.cpu_millis,
           "max_concurrent_starts": args.max_concurrent_starts, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
