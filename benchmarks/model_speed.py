"""Images per second of one adversarial step (`Engine.step`: one D step, one G step) for resnet
vs dcgan, on the CPU, in one process.

Both nets get the same spec but for `model.arch`; each timed step runs on the same real batch. After
warmup steps, the archs alternate step by step, so that load from other processes on the machine
hits both alike. Reports the median over repetitions and the ratio resnet/dcgan of img/s.

    python benchmarks/model_speed.py [--size 32] [--channels 3] [--batch 64] [--base-channels 32] [--reps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from distgan import models
from distgan.core import engine
from distgan.spec.job import JobSpec

ARCHS = ("dcgan", "resnet")


def make_engine(arch: str, args: argparse.Namespace) -> engine.Engine:
    spec = JobSpec.model_validate(
        {
            "data": {"name": "digits"},
            "model": {"arch": arch, "latent_dim": 64, "base_channels": args.base_channels},
            "loss": {"type": args.loss, "r1": args.r1},
        }
    )
    torch.manual_seed(0)
    G, D = models.build(spec.model, (args.channels, args.size, args.size))
    return engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, torch.device("cpu"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--loss", default="nonsaturating")
    p.add_argument("--r1", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=8)
    args = p.parse_args()

    engines = {arch: make_engine(arch, args) for arch in ARCHS}
    real = torch.rand(args.batch, args.channels, args.size, args.size) * 2 - 1
    for _ in range(args.warmup):
        for eng in engines.values():
            eng.step([real])
    seconds: dict[str, list[float]] = {arch: [] for arch in ARCHS}
    for _ in range(args.reps):
        for arch, eng in engines.items():
            t0 = time.perf_counter()
            stats = eng.step([real])
            float(stats["loss_g"])  # stats are lazy tensors: wait for the step to finish
            seconds[arch].append(time.perf_counter() - t0)

    print(
        f"Engine.step, {args.size} px, {args.channels} ch, batch {args.batch}, base_channels {args.base_channels}, "
        f"loss {args.loss} r1 {args.r1}, CPU ({torch.get_num_threads()} threads), median of {args.reps} "
        "interleaved reps"
    )
    print(f"{'arch':8} {'params G':>10} {'params D':>10} {'s/step':>8} {'img/s':>8}")
    img_per_s = {}
    for arch, eng in engines.items():
        step = statistics.median(seconds[arch])
        img_per_s[arch] = args.batch / step
        n_g, n_d = (sum(p.numel() for p in net.parameters()) for net in (eng.G, eng.D))
        print(f"{arch:8} {n_g:>10,} {n_d:>10,} {step:>8.3f} {img_per_s[arch]:>8.1f}")
    print(f"img/s ratio resnet/dcgan: {img_per_s['resnet'] / img_per_s['dcgan']:.2f}")


if __name__ == "__main__":
    main()
