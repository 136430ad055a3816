"""`distgan train`: one training run, checked, run on Ray Train, recorded in MLflow, its generator
logged and (when asked) registered."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import zlib
from dataclasses import dataclass, field
from datetime import datetime

from distgan import storage
from distgan.commands import preflight, run_lock
from distgan.core import checkpoint
from distgan.data import DataInfo
from distgan.errors import InputError
from distgan.runtime import ray_data, ray_train
from distgan.spec.job import JobSpec
from distgan.tracking import registry
from distgan.tracking import run as tracking_run
from distgan.tracking.client import is_local
from distgan.tracking.record import RecordTarget
from distgan.tracking.run import TrackingOptions


@dataclass
class TrainResult:
    """The outcome of a training run; `to_json()` is the `--json-out` document (see README)."""

    status: str  # finished | diverged | failed | killed
    name: str
    run_dir: str
    workers: int
    steps: int = 0
    resumed_from: int = 0
    precision: str | None = None  # what the step ran in: fp32 | bf16 | fp16 (train.precision=auto resolved)
    metrics: dict = field(default_factory=dict)
    checkpoint: str | None = None
    error: str | None = None
    wall_s: float = 0.0
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    tracking_undelivered: int = 0
    tracking_error: str | None = None
    logged_model_uri: str | None = None
    model_uri: str | None = None
    champion: bool | None = None
    health: str | list | None = None  # "ok", or the health signals that fired: [{name, step, message}]
    ranks_in_sync: bool | None = None
    param_digests: list = field(default_factory=list)
    node_ids: list = field(default_factory=list)
    interrupted_by: str | None = None  # SIGINT | SIGTERM: what stopped a killed run

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        if doc["tracking_error"] is None:
            del doc["tracking_error"]
        return doc


def train(
    spec: JobSpec, address: str | None = None, echo=print, tracking: TrackingOptions | None = None
) -> TrainResult:
    """Run one training job to completion (resuming a run of the same `train.name`)."""
    tracking = tracking or TrackingOptions()
    info = preflight.check_job(spec)
    if address is None:
        ray_train.check_cluster_gpus(spec, None)
    uri = tracking.prepare()
    run_dir = _run_dir(spec)
    storage.check_storage(run_dir)
    preflight.check_resume(spec, run_dir)
    with (
        run_lock.hold(run_dir, spec.train.name),
        tracking_run.store_opening(uri) as store_open,  # while Ray starts
        ray_train.ray_session(address),
    ):
        if address is not None:
            _check_joined_cluster(spec, address, uri)
        if info.kind == "image" and preflight.feature_net_name(spec, info) is None:
            echo(
                f"note: no feature network for {spec.data.name} data, so no image metrics (set "
                "metrics.feature_net; see README)"
            )
        store_open()
        run_id = (
            tracking_run.open_run(uri, tracking.experiment, spec, run_dir, _run_tags(spec, info), info) if uri else None
        )
        target = RecordTarget(storage.join(run_dir, "distgan"), uri, run_id, tracking.system_metrics)
        datasets = ray_data.datasets(spec.data, info, _resume_salt(run_dir))
        preload = tracking_run.preload_finishing_imports() if run_id else None
        with _stop_on_signals(echo) as stop:
            fit, error, wall = ray_train.fit_with_progress(
                spec, info, target, run_dir.rsplit("/", 1)[0], echo, datasets, stop.event
            )
        result = _result(spec, run_dir, fit, error, wall, uri, run_id)
        result.interrupted_by = stop.signal_name if result.status == "killed" else None
        if run_id:  # still under the run's lock: a second run of this name would reopen this MLflow run
            _finish_tracking(result, spec, info, tracking, echo)
            preload.join()  # (a run that ended at once) no import left running as the process exits
    return result


@dataclass
class _Stop:
    event: threading.Event = field(default_factory=threading.Event)
    signal_name: str | None = None


@contextlib.contextmanager
def _stop_on_signals(echo):
    """Ctrl-C or SIGTERM asks the run to checkpoint and stop (status killed); a second one ends the
    process at once, as Ctrl-C twice does for Ray's and PyTorch's users. Main thread only (Python's rule)."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.event.is_set():
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        stop.signal_name = signal.Signals(signum).name
        stop.event.set()
        echo(f"{stop.signal_name}: checkpointing and stopping (send it again to stop at once)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _run_dir(spec: JobSpec) -> str:
    """`<storage>/<name>` (an absolute local path or a URI); a run without a name is named after its data and
    the time."""
    if spec.train.name is None:
        spec.train.name = f"{spec.data.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return storage.join(storage.absolute(spec.train.storage_path or ray_train.DEFAULT_STORAGE), spec.train.name)


def _resume_salt(run_dir: str) -> int:
    """Differs at every resume of a run (its newest checkpoint's name, which holds the time): a
    resumed run reads its data in new orders, not the first attempt's again."""
    latest = checkpoint.latest(run_dir)
    return zlib.crc32(latest.rsplit("/", 1)[-1].encode()) if latest else 0


def _check_joined_cluster(spec: JobSpec, address: str, uri: str | None) -> None:
    ray_train.check_cluster_gpus(spec, address)
    if uri and is_local(uri) and ray_train.alive_nodes() > 1:
        raise InputError(
            f"tracking URI {uri} is a local SQLite file, but the cluster at {address} has several nodes: "
            f"start an `mlflow server` and pass --tracking-uri http://HOST:PORT"
        )


def _run_tags(spec: JobSpec, info: DataInfo) -> dict[str, str]:
    tags = {
        "workers": str(spec.scaling.workers),
        "device": "cuda" if spec.scaling.gpu else "cpu",
        "dataset": spec.data.name,
    }
    if info.kind == "image":
        tags["feature_net"] = preflight.feature_net_name(spec, info) or "none"
    return tags


def _result(
    spec: JobSpec, run_dir: str, fit, error: Exception | None, wall: float, uri: str | None, run_id: str | None
) -> TrainResult:
    out = (fit.return_value if fit is not None else None) or {}
    return TrainResult(
        status=out.get("status", "failed") if error is None else "failed",
        error=out.get("error") if error is None else ray_train.failure_line(error),
        name=spec.train.name,
        run_dir=str(run_dir),
        workers=spec.scaling.workers,
        steps=out.get("steps", 0),
        resumed_from=out.get("resumed_from", 0),
        precision=out.get("precision"),
        # NaN/Inf are not JSON: a diverged metric reads null
        metrics={k: (v if math.isfinite(v) else None) for k, v in out.get("metrics", {}).items()},
        checkpoint=storage.uri(fit.checkpoint.filesystem, fit.checkpoint.path) if fit and fit.checkpoint else None,
        wall_s=round(wall, 2),
        mlflow_run_id=run_id,
        tracking_uri=uri,
        tracking_undelivered=out.get("tracking_undelivered", 0),
        health=out.get("health"),
        ranks_in_sync=out.get("ranks_in_sync"),
        param_digests=out.get("param_digests", []),
        node_ids=out.get("node_ids", []),
    )


def _finish_tracking(result: TrainResult, spec: JobSpec, info: DataInfo, tracking: TrackingOptions, echo) -> None:
    """The final generator to MLflow (and the registry, when asked), then the run's curves and status.
    A tracking server gone at the very end does not undo the training: the result says so, and
    `<run_dir>/distgan/tracking_pending.json` keeps what `distgan track sync` needs to finish the MLflow
    run later (written too when records went undelivered, or to replace an earlier attempt's)."""
    meta = registry.generator_meta(spec.model, info, tracking.generator, result.steps)
    try:
        published = tracking_run.finish_training_run(
            result.tracking_uri, result.mlflow_run_id, result.to_json(), meta, tracking.register
        )
        result.logged_model_uri, result.model_uri, result.champion = (
            published["logged_model_uri"],
            published["model_uri"],
            published["champion"],
        )
    except Exception as e:
        result.tracking_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    pending = storage.join(result.run_dir, "distgan", tracking_run.PENDING_FILE)
    if result.tracking_error or result.tracking_undelivered or storage.read_optional(pending) is not None:
        doc = {
            "result": result.to_json(),
            "tracking": {
                "register": tracking.register,
                "generator": tracking.generator,
                "experiment": tracking.experiment,
            },
            "generator_meta": meta,
        }
        storage.write(pending, json.dumps(doc, indent=1).encode())
        if result.tracking_error:
            what = (
                f"could not finish MLflow run {result.mlflow_run_id} ({result.tracking_error}); the generator is "
                f"in {result.checkpoint}"
            )
        elif result.tracking_undelivered:
            what = f"{result.tracking_undelivered} records did not reach MLflow run {result.mlflow_run_id}"
        else:
            what = f"MLflow run {result.mlflow_run_id} still lacks records an earlier attempt could not send"
        echo(f"warning: {what}; when the server is back: distgan track sync {result.run_dir}")
