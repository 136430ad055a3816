"""The MLflow run of a training run or search: what the user asked of MLflow (`TrackingOptions`),
opening the run on the driver (params, spec, tags, the dataset as a run input, a description),
finishing a training run's (the generator logged and registered, the note, curves, status: each part
done once, so `distgan track sync` can do again what a server away at the end left undone), and the
target rank 0 records into (`RecordTarget`).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import io
import json
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from distgan import __version__, storage
from distgan.core import checkpoint, plots
from distgan.data import DataInfo, files
from distgan.metrics.names import is_quality, summary
from distgan.spec.job import ModelSpec, flatten
from distgan.tracking import registry
from distgan.tracking.client import check_reachable, configure_env, mlflow_client, resolve_uri
from distgan.tracking.record import RecordTarget

SAVED_FILE = "mlflow.json"  # in <run_dir>/distgan/: the run's tracking URI, run id and experiment id
# in <run_dir>/distgan/ while MLflow lacks part of the run: what `distgan track sync` needs to finish it
PENDING_FILE = "tracking_pending.json"


@dataclass
class TrackingOptions:
    """What the user asked of MLflow for this run (None tracking_uri: MLflow's default resolution)."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "distgan"
    register: str | None = None  # registered model name
    generator: str = "ema"  # which generator to log: "ema" or "raw"
    system_metrics: bool = False  # MLflow's system metrics of rank 0's node (of each trial's, in a search)

    def prepare(self) -> str | None:
        """The tracking URI, checked (server reachable, model name valid) before Ray starts; None when off."""
        if not self.enabled:
            return None
        configure_env()  # before Ray copies the env to workers
        uri = resolve_uri(self.tracking_uri)
        check_reachable(uri)
        if self.register:
            registry.check_name(self.register)
        return uri


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def open_run(
    uri: str,
    experiment: str,
    spec,
    run_dir: str | Path,
    tags: dict[str, str],
    info: DataInfo | None = None,
    command: str = "train",
    dataset: dict | None = None,
) -> str:
    """The MLflow run of this training run: the one recorded in `run_dir` (a resume), or a new one
    with params, the spec, tags (MLflow's source and git tags among them), a description and, given
    `info`, the dataset as the run's input (`dataset`: its `dataset_input`, when the caller has it)."""
    from mlflow.entities import Param, RunStatus
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_COMMIT,
        MLFLOW_RUN_NOTE,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    client = mlflow_client(uri)
    saved = storage.join(str(run_dir), "distgan", SAVED_FILE)  # with the run, wherever it is stored
    if (text := storage.read_optional(saved)) is not None:
        previous = json.loads(text)
        if previous["tracking_uri"] == uri:
            client.update_run(previous["run_id"], status=RunStatus.to_string(RunStatus.RUNNING))
            return previous["run_id"]
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    all_tags = {
        "distgan.version": __version__,
        MLFLOW_SOURCE_NAME: f"distgan {command}",
        MLFLOW_SOURCE_TYPE: "LOCAL",
        MLFLOW_USER: getpass.getuser(),  # the run page's "Created by", as MLflow's fluent API sets it
        MLFLOW_RUN_NOTE: describe(spec, info),
        **tags,
    }
    if commit := _git_commit():
        all_tags["git.commit"] = all_tags[MLFLOW_GIT_COMMIT] = commit
    run = client.create_run(exp_id, run_name=spec.train.name, tags=all_tags)
    run_id = run.info.run_id
    if info is not None:
        log_dataset(client, run_id, dataset or dataset_input(spec.data, info))
    params = [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in flatten(spec).items()]
    client.log_batch(run_id, params=params)
    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
    storage.write(saved, json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment_id": exp_id}).encode())
    return run_id


# The tags of `open_run` a search's trials take from the search's run: made once, on the driver (where
# the user and the git checkout are), not in each trial's process.
SHARED_PAGE_TAGS = (
    "distgan.version",
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.user",
    "mlflow.source.git.commit",
    "git.commit",
)


def describe(spec, info: DataInfo | None) -> str:
    """The run's description (`mlflow.note.content`, Markdown): what is trained, on what, how."""
    data = spec.data.name + (f" ({spec.data.path})" if spec.data.path else "")
    if info is not None:
        data += f", {info.kind} samples of shape {list(info.sample_shape)}"
    workers = spec.scaling.workers
    return (
        f"{spec.model.arch} GAN (latent {spec.model.latent_dim}) on {data}: {spec.loss.type} loss, "
        f"{spec.train.steps} generator steps of batch {spec.train.batch_size} on {workers} "
        f"{'GPU' if spec.scaling.gpu else 'CPU'} worker{'s' if workers > 1 else ''} (distgan {__version__})."
    )


def dataset(data, info: DataInfo):
    """The run's training data as an MLflow dataset: a built-in's name and seed (a code source), or
    the Parquet/image-folder location (its path or URI); the digest fingerprints the content (see
    `files.fingerprint`, or the built-in's name, seed and shape)."""
    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    schema = Schema([TensorSpec(np.dtype("float32"), (-1, *info.sample_shape), "x")])
    if not data.path:
        source = CodeDatasetSource({"builtin": f"distgan.data.builtin:{data.name}", "data.seed": str(data.seed)})
        key = json.dumps([data.name, data.seed, list(info.sample_shape), info.num_rows])
        return MetaDataset(source, name=data.name, digest=hashlib.sha256(key.encode()).hexdigest()[:10], schema=schema)
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": local paths, registered twice
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(data.path)
    except Exception:  # a location MLflow has no source type for
        source = CodeDatasetSource({"path": data.path})
    return MetaDataset(source, name=Path(data.path).name or data.name, digest=files.fingerprint(data), schema=schema)


def dataset_input(data, info: DataInfo) -> dict:
    """The dataset as a run input's fields (`log_dataset`), with a profile: kind, sample shape, rows
    (null: drawn fresh). Made once per search: the digest reads part of every data file."""
    d = dataset(data, info).to_dict()
    profile = {"kind": info.kind, "sample_shape": list(info.sample_shape), "num_rows": info.num_rows}
    return {k: d.get(k) for k in ("name", "digest", "source_type", "source", "schema")} | {
        "profile": json.dumps(profile)
    }


def log_dataset(client, run_id: str, fields: dict) -> None:
    """The dataset (`dataset_input`'s fields) as the run's input: the run page's "Datasets used", context `train`."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client.log_inputs(run_id, [DatasetInput(Dataset(**fields), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "train")])])


def append_note(uri: str, run_id: str, text: str) -> None:
    """Add a paragraph to the run's description (`mlflow.note.content`), unless it ends with it already."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    client = mlflow_client(uri)
    note = client.get_run(run_id).data.tags.get(MLFLOW_RUN_NOTE, "")
    if note.endswith(text):
        return
    client.set_tag(run_id, MLFLOW_RUN_NOTE, f"{note}\n\n{text}" if note else text)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = mlflow_client(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def close_run(uri: str, run_id: str, status: str) -> None:
    """Loss and quality curves from the run's metric history, then the final status."""
    from PIL import Image

    client = mlflow_client(uri)
    quality = sorted(k for k in client.get_run(run_id).data.metrics if is_quality(k))  # mixture or image metrics
    for name, keys in (("losses", ["loss_d", "loss_g"]), ("quality", quality)):
        series = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}
        series = {k: sorted(v) for k, v in series.items() if v}
        if series:
            client.log_image(run_id, Image.open(io.BytesIO(plots.curves_png(series, name))), f"curves/{name}.png")
    client.set_terminated(
        run_id, {"finished": "FINISHED", "diverged": "FAILED", "killed": "KILLED"}.get(status, "FAILED")
    )


@contextlib.contextmanager
def store_opening(uri: str | None):
    """Opens MLflow's tracking store at `uri` on a thread while the block runs (the block starts Ray,
    which mostly waits on its processes); yields a function that waits until the store is open. MLflow
    keeps an open store for the process, so `open_run` then finds it ready. Creating a new SQLite
    store's tables takes ~1.2 s on 2 cores, checking an existing one's ~0.8 s. MLflow is imported first,
    on the calling thread (two threads importing shared packages can deadlock); an error on the thread
    is left for `open_run` to meet. The block does not end before the thread does: a process exiting
    mid-way would leave the new store's tables half made."""
    if uri is None:
        yield lambda: None
        return
    import mlflow.tracking  # noqa: F401

    def open_store() -> None:
        with contextlib.suppress(Exception):  # open_run meets it again, where errors are handled
            mlflow_client(uri)

    thread = threading.Thread(target=open_store, name="distgan-store", daemon=True)
    thread.start()
    try:
        yield thread.join
    finally:
        thread.join()


def preload_finishing_imports() -> threading.Thread:
    """Import what finishing a run needs (MLflow's PyTorch flavour, matplotlib for the curves) and
    run torch.export once on a daemon thread. Started as the workers begin, while the driver waits on
    them: done after the run instead, this is about 3 s of a short run's end on 2 cores."""

    def load() -> None:
        import mlflow.pytorch  # noqa: F401
        import torch.export

        # A process's first export sets up its tracing machinery (~1 s); the generator's own then takes ~0.05 s.
        batch = torch.export.Dim("batch")
        torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(2, 2),), dynamic_shapes=({0: batch},))
        plots.curves_png({"x": [(0, 0.0)]}, "warm-up")  # matplotlib, its Agg backend and fonts

    thread = threading.Thread(target=load, name="distgan-preload", daemon=True)
    thread.start()
    return thread


