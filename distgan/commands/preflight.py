"""Every check that needs neither Ray nor a cluster: the data, the model against the data, the
feature network, the batch against the rows, a resumed run's spec, a search's metric. Each failure
is an InputError (exit 2) before Ray starts and before anything is written."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from distgan import data, models
from distgan.data import DataInfo
from distgan.errors import InputError
from distgan.metrics import digits_net, features, names, stacked
from distgan.metrics.mixture import mixture_means
from distgan.spec.job import JobSpec
from distgan.spec.search import SearchSpec
from distgan.tracking.record import read_spec


def check_job(spec: JobSpec) -> DataInfo:
    info = data.inspect(spec.data)
    problem = models.check_compatible(spec.model, info.sample_shape)
    if problem:
        raise InputError(problem)
    if spec.model.conditional and info.num_classes is None:
        raise InputError(
            f"model.conditional needs labeled data: {spec.data.name} has no class labels; "
            "set data.label_column or use digits"
        )
    if spec.augment.policy and len(info.sample_shape) != 3:
        shape, name = tuple(info.sample_shape), spec.data.name
        raise InputError(f"augment.policy is for images; {name} samples have shape {shape}: use augment.policy=[]")
    per_worker = spec.train.batch_size // spec.scaling.workers
    if info.num_rows is not None and info.num_rows // spec.scaling.workers < per_worker:
        raise InputError(
            f"{spec.data.name} has {info.num_rows} rows: {info.num_rows // spec.scaling.workers} per worker, fewer "
            f"than the per-worker batch {per_worker}; lower train.batch_size or scaling.workers"
        )
    # last: it may download a pretrained network (once), which no other mistake should wait for
    net = features.choose(spec, info)
    if net:
        features.check(net, info.sample_shape, spec.metrics.feature_name)
    return info


def check_resume(spec: JobSpec, run_dir: str | Path) -> None:
    """A reused run name must describe the same data and model, or its checkpoint cannot load.
    `run_dir`: a local path or a URI (the spec is read from the storage the run lives in)."""
    previous = read_spec(f"{run_dir}/distgan")
    storage = str(run_dir).rsplit("/", 1)[0]
    if previous is None:
        return
    now = spec.model_dump(mode="json")
    for section in ("data", "model"):
        if _with_defaults(spec, section, previous.get(section)) != now[section]:
            raise InputError(
                f"run {spec.train.name!r} in {storage} was started with a different {section} section; "
                f"set another train.name to start a new run"
            )


def _with_defaults(spec: JobSpec, section: str, values: dict | None) -> dict | None:
    """A recorded section with the keys added since it was written at their defaults (a run recorded
    before `model.conditional` existed is the same unconditional model)."""
    try:
        return type(getattr(spec, section)).model_validate(values).model_dump(mode="json")
    except ValidationError:
        return values


def feature_net_name(spec: JobSpec, info: DataInfo) -> str | None:
    """The name this job's image metrics carry (fd_<name>), or None when it has none."""
    net = features.choose(spec, info)
    return features.network_name(net, spec.metrics.feature_name) if net else None


def count_modes(spec: JobSpec, info: DataInfo) -> int | None:
    """What mode collapse is counted against: the mixture's modes, or the classes of labeled images."""
    if info.kind == "mixture":
        return len(mixture_means(spec.data.name))
    if spec.data.name == "stacked_digits":
        return stacked.N_TRIPLES
    return digits_net.NUM_CLASSES if features.choose(spec, info) == "digits" else None


def check_search(spec: JobSpec, search: SearchSpec) -> DataInfo:
    """The job checks, then the search metric: one the loop reports for this data (default: the
    data's headline metric) and its direction."""
    info = check_job(spec)
    net = feature_net_name(spec, info)
    classifies = features.choose(spec, info) == "digits"
    reported = names.reported(info.kind, net, classifies, info.name, spec.model.conditional)
    if search.metric is None:
        search.metric = names.headline_metric(info.kind, net, info.name)
        if search.metric is None:
            raise InputError(
                f"{spec.data.name} has no headline quality metric (no feature network); set search.metric "
                f"(one of {', '.join(sorted(reported))}) or metrics.feature_net"
            )
    elif search.metric not in reported:
        raise InputError(
            f"search.metric '{search.metric}' is not reported for {spec.data.name} data; choose one of "
            f"{', '.join(sorted(reported))}"
        )
    if search.mode is None:
        search.mode = "min" if names.lower_is_better(search.metric) else "max"
    return info
