"""Image metrics on the built-in digits: the floor, the cost of the final metrics, the cost of
evaluating during training, and what the default digits job reaches.

1. The floor: fd_digits between two disjoint random halves of the 1,797 real digits (3 splits).
2. Final metrics on 10,000 samples of a digits generator (sampling + features + FD, KID,
   precision/recall, density/coverage, class coverage), reference features cached: seconds.
3. `distgan train jobs/digits.yaml` (1 worker): its wall time, the share of the training time
   spent in evaluation (`eval_s` summed over evals / the run's time), and its final metrics
   against the floor.

    python benchmarks/image_metrics.py [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distgan import data, models
from distgan.commands import train
from distgan.core.evaluator import Evaluator
from distgan.metrics import features
from distgan.metrics.image import feature_stats, frechet_distance
from distgan.spec import job as config
from distgan.tracking.run import TrackingOptions


def floor() -> list[float]:
    from distgan.data.builtin import digits_array

    f = features.load("digits").features(torch.from_numpy(digits_array()))
    out = []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(f))
        a, b = f[order[: len(f) // 2]], f[order[len(f) // 2 :]]
        out.append(frechet_distance(*feature_stats(a), *feature_stats(b)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="dgi-") as tmp:
        os.environ["DISTGAN_CACHE"] = f"{tmp}/cache"
        halves = floor()
        fd_floor = float(np.mean(halves))
        print(
            f"floor: fd_digits between disjoint halves of the real digits (898 vs 899), 3 splits: "
            f"{', '.join(f'{v:.2f}' for v in halves)}; mean {fd_floor:.2f}; 3x floor = {3 * fd_floor:.2f}"
        )

        spec = config.load_spec(config.JOBS_DIR / "digits.yaml")
        info = data.inspect(spec.data)
        torch.manual_seed(0)
        generator, _ = models.build(spec.model, info.sample_shape)
        ev = Evaluator(spec, info, torch.device("cpu"))
        t0 = time.perf_counter()
        ev.reference()
        t1 = time.perf_counter()
        q = ev.image_metrics(generator.eval(), 10_000, seed=0)
        t2 = time.perf_counter()
        print(
            f"reference features (first use, then cached): {t1 - t0:.2f}s; final metrics on 10,000 samples "
            f"(1 thread): {t2 - t1:.2f}s  (target < 30 s)  [untrained G: fd_digits {q['fd_digits']:.0f}]"
        )

        if args.skip_train:
            return
        spec = config.load_spec(config.JOBS_DIR / "digits.yaml", [f"train.storage_path={tmp}/runs", "train.name=bench"])
        t0 = time.perf_counter()
        res = train.train(spec, echo=lambda line: None, tracking=TrackingOptions(enabled=False)).to_json()
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in Path(res["run_dir"], "distgan", "metrics.jsonl").read_text().splitlines()]
        eval_s = sum(r["eval_s"] for r in rows)
        m = res["metrics"]
        print(
            f"distgan train jobs/digits.yaml (1 worker, {res['steps']} steps): {wall:.0f}s wall (target < 600 s); "
            f"evaluation {eval_s:.1f}s of {res['wall_s']:.0f}s training = {eval_s / res['wall_s']:.1%} (target < 10%)"
        )
        print(
            f"final (10,000 samples): fd_digits {m['fd_digits']:.2f} = {m['fd_digits'] / fd_floor:.2f}x "
            "floor (target <= 3x); "
            f"classes_covered {m['classes_covered']:.2f} (class_kl {m['class_kl']:.3f}); precision "
            f"{m['precision']:.3f}, recall {m['recall']:.3f}, "
            f"kid_digits {m['kid_digits']:.2f} (std over subsets {m['kid_digits_std']:.2f})"
        )


if __name__ == "__main__":
    main()
