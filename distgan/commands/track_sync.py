"""`distgan track sync RUN_DIR`: finish the MLflow run of a training run whose tracking server was away
at its end. `distgan train` then leaves `<run_dir>/distgan/tracking_pending.json`; sync sends what the
run lacks (metric points, sample images), logs and registers the generator, appends the closing note
and sets the status, each thing once (run it twice: the second sends nothing), then removes the file."""

from __future__ import annotations

import json

from distgan import storage
from distgan.commands import run_lock
from distgan.errors import InputError
from distgan.tracking import record
from distgan.tracking import run as tracking_run
from distgan.tracking.client import check_reachable, configure_env, resolve_uri


def sync(run_dir: str, tracking_uri: str | None = None, echo=print) -> dict:
    """Finish the run's MLflow run from its record. Returns {"status", "run_dir", "mlflow_run_id",
    "tracking_uri", ...}; status "synced": what was sent ("metric_points", "images"), the generator
    ("logged_model_uri"; "logged" False: it was there already), its version ("model_uri", "champion";
    "registered" False: it was there already); "nothing": no pending file; "unreachable" (the server still
    away) or "failed" (gone midway): "error", the pending file kept for the next try. InputError when
    `run_dir` is no tracked run, or `tracking_uri` is not the run's."""
    run_dir = storage.absolute(run_dir)
    record_dir = storage.join(run_dir, "distgan")
    saved = storage.read_optional(storage.join(record_dir, tracking_run.SAVED_FILE))
    if saved is None:
        raise InputError(
            f"{run_dir} is not a tracked run: it has no distgan/{tracking_run.SAVED_FILE}; give the directory "
            "`distgan train` wrote (<train.storage_path>/<train.name>) of a run trained with MLflow tracking"
        )
    saved = json.loads(saved)
    uri, run_id = saved["tracking_uri"], saved["run_id"]
    if tracking_uri is not None and resolve_uri(tracking_uri) != uri:
        raise InputError(
            f"--tracking-uri {tracking_uri} is not this run's tracking URI {uri}: its MLflow run {run_id} is there "
            "(leave --tracking-uri out)"
        )
    pending_path = storage.join(record_dir, tracking_run.PENDING_FILE)
    out = {"status": "nothing", "run_dir": run_dir, "mlflow_run_id": run_id, "tracking_uri": uri}
    if storage.read_optional(pending_path) is None:
        return out
    configure_env()
    try:
        check_reachable(uri)
    except InputError as e:  # the server still away: try again later (exit 1, not bad input)
        return {**out, "status": "unreachable", "error": str(e)}
    with run_lock.hold(run_dir, run_dir.rsplit("/", 1)[-1]):  # not while a `distgan train` of the run goes on
        text = storage.read_optional(pending_path)
        if text is None:  # a sync that held the lock before this one did it
            return out
        pending = json.loads(text)
        echo(f"syncing MLflow run {run_id} at {uri} with {run_dir}")
        try:
            sent = record.send_missing(uri, run_id, record_dir)
            published = tracking_run.finish_training_run(
                uri, run_id, pending["result"], pending["generator_meta"], pending["tracking"]["register"]
            )
        except Exception as e:  # the server gone again, midway: what was sent stays sent, the rest next time
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return {**out, "status": "failed", "error": error}
        storage.remove(pending_path)
    result = pending["result"]
    return {**out, "status": "synced", "run_status": result["status"], "steps": result["steps"], **sent, **published}
