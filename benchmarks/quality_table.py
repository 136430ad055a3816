"""The quality table: each shipped recipe trained once in this process with `LocalSession` (no Ray,
no MLflow; one torch thread unless --threads), its final metrics printed as a table. Mixture figures
are mean ± standard error over `train.final_eval_seeds` seeds of 2,500 samples (PacGAN protocol);
stacked digits count modes of 1,000 on 25,600 samples; the seed jobs report their health and classes.

    python benchmarks/quality_table.py                      # every row (tens of minutes on 2 CPU cores)
    python benchmarks/quality_table.py grid25 ring8         # a subset
    python benchmarks/quality_table.py grid25 --set train.steps=200   # overrides for every row (smoke test)

Wall time is the training loop's (data, model build, evals included; Ray's start excluded).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from distgan import data
from distgan.core import loop
from distgan.spec import job as config
from distgan.tracking.record import RunRecord

# row name -> (shipped job, the metrics it is judged by)
ROWS = {
    "grid25": ("grid25.yaml", ("modes", "high_quality", "reverse_kl")),
    "grid25-best": ("grid25-best.yaml", ("modes", "high_quality", "reverse_kl")),
    "ring8": ("ring8.yaml", ("modes", "high_quality", "reverse_kl")),
    "ring8-best": ("ring8-best.yaml", ("modes", "high_quality", "reverse_kl")),
    "stacked-digits": ("stacked-digits.yaml", ("modes", "reverse_kl")),
    "seed-minimax": ("seed-minimax.yaml", ("classes_covered", "fd_digits")),
    "seed-fixed": ("seed-fixed.yaml", ("classes_covered", "fd_digits")),
    "digits-resnet28": ("digits-resnet28.yaml", ("classes_covered", "fd_digits")),
}


def run_row(name: str, overrides: list[str], echo=None) -> dict:
    job, keys = ROWS[name]
    spec = config.load_spec(config.JOBS_DIR / job, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = loop.run(spec, data.inspect(spec.data), loop.LocalSession(tmp, echo=echo), RunRecord(f"{tmp}/distgan"))
        wall = time.perf_counter() - start
    m = result["metrics"]
    health = result["health"]
    return {
        "row": name,
        "steps": result["steps"],
        "status": result["status"],
        "wall_s": round(wall, 1),
        "health": health if health == "ok" else ",".join(s["name"] for s in health),
        **{k: m.get(k) for k in keys},
        **{f"{k}_se": m[f"{k}_se"] for k in keys if f"{k}_se" in m},
    }


def cell(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    pct = key in ("high_quality", "classes_covered")
    fmt = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3g}" if key != "modes" else f"{x:.1f}")
    se = row.get(f"{key}_se")
    return fmt(v) + (f" ± {fmt(se)}" if se is not None else "")


def table(rows: list[dict]) -> str:
    cols = ["row", "steps", "wall_s", "status", "health", "modes", "high_quality", "reverse_kl", "classes_covered"]
    cols += ["fd_digits"]
    cells = [cols] + [
        [str(r[c]) if c in ("row", "steps", "wall_s", "status", "health") else cell(r, c) for c in cols] for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(cols))) for c in cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="*", help=f"rows to run, of {', '.join(ROWS)} (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the runs in the tables)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each run's progress lines")
    args = p.parse_args()
    if unknown := set(args.rows) - set(ROWS):
        p.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.rows or list(ROWS):
        rows.append(run_row(name, args.set, echo=print if args.verbose else None))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
