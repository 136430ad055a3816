"""Rank 0's record of a run: per-step metrics and sample images, to `<run_dir>/distgan/` at once and
to MLflow from a background thread, so a slow or absent tracking server never stalls training.
What the server misses while it is away (no connection, or a 5xx/429 answer) is kept in memory and
sent in order when it is back; at the end of the run rank 0 waits up to `DISTGAN_TRACKING_FLUSH_S`
seconds (default 300) for it. A record the server refuses for good (any other 4xx: an invalid
key, a deleted run) is dropped with a warning and counted, so it never holds the records after it.

After a resume from the checkpoint of step S, `metrics.jsonl` is cut back to steps <= S
(`truncate_after`) and the replayed steps are written again: it holds the trajectory that was
trained, each step once. MLflow cannot delete metric points, so there a step is recorded once:
replayed steps keep the values the dead attempt sent, and series have neither gaps nor duplicates.

What the server never got (it was away past the end of the run) `send_missing` sends later, each
metric point and image once (`distgan track sync`).

A record in object storage (`s3://...`: the run's `train.storage_path`) is written to a local staging
directory and each file is uploaded whole as soon as it changes, so the record in storage is never
behind the run's checkpoints and a resume on another machine continues it.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import yaml

from distgan import storage
from distgan.tracking.client import mlflow_client

FLUSH_ENV = "DISTGAN_TRACKING_FLUSH_S"
IMAGE_KEY = "samples"  # the sample grids' key in MLflow (the run's Artifacts -> images, with a step slider)
LOCAL_IMAGE = re.compile(r"^samples_(\d+)\.png$")  # <record>/images/samples_0000100.png: step 100
# MLflow's file of a step-aware image: images/samples+step+100+timestamp+...png (before MLflow 3.x: '%')
MLFLOW_IMAGE = re.compile(rf"^{IMAGE_KEY}[+%]step[+%](\d+)[+%].*\.png$")
BATCH = 1000  # metric points per log_batch: MLflow's limit
SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's default is 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins


@dataclass(frozen=True)
class RecordTarget:
    """Where a run's record goes; travels to the Ray worker, where rank 0 `open`s it."""

    dir: str  # a local directory or a URI
    tracking_uri: str | None = None
    run_id: str | None = None
    system_metrics: bool = False  # MLflow's system metrics (CPU, memory, disk, network, GPU) of rank 0's node

    def open(self, warn=print) -> RunRecord:
        mlflow_run = {"uri": self.tracking_uri, "run_id": self.run_id} if self.run_id else None
        return RunRecord(self.dir, mlflow_run, warn, self.system_metrics)


