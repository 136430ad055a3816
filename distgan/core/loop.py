"""The training loop of one worker, top to bottom: resume, step, evaluate, checkpoint, finish.

It talks to its runner only through a `Session` (Ray Train, a Tune trial running it in-process, or
`LocalSession` here: one process, no Ray) and writes through a `Recorder` (rank 0 only), so it can
be run and tested without Ray or MLflow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from distgan import data, models
from distgan.core import checkpoint, engine
from distgan.core.dist import any_rank, average_buffers, gather, parameter_digest
from distgan.core.evaluator import Evaluator
from distgan.core.health import HealthMonitor
from distgan.data import DataInfo
from distgan.spec.job import JobSpec


class Session(Protocol):
    """What the loop needs from its runner."""

    rank: int
    world: int
    device: torch.device
    node_id: str

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...
    def latest_checkpoint(self) -> str | Path | None: ...  # the newest checkpoint directory: a local path or a URI
    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...
    def data_shard(self): ...
    def progress(self, line: str) -> None: ...
    def stop_requested(self) -> bool: ...  # the driver was asked to stop (Ctrl-C, SIGTERM)


class Recorder(Protocol):
    """Where rank 0 writes the run's record (see `distgan.tracking.record.RunRecord`)."""

    def log_spec(self, spec: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def truncate_after(self, step: int) -> None: ...  # drop local rows past `step` (a resume replays them)
    def log_image(self, png: bytes, name: str, step: int | None = None) -> None: ...
    def metric_history(self) -> list[dict]: ...
    def close(self) -> int: ...


class LocalSession:
    """One process, no Ray: checkpoints go to `<run_dir>/checkpoint_<step>` (copied under a hidden
    name, then renamed; the newest `keep` kept), reports are kept in `reports`. For tests, notebooks
    and the benchmarks."""

    rank, world, node_id = 0, 1, "local"

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu", echo=None, keep: int = 2):
        self.run_dir, self.device, self.keep = Path(run_dir), torch.device(device), keep
        self.echo = echo
        self.reports: list[dict] = []

    def prepare_model(self, model):
        return model.to(self.device)

    def latest_checkpoint(self) -> Path | None:
        newest = checkpoint.latest(self.run_dir)
        return Path(newest) if newest else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        final = self.run_dir / f"{checkpoint.PREFIX}{metrics['step']:07d}"
        staged = self.run_dir / f".{final.name}.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staged)
        shutil.rmtree(final, ignore_errors=True)  # a resume replays the steps after its checkpoint
        staged.rename(final)
        for old in checkpoint.checkpoints(self.run_dir)[: -self.keep]:
            shutil.rmtree(old)

    def data_shard(self):
        return None

    def progress(self, line: str) -> None:
        if self.echo:
            self.echo(line)

    def stop_requested(self) -> bool:
        return False


def _maybe_fail(step: int, rank: int, node_id: str) -> None:
    """Fault injection for tests, once (DISTGAN_FAULT_MARKER names the file that records it
    happened): DISTGAN_FAULT_KILL_AT=STEP:RANK SIGKILLs that worker; DISTGAN_FAULT_HOLD_AT=STEP:RANK
    writes the worker's node id to the marker and holds it there (the test ends that node)."""
    marker = os.environ.get("DISTGAN_FAULT_MARKER")
    for action in ("KILL", "HOLD"):
        spec = os.environ.get(f"DISTGAN_FAULT_{action}_AT")
        if not spec or not marker or [step, rank] != list(map(int, spec.split(":"))):
            continue
        try:  # created here or not at all: of two processes at this step at once (search trials), one fails
            with open(marker, "x") as f:
                f.write(str(os.getpid()) if action == "KILL" else node_id)
        except FileExistsError:
            continue
        if action == "KILL":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)


