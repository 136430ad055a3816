"""Images per second of the adversarial step on a GPU: bare PyTorch vs distgan's Engine vs `distgan train`.

For each arch (dcgan, resnet) at 64 px (3 channels) and each batch size, in one process:

  (a) bare: a G/D step written here (nonsaturating loss, one D step, one G step), bf16 autocast where the
      GPU has it natively (else fp16 + GradScaler), channels_last, fused Adam: what the hardware gives;
  (b) engine: `distgan.core.engine.Engine` with what `distgan train` picks (`loop.choose_precision`,
      channels_last, fused Adam, cudnn.benchmark) on the same real batch;
  (b') engine fed: the same Engine fed as `loop.run` feeds it: `data.batches` of stacked_digits at this
      size (the images kept and drawn on the device) through `loop.Prefetcher`;
  (c) ray: `distgan train` through Ray Train with 1 GPU worker (then 2 and N with more GPUs), tracking
      off, on stacked_digits at this size: the same step, its input on the GPU, so (c) measures the step
      and not an input pipeline; img/s is the median of metrics.jsonl's `img_per_s` after the first eval
      interval (warm-up: cudnn autotuning);
  (c') ray on user data: the same run (1 worker, the largest batch) on a Parquet file of random PNGs
      written here, which Ray Data decodes on the machine's CPUs: on a fast GPU, what that costs.

It prints img/s, the ratios to (a) (b/a, b'/a, c/a, c'/a), peak GPU memory (torch.cuda.max_memory_allocated)
and the card.
On a GPU machine with distgan installed (where Ray is missing, put its packages on PYTHONPATH first):

    python benchmarks/gpu_step.py --device cuda --batch 256 1024 --steps 50

CPU smoke test (seconds; `--skip-ray` leaves out (c) and (c')):

    python benchmarks/gpu_step.py --device cpu --size 32 --batch 64 --steps 5 [--skip-ray]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distgan import data, models
from distgan.core import engine, loop
from distgan.spec.job import JobSpec

ARCHS = ("dcgan", "resnet")


def _spec(arch: str, args: argparse.Namespace) -> JobSpec:
    return JobSpec.model_validate(
        {
            "data": {"name": "stacked_digits", "resolution": args.size},
            "model": {"arch": arch, "base_channels": args.base_channels},
        }
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _models(spec: JobSpec, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    G, D = models.build(spec.model, (3, args.size, args.size))
    if loop.use_channels_last(spec.model.arch, device):
        engine.to_channels_last(G, D)
    return G.to(device), D.to(device)


class Bare:
    """The adversarial step with nothing of distgan's around it."""

    def __init__(self, spec: JobSpec, args: argparse.Namespace, device: torch.device):
        self.G, self.D = _models(spec, args, device)
        self.device, self.latent = device, spec.model.latent_dim
        self.precision = loop.choose_precision("auto", spec.model.arch, device)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=1e-4, betas=(0.5, 0.999), **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=1e-4, betas=(0.5, 0.999), **fused)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        on = self.precision == "fp16"
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=on)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=on)

    def step(self, real: torch.Tensor) -> None:
        n = real.shape[0]
        with torch.no_grad(), self.autocast():
            fake = self.G(torch.randn(n, self.latent, device=self.device)).float()
        with self.autocast():
            r, f = self.D(torch.cat([real, fake])).float().split(n)
        loss_d = F.softplus(-r).mean() + F.softplus(f).mean()
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        self.D.requires_grad_(False)
        with self.autocast():
            loss_g = F.softplus(-self.D(self.G(torch.randn(n, self.latent, device=self.device))).float()).mean()
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.D.requires_grad_(True)


class EngineStep:
    """distgan's Engine, set up as `loop.run` sets it up."""

    def __init__(self, spec: JobSpec, args: argparse.Namespace, device: torch.device):
        G, D = _models(spec, args, device)
        self.precision = loop.choose_precision(spec.train.precision, spec.model.arch, device)
        self.eng = engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, device, precision=self.precision)

    def step(self, real: torch.Tensor) -> None:
        self.eng.step([real])


class EngineFed(EngineStep):
    """The Engine fed as `loop.run` feeds it: the data's batches, through the loop's Prefetcher."""

    def __init__(self, spec: JobSpec, args: argparse.Namespace, device: torch.device, batch: int):
        super().__init__(spec, args, device)
        stream = data.batches(spec.data, data.inspect(spec.data), batch, 0, 1, 0, device=device)
        self.batches = loop.Prefetcher(stream, device, loop.use_channels_last(spec.model.arch, device), labels=False)

    def step(self, real: torch.Tensor) -> None:
        self.eng.step([next(self.batches)[0]])


def time_steps(runner, real: torch.Tensor, args: argparse.Namespace, device: torch.device) -> float:
    """img/s over `args.steps` steps after `args.warmup` (the median of `args.reps` repetitions)."""
    for _ in range(args.warmup):
        runner.step(real)
    rates = []
    for _ in range(args.reps):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            runner.step(real)
        _sync(device)
        rates.append(args.steps * real.shape[0] / (time.perf_counter() - t0))
    return statistics.median(rates)


