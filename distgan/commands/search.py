"""`distgan search`: trials of the training loop on Ray Tune, the bad ones ended early, the best
trial's generator logged and (when asked) registered."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from distgan import storage
from distgan.commands import preflight
from distgan.core import checkpoint
from distgan.data import DataInfo
from distgan.errors import InputError
from distgan.runtime import ray_data, ray_train, tune
from distgan.spec.job import JobSpec, validate_spec
from distgan.spec.search import SearchSpec, apply_config, load_search, saved_tree, search_from_tree
from distgan.tracking import registry
from distgan.tracking import run as tracking_run
from distgan.tracking.run import TrackingOptions

SAVED_SPEC = "distgan/search.yaml"  # in the search's directory: what `--resume` runs again


@dataclass
class SearchResult:
    """The outcome of a search; `to_json()` is the `--json-out` document (see README)."""

    status: str  # finished (a best trial was found) | failed
    name: str
    trials: list[dict] = field(default_factory=list)
    best: str | None = None
    metrics: dict = field(default_factory=dict)
    steps: int = 0
    checkpoint: str | None = None
    mlflow_run_id: str | None = None
    logged_model_uri: str | None = None
    model_uri: str | None = None
    champion: bool | None = None
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def load(path: str | Path | None = None, overrides: list[str] = ()) -> tuple[JobSpec, SearchSpec]:
    """The base job spec and the search spec, checked against the data (metric, mode)."""
    spec, search_spec = load_search(path, overrides)
    preflight.check_search(spec, search_spec)
    return spec, search_spec


def load_resumed(search_dir: str) -> tuple[JobSpec, SearchSpec, str]:
    """The spec a search started with (saved in its directory), and the directory: a path, a URI,
    or a bare name under the default storage (`distgan_runs/NAME`)."""
    if "/" not in search_dir:
        search_dir = storage.join(ray_train.DEFAULT_STORAGE, search_dir)
    search_dir = storage.absolute(search_dir).rstrip("/")
    text = storage.read_optional(storage.join(search_dir, SAVED_SPEC))
    if text is None or not tune.can_resume(search_dir):
        raise InputError(
            f"no search to resume at {search_dir}: give the directory `distgan search` named at its start "
            "(<train.storage_path>/search-...), or its name under distgan_runs/"
        )
    spec, search_spec = search_from_tree(yaml.safe_load(text), f"the search saved in {search_dir}")
    return spec, search_spec, search_dir


def search(
    spec: JobSpec,
    search_spec: SearchSpec,
    address: str | None = None,
    echo=print,
    tracking: TrackingOptions | None = None,
    resume: str | None = None,
) -> SearchResult:
    """Run the search to its end; `resume`: the directory of a search whose driver stopped (its spec
    from `load_resumed`), which goes on where its last experiment checkpoint left it."""
    tracking = tracking or TrackingOptions()
    info = preflight.check_search(spec, search_spec)
    uri = tracking.prepare()
    search_dir = resume or _new_search_dir(spec, search_spec)
    location, name = search_dir.rsplit("/", 1)
    echo(f"search {search_dir} (should its driver stop: distgan search --resume {search_dir})")
    with ray_train.ray_session(address):
        parent = None
        if uri:
            named = spec.model_copy(update={"train": spec.train.model_copy(update={"name": name})})
            parent = tracking_run.open_search_run(
                uri, tracking.experiment, named, search_dir, search_spec, info, tracking.system_metrics
            )
        dataset = (ray_data.datasets(spec.data, info, materialize=True) or {}).get("train")
        n_modes = preflight.count_modes(spec, info)
        trials, wall = tune.fit_trials(
            spec, search_spec, info, name, location, echo, parent, dataset, n_modes, resume=resume is not None
        )
    best = tune.best_trial(trials, search_spec)
    result = SearchResult(
        status="finished" if best else "failed",
        name=name,
        trials=trials,
        best=best["trial_id"] if best else None,
        metrics=best["metrics"] if best else {},
        steps=sum(t["steps"] for t in trials),
        checkpoint=best["checkpoint"] if best else None,  # saved at best["eval_step"], where `metrics` were measured
        mlflow_run_id=parent.run_id if parent else None,
        wall_s=round(wall, 2),
    )
    echo(tune.results_table(trials, search_spec, result.best))
    if parent:
        tracking_run.record_search(parent, trials, best, search_spec.metric, list(search_spec.space))
        if best:
            _publish_best(result, best, spec, info, tracking, parent.uri, len(trials))
        tracking_run.finish_search(parent, result.status)
    return result


def _new_search_dir(spec: JobSpec, search_spec: SearchSpec) -> str:
    """`<storage>/search-<data>-<time>`, checked, with the spec saved in it (what `--resume` reads)."""
    location = storage.absolute(spec.train.storage_path or ray_train.DEFAULT_STORAGE)
    storage.check_storage(location)
    search_dir = storage.join(location, f"search-{spec.data.name}-{datetime.now():%Y%m%d-%H%M%S}")
    tree = yaml.safe_dump(saved_tree(spec, search_spec), sort_keys=False)
    storage.write(storage.join(search_dir, SAVED_SPEC), tree.encode())
    return search_dir


def _publish_best(
    result: SearchResult, best: dict, spec: JobSpec, info: DataInfo, tracking: TrackingOptions, uri: str, n_trials: int
) -> None:
    best_spec = validate_spec(apply_config(spec.model_dump(mode="json"), best["config"]), "best trial")
    generator = checkpoint.generator(checkpoint.read(best["checkpoint"]), best_spec.model, info.sample_shape)
    published = registry.publish_generator(
        uri,
        result.mlflow_run_id,
        generator,
        registry.generator_meta(best_spec.model, info, "ema", best["eval_step"]),
        tracking.register,
        best["metrics"],
        tags={"dataset": spec.data.name, "job": result.name, "run_id": result.mlflow_run_id, "trial": best["trial_id"]},
        description=f"best of {n_trials} trials of {result.name} ({best['trial_id']}); "
        + tune.quality_text(best["metrics"]),
    )
    result.logged_model_uri, result.model_uri, result.champion = (
        published["logged_model_uri"],
        published["model_uri"],
        published["champion"],
    )