def run(spec: JobSpec, info: DataInfo, session: Session, record: Recorder | None = None) -> dict:
    """Train to `spec.train.steps` generator steps (resuming from the latest checkpoint); rank 0's
    result dict is the run's result. `record`: rank 0's recorder (None on the other ranks)."""
    rank, world, device, t = session.rank, session.world, session.device, spec.train
    is_chief = rank == 0

    torch.manual_seed(t.seed)  # same init everywhere (DDP also broadcasts rank 0's weights)
    G, D = models.build(spec.model, info.sample_shape, info.num_classes)
    channels_last = use_channels_last(spec.model.arch, device)
    if channels_last:
        engine.to_channels_last(G, D)  # before DDP: its buckets follow the parameters' strides
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
    G, D = session.prepare_model(G), session.prepare_model(D)
    precision = choose_precision(t.precision, spec.model.arch, device)
    eng = engine.Engine(
        G,
        D,
        spec.loss,
        spec.optim,
        spec.model.latent_dim,
        device,
        augment_policy=spec.augment.policy,
        precision=precision,
        compile=t.compile,
    )

    start = 0
    ckpt = session.latest_checkpoint()
    if ckpt is not None:
        start = resume(ckpt, eng, rank, world, t.seed, device, session.progress if is_chief else None)
        # The spec's learning rates win over the checkpoint's: after a PBT exploit the spec holds
        # the mutated values, while the loaded optimizer state holds the donor's.
        eng.set_lrs(spec.optim.lr_g, spec.optim.lr_d)
    else:
        torch.manual_seed(rank_seed(t.seed, rank))  # each rank its own latents
    if dist.is_initialized():
        dist.barrier()  # all ranks loaded before anyone trains

    per_worker_batch = t.batch_size // world
    # Re-seed the data stream on resume; a stream's position is not worth checkpointing.
    batches = data.batches(
        spec.data, info, per_worker_batch, rank, world, t.seed + start, session.data_shard(), device=device
    )
    stream = Prefetcher(batches, device, channels_last, labels=spec.model.conditional)
    if record is not None:
        # Rows past the checkpoint belong to the attempt that died; this one replays those steps.
        record.truncate_after(start)
        if start == 0:
            record.log_spec(spec.model_dump(mode="json"))
    evaluator = Evaluator(spec, info, device, rank, world, gather)
    health = _health_monitor(spec, evaluator, record, start) if is_chief else None

    error = None
    totals: dict[str, float] = {}
    interval_start, interval_steps, run_start = time.perf_counter(), 0, time.perf_counter()
    status, metrics, step = "finished", {}, start
    for step in range(start + 1, t.steps + 1):
        _maybe_fail(step, rank, session.node_id)
        if spec.optim.lr_schedule != "constant":  # a function of the step alone, so a resume continues it
            f = engine.lr_factor(spec.optim.lr_schedule, step, t.steps)
            eng.set_lrs(spec.optim.lr_g * f, spec.optim.lr_d * f)
        reals = [next(stream) for _ in range(spec.optim.n_critic)]  # (samples, labels) pairs
        labels = [y for _, y in reals] if spec.model.conditional else None  # unconditional nets take none
        stats = eng.step([x for x, _ in reals], labels)
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + v  # tensors: no host sync per step
        interval_steps += 1
        # Every few steps one collective asks whether to end: a rank met a bad row of user data
        # (data.on_bad_image=fail: the run fails, naming it), or the driver got Ctrl-C or SIGTERM
        # (this step is checkpointed, status killed).
        stop = step % HALT_CHECK_EVERY == 0 and any_rank(session.stop_requested() or bool(_bad_row(batches)), device)
        if stop and (errors := [e for e in gather(_bad_row(batches)) if e]):
            error, status = errors[0], "failed"
            if is_chief:
                session.progress(f"step {step}: {error}")
            break
        evaluate = step % t.eval_every == 0 or step == t.steps
        save = step % t.checkpoint_every == 0 or step == t.steps or stop
        if not (evaluate or save):
            continue
        elapsed = time.perf_counter() - interval_start
        metrics = {k: float(v) / interval_steps for k, v in totals.items()}
        metrics |= {"step_time": elapsed / interval_steps, "img_per_s": interval_steps * t.batch_size / elapsed}
        metrics |= {"lr_g": eng.opt_g.param_groups[0]["lr"], "lr_d": eng.opt_d.param_groups[0]["lr"]}
        if isinstance(batches, data.ShardStream):
            metrics["data_skipped"] = float(sum(gather(batches.skipped)))  # bad rows dropped so far, all ranks
        diverged = any_rank(not all(np.isfinite(list(metrics.values()))), device)
        # Every rank evaluates and saves the same G, D and EMA-G, BatchNorm running stats included.
        average_buffers(G, D, eng.G_ema)
        if evaluate and not diverged:  # a NaN generator has nothing to measure (and FD would raise)
            # A collective for image metrics (each rank samples its share); the numbers land on rank 0.
            eval_start = time.perf_counter()
            metrics |= evaluator.evaluate(eng.G_ema, step, final=step == t.steps, record=record)
            metrics["eval_s"] = time.perf_counter() - eval_start
        if is_chief and evaluate:
            if record is not None:
                record.log_metrics(metrics, step)
            session.progress(_progress_line(step, t.steps, metrics, time.perf_counter() - run_start, step - start))
            for signal in _new_signals(health, step, metrics):
                session.progress(f"health: {signal.message}")
        # --stop-on-failure: a failing run ends here, with the status of a diverged one
        unhealthy = evaluate and t.stop_on_failure and any_rank(health is not None and health.report() != "ok", device)
        if diverged or unhealthy:
            status = "diverged"
        elif stop:
            status = "killed"
        _report(session, eng, step, metrics, save and not diverged, rank, spec)  # keep the last good one
        if diverged or unhealthy:
            if is_chief:
                why = "loss or gradient is NaN/Inf" if diverged else "a health signal fired (train.stop_on_failure)"
                session.progress(f"step {step}: {why}; stopping (status diverged)")
            break
        if stop:
            if is_chief:
                session.progress(f"step {step}: stop requested; checkpoint saved, stopping (status killed)")
            break
        totals, interval_start, interval_steps = {}, time.perf_counter(), 0

    if step == start and record is not None:  # resumed at the end: report the recorded final metrics
        history = record.metric_history()
        metrics = history[-1] if history else {}
        metrics.pop("step", None)
    undelivered = record.close() if record is not None else 0  # after the history: a staged record goes
    digests = gather((parameter_digest(G), parameter_digest(D), parameter_digest(eng.G_ema)))
    return {
        "status": status,
        "error": error,
        "steps": step,
        "precision": precision,
        "compiled": eng.compiled,
        "resumed_from": start,
        "metrics": metrics,
        "health": health.report() if health is not None else None,
        "ranks_in_sync": all(d == digests[0] for d in digests),
        "tracking_undelivered": undelivered,
        "param_digests": [{"G": g, "D": d, "G_ema": g_ema} for g, d, g_ema in digests],
        "node_ids": gather(session.node_id),
    }