def in_process(arch: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict:
    spec = _spec(arch, args)
    real = torch.rand(batch, 3, args.size, args.size, device=device) * 2 - 1
    if loop.use_channels_last(arch, device):
        real = real.contiguous(memory_format=torch.channels_last)
    out = {}
    runners = {"bare": Bare, "engine": EngineStep, "fed": lambda *a: EngineFed(*a, batch=batch)}
    for name, make in runners.items():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        runner = make(spec, args, device)
        out[name] = time_steps(runner, real, args, device)
        out[f"{name}_precision"] = runner.precision
        if device.type == "cuda":
            out[f"{name}_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        del runner
    return out


def write_images(path: Path, n: int, size: int) -> Path:
    """A Parquet file of `n` random RGB PNGs (the bytes `distgan train` decodes), for (c)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    pq.write_table(pa.table({"image": images}), path)
    return path


def through_ray(
    arch: str, batch: int, workers: int, pngs: Path | None, args: argparse.Namespace, tmp: Path
) -> float | None:
    """img/s of `distgan train` (Ray Train, `workers` workers, one GPU each on CUDA), from metrics.jsonl:
    on stacked_digits at `args.size`, or on the Parquet file `pngs`."""
    name = f"{arch}-b{batch}-w{workers}" + ("-png" if pngs else "")
    interval = max(args.ray_steps // 4, 1)
    if pngs:
        source = ["data.name=parquet", f"data.path={pngs}", "data.column=image"]
    else:
        source = ["data.name=stacked_digits", f"data.resolution={args.size}"]
    cmd = [
        sys.executable, "-m", "distgan", "-q", "train", "--no-tracking", "--workers", str(workers),
        *(["--gpu"] if args.device == "cuda" else []),
        *(a for kv in source for a in ("--set", kv)),
        "--set", f"model.arch={arch}", "--set", f"model.base_channels={args.base_channels}",
        "--set", f"train.batch_size={batch * workers}", "--set", f"train.steps={interval * 4}",
        "--set", f"train.eval_every={interval}", "--set", f"train.checkpoint_every={interval * 4}",
        "--set", "metrics.feature_net=none", "--set", "train.max_failures=0",
        "--set", f"train.storage_path={tmp}", "--set", f"train.name={name}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ray_timeout)
    rows = tmp / name / "distgan" / "metrics.jsonl"
    if proc.returncode != 0 or not rows.is_file():
        print(f"  ray {name}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}")
        return None
    rates = [json.loads(line)["img_per_s"] for line in rows.read_text().splitlines()]
    return statistics.median(rates[1:] or rates)  # the first interval holds the warm-up


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="timed steps per repetition (a), (b), (b')")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ray-steps", type=int, default=200, help="steps of each `distgan train` run (c), (c')")
    p.add_argument("--ray-timeout", type=int, default=300)
    p.add_argument("--images", type=int, default=8192, help="random PNGs in the Parquet file of (c')")
    p.add_argument("--skip-ray", action="store_true", help="only (a), (b) and (b')")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        card = torch.cuda.get_device_name(device)
        gpus = torch.cuda.device_count()
    else:
        card, gpus = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)", 0
    print(f"device: {card}; torch {torch.__version__}; {args.size}px RGB, base_channels {args.base_channels}")
    worker_counts = sorted({1, 2, gpus} - {0}) if device.type == "cuda" and gpus > 1 else [1]
    results = {"device": card, "torch": torch.__version__, "rows": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pngs = None if args.skip_ray else write_images(tmp / "images.parquet", args.images, args.size)
        for arch in args.arch:
            for batch in args.batch:
                row = {"arch": arch, "batch": batch} | in_process(arch, batch, args, device)
                bare = row["bare"]
                line = (
                    f"{arch:6s} batch {batch:5d} [{row['bare_precision']}]: (a) bare {bare:10,.0f} img/s"
                    f"  (b) engine {row['engine']:10,.0f} img/s  b/a {row['engine'] / bare:.3f}"
                    f"  (b') fed {row['fed']:10,.0f} img/s  b'/a {row['fed'] / bare:.3f}"
                )
                if "bare_mem_gib" in row:
                    line += f"  mem a {row['bare_mem_gib']:.2f} GiB, b {row['engine_mem_gib']:.2f} GiB"
                print(line, flush=True)
                runs = [] if args.skip_ray else [(w, None) for w in worker_counts]
                if runs and batch == max(args.batch):
                    runs.append((1, pngs))
                for workers, source in runs:
                    rate = through_ray(arch, batch, workers, source, args, tmp)
                    key, c = (f"ray_w{workers}", "c") if source is None else ("ray_png", "c'")
                    row[key] = rate
                    if rate is not None:
                        print(
                            f"{'':6s} batch {batch:5d}/worker, {workers} worker(s): ({c}) ray"
                            + (" on PNGs" if source else "")
                            + f" {rate:10,.0f} img/s  {c}/a {rate / bare:.3f}"
                            + (f" (per GPU {rate / workers:,.0f})" if workers > 1 else ""),
                            flush=True,
                        )
                results["rows"].append(row)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