def finish_training_run(uri: str, run_id: str, result: dict, meta: dict, register_as: str | None) -> dict:
    """Finish a training run's MLflow run from its result (`TrainResult.to_json()`): health and precision
    tags; a finished run's generator (from its checkpoint; `meta`: `registry.generator_meta`) logged and,
    given `register_as`, registered under the champion rule; the "**status** after N steps" note; curves
    and the status. Each part is done once: called again (a sync after a server away at the end), it
    does only what is missing. Returns `registry.publish_generator`'s dict (all None when no generator)."""
    # "ok", or the signals that fired: a run that is not ok is never promoted to champion
    health = result["health"]
    health = health if isinstance(health, str) else ",".join(s["name"] for s in health or [])
    text = summary(result["metrics"])
    tags = {"distgan.health": health or "unknown"}
    if result["precision"]:
        tags["distgan.precision"] = result["precision"]
    set_tags(uri, run_id, tags)
    published = {"logged_model_uri": None, "model_uri": None, "champion": None, "logged": False, "registered": False}
    if result["status"] == "finished" and result["checkpoint"]:
        which = meta["generator"]
        published = registry.publish_generator(
            uri,
            run_id,
            lambda: checkpoint.generator(
                checkpoint.read(result["checkpoint"]),
                ModelSpec.model_validate(meta["model"]),
                tuple(meta["sample_shape"]),
                which,
            ),
            meta,
            register_as,
            result["metrics"],
            tags={
                "dataset": meta["dataset"],
                "job": result["name"],
                "run_id": run_id,
                "generator": which,
                "distgan.health": health,
            },
            description=f"{meta['model']['arch']} generator ({which}) trained on {meta['dataset']} for "
            f"{result['steps']} steps" + (f"; {text}" if text else ""),
            healthy=health == "ok",
            key={"distgan.steps": str(result["steps"]), "distgan.generator": which},
        )
    append_note(uri, run_id, f"**{result['status']}** after {result['steps']} steps" + (f": {text}" if text else ""))
    close_run(uri, run_id, result["status"])
    return published