def _health_monitor(spec: JobSpec, evaluator: Evaluator, record: Recorder | None, start: int) -> HealthMonitor:
    """The run's health monitor, caught up on the evals before a resume (it judges trends)."""
    health = HealthMonitor(spec.loss.type, n_modes=evaluator.n_modes)
    for row in record.metric_history() if record is not None else []:
        if row["step"] <= start:
            health.update(row["step"], row)
    return health


def _new_signals(health: HealthMonitor | None, step: int, metrics: dict) -> list:
    """The signals that fire for the first time at this eval (each is said once)."""
    if health is None:
        return []
    seen = set(health.first)
    return [s for s in health.update(step, metrics) if s.name not in seen]


CONV_ARCHS = ("dcgan", "resnet")
HALT_CHECK_EVERY = 10  # steps between the checks for a stop request or a bad row (one tiny all-reduce)


def _bad_row(batches) -> str | None:
    """The bad row this rank's user data met (`data.ShardStream.error`); None for built-ins."""
    return getattr(batches, "error", None)


def choose_precision(precision: str, arch: str, device: torch.device, bf16_supported: bool | None = None) -> str:
    """fp32 | bf16 | fp16: what the step runs in. An explicit `train.precision` is honoured; `auto` is
    fp32 except for conv nets on a GPU: bf16 autocast where the GPU has bf16 natively (Ampere and newer;
    emulated bf16 does not count), else fp16 autocast with a GradScaler. Never by default for the mlp:
    its inputs are 2-D points or vectors, and a 16-bit mantissa quantises them (a mixture mode's std of
    0.01 at radius 1 is a few bf16 steps)."""
    if precision != "auto":
        return precision
    if arch not in CONV_ARCHS or device.type != "cuda":
        return "fp32"
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16" if bf16_supported else "fp16"


def use_channels_last(arch: str, device: torch.device) -> bool:
    """NHWC conv weights and images: for conv nets on a GPU (the CPU path stays as it was)."""
    return arch in CONV_ARCHS and device.type == "cuda"