class _Sender(threading.Thread):
    """Sends records to MLflow in order; while the server is away, holds them and retries."""

    def __init__(self, uri: str, run_id: str, warn):
        super().__init__(daemon=True, name="distgan-mlflow-sender")
        self.uri, self.run_id, self.warn = uri, run_id, warn
        self.pending: queue.Queue = queue.Queue()
        self.delivered, self.dropped, self.last_step = 0, 0, 0
        self.recorded_before = 0  # the last step an earlier attempt of this run recorded
        self.away = False  # the server is not answering (records are held)

    def put(self, kind: str, payload) -> None:
        self.pending.put((kind, payload))

    def _send(self, client, kind: str, payload) -> None:
        from mlflow.entities import Metric

        if kind == "metrics":
            step, values, ts = payload
            if step <= self.last_step:  # recorded before a restart: a step is recorded once
                return
            client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])
            self.last_step = step  # after the server took it: a failed send is retried, not skipped
        elif kind == "image":  # (local PNG, step): MLflow's step-aware image, under one key
            path, step = payload
            if step <= self.recorded_before:
                return
            from PIL import Image

            with Image.open(path) as image:
                client.log_image(self.run_id, image.convert("RGB"), key=IMAGE_KEY, step=step)
        else:  # "artifact": (local file, artifact dir)
            client.log_artifact(self.run_id, *payload)

    def run(self) -> None:
        client = None
        while True:
            item = self.pending.get()
            if item is None:
                return
            down_since, refused = None, False
            while True:
                try:
                    if client is None:  # first contact: what an earlier attempt of this run already recorded
                        fresh = mlflow_client(self.uri)
                        self.last_step = max(
                            (m.step for m in fresh.get_metric_history(self.run_id, "loss_d")), default=0
                        )
                        self.recorded_before = self.last_step
                        client = fresh
                    self._send(client, *item)
                    break
                except Exception as e:
                    if not _transient(e):  # refused for good: retrying would hold every later record
                        self.dropped += 1
                        if self.dropped <= 10 or self.dropped % 100 == 0:  # a deleted run refuses them all
                            self.warn(
                                f"warning: MLflow at {self.uri} refused a {item[0]} record ({_describe(e)}); "
                                f"dropped it ({self.dropped} dropped so far), sending the rest"
                            )
                        refused = True
                        break
                    if down_since is None:
                        down_since, self.away = time.monotonic(), True
                        self.warn(
                            f"warning: MLflow at {self.uri} unreachable ({type(e).__name__}); training goes "
                            "on, records are held and sent when it is back"
                        )
                    time.sleep(2.0)
            if down_since is not None:
                self.away = False
                self.warn(
                    f"MLflow at {self.uri} is back after {time.monotonic() - down_since:.0f}s; sending held records"
                )
            self.delivered += 0 if refused else 1
            self.pending.task_done()

    def flush(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until every record put so far was sent; not while the server is away."""
        with self.pending.all_tasks_done:
            self.pending.all_tasks_done.wait_for(lambda: self.away or not self.pending.unfinished_tasks, timeout)

    def close(self, timeout: float) -> int:
        """Wait for the queue to drain; the number of records still undelivered."""
        self.pending.put(None)
        self.join(timeout)
        return (
            self.pending.qsize() if self.is_alive() else 0
        )  # held records (the sentinel stands for the one in flight)


def _transient(e: Exception) -> bool:
    """Worth retrying: no answer (connection errors, timeouts: MLflow reports those as 500), a 5xx,
    or 429 (rate limited). Any other 4xx is the server refusing this record for good."""
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return True  # requests/OS errors: the server or the network is away
    status = e.get_http_status_code()
    return status >= 500 or status == 429


def _describe(e: Exception) -> str:
    return f"{getattr(e, 'error_code', type(e).__name__)}: {str(e).splitlines()[0][:300]}"


class RunRecord:
    """Rank 0's writer: `<dir>/metrics.jsonl`, `<dir>/images/` and, when given, the MLflow run.
    `run_dir` in object storage: written here in a staging directory (`self.dir`) and uploaded."""

    def __init__(self, run_dir: str | Path, tracking: dict | None = None, warn=print, system_metrics: bool = False):
        self.location = str(run_dir)
        self.remote = storage.is_remote(self.location)
        # object storage: resolved once (each upload would otherwise make a filesystem and find credentials)
        self.fs, self.remote_path = storage.resolve(self.location) if self.remote else (None, None)
        self.dir = Path(tempfile.mkdtemp(prefix="distgan-record-")) if self.remote else Path(run_dir)
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        if self.remote and (rows := storage.read_optional(storage.join(self.location, self.metrics_path.name))):
            self.metrics_path.write_bytes(rows)  # a resume, maybe on another machine, continues it
        self.last_local_step = max((r["step"] for r in self.metric_history()), default=0)
        self.sender = None
        if tracking:  # everything MLflow (import, client, history) happens on the sender's thread
            self.sender = _Sender(tracking["uri"], tracking["run_id"], warn)
            self.sender.start()
        self.monitor = _system_monitor(tracking, warn) if tracking and system_metrics else None

    def log_spec(self, spec: dict) -> None:
        (self.dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        self._upload("spec.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step > self.last_local_step:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            self.last_local_step = step
            self._upload(self.metrics_path.name)
        if self.sender:
            self.sender.put("metrics", (step, dict(metrics), int(time.time() * 1000)))

    def truncate_after(self, step: int) -> None:
        """Drop the rows past `step` (a resume from that step's checkpoint replays them)."""
        rows = self.metric_history()
        kept = [r for r in rows if r["step"] <= step]
        if len(kept) < len(rows):
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")  # replaced whole: a crash leaves the old or the new
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.metrics_path)
            self._upload(self.metrics_path.name)
        self.last_local_step = min(self.last_local_step, step)

    def log_image(self, png: bytes, name: str, step: int | None = None) -> None:
        """`images/<name>` here; in MLflow an image at `step` under the key `samples` (a plain
        artifact under `samples/` when there is no step)."""
        path = self.dir / "images" / name
        path.write_bytes(png)
        self._upload(f"images/{name}")
        if self.sender:
            self.sender.put(
                *(("image", (str(path), step)) if step is not None else ("artifact", (str(path), "samples")))
            )

    def metric_history(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def flush(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until MLflow has every record so far, unless it is away: before a report
        that may end the process (a Tune trial its scheduler or stopper ends)."""
        if self.sender:
            self.sender.flush(timeout)

    def close(self) -> int:
        """Flush to MLflow (bounded wait); how many records could not be delivered."""
        if self.monitor is not None:
            self.monitor.finish()  # its last samples are flushed
            self.monitor = None
        undelivered = self.sender.close(float(os.environ.get(FLUSH_ENV, "300"))) if self.sender else 0
        if self.remote:  # everything is in storage already
            shutil.rmtree(self.dir, ignore_errors=True)
        return undelivered

    def _upload(self, relative: str) -> None:
        """The staged file `relative` to the record in object storage, whole (a no-op for a local record)."""
        if self.remote:
            storage.write_bytes(self.fs, f"{self.remote_path}/{relative}", (self.dir / relative).read_bytes())


def _system_monitor(tracking: dict, warn):
    """MLflow's SystemMetricsMonitor on the run (`system/*` metrics), resuming its step count; None
    when it cannot start (the run trains on without)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            tracking["run_id"],
            sampling_interval=SYSTEM_METRICS_INTERVAL_S,
            resume_logging=True,
            tracking_uri=tracking["uri"],
        )
        monitor.start()
        return monitor
    except Exception as e:
        warn(f"warning: no system metrics ({type(e).__name__}: {e})")
        return None


def send_missing(uri: str, run_id: str, record_dir: str) -> dict:
    """Send to the MLflow run what it lacks of the record in `record_dir` (`<run_dir>/distgan`, local or a
    URI): the metric points (key, step) of `metrics.jsonl` it has not, the sample images of steps it has
    none of. Run again, it sends nothing. Returns {"metric_points": n, "images": n} sent."""
    from mlflow.entities import Metric
    from PIL import Image

    client = mlflow_client(uri)
    text = storage.read_optional(storage.join(record_dir, "metrics.jsonl")) or b""
    rows = [json.loads(line) for line in text.decode().splitlines() if line]
    keys = sorted({k for row in rows for k in row if k != "step"})
    have = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
    now = int(time.time() * 1000)
    points = [
        Metric(k, float(v), now, row["step"])
        for row in rows
        for k, v in row.items()
        if k != "step" and v is not None and row["step"] not in have[k]
    ]
    for i in range(0, len(points), BATCH):
        client.log_batch(run_id, metrics=points[i : i + BATCH])

    logged = {
        int(m[1]) for a in client.list_artifacts(run_id, "images") if (m := MLFLOW_IMAGE.match(a.path.split("/")[-1]))
    }
    fs, images = storage.resolve(storage.join(record_dir, "images"))
    found = fs.get_file_info(pafs.FileSelector(images, allow_not_found=True))
    local = sorted((int(m[1]), f.path) for f in found if (m := LOCAL_IMAGE.match(f.base_name)))
    sent = 0
    for step, path in local:
        if step not in logged:
            with Image.open(io.BytesIO(storage.read_bytes(fs, path))) as image:
                client.log_image(run_id, image.convert("RGB"), key=IMAGE_KEY, step=step)
            logged.add(step)
            sent += 1
    return {"metric_points": len(points), "images": sent}


def read_spec(run_dir: str | Path) -> dict | None:
    """The spec a run's record holds (`run_dir`: its `distgan/` directory, local or a URI), or None."""
    text = storage.read_optional(storage.join(str(run_dir), "spec.yaml"))
    return yaml.safe_load(text) if text is not None else None
