#!/usr/bin/env python3
"""What serving range requests costs docker-registry in CPU on this machine.

The benchmarks run the registry on the machine that starts the containers,
so every blob request a cold start makes also takes the registry's CPU from
that start (a remote registry would not). This measures it: a private
docker-registry on 127.0.0.1 (as tools/bench.py starts it), a 32 MB blob of
random bytes pushed to it, then the same 16 MB read as 1, 16 and 64 range
requests, twice each, with the registry's CPU seconds (utime + stime from
/proc) for each round.

Usage: tools/registry-cpu.py
"""
import os, shutil, subprocess, sys, tempfile, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import free_port, push_blob, start_registry  # noqa: E402


def main():
    work = tempfile.mkdtemp(prefix="loci-registry-cpu-")
    addr = f"127.0.0.1:{free_port()}"
    log = open(os.path.join(work, "registry.log"), "w")
    registry = start_registry(work, addr, os.path.join(work, "storage"),
                              lambda cmd: subprocess.Popen(cmd, stdout=log, stderr=log))
    try:
        digest = push_blob(addr, "bench", os.urandom(32 << 20))

        def cpu_s():
            fields = open(f"/proc/{registry.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def get(start, end):
            req = urllib.request.Request(f"http://{addr}/v2/bench/blobs/{digest}",
                                         headers={"Range": f"bytes={start}-{end - 1}"})
            with urllib.request.urlopen(req) as r:
                return len(r.read())

        total = 16_000_000
        print(f"{'requests':>8} {'bytes each':>11} {'MB':>6} {'registry CPU s':>15} {'ms per request':>15}")
        for count in (1, 16, 64):
            size = total // count
            for _ in range(2):
                before, got = cpu_s(), 0
                for i in range(count):
                    got += get(1_000_000 + i * size, 1_000_000 + (i + 1) * size)
                spent = cpu_s() - before
                print(f"{count:>8} {size:>11} {got / 1e6:>6.1f} {spent:>15.2f} {spent / count * 1000:>15.1f}")
    finally:
        registry.kill()
        registry.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