class Prefetcher:
    """The (samples, labels) batches of `stream` on `device`, uint8 images turned into floats there.
    On CUDA each batch is pinned and copied on a side stream one batch ahead (non_blocking), so the
    copy overlaps the step before it and the host never waits for it; `channels_last` puts image
    batches in NHWC order there too. A stream whose batches are already on the GPU (the built-in
    images) is drawn on that side stream as well. On the CPU: moved and converted in place of the copy."""

    def __init__(self, stream, device: torch.device, channels_last: bool = False, labels: bool = True):
        self.stream, self.device, self.channels_last = iter(stream), device, channels_last
        self.labels = labels  # False: labels are dropped here, never copied (an unconditional model)
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device)
            # what the stream's data was put on the GPU with (the default stream) is done before it is read
            self.copy_stream.wait_stream(torch.cuda.current_stream(device))
            self._next = self._load()

    def _to_device(self, t: torch.Tensor | None, images: bool) -> torch.Tensor | None:
        if t is None:
            return None
        if self.cuda and t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()
        t = t.to(self.device, non_blocking=self.cuda)
        if images:
            t = data.to_unit_range(t)
            if self.cuda and self.channels_last and t.dim() == 4:  # the CPU path stays as it was
                t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _load(self):
        with torch.cuda.stream(self.copy_stream):
            try:
                x, y = next(self.stream)
            except StopIteration:
                return None
            return self._to_device(x, True), self._to_device(y if self.labels else None, False)

    def __iter__(self):
        return self

    def __next__(self):
        if not self.cuda:
            x, y = next(self.stream)
            return self._to_device(x, True), self._to_device(y if self.labels else None, False)
        batch = self._next
        if batch is None:
            raise StopIteration
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.copy_stream)  # the copy of this batch is done before the step reads it
        for t in batch:  # their memory (allocated on the copy stream) is not reused too early
            if t is not None:
                t.record_stream(current)
        self._next = self._load()
        return batch


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of one rank's RNG from `step` on: distinct per (seed, step, rank)."""
    if step == 0:
        return seed * 1_000_003 + rank  # a fresh run (kept as it was: same seed, same run)
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's RNG state, as the checkpoint keeps it (one per rank): the CPU generator's, and
    the CUDA generator's when the run is on a GPU (the latents are drawn there)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(saved: list, rank: int, world: int, seed: int, step: int, device: torch.device) -> None:
    """Put back this rank's RNG state from a checkpoint's per-rank states (CPU tensors).

    With another world size, or without a state for the device the latents come from (a CPU
    checkpoint resumed on a GPU), there is no state of this rank to continue: every rank is seeded
    from (seed, step, rank), so no two ranks draw the same latents."""
    mine = saved[rank] if len(saved) == world else None
    if isinstance(mine, torch.Tensor):  # checkpoints from before the device state was kept
        mine = {"cpu": mine}
    if mine is None or (device.type == "cuda" and "cuda" not in mine):
        torch.manual_seed(rank_seed(seed, rank, step))  # the CPU's and every GPU's generator
        return
    torch.set_rng_state(mine["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)


def resume(
    ckpt: str | Path, eng: engine.Engine, rank: int, world: int, seed: int, device: torch.device, warn=None
) -> int:
    """Load the checkpoint `ckpt` (or, when it does not verify, the newest good one before it: every
    rank verifies the same files, so all pick the same one) into `eng` and this rank's RNG; the step
    it was taken at. `warn`: where the one line about a skipped checkpoint goes (rank 0's)."""
    # Read on the CPU: RNG states must stay CPU ByteTensors; load_state_dict copies the engine's
    # tensors onto the device its modules and optimizer states live on.
    state = checkpoint.read_newest_good(str(ckpt), warn or (lambda line: None))
    eng.load_state_dict(state["engine"])
    restore_rng(state["rng"], rank, world, seed, state["step"], device)
    return state["step"]


def _report(
    session: Session, eng: engine.Engine, step: int, metrics: dict, save: bool, rank: int, spec: JobSpec
) -> None:
    if not save:
        session.report(metrics | {"step": step}, None)
        return
    rng = gather(rng_state(eng.device))
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            checkpoint.write(
                tmp, {"engine": eng.state_dict(), "step": step, "rng": rng, "spec": spec.model_dump(mode="json")}
            )
        session.report(metrics | {"step": step}, tmp if rank == 0 else None)


def _progress_line(step: int, total: int, m: dict, elapsed: float, done: int) -> str:
    eta = elapsed / max(done, 1) * (total - step)
    parts = [
        f"step {step:>{len(str(total))}}/{total}",
        f"loss_d {m['loss_d']:.3f}",
        f"loss_g {m['loss_g']:.3f}",
        f"{m['img_per_s']:,.0f} img/s",
    ]
    if "high_quality" in m:
        parts.append(f"modes {m['modes']:.1f}  hq {m['high_quality']:.1%}  rkl {m['reverse_kl']:.3f}")
    elif "modes" in m:  # stacked digits: triples of 1,000
        parts.append(f"modes {m['modes']:.0f}  rkl {m['reverse_kl']:.3f}")
    fd = next((k for k in m if k.startswith("fd_")), None)
    if fd:
        parts.append(f"{fd} {m[fd]:.3g}  prec {m['precision']:.2f}  rec {m['recall']:.2f}")
    if "classes_covered" in m:
        parts.append(f"classes {m['classes_covered']:.0%}")
    parts.append(f"eta {eta:.0f}s")
    return " | ".join(parts)
