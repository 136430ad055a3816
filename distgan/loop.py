"""The training loop of one worker, top to bottom: resume, step, evaluate, checkpoint, finish.

It runs under Ray Train (see `distgan.train`) but talks to Ray only through the small `Session`
it is given, so a Tune trial can run the same loop in its own process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from distgan import data, engine, models
from distgan.config import JobSpec, ModelSpec
from distgan.data import DataInfo
from distgan.evaluation import Evaluator
from distgan.tracking import RunRecord

CHECKPOINT_FILE = "state.pt"


class Session(Protocol):
    """What the loop needs from its runner (Ray Train, or a Tune trial running it in-process)."""

    rank: int
    world: int
    device: torch.device
    node_id: str

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def latest_checkpoint(self) -> Path | None: ...
    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...
    def data_shard(self): ...
    def progress(self, line: str) -> None: ...


def _gather(obj) -> list:
    """obj from every rank (a collective: every rank must call it)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _any_rank(flag: bool, device: torch.device) -> bool:
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of all parameters' bytes: equal digests across ranks = replicas in sync."""
    h = hashlib.sha256()
    for p in engine.unwrap(module).parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _maybe_fail(step: int, rank: int) -> None:
    """Fault injection for tests: DISTGAN_FAULT_KILL_AT=STEP:RANK SIGKILLs that worker once
    (DISTGAN_FAULT_MARKER names the file that records it already happened)."""
    spec, marker = os.environ.get("DISTGAN_FAULT_KILL_AT"), os.environ.get("DISTGAN_FAULT_MARKER")
    if not spec or not marker:
        return
    at_step, at_rank = map(int, spec.split(":"))
    if step == at_step and rank == at_rank and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def run(spec: JobSpec, info: DataInfo, session: Session, record_dir: str | None, tracking: dict | None = None) -> dict:
    """Train to `spec.train.steps` generator steps (resuming from the latest checkpoint); rank 0's
    result dict is the run's result."""
    rank, world, device, t = session.rank, session.world, session.device, spec.train
    is_chief = rank == 0

    torch.manual_seed(t.seed)  # same init everywhere (DDP also broadcasts rank 0's weights)
    G, D = models.build(spec.model, info.sample_shape)
    G, D = session.prepare_model(G), session.prepare_model(D)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    eng = engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, device, bf16)

    start = 0
    ckpt = session.latest_checkpoint()
    if ckpt is not None:
        state = torch.load(ckpt / CHECKPOINT_FILE, map_location=device, weights_only=True)
        eng.load_state_dict(state["engine"])
        start = state["step"]
        rng = state["rng"]
        torch.set_rng_state(rng[rank] if len(rng) == world else rng[0])
        # The spec's learning rates win over the checkpoint's: after a PBT exploit the spec holds
        # the mutated values, while the loaded optimizer state holds the donor's.
        eng.set_lrs(spec.optim.lr_g, spec.optim.lr_d)
    else:
        torch.manual_seed(t.seed * 1_000_003 + rank)  # each rank its own latents
    if dist.is_initialized():
        dist.barrier()  # all ranks loaded before anyone trains

    per_worker_batch = t.batch_size // world
    # Re-seed the data stream on resume; a stream's position is not worth checkpointing.
    stream = data.batches(spec.data, info, per_worker_batch, rank, world, t.seed + start, session.data_shard())
    record = RunRecord(record_dir, tracking, warn=session.progress) if is_chief and record_dir else None
    if record and start == 0:
        record.log_spec(spec.model_dump(mode="json"))
    evaluator = Evaluator(spec, info, device, rank, world, _gather)

    totals: dict[str, float] = {}
    interval_start, interval_steps, run_start = time.perf_counter(), 0, time.perf_counter()
    status, metrics, step = "finished", {}, start
    for step in range(start + 1, t.steps + 1):
        _maybe_fail(step, rank)
        stats = eng.step([next(stream).to(device, non_blocking=True) for _ in range(spec.optim.n_critic)])
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v  # tensors: no host sync per step
        interval_steps += 1

        evaluate = step % t.eval_every == 0 or step == t.steps
        checkpoint = step % t.checkpoint_every == 0 or step == t.steps
        if not (evaluate or checkpoint):
            continue
        elapsed = time.perf_counter() - interval_start
        metrics = {k: float(v) / interval_steps for k, v in totals.items()}
        metrics |= {"step_time": elapsed / interval_steps, "img_per_s": interval_steps * t.batch_size / elapsed}
        metrics |= {"lr_g": eng.opt_g.param_groups[0]["lr"], "lr_d": eng.opt_d.param_groups[0]["lr"]}
        diverged = _any_rank(not all(np.isfinite(list(metrics.values()))), device)
        if evaluate:
            # A collective for image metrics (each rank samples its share); the numbers land on rank 0.
            eval_start = time.perf_counter()
            metrics |= evaluator.evaluate(eng.G_ema, step, final=step == t.steps, record=record)
            metrics["eval_s"] = time.perf_counter() - eval_start
        if is_chief and evaluate:
            record.log_metrics(metrics, step)
            session.progress(_progress_line(step, t.steps, metrics, time.perf_counter() - run_start, step - start))
        if diverged:
            status = "diverged"
        _report(session, eng, step, metrics, checkpoint and not diverged, rank, spec)  # keep the last good one
        if diverged:
            if is_chief:
                session.progress(f"step {step}: loss or gradient is NaN/Inf; stopping (status diverged)")
            break
        totals, interval_start, interval_steps = {}, time.perf_counter(), 0

    undelivered = record.close() if record else 0
    digests = _gather((parameter_digest(G), parameter_digest(D)))
    if step == start and is_chief and record:  # resumed at the end: report the recorded final metrics
        history = record.metric_history()
        metrics = history[-1] if history else {}
        metrics.pop("step", None)
    return {
        "status": status,
        "steps": step,
        "resumed_from": start,
        "metrics": metrics,
        "ranks_in_sync": all(d == digests[0] for d in digests),
        "tracking_undelivered": undelivered,
        "param_digests": [{"G": g, "D": d} for g, d in digests],
        "node_ids": _gather(session.node_id),
    }


