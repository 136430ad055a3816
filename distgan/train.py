"""The Ray Train wiring: checks before Ray, the TorchTrainer, and the run's result.

`train(spec)` validates everything it can without Ray (spec, data, model/data shape, GPUs on this
machine), starts or joins Ray, then runs `distgan.loop.run` on `scaling.workers` Train workers
with G and D under DDP. Rank 0 checkpoints through `ray.train.report`; `FailureConfig` restarts
the worker group from the latest checkpoint, and re-running the same `train.name` resumes it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from distgan import data, evaluation, loop, models, registry
from distgan import tracking as tracking_lib
from distgan.config import JobSpec
from distgan.data import DataInfo
from distgan.errors import InputError
from distgan.metrics import features
from distgan.tracking import read_spec

# Env vars every Ray worker gets: telemetry off (a lost batch offline otherwise, DESIGN.md) and
# the test-only fault injection hooks of `distgan.loop`.
WORKER_ENV_PREFIXES = ("DISTGAN_", "MLFLOW_")
DEFAULT_STORAGE = "distgan_runs"


def quiet_worker_logs() -> None:
    """Ray worker setup hook: Ray's INFO line per report, checkpoint and restore stays out of the
    user's console (Train V2 logs reports from a logger named by file path, which its own
    LoggingConfig filter misses)."""
    from ray.train.v2._internal.execution import context as train_context

    for name in (
        train_context.__file__,
        "ray.train._internal.storage",
        "ray.train.v2._internal.execution.storage",
        "ray.tune.trainable.trainable",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def ray_runtime_env() -> dict:
    return {"env_vars": _worker_env(), "worker_process_setup_hook": "distgan.train.quiet_worker_logs"}


class RaySession:
    """`loop.Session` inside a Ray Train worker."""

    def __init__(self, progress_queue):
        import ray
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node_id = ray.get_runtime_context().get_node_id()
        self._queue = progress_queue

    def prepare_model(self, model):
        import ray.train.torch

        # BatchNorm buffers stay per-rank after init: syncing them on every forward costs a
        # collective and trips autograd's in-place checks in the two-optimizer step.
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})

    def latest_checkpoint(self) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        # A local directory of a (possibly remote) checkpoint; kept for the life of the worker.
        return Path(ckpt.to_directory())

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def data_shard(self):
        import ray.train

        try:
            return ray.train.get_dataset_shard("train")
        except Exception:  # no dataset given: built-in data
            return None

    def progress(self, line: str) -> None:
        if self._queue is not None:
            self._queue.put_nowait(line)


def train_loop_per_worker(config: dict) -> dict:
    # R1's double backward leaves D's last weight grad with transposed strides: DDP copies that
    # one small tensor into its bucket, and warns about it at every step otherwise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    spec = JobSpec.model_validate(config["spec"])
    # One torch thread per CPU the worker holds: Ray does not always set OMP_NUM_THREADS, and
    # torch's default (one per core) oversubscribes the machine and stalls gloo all-reduces.
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    info = DataInfo(**config["data_info"])
    return loop.run(spec, info, RaySession(config["progress"]), config["record_dir"], config["tracking"])


def preflight(spec: JobSpec) -> DataInfo:
    """Every check that needs neither Ray nor a cluster; InputError (exit 2) on failure."""
    info = data.inspect(spec.data)
    problem = models.check_compatible(spec.model, info.sample_shape)
    if problem:
        raise InputError(problem)
    net = features.choose(spec, info)
    if net:
        features.check(net, info.sample_shape, spec.metrics.feature_name)
    per_worker = spec.train.batch_size // spec.scaling.workers
    if info.num_rows is not None and info.num_rows // spec.scaling.workers < per_worker:
        raise InputError(
            f"{spec.data.name} has {info.num_rows} rows: {info.num_rows // spec.scaling.workers} per worker, fewer "
            f"than the per-worker batch {per_worker}; lower train.batch_size or scaling.workers"
        )
    return info


def _check_cluster(spec: JobSpec, address: str | None) -> None:
    """GPUs asked for where there are none: on this machine before Ray starts, on a cluster after joining."""
    import ray

    want = spec.scaling.workers if spec.scaling.gpu else 0
    if address is None:
        have = torch.cuda.device_count()
        where = "this machine"
    else:
        have = int(ray.cluster_resources().get("GPU", 0))
        where = f"the cluster at {address}"
    if want > have:
        raise InputError(
            f"scaling.gpu=true with {want} worker(s) needs {want} GPU(s); {where} has {have}. Drop --gpu or use a GPU cluster"
        )


def _check_resume(spec: JobSpec, run_dir: Path) -> None:
    """A reused run name must describe the same data and model, or its checkpoint cannot load."""
    previous = read_spec(run_dir / "distgan")
    if previous is None:
        return
    now = spec.model_dump(mode="json")
    for section in ("data", "model"):
        if previous.get(section) != now[section]:
            raise InputError(
                f"run {spec.train.name!r} in {run_dir.parent} was started with a different {section} section; "
                f"set another train.name to start a new run"
            )


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def _print_progress(queue, stop: threading.Event, echo) -> None:
    while not stop.is_set():
        try:
            echo(queue.get(timeout=0.5))
        except Exception:  # queue.Empty, or the queue actor already gone at shutdown
            pass


@dataclass
class Tracking:
    """What the user asked of MLflow for this run (None tracking_uri: MLflow's default resolution)."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "distgan"
    register: str | None = None  # registered model name
    generator: str = "ema"  # which generator to log: "ema" or "raw"

    def prepare(self) -> str | None:
        """The tracking URI, checked (server reachable, model name valid) before Ray starts; None when off."""
        if not self.enabled:
            return None
        tracking_lib.configure_env()  # before Ray copies the env to workers
        uri = tracking_lib.resolve_uri(self.tracking_uri)
        tracking_lib.check_reachable(uri)
        if self.register:
            registry.check_name(self.register)
        return uri


def train(spec: JobSpec, address: str | None = None, echo=print, tracking: Tracking | None = None) -> dict:
    """Run one training job to completion; returns the result document (see README, --json-out)."""
    tracking = tracking or Tracking()
    info = preflight(spec)
    if address is None:
        _check_cluster(spec, None)
    uri = tracking.prepare()
    storage = Path(spec.train.storage_path or DEFAULT_STORAGE).resolve()
    if spec.train.name is None:
        spec.train.name = f"{spec.data.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = storage / spec.train.name
    _check_resume(spec, run_dir)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import LoggingConfig
    from ray.util.queue import Queue

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, runtime_env=ray_runtime_env(), logging_level=logging.WARNING, configure_logging=True)
    try:
        if address is not None:
            _check_cluster(spec, address)
            if uri and tracking_lib.is_local(uri) and len([n for n in ray.nodes() if n["Alive"]]) > 1:
                raise InputError(
                    f"tracking URI {uri} is a local SQLite file, but the cluster at {address} has several nodes: "
                    f"start an `mlflow server` and pass --tracking-uri http://HOST:PORT"
                )
        net = features.choose(spec, info)
        if info.kind == "image" and net is None:
            echo(
                f"note: no feature network for {spec.data.name} data, so no image metrics (set metrics.feature_net; see README)"
            )
        run_id = None
        if uri:
            tags = {
                "workers": str(spec.scaling.workers),
                "device": "cuda" if spec.scaling.gpu else "cpu",
                "dataset": spec.data.name,
            }
            if info.kind == "image":
                tags["feature_net"] = features.network_name(net, spec.metrics.feature_name) if net else "none"
            run_id = tracking_lib.open_run(uri, tracking.experiment, spec, run_dir, tags)
        datasets = {"train": data.ray_dataset(spec.data, info)} if info.uses_ray_data else None
        progress = Queue(actor_options={"num_cpus": 0})
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "spec": spec.model_dump(mode="json"),
                "data_info": info.__dict__,
                "record_dir": str(run_dir / "distgan"),
                "tracking": {"uri": uri, "run_id": run_id} if run_id else None,
                "progress": progress,
            },
            scaling_config=ScalingConfig(
                num_workers=spec.scaling.workers,
                use_gpu=spec.scaling.gpu,
                resources_per_worker={"CPU": spec.scaling.cpus_per_worker} | ({"GPU": 1} if spec.scaling.gpu else {}),
                placement_strategy=spec.scaling.placement,
            ),
            torch_config=TorchConfig(backend="nccl" if spec.scaling.gpu else "gloo"),
            run_config=RunConfig(
                name=spec.train.name,
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=spec.train.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                logging_config=LoggingConfig(log_level="WARNING"),
                worker_runtime_env={"env_vars": _worker_env()},
            ),
            datasets=datasets,
        )
        stop = threading.Event()
        printer = threading.Thread(target=_print_progress, args=(progress, stop, echo), daemon=True)
        printer.start()
        t0 = time.perf_counter()
        try:
            result = trainer.fit()
            error = None
        except Exception as e:  # TrainingFailedError: retries exhausted
            result, error = None, e
        finally:
            time.sleep(0.6)  # let the printer drain the last lines
            stop.set()
            printer.join()
        wall = time.perf_counter() - t0
    finally:
        if started_ray:
            ray.shutdown()

    out = (result.return_value if result is not None else None) or {}
    checkpoint = result.checkpoint.path if result is not None and result.checkpoint else None
    status = out.get("status", "failed") if error is None else "failed"
    # NaN/Inf are not JSON: a diverged metric reads null
    metrics = {k: (v if math.isfinite(v) else None) for k, v in out.get("metrics", {}).items()}
    doc = {
        "status": status,
        "error": None
        if error is None
        else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
        "steps": out.get("steps", 0),
        "resumed_from": out.get("resumed_from", 0),
        "metrics": metrics,
        "checkpoint": checkpoint,
        "run_dir": str(run_dir),
        "name": spec.train.name,
        "mlflow_run_id": run_id,
        "tracking_uri": uri,
        "tracking_undelivered": out.get("tracking_undelivered", 0),
        "logged_model_uri": None,
        "model_uri": None,
        "champion": None,
        "workers": spec.scaling.workers,
        "wall_s": round(wall, 2),
        "ranks_in_sync": out.get("ranks_in_sync"),
        "param_digests": out.get("param_digests", []),
        "node_ids": out.get("node_ids", []),
    }
    if run_id:
        try:
            if status == "finished" and checkpoint:
                _log_and_register(doc, spec, info, uri, run_id, checkpoint, tracking)
            tracking_lib.close_run(uri, run_id, status)
        except Exception as e:  # the server went away at the very end: the training result stands
            doc["tracking_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            echo(
                f"warning: could not finish MLflow run {run_id} ({doc['tracking_error']}); the generator is in {checkpoint}"
            )
    return doc


def _log_and_register(
    doc: dict, spec: JobSpec, info: DataInfo, uri: str, run_id: str, checkpoint: str, tracking: Tracking
) -> None:
    """The final generator to MLflow and, when asked, to the registry under the champion rule."""
    generator = loop.checkpoint_generator(
        loop.read_checkpoint(checkpoint), spec.model, info.sample_shape, tracking.generator
    )
    meta = registry.generator_meta(spec.model, info, tracking.generator, doc["steps"])
    doc["logged_model_uri"] = registry.log_generator(uri, run_id, generator, meta)
    if tracking.register:
        quality = evaluation.headline(doc["metrics"])
        reg = registry.register(
            uri,
            doc["logged_model_uri"],
            tracking.register,
            info.kind,
            doc["metrics"],
            tags={"dataset": spec.data.name, "job": spec.train.name, "run_id": run_id, "generator": tracking.generator},
            description=f"{spec.model.arch} generator ({tracking.generator}) trained on {spec.data.name} for {doc['steps']} steps"
            + (f"; {quality}" if quality else ""),
        )
        doc["model_uri"], doc["champion"] = reg["model_uri"], reg["champion"]