@dataclass(frozen=True)
class SearchRun:
    """The parent MLflow run of a search; travels to every trial, which records into a child run."""

    uri: str
    run_id: str
    experiment_id: str
    system_metrics: bool = False  # each trial's rank 0 records MLflow's system metrics of its node
    dataset: dict | None = None  # the search's data as each trial's input (`dataset_input`)
    page_tags: dict | None = None  # the search run's SHARED_PAGE_TAGS, which each trial's run repeats

    def trial_target(self, spec, config: dict, record_dir: str) -> RecordTarget:
        """Trial `spec.train.name`'s nested run (found again after a restore, created once: its config as
        params, the search's run-page tags, its own description, the data as its input) as a record target."""
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

        client = mlflow_client(self.uri)
        trial_id = spec.train.name
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}' and tags.`distgan.trial_id` = '{trial_id}'",
        )
        if found:
            return RecordTarget(record_dir, self.uri, found[0].info.run_id, self.system_metrics)
        tags = (self.page_tags or {}) | {
            MLFLOW_RUN_NOTE: describe(spec, None),
            MLFLOW_PARENT_RUN_ID: self.run_id,
            "distgan.trial_id": trial_id,
        }
        run_id = client.create_run(self.experiment_id, run_name=trial_id, tags=tags).info.run_id
        if self.dataset:
            log_dataset(client, run_id, self.dataset)
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in config.items()])
        return RecordTarget(record_dir, self.uri, run_id, self.system_metrics)


