"""Where a run's record goes: MLflow (one run per training run) and the run directory.

The driver opens the MLflow run (`open_run`: params, spec, tags) and closes it (`close_run`:
curves, status). Rank 0 writes through `RunRecord`: per-step metrics and sample images, to
`<run_dir>/distgan/` at once and to MLflow from a background thread, so a slow or absent
tracking server never stalls training. What the server misses while it is away is kept in memory
and sent in order when it is back; at the end of the run rank 0 waits up to
`DISTGAN_TRACKING_FLUSH_S` seconds (default 300) for it.

A step is recorded once: after a resume, steps already in the record are not written again, so
metric series have neither gaps nor duplicates.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

from distgan.errors import InputError

# Fail fast instead of MLflow's default ~4 minutes of retries per call: the sender retries itself.
MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
FLUSH_ENV = "DISTGAN_TRACKING_FLUSH_S"


def configure_env() -> None:
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


def resolve_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's local SQLite store in the current
    directory; SQLite paths made absolute (Ray workers run in other directories)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if not path.startswith("/"):
            path = str(Path(path).resolve())
        if not Path(path).parent.is_dir():
            raise InputError(f"tracking URI {uri}: directory {Path(path).parent} does not exist")
        return f"sqlite:///{path}"
    if scheme in ("http", "https", "databricks"):
        return uri.rstrip("/")
    raise InputError(
        f"tracking URI {uri!r} is not supported: use sqlite:///PATH/mlflow.db or http://HOST:PORT of an `mlflow server`"
    )


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An HTTP tracking server must answer now, or the user hears so in seconds (exit 2)."""
    if not uri.startswith("http"):
        return
    import requests

    try:
        requests.get(f"{uri}/health", timeout=timeout).raise_for_status()
    except Exception as e:
        raise InputError(
            f"MLflow tracking server {uri} is not reachable ({type(e).__name__}); start it "
            f"(`mlflow server --host 127.0.0.1 --port PORT ...`) or pass another --tracking-uri"
        ) from None


def mlflow_client(uri: str):
    """An MlflowClient for tracking and registry at `uri` (MLflow's settings for distgan applied)."""
    from mlflow.tracking import MlflowClient

    configure_env()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def fluent_uri(uri: str):
    """MLflow's fluent API (log_model, register_model) pointed at `uri` for the block only.
    mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, where Ray would copy
    it to the workers of a later run in this process: restore what the caller had."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def open_run(uri: str, experiment: str, spec, run_dir: Path, tags: dict[str, str]) -> str:
    """The MLflow run of this training run: the one recorded in `run_dir` (a resume), or a new one."""
    from mlflow.entities import Param, RunStatus

    from distgan import __version__
    from distgan.config import flatten

    client = mlflow_client(uri)
    saved = run_dir / "distgan" / "mlflow.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous["tracking_uri"] == uri:
            client.update_run(previous["run_id"], status=RunStatus.to_string(RunStatus.RUNNING))
            return previous["run_id"]
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    all_tags = {"distgan.version": __version__, **tags}
    if commit := _git_commit():
        all_tags["git.commit"] = commit
    run = client.create_run(exp_id, run_name=spec.train.name, tags=all_tags)
    run_id = run.info.run_id
    params = [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in flatten(spec).items()]
    client.log_batch(run_id, params=params)
    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment_id": exp_id}))
    return run_id


def close_run(uri: str, run_id: str, status: str) -> None:
    """Loss and quality curves from the run's metric history, then the final status."""
    from PIL import Image

    from distgan import plots

    from distgan.metrics import is_quality

    client = mlflow_client(uri)
    quality = sorted(k for k in client.get_run(run_id).data.metrics if is_quality(k))  # mixture or image metrics
    for name, keys in (("losses", ["loss_d", "loss_g"]), ("quality", quality)):
        series = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
        series = {k: sorted(v) for k, v in series.items() if v}
        if series:
            client.log_image(run_id, Image.open(io.BytesIO(plots.curves_png(series, name))), f"curves/{name}.png")
    client.set_terminated(run_id, {"finished": "FINISHED", "diverged": "FAILED"}.get(status, "FAILED"))


class _Sender(threading.Thread):
    """Sends records to MLflow in order; while the server is away, holds them and retries."""

    def __init__(self, uri: str, run_id: str, warn):
        super().__init__(daemon=True, name="distgan-mlflow-sender")
        self.uri, self.run_id, self.warn = uri, run_id, warn
        self.pending: queue.Queue = queue.Queue()
        self.delivered, self.last_step = 0, 0

    def put(self, kind: str, payload) -> None:
        self.pending.put((kind, payload))

    def _send(self, client, kind: str, payload) -> None:
        from mlflow.entities import Metric

        if kind == "metrics":
            step, values, ts = payload
            if step <= self.last_step:  # recorded before a restart: a step is recorded once
                return
            self.last_step = step
            client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])
        else:  # "artifact": (local file, artifact dir)
            client.log_artifact(self.run_id, *payload)

    def run(self) -> None:
        client = None
        while True:
            item = self.pending.get()
            if item is None:
                return
            down_since = None
            while True:
                try:
                    if client is None:  # first contact: what an earlier attempt of this run already recorded
                        fresh = mlflow_client(self.uri)
                        self.last_step = max(
                            (m.step for m in fresh.get_metric_history(self.run_id, "loss_d")), default=0
                        )
                        client = fresh
                    self._send(client, *item)
                    break
                except Exception as e:
                    if down_since is None:
                        down_since = time.monotonic()
                        self.warn(
                            f"warning: MLflow at {self.uri} unreachable ({type(e).__name__}); training goes on, records are held and sent when it is back"
                        )
                    time.sleep(2.0)
            if down_since is not None:
                self.warn(
                    f"MLflow at {self.uri} is back after {time.monotonic() - down_since:.0f}s; sending held records"
                )
            self.delivered += 1

    def close(self, timeout: float) -> int:
        """Wait for the queue to drain; the number of records still undelivered."""
        self.pending.put(None)
        self.join(timeout)
        return (
            self.pending.qsize() if self.is_alive() else 0
        )  # held records (the sentinel stands for the one in flight)


class RunRecord:
    """Rank 0's writer: `<dir>/metrics.jsonl`, `<dir>/images/` and, when given, the MLflow run."""

    def __init__(self, run_dir: str | Path, tracking: dict | None = None, warn=print):
        self.dir = Path(run_dir)
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.last_local_step = max((r["step"] for r in self.metric_history()), default=0)
        self.sender = None
        if tracking:  # everything MLflow (import, client, history) happens on the sender's thread
            self.sender = _Sender(tracking["uri"], tracking["run_id"], warn)
            self.sender.start()

    def log_spec(self, spec: dict) -> None:
        (self.dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step > self.last_local_step:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            self.last_local_step = step
        if self.sender:
            self.sender.put("metrics", (step, dict(metrics), int(time.time() * 1000)))

    def log_image(self, png: bytes, name: str) -> None:
        path = self.dir / "images" / name
        path.write_bytes(png)
        if self.sender:
            self.sender.put("artifact", (str(path), "samples"))

    def metric_history(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def close(self) -> int:
        """Flush to MLflow (bounded wait); how many records could not be delivered."""
        if not self.sender:
            return 0
        return self.sender.close(float(os.environ.get(FLUSH_ENV, "300")))


def read_spec(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "spec.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None
