"""The search spec: a job spec (the base every trial starts from) plus a `search` section.

    base: grid25.yaml          # optional: a job spec to start from (relative to this file, or a shipped job)
    train: {steps: 3000}       # optional: sections that override the base
    search:
      space:                   # any job-spec key -> one of Tune's distributions
        optim.lr_g: {loguniform: [1.0e-4, 3.0e-3]}
        loss.type: {choice: [nonsaturating, hinge]}
      trials: 16
      metric: mixture_score    # default: the data kind's headline metric
      scheduler: asha          # asha | pbt | none

Everything is validated before any trial starts: every key of the space is a job-spec key, every
distribution well formed, every value it can draw valid for that key; the metric (one that the loop
reports for this data) is checked against the data by `distgan.commands.preflight`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distgan.errors import InputError
from distgan.spec.job import JOBS_DIR, JobSpec, apply_override, describe_error, flatten, read_yaml, validate_spec

DEFAULT_SEARCH = JOBS_DIR / "search-grid25.yaml"
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": None, "grid": None}


class StopRules(BaseModel):
    """Thresholds of the early-stopping signals (see `distgan.core.stopping`)."""

    model_config = ConfigDict(extra="forbid")

    grad_norm_max: float = Field(1e3, gt=0)
    d_loss_floor: float = Field(0.05, ge=0)  # reports without d_accuracy / critic_gap only
    d_collapse_evals: int = Field(3, ge=1)
    d_accuracy_max: float = Field(0.99, gt=0.5, le=1)  # a classifier D this accurate wins outright
    gap_growth: float = Field(0.05, gt=0)  # wgan_gp: the critic gap grows at least this much (relative) per eval
    gap_factor: float = Field(4.0, gt=1)  # ... up to this many times its early size
    gap_reference_evals: int = Field(3, ge=1)  # ... the largest gap of the first evals
    mode_fraction: float = Field(0.5, ge=0, le=1)
    min_mode_fraction: float = Field(0.25, ge=0, le=1)
    grace_evals: int = Field(3, ge=0)
    patience_evals: int = Field(4, ge=1)
    converged: dict[str, float] = Field(default_factory=dict)  # metric -> target (reached when >=)


class AshaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(1000, ge=1)  # steps every trial gets before it can be cut
    reduction_factor: float = Field(2.0, gt=1)


class PbtSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    perturbation_interval: int = Field(1000, ge=1)  # steps between exploit/explore rounds
    mutate: list[str] = Field(default_factory=lambda: ["optim.lr_g", "optim.lr_d"])  # continuous keys
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    # true: every trial waits at each perturbation point for the others (exploits are decided on
    # results of the same step; slower where trials run at different speeds)
    synchronous: bool = False


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    space: dict[str, dict[str, Any]]
    trials: int = Field(16, ge=1)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None  # default: min for distances (fd_*, kid_*, *_kl), else max
    scheduler: Literal["asha", "pbt", "none"] = "asha"
    early_stop: bool = True  # the divergence stopper
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    stop: StopRules = Field(default_factory=StopRules)
    asha: AshaSpec = Field(default_factory=AshaSpec)
    pbt: PbtSpec = Field(default_factory=PbtSpec)


def _number(value):
    """YAML reads 1e-4 (no dot) as a string; a number is meant."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _candidates(key: str, dist: dict[str, Any], source: str) -> list:
    """The values a distribution can draw that bound what the job spec must accept."""
    if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise InputError(
            f"{source}: search.space.{key}: {dist!r} is not a distribution; use one of "
            f"{', '.join(DISTRIBUTIONS)} (e.g. {{loguniform: [1.0e-4, 1.0e-3]}})"
        )
    ((kind, args),) = dist.items()
    if not isinstance(args, list) or not args:
        raise InputError(f"{source}: search.space.{key}.{kind}: needs a list of values, got {args!r}")
    if DISTRIBUTIONS[kind] is not None:
        args = dist[kind] = [_number(a) for a in args]
        if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
            raise InputError(
                f"{source}: search.space.{key}.{kind}: needs [low, high] numbers with low < high, got {args!r}"
            )
        if kind == "loguniform" and args[0] <= 0:
            raise InputError(f"{source}: search.space.{key}.loguniform: low must be > 0, got {args[0]}")
        return [args[0], args[1] - 1 if kind == "randint" else args[1]]
    return list(args)


