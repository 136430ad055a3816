"""The one place distgan starts Ray and builds a Ray Train `TorchTrainer`, for `distgan train` and
for the multi-worker trials of `distgan search` alike.

Each Train worker runs `distgan.core.loop.run` through `RaySession`, with G and D under DDP. Rank 0
checkpoints through `ray.train.report`; `FailureConfig` restarts the worker group from the latest
checkpoint, and re-running the same run name resumes it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import threading
import time
import warnings

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distgan import storage
from distgan.core import loop
from distgan.data import DataInfo
from distgan.errors import InputError
from distgan.runtime import ray_data
from distgan.spec.job import JobSpec

# Env vars every Ray worker gets: MLflow's settings (telemetry off: a lost batch offline otherwise)
# and the test-only fault injection hooks of `distgan.core.loop`.
WORKER_ENV_PREFIXES = ("DISTGAN_", "MLFLOW_")
DEFAULT_STORAGE = "distgan_runs"
STOP_ASK_INTERVAL_S = 0.5  # how often rank 0 asks the driver whether Ctrl-C or SIGTERM came
# Ray Train's controller learns that the workers finished by polling them, every 2 s unless this
# (one of the variables Ray Train propagates from the driver) says otherwise: 0.5 s takes ~2 s off
# the end of every run, for one small poll of each worker twice a second.
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def _train_report_logger() -> str | None:
    """Train V2 logs every report from a logger named by its module's file path, which its own
    LoggingConfig filter misses. The module is internal to Ray: found by name, never imported, and
    where it has moved the INFO lines simply stay."""
    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    return spec.origin if spec else None


def quiet_worker_logs() -> None:
    """Ray worker setup hook: Ray's INFO line per report, checkpoint and restore stays out of the user's console."""
    names = ["ray.train._internal.storage", "ray.train.v2._internal.execution.storage", "ray.tune.trainable.trainable"]
    for name in [_train_report_logger(), *names]:
        if name:
            logging.getLogger(name).setLevel(logging.WARNING)


# worker_env() as it was when this process started a local Ray (None otherwise): that Ray's raylet is
# a child of this process, so its workers inherit these values with no runtime env.
_env_of_local_ray: dict[str, str] | None = None


@contextlib.contextmanager
def ray_session(address: str | None):
    """Ray for the block: joins `address` (or starts a local Ray in-process) unless this process is
    already connected; shuts down only what it started."""
    global _env_of_local_ray
    started = not ray.is_initialized()
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, "0.5")  # read when a trainer starts its controller
    if started:
        runtime_env = None
        if address is None:
            # No runtime env: Ray then hands actors the worker processes it prestarts, where one with a
            # runtime env waits for a fresh process each (about 5 s of a short run's start on 2 cores).
            _env_of_local_ray = worker_env()
            os.environ.update(_env_of_local_ray)  # its defaults too: the raylet copies this environment
        else:
            env = {k: v for k, v in worker_env().items() if k not in _job_env_vars()}
            runtime_env = {"env_vars": env, "worker_process_setup_hook": "distgan.runtime.ray_train.quiet_worker_logs"}
        # Ray's own console lines (its token-auth notice, worker logs, internal errors of its helper
        # actors) only with -v: distgan prints what the run does, and an ERROR line reads as a failure.
        verbose = logging.getLogger("distgan").isEnabledFor(logging.DEBUG)
        ray.init(
            address=address,
            runtime_env=runtime_env,
            logging_level=logging.INFO if verbose else logging.ERROR,
            configure_logging=True,
            log_to_driver=verbose,
        )
    try:
        yield
    finally:
        if started:
            ray.shutdown()
            _env_of_local_ray = None


def worker_runtime_env() -> dict | None:
    """The Train workers' runtime env: distgan's env vars, unless they would inherit exactly these."""
    env = worker_env()
    return None if env == _env_of_local_ray else {"env_vars": env}


def _job_env_vars() -> dict[str, str]:
    """The env vars of the Ray job this driver runs in (`ray job submit --runtime-env-json ...`),
    which already reach every worker. Ray refuses a driver that declares any of them again ("Failed to
    merge the Job's runtime env"), so `ray_session` leaves those out of its own."""
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray for a job's driver
    if not job_config:
        return {}
    return (json.loads(job_config).get("runtime_env") or {}).get("env_vars") or {}


def alive_nodes() -> int:
    return len([n for n in ray.nodes() if n["Alive"]])


def check_cluster_gpus(spec: JobSpec, address: str | None) -> None:
    """GPUs asked for where there are none: on this machine before Ray starts, on a cluster after joining."""
    want = spec.scaling.workers if spec.scaling.gpu else 0
    if address is None:
        have, where = torch.cuda.device_count(), "this machine"
    else:
        have, where = int(ray.cluster_resources().get("GPU", 0)), f"the cluster at {address}"
    if want > have:
        raise InputError(
            f"scaling.gpu=true with {want} worker(s) needs {want} GPU(s); {where} has {have}. Drop --gpu or "
            "use a GPU cluster"
        )


class RaySession:
    """`loop.Session` inside a Ray Train worker."""

    def __init__(self, progress_queue, uses_ray_data: bool, stop_queue=None):
        self.uses_ray_data = uses_ray_data  # the trainer was given a "train" dataset (Parquet, image folder)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node_id = ray.get_runtime_context().get_node_id()
        self._queue, self._stop = progress_queue, stop_queue
        self._stop_asked = None  # rank 0's pending "is a stop queued?" call to the driver's queue actor
        self._stop_asked_at = 0.0

    def prepare_model(self, model):
        # BatchNorm buffers stay per-rank after init: syncing them on every forward costs a
        # collective and trips autograd's in-place checks in the two-optimizer step.
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})

    def latest_checkpoint(self) -> str | None:
        ckpt = ray.train.get_checkpoint()  # the newest reported; read (and verified) where it is stored
        return storage.uri(ckpt.filesystem, ckpt.path) if ckpt is not None else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def data_shard(self):
        """This worker's shard of the "train" dataset; None for built-in data (no dataset given).
        A failure to get a shard that was given is raised here, where it happened."""
        return ray.train.get_dataset_shard("train") if self.uses_ray_data else None

    def progress(self, line: str) -> None:
        if self._queue is not None:
            self._queue.put_nowait(line)

    def stop_requested(self) -> bool:
        """Rank 0 asks the driver's stop queue at most every `STOP_ASK_INTERVAL_S`, without waiting for the
        answer: each call reads the answer to the previous ask if it has arrived and, when the interval has
        passed, asks again. A stop is seen within about twice that interval. (Asking at every check, every
        10 steps, cost the default job ~0.3 ms of each 3.5 ms step on 2 cores.) The loop shares the answer
        with all ranks."""
        if self.rank != 0 or self._stop is None:
            return False
        if self._stop_asked is not None and ray.wait([self._stop_asked], timeout=0)[0]:
            if ray.get(self._stop_asked) > 0:
                return True
            self._stop_asked = None
        if self._stop_asked is None and time.monotonic() - self._stop_asked_at >= STOP_ASK_INTERVAL_S:
            self._stop_asked, self._stop_asked_at = self._stop.actor.qsize.remote(), time.monotonic()
        return False


