"""Per-step cost of the Ray Train path vs the same engine step in a bare single-process loop.

Same model, batch and data (the default grid25 job), 1 worker, 1 torch thread on both sides (Ray
workers get OMP_NUM_THREADS=1). The Ray figure is the loop's own `step_time` over the steps after
warm-up (eval and checkpoint time excluded on both sides); the Ray run's warm-up is two eval
intervals, as the second holds rank 0's first contact with MLflow (a one-time ~1 s, which
`default_job_wall.py` counts). Bare runs before and after the Ray run and is averaged, to cancel
drift on a noisy machine. Prints one ratio: ray / bare.

    python benchmarks/ray_overhead.py [--steps 1500] [--warmup 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from distgan import data, models
from distgan.commands import train
from distgan.core import engine
from distgan.spec import job as config


def bare_step_time(spec, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    info = data.inspect(spec.data)
    G, D = models.build(spec.model, info.sample_shape)
    eng = engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, torch.device("cpu"))
    stream = data.batches(spec.data, info, spec.train.batch_size, 0, 1, 0)
    totals: dict = {}
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        stats = eng.step([next(stream)[0] for _ in range(spec.optim.n_critic)])
        for k, v in stats.items():  # what the Ray loop does per step, too
            totals[k] = totals.get(k, 0.0) + v
    return (time.perf_counter() - t0) / steps


def ray_step_time(spec, steps: int, warmup: int, storage: str) -> float:
    spec = config.validate_spec(
        spec.model_dump()
        | {
            "train": spec.train.model_dump()
            | {
                "steps": 2 * warmup + steps,
                "eval_every": warmup,
                "checkpoint_every": 2 * warmup + steps,
                "storage_path": storage,
                "name": "overhead",
            }
        }
    )
    res = train.train(spec, echo=lambda line: None).to_json()
    assert res["status"] == "finished", res
    rows = [json.loads(x) for x in (Path(res["run_dir"]) / "distgan" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > 2 * warmup]  # each row: mean step time of its interval
    return sum(r["step_time"] * warmup for r in timed) / (warmup * len(timed))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--warmup", type=int, default=300)
    args = p.parse_args()
    args.steps -= args.steps % args.warmup  # whole eval intervals
    torch.set_num_threads(1)
    spec = config.load_spec(None)
    before = bare_step_time(spec, args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        ray = ray_step_time(spec, args.steps, args.warmup, tmp)
    after = bare_step_time(spec, args.steps, args.warmup)
    bare = (before + after) / 2
    print(
        f"job: default grid25 (mlp {spec.model.g_hidden}, batch {spec.train.batch_size}), {args.steps} timed steps "
        f"after {args.warmup} warm-up, 1 worker, 1 thread"
    )
    print(f"bare loop   : {bare * 1e3:7.2f} ms/step  (before {before * 1e3:.2f}, after {after * 1e3:.2f})")
    print(f"Ray Train   : {ray * 1e3:7.2f} ms/step")
    print(f"ratio ray/bare: {ray / bare:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
