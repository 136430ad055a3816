"""Wall time of the first run a new user sees: `distgan train --register grid25-gan` (the default job, or
JOB), timed as the user runs it, from the command's start to its exit, in a fresh directory (a new
MLflow store, a local Ray started in-process). Split into:

- start: the command's start to the first training step (Python, Ray, the MLflow run, Ray Train's
  controller and worker), estimated as the first progress line's time less one eval interval of
  training at the run's mean step time;
- train: the estimated first step to the last progress line (the steps and evals);
- end: the last progress line to the exit (final evaluation, the model logged and registered, Ray's
  shutdown).

    python benchmarks/default_job_wall.py [JOB.yaml] [--repeats 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def one_run(job: list[str], overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="dg-wall-") as tmp:
        cmd = [sys.executable, "-m", "distgan", "train", *job, "--register", "grid25-gan", "--json-out", "r.json"]
        for o in overrides:
            cmd += ["--set", o]
        env = {**os.environ, "RAY_TMPDIR": tmp}
        env.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        step_lines = []  # (seconds since start, step)
        for line in proc.stdout:
            if line.startswith("step "):
                step_lines.append((time.perf_counter() - t0, int(line.split()[1].split("/")[0])))
        proc.wait()
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"distgan train exited {proc.returncode}")
        with open(os.path.join(tmp, "r.json")) as f:
            result = json.load(f)
    (t_first, s_first), (t_last, s_last) = step_lines[0], step_lines[-1]
    per_step = (t_last - t_first) / max(s_last - s_first, 1)
    start = t_first - s_first * per_step
    m = result["metrics"]
    return {
        "total_s": round(total, 1),
        "start_s": round(start, 1),
        "train_s": round(t_last - start, 1),
        "end_s": round(total - t_last, 1),
        "steps": result["steps"],
        "modes": m.get("modes"),
        "high_quality": m.get("high_quality"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", nargs="?", help="job spec (default: the built-in default job)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    rows = [one_run([args.job] if args.job else [], args.set) for _ in range(args.repeats)]
    cols = list(rows[0])
    print("  ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>12}" for c in cols))


if __name__ == "__main__":
    main()