def load_search(path: str | Path | None = None, overrides: list[str] = ()) -> tuple[JobSpec, SearchSpec]:
    """(the base job spec every trial starts from, the search spec)."""
    p = Path(path) if path is not None else DEFAULT_SEARCH
    source = str(path) if path is not None else "the default search"
    return search_from_tree(read_yaml(p, "search spec", source), source, p.parent, overrides)


def saved_tree(spec: JobSpec, search: SearchSpec) -> dict:
    """The whole search spec as one tree (no `base`): what a resumed search reads back."""
    return {**spec.model_dump(mode="json"), "search": search.model_dump(mode="json")}


def search_from_tree(
    tree: dict, source: str, base_dir: Path | None = None, overrides: list[str] = ()
) -> tuple[JobSpec, SearchSpec]:
    """A search spec's tree (its `base` looked up next to it, in `base_dir`, or among the shipped jobs)."""
    tree = dict(tree)
    base_name = tree.pop("base", None)
    search_tree = tree.pop("search", None)
    if search_tree is None:
        raise InputError(
            f"{source}: no 'search' section; a search spec is a job spec plus search: {{space: ..., trials: ...}}"
        )
    base: dict = {}
    if base_name:
        candidates = [*([base_dir / base_name] if base_dir else []), JOBS_DIR / base_name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(f"{source}: base {base_name!r} not found next to it or among the shipped jobs")
        base = read_yaml(found, "base job spec", str(found))
    for section, values in tree.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    job_overrides = [o for o in overrides if not o.startswith("search.")]
    for assignment in job_overrides:
        apply_override(base, assignment)
    for assignment in overrides:
        if assignment.startswith("search.space.") and "=" in assignment:  # space keys are dotted themselves
            key, raw = assignment.removeprefix("search.space.").split("=", 1)
            search_tree.setdefault("space", {})[key] = yaml.safe_load(raw)
        elif assignment.startswith("search."):
            apply_override({"search": search_tree}, assignment)
    spec = validate_spec(base, source)
    try:
        search = SearchSpec.model_validate(search_tree)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ("search", *err["loc"])
        if err["type"] == "extra_forbidden":
            valid = list(
                (
                    SearchSpec
                    if len(loc) == 2
                    else getattr(SearchSpec.model_fields.get(loc[1]), "annotation", SearchSpec)
                ).model_fields
            )
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            raise InputError(
                f"{source}: unknown key '{'.'.join(map(str, loc))}'" + (f": did you mean '{near[0]}'?" if near else "")
            ) from None
        raise InputError(f"{source}: {describe_error({**err, 'loc': loc})}") from None
    _check_space(spec, search, source)
    return spec, search


def _check_space(spec: JobSpec, search: SearchSpec, source: str) -> None:
    keys = flatten(spec)
    if not search.space:
        raise InputError(
            f"{source}: search.space is empty; name at least one key, e.g. optim.lr_g: {{loguniform: [1.0e-4, 1.0e-3]}}"
        )
    tree = spec.model_dump(mode="json")
    for key, dist in search.space.items():
        if key not in keys:
            near = difflib.get_close_matches(key, list(keys), n=1)
            raise InputError(
                f"{source}: search.space key '{key}' is not a job-spec key"
                + (f"; did you mean '{near[0]}'?" if near else "")
            )
        for value in _candidates(key, dist, source):
            try:
                validate_spec(apply_config(tree, {key: value}), "")
            except InputError as e:
                raise InputError(
                    f"{source}: search.space.{key} can draw {value!r}, which the job spec "
                    f"refuses:{str(e).removeprefix(':')}"
                ) from None
    for key in search.pbt.mutate if search.scheduler == "pbt" else []:
        if key not in search.space or next(iter(search.space[key])) not in ("loguniform", "uniform"):
            raise InputError(
                f"{source}: search.pbt.mutate key '{key}' must be in search.space with a loguniform/uniform range"
            )
    if search.scheduler == "asha" and search.asha.grace_period > spec.train.steps:
        raise InputError(
            f"{source}: search.asha.grace_period={search.asha.grace_period} is more than "
            f"train.steps={spec.train.steps}; "
            "lower it (ASHA cuts trials only after the grace period)"
        )
    if search.scheduler == "pbt" and spec.scaling.workers > 1:
        raise InputError(f"{source}: scheduler pbt runs one-worker trials; set scaling.workers=1")


def apply_config(tree: dict, config: dict[str, Any]) -> dict:
    """A copy of the job tree with dotted keys set (a trial's sampled config)."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in tree.items()}
    for key, value in config.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out