def train_loop_per_worker(config: dict) -> dict:
    # R1's double backward leaves D's last weight grad with transposed strides: DDP copies that
    # one small tensor into its bucket, and warns about it at every step otherwise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    quiet_worker_logs()  # also where no runtime env ran it (a local Ray)
    spec = JobSpec.model_validate(config["spec"])
    # One torch thread per CPU the worker holds: Ray does not always set OMP_NUM_THREADS, and
    # torch's default (one per core) oversubscribes the machine and stalls gloo all-reduces.
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    info = DataInfo(**config["data_info"])
    session = RaySession(config["progress"], info.uses_ray_data, config.get("stop"))
    # The record target is opaque here (it comes from the tracking layer): rank 0 opens it.
    record = config["record"].open(session.progress) if session.rank == 0 and config["record"] else None
    return loop.run(spec, info, session, record)


def build_torch_trainer(
    spec: JobSpec,
    info: DataInfo,
    record,
    storage_path: str,
    progress=None,
    datasets=None,
    callbacks=(),
    keep_best: tuple[str, str] | None = None,
    stop=None,
) -> TorchTrainer:
    """The TorchTrainer of one training run: `spec.scaling` workers running the loop, checkpoints
    (the two newest, or with `keep_best=(metric, "max"|"min")` the two best by that metric, and
    always the newest) and worker-group restarts (`train.max_failures`) under `storage_path/<name>`.
    `record`: where rank 0 records (a `RecordTarget`), or None; `stop`: a Ray `Queue` whose first item
    asks the workers to checkpoint and stop (status killed)."""
    s = spec.scaling
    metric, order = keep_best or (None, "max")
    cpus = (
        ray_data.worker_cpus(s.cpus_per_worker, s.workers, ray_data.cluster_cpus()) if datasets else s.cpus_per_worker
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "data_info": info.__dict__,
            "record": record,
            "progress": progress,
            "stop": stop,
        },
        scaling_config=ScalingConfig(
            num_workers=s.workers,
            use_gpu=s.gpu,
            resources_per_worker={"CPU": cpus} | ({"GPU": 1} if s.gpu else {}),
            placement_strategy=s.placement,
        ),
        run_config=RunConfig(
            name=spec.train.name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=metric, checkpoint_score_order=order
            ),
            logging_config=LoggingConfig(log_level="WARNING"),
            worker_runtime_env=worker_runtime_env(),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
    )