def open_search_run(
    uri: str,
    experiment: str,
    spec,
    run_dir: str | Path,
    search,
    info: DataInfo | None = None,
    system_metrics: bool = False,
) -> SearchRun:
    """The search's parent run: the base job's params, the search's own (`search.*`). `system_metrics`:
    the trials' rank 0 record MLflow's system metrics into their nested runs."""
    from mlflow.entities import Param

    dataset = dataset_input(spec.data, info) if info is not None else None  # reads the data: once
    parent_id = open_run(
        uri, experiment, spec, run_dir, {"distgan.kind": "search", "dataset": spec.data.name}, info, "search", dataset
    )
    client = mlflow_client(uri)
    params = {f"search.space.{k}": v for k, v in search.space.items()}
    params |= {f"search.{k}": v for k, v in search.model_dump(exclude={"space"}).items()}
    client.log_batch(parent_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    parent = client.get_run(parent_id)
    page_tags = {k: v for k, v in parent.data.tags.items() if k in SHARED_PAGE_TAGS}
    return SearchRun(uri, parent_id, parent.info.experiment_id, system_metrics, dataset, page_tags)


def record_search(parent: SearchRun, trials: list[dict], best: dict | None, metric: str, space_keys: list[str]) -> None:
    """The parent run's record: the trial table (CSV, Parquet), the stability map and quality curves,
    the best trial's metrics; each child run's stop reason and status."""
    import pandas as pd
    from mlflow.entities import Metric

    client = mlflow_client(parent.uri)
    children = client.search_runs([parent.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    stop_reasons = {t["trial_id"]: t["stop_reason"] for t in trials}
    for run in children:
        reason = stop_reasons.get(run.data.tags.get("distgan.trial_id"))
        if reason:
            client.set_tag(run.info.run_id, "stop_reason", reason)
            client.set_terminated(run.info.run_id, "FINISHED" if reason not in ("failed", "diverged_nan") else "FAILED")
    rows = [
        {
            "trial_id": t["trial_id"],
            **t["config"],
            **t["metrics"],
            "eval_step": t["eval_step"],  # where `metrics` were measured (and the trial's checkpoint saved)
            "steps": t["steps"],
            "stop_reason": t["stop_reason"],
            "error": t["error"],
        }
        for t in trials
    ]
    table = pd.DataFrame(rows)
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(f"{tmp}/trials.csv", index=False)
        table.to_parquet(f"{tmp}/trials.parquet", index=False)
        Path(f"{tmp}/stability_map.png").write_bytes(plots.stability_map_png(trials, space_keys))
        curves = {
            t["trial_id"]: [(h["step"], h[metric]) for h in t["history"] if h[metric] is not None] for t in trials
        }
        Path(f"{tmp}/quality_over_steps.png").write_bytes(plots.trial_curves_png(curves, metric))
        for f in ("trials.csv", "trials.parquet", "stability_map.png", "quality_over_steps.png"):
            client.log_artifact(parent.run_id, f"{tmp}/{f}", "search")
    if best:
        now = int(time.time() * 1000)
        client.log_batch(
            parent.run_id,
            metrics=[Metric(k, v, now, best["eval_step"]) for k, v in best["metrics"].items() if v is not None],
        )
        client.set_tag(parent.run_id, "best_trial", best["trial_id"])


def finish_search(parent: SearchRun, status: str) -> None:
    mlflow_client(parent.uri).set_terminated(parent.run_id, "FINISHED" if status == "finished" else "FAILED")