def _report(
    session: Session, eng: engine.Engine, step: int, metrics: dict, checkpoint: bool, rank: int, spec: JobSpec
) -> None:
    if not checkpoint:
        session.report(metrics | {"step": step}, None)
        return
    rng = _gather(torch.get_rng_state())
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            state = {"engine": eng.state_dict(), "step": step, "rng": rng, "spec": spec.model_dump(mode="json")}
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
        session.report(metrics | {"step": step}, tmp if rank == 0 else None)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state, on the CPU: `path` is the checkpoint directory or its state file."""
    path = Path(path)
    return torch.load(path / CHECKPOINT_FILE if path.is_dir() else path, map_location="cpu", weights_only=True)


def checkpoint_generator(
    state: dict, model: ModelSpec, sample_shape: tuple[int, ...], which: str = "ema"
) -> torch.nn.Module:
    """The EMA (`which="ema"`) or raw generator a checkpoint's state holds."""
    generator, _ = models.build(model, sample_shape)
    generator.load_state_dict(state["engine"]["G_ema" if which == "ema" else "G"])
    return generator


def _progress_line(step: int, total: int, m: dict, elapsed: float, done: int) -> str:
    eta = elapsed / max(done, 1) * (total - step)
    parts = [
        f"step {step:>{len(str(total))}}/{total}",
        f"loss_d {m['loss_d']:.3f}",
        f"loss_g {m['loss_g']:.3f}",
        f"{m['img_per_s']:,.0f} img/s",
    ]
    if "modes" in m:
        parts.append(f"modes {m['modes']:.1f}  hq {m['high_quality']:.1%}  rkl {m['reverse_kl']:.3f}")
    fd = next((k for k in m if k.startswith("fd_")), None)
    if fd:
        parts.append(f"{fd} {m[fd]:.3g}  prec {m['precision']:.2f}  rec {m['recall']:.2f}")
    if "classes_covered" in m:
        parts.append(f"classes {m['classes_covered']:.0%}")
    parts.append(f"eta {eta:.0f}s")
    return " | ".join(parts)