def fit_with_progress(
    spec: JobSpec, info: DataInfo, record, storage_path: str, echo, datasets=None, stop: threading.Event | None = None
):
    """Fit the run's TorchTrainer while rank 0's progress lines are echoed here. `stop`, once set (by a
    signal handler of the caller), reaches the workers, which checkpoint and end with status killed.
    Returns (Ray's Result or None, the exception that ended it or None, wall seconds).

    The fit runs in a thread: Ray Train takes over SIGINT when fit() runs in the main thread (and
    aborts the run without a checkpoint), so the main thread, free for the caller's handlers, echoes."""
    # On the driver's node: anywhere else, losing that node would fail every restarted worker group
    # (each calls them) until train.max_failures is spent.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    stop_queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here}) if stop is not None else None
    trainer = build_torch_trainer(spec, info, record, storage_path, progress, datasets, stop=stop_queue)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as e:  # TrainingFailedError: retries exhausted
            outcome["error"] = e

    fitting = threading.Thread(target=fit, daemon=True)
    t0 = time.perf_counter()
    fitting.start()
    forwarded = False
    while fitting.is_alive() or not progress.empty():
        if stop is not None and stop.is_set() and not forwarded:
            stop_queue.put_nowait(True)
            forwarded = True
        with contextlib.suppress(Exception):  # queue.Empty
            echo(progress.get(timeout=0.5))
    return outcome.get("result"), outcome.get("error"), time.perf_counter() - t0


def failure_line(error: Exception) -> str:
    """One line saying why a fit failed: the first failed worker's own exception (its last line: a
    full disk reads `OSError: [Errno 28] No space left on device`), not Ray's wrapper around it."""
    failures = getattr(error, "worker_failures", None)  # WorkerGroupError: rank -> the worker's exception
    if failures:
        rank, cause = min(failures.items())
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        return f"{type(error).__name__}: rank {rank}: {lines[-1] if lines else type(cause).__name__}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
