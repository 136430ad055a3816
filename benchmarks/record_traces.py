"""Record the metric traces of short real trainings, for the health and early-stop tests.

No Ray: G and D from `distgan.models.build`, `distgan.engine.Engine.step` in a plain loop on the
built-in data, and every `eval_every` steps the report the training loop makes: the interval means
of the engine's statistics (loss_d, loss_g, grad norms, d_accuracy, critic_gap, penalties), and for
grid25 the mixture metrics of the EMA generator. A trace ends at its first non-finite report, as
the loop ends a diverged run.

    python benchmarks/record_traces.py [--only NAME ...] [--out tests/data/traces]

Each trace is one JSON file: {"name", "about", "spec" (the job spec), "evals": [{"step", ...}]}.
Deterministic on CPU with one thread (for a given torch); all of them take about three minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from distgan import models
from distgan.core import engine
from distgan.data import builtin
from distgan.metrics.mixture import MIXTURE_STD, mixture_means, mixture_quality
from distgan.spec.job import JobSpec

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "traces"
GRID25 = {
    "data": {"name": "grid25"},
    "model": {"arch": "mlp", "latent_dim": 2, "g_hidden": [128, 128, 128], "d_hidden": [128, 128, 128]},
    "optim": {"lr_g": 5e-4, "lr_d": 5e-4},
    "train": {"steps": 2000, "batch_size": 256, "eval_every": 100},
}
# The classic failure (Goodfellow et al. 2014 nets, the minimax loss, 5 D steps per G step): D wins.
DIGITS_MINIMAX = {
    "data": {"name": "digits"},
    "model": {"arch": "mlp", "latent_dim": 64, "g_hidden": [256, 256], "d_hidden": [256, 256]},
    "loss": {"type": "minimax"},
    "optim": {"lr_g": 2e-4, "lr_d": 2e-4, "betas_g": [0.5, 0.999], "betas_d": [0.5, 0.999], "n_critic": 5},
    "train": {"steps": 1500, "batch_size": 64, "eval_every": 100},
}


def _with(base: dict, **sections) -> dict:
    return {**base, **{k: {**base.get(k, {}), **v} for k, v in sections.items()}}


# name -> (job spec, what it shows)
TRACES = {
    "grid25_nonsaturating": (_with(GRID25, loss={"type": "nonsaturating", "r1": 0.1}), "healthy"),
    "grid25_hinge": (_with(GRID25, loss={"type": "hinge", "r1": 0.1}), "healthy"),
    # the usual WGAN-GP settings, at the eval interval and length of the shipped search (search-grid25.yaml)
    "grid25_wgan_gp": (
        _with(
            GRID25,
            loss={"type": "wgan_gp", "gp": 10.0},
            optim={"lr_g": 1e-4, "lr_d": 1e-4, "betas_g": [0.5, 0.9], "betas_d": [0.5, 0.9], "n_critic": 5},
            train={"steps": 4000, "eval_every": 250, "seed": 1},
        ),
        "healthy; D's loss is negative by design",
    ),
    "digits_minimax_ncritic5": (DIGITS_MINIMAX, "D wins outright: the minimax G loss saturates"),
    "grid25_lsgan_lr1": (
        _with(GRID25, loss={"type": "lsgan"}, optim={"lr_g": 1.0, "lr_d": 1.0}, train={"steps": 500, "eval_every": 50}),
        "NaN within the first report",
    ),
    "grid25_lsgan_lr01": (
        _with(GRID25, loss={"type": "lsgan"}, optim={"lr_g": 0.1, "lr_d": 0.1}, train={"steps": 500, "eval_every": 50}),
        "gradients explode, then stay large",
    ),
}


def _stream(spec: JobSpec):
    if spec.data.name == "digits":
        digits, labels = torch.from_numpy(builtin.digits_array()), torch.from_numpy(builtin.digits_labels())
        return (x for x, _ in builtin.tensor_batches(digits, labels, spec.train.batch_size, spec.train.seed))
    return builtin.mixture_batches(spec.data.name, spec.train.batch_size, spec.train.seed)


def record(tree: dict) -> list[dict]:
    """The reports of one training run, one per `eval_every` steps."""
    spec = JobSpec.model_validate(tree)
    t = spec.train
    shape = (1, 8, 8) if spec.data.name == "digits" else (2,)
    torch.manual_seed(t.seed)
    G, D = models.build(spec.model, shape)
    eng = engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, torch.device("cpu"))
    stream, totals, evals = _stream(spec), {}, []
    for step in range(1, t.steps + 1):
        stats = eng.step([next(stream) for _ in range(spec.optim.n_critic)])
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v
        if step % t.eval_every:
            continue
        report = {"step": step} | {k: float(v) / t.eval_every for k, v in sorted(totals.items())}
        totals = {}
        finite = all(math.isfinite(v) for v in report.values())
        if finite and spec.data.name in MIXTURE_STD:
            samples = engine.sample(eng.G_ema, 2500, spec.model.latent_dim, torch.device("cpu"), seed=step)
            report |= mixture_quality(samples, mixture_means(spec.data.name), MIXTURE_STD[spec.data.name])
        evals.append({k: v if isinstance(v, int) else float(f"{v:.5g}") for k, v in report.items()})
        if not finite:
            break  # as the loop: a diverged run reports once and stops
    return evals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=list(TRACES), help="record these traces (default: all)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(1)  # deterministic, and a small share of a shared machine
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or TRACES:
        tree, about = TRACES[name]
        t0 = time.perf_counter()
        evals = record(tree)
        spec = JobSpec.model_validate(tree).model_dump(mode="json")
        head = {"name": name, "about": about, "spec": {k: spec[k] for k in ("data", "model", "loss", "optim", "train")}}
        rows = ",\n".join(f"  {json.dumps(e)}" for e in evals)  # one report a line
        (args.out / f"{name}.json").write_text(f'{json.dumps(head)[:-1]}, "evals": [\n{rows}\n]}}\n')
        last = evals[-1]
        shown = "  ".join(
            f"{k} {last[k]:.3g}" for k in ("loss_d", "loss_g", "d_accuracy", "critic_gap", "modes") if k in last
        )
        print(f"{name}: {len(evals)} evals to step {last['step']} in {time.perf_counter() - t0:.0f}s; last: {shown}")


if __name__ == "__main__":
    main()
