"""Time from `distgan submit` to the first training step, on a local two-node Ray cluster
(`ray start --head` + `ray start --address`, token auth, the tests' helper; stopped by PID).

The command is timed as a user runs it (Python start included), reading its `--follow` output:
when it printed `submitted`, when the job's entrypoint started, and when the first step line
arrived (`train.eval_every=1`: rank 0 reports step 1). Tracking off, one worker.

    python benchmarks/submit_latency.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_submit import LocalRayCluster  # noqa: E402  (the tests' two-node cluster, stopped by PID)


def one_submit(cluster: LocalRayCluster, workdir: Path) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "distgan",
        "submit",
        str(REPO / "jobs" / "grid25.yaml"),
        "--address",
        cluster.address,
        "--follow",
        "--no-tracking",
        "--workdir",
        str(workdir),
        "--set",
        "train.steps=5",
        "--set",
        "train.eval_every=1",
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.final_eval_seeds=1",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    marks: dict[str, float] = {}
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if line.startswith("submitted "):
            marks.setdefault("submitted", now)
        elif line.startswith("Running entrypoint"):
            marks.setdefault("entrypoint", now)
        elif line.lstrip().startswith("step") and "1/5" in line:
            marks.setdefault("first_step", now)
    proc.wait()
    marks["done"] = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"submit exited {proc.returncode}")
    return marks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cluster = LocalRayCluster(tempfile.mkdtemp(prefix="dgsubb-", dir="/tmp"))
    t0 = time.perf_counter()
    cluster.start()
    print(f"cluster up in {time.perf_counter() - t0:.1f}s ({os.cpu_count()} cores on this machine)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                m = one_submit(cluster, Path(tmp) / f"job{i}")
                print(
                    f"run {i + 1}: submitted {m['submitted']:.1f}s  entrypoint {m['entrypoint']:.1f}s  "
                    f"first step {m['first_step']:.1f}s  job done {m['done']:.1f}s"
                )
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
