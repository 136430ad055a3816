"""Peak memory of a whole `distgan train` run: the driver and every process Ray starts for it.

Samples the process tree of the CLI every 0.25 s and sums PSS (proportional set size: shared
pages split among their users, so the sum is not inflated by shared libraries). Prints the peak
total and the peak per process kind.

    python benchmarks/peak_memory.py [JOB.yaml] [--workers N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import psutil


def kind(proc: psutil.Process, root_pid: int) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    for key in ("RayTrainWorker", "TrainController", "gcs_server", "raylet", "dashboard", "log_monitor", "ray::"):
        if key in cmd:
            return key.strip(":")
    return "driver" if proc.pid == root_pid else "other ray"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("job", nargs="?")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "distgan",
            "train",
            *([args.job] if args.job else []),
            "--workers",
            str(args.workers),
            "--set",
            f"train.storage_path={tmp}",
            *[x for s in args.set for x in ("--set", s)],
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        root = psutil.Process(proc.pid)
        peak_total, peak_by_kind = 0, defaultdict(int)
        while proc.poll() is None:
            by_kind = defaultdict(int)
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for q in procs:
                try:
                    by_kind[kind(q, proc.pid)] += q.memory_full_info().pss
                except psutil.Error:
                    pass
            peak_total = max(peak_total, sum(by_kind.values()))
            for k, v in by_kind.items():
                peak_by_kind[k] = max(peak_by_kind[k], v)
            time.sleep(0.25)
        tail = proc.stdout.read().strip().splitlines()[-1:]
    print(
        f"job: {args.job or 'default grid25'}, {args.workers} worker(s), wall {time.perf_counter() - t0:.0f}s; {tail[0] if tail else ''}"
    )
    print(f"peak total PSS (driver + all Ray processes): {peak_total / 2**20:,.0f} MiB")
    for k, v in sorted(peak_by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {k:16} peak {v / 2**20:8,.0f} MiB")


if __name__ == "__main__":
    main()
