"""The Ray Tune wiring: trials of the same training loop, the divergence stopper, the schedulers,
and the trials' rows.

Each trial is one training run. A one-worker trial runs `distgan.core.loop.run` in its own process
(no TorchTrainer start per trial); a multi-worker trial fits a TorchTrainer (built by
`distgan.runtime.ray_train`) whose rank-0 reports reach Tune through `TuneReportCallback`. The
divergence stopper and ASHA/PBT end bad trials early; every ended trial records why (`stop_reason`).

Trials checkpoint at every eval and only then, so every report carries the search metric, and a
trial is ranked by one eval (`distgan.core.stopping.ranking_eval`) whose own checkpoint the search
publishes: the generator registered is the one measured.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from distgan import storage
from distgan.core import loop
from distgan.core.stopping import TrialMonitor, ranking_eval
from distgan.data import DataInfo
from distgan.metrics import names
from distgan.runtime import ray_train
from distgan.spec.job import JobSpec, validate_spec
from distgan.spec.search import SearchSpec, apply_config


class TuneSession:
    """`loop.Session` for a one-worker trial running in its Tune trial process."""

    rank, world = 0, 1

    def __init__(self, dataset, gpu: bool, cpus: float):
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        # Tune trial processes, unlike Train workers, keep torch's default of one thread per core:
        # concurrent trials would oversubscribe the CPUs several times over.
        torch.set_num_threads(max(1, int(cpus)))
        self.node_id = ray.get_runtime_context().get_node_id()
        self._dataset = dataset
        self.record = None  # the trial's RunRecord, flushed before each report

    def prepare_model(self, model):
        return model.to(self.device)

    def latest_checkpoint(self) -> str | None:
        ckpt = tune.get_checkpoint()
        return storage.uri(ckpt.filesystem, ckpt.path) if ckpt else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if self.record is not None:  # the stopper or scheduler may end this process on this report
            self.record.flush()
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    def data_shard(self):
        return self._dataset

    def progress(self, line: str) -> None:
        pass  # the search prints one line per ended trial instead

    def stop_requested(self) -> bool:
        return False  # a search is stopped through Tune


def trial_spec(base: dict, config: dict) -> JobSpec:
    """A trial's job spec: the base with `config` applied, checkpointing at every eval and only then
    (a report without the search metric would abort Tune; a checkpoint without an eval would be a
    generator nobody measured)."""
    spec = validate_spec(apply_config(base, config), "trial")
    spec.train.checkpoint_every = spec.train.eval_every
    return spec


def trial_fn(
    config: dict,
    base: dict,
    info: dict,
    search_dir: str,
    parent=None,
    dataset=None,
    metric: str | None = None,
    mode: str = "max",
) -> None:
    """One trial: the job spec with `config` applied, trained by the same loop. `parent`: the
    search's record (opaque here; it comes from the tracking layer), which makes this trial's.
    `metric`/`mode`: the search's, by which a multi-worker trial's Train run keeps its best checkpoints."""
    spec = trial_spec(base, config)
    ctx = tune.get_context()
    spec.train.name = ctx.get_trial_id()
    # The trial's directory in the search's storage. Tune's `get_trial_dir()` is a local staging
    # copy, new at each driver start and uploaded over the stored one: a resumed trial would
    # start its record afresh there, and a trial on another node would keep its checkpoints.
    trial_dir = storage.join(search_dir, Path(ctx.get_trial_dir()).name)
    record_dir = storage.join(trial_dir, "distgan")
    target = parent.trial_target(spec, config, record_dir) if parent else None
    info = DataInfo(**info)
    if spec.scaling.workers == 1:
        session = TuneSession(dataset, spec.scaling.gpu, spec.scaling.cpus_per_worker)
        session.record = target.open(session.progress) if target else None
        loop.run(spec, info, session, session.record)
        return
    datasets = {"train": dataset} if dataset is not None else None
    # TuneReportCallback forwards each Train checkpoint's path (`checkpoint_path`), not a Tune
    # checkpoint: the trial's rows take it from there. Train keeps the best two by the metric.
    trainer = ray_train.build_torch_trainer(
        spec,
        info,
        target,
        trial_dir,
        datasets=datasets,
        callbacks=[TuneReportCallback()],
        keep_best=(metric, mode) if metric else None,
    )
    trainer.fit()


def tune_space(search: SearchSpec) -> dict:
    make = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "randint": lambda a: tune.randint(*a),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {key: make[kind](args) for key, dist in search.space.items() for kind, args in dist.items()}


class DivergenceStopper(tune.Stopper):
    """Feeds every eval (a report carrying the search metric) to its trial's monitor; remembers why
    it stopped each trial. Reports without the metric count for neither grace nor patience."""

    def __init__(self, search: SearchSpec, n_modes: int | None, loss: str | None = None):
        self.search, self.n_modes, self.loss = search, n_modes, loss
        self.monitors: dict[str, TrialMonitor] = {}
        self.reasons: dict[str, str] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        s = self.search
        if s.metric not in result or "loss_d" not in result:
            return False
        monitor = self.monitors.get(trial_id)
        if monitor is None:
            progress = ["modes", "high_quality"] if s.metric == names.MIXTURE_SCORE else None
            loss = (result.get("config") or {}).get("loss.type", self.loss)  # the trial's own: the space may draw it
            monitor = self.monitors[trial_id] = TrialMonitor(s.stop, s.metric, s.mode, progress, self.n_modes, loss)
        reason = monitor.update(result)
        if reason:
            self.reasons[trial_id] = reason
        return reason is not None

    def stop_all(self) -> bool:
        return False


def scheduler(search: SearchSpec, space: dict, total_steps: int):
    if search.scheduler == "asha" and search.early_stop:
        return ASHAScheduler(
            time_attr="step",
            grace_period=search.asha.grace_period,
            reduction_factor=search.asha.reduction_factor,
            max_t=total_steps,
        )
    if search.scheduler == "pbt":
        return PBTBeforeTheEnd(
            total_steps,
            time_attr="step",
            perturbation_interval=search.pbt.perturbation_interval,
            hyperparam_mutations={k: space[k] for k in search.pbt.mutate},
            quantile_fraction=search.pbt.quantile_fraction,
            synch=search.pbt.synchronous,
        )
    return None


class PBTBeforeTheEnd(PopulationBasedTraining):
    """PBT that leaves a trial alone at its last step. Tune's would still exploit there (the last
    step is a perturbation point when the interval divides it): the trial's process would restart
    only to load another trial's final checkpoint and end, its row showing the other's numbers
    under a config it never trained with."""

    def __init__(self, total_steps: int, **kwargs):
        super().__init__(**kwargs)
        self.total_steps = total_steps

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("step", 0) >= self.total_steps:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class TrialLog(tune.Callback):
    """Keeps every trial's reports (step, metric, learning rates in use, the config at that point:
    PBT changes it) and prints one line per ended trial (Tune's own status table is off). `evals`:
    every report's numbers with the Train checkpoint path it forwarded (multi-worker trials).
    `ids`: each trial's id by its directory: a result's own `trial_id` may be another trial's (PBT
    gives an exploiting trial the result of the checkpoint it loads)."""

    def __init__(
        self,
        echo,
        reasons: dict,
        total_steps: int,
        metric: str,
        keys: list[str],
        scheduler_name: str,
        storage_fs=None,
    ):
        self.echo, self.reasons, self.total_steps = echo, reasons, total_steps
        self.metric, self.keys, self.scheduler_name = metric, keys, scheduler_name
        self.storage_fs = storage_fs  # the search storage's pyarrow filesystem (None: local)
        self.history: dict[str, list[dict]] = {}
        self.evals: dict[str, list[dict]] = {}
        self.ids: dict[str, str] = {}

    def __getstate__(self) -> dict:
        # The Tuner pickles its callbacks (for a restore) and `echo` may be `print`, which Ray's tqdm
        # patch can swap out of `builtins` first ("Can't pickle <built-in function print>"): the
        # copy goes without it; this object, not the copy, is the one that echoes.
        return self.__dict__ | {"echo": None}

    # Tune saves this state with each experiment checkpoint and hands it back on a restore (a
    # resumed search keeps the reports and stop reasons of the trials that ran before).
    def get_state(self) -> dict:
        return {"history": self.history, "evals": self.evals, "reasons": dict(self.reasons), "ids": self.ids}

    def set_state(self, state: dict) -> None:
        self.history, self.evals, self.ids = state["history"], state["evals"], state.get("ids", {})
        self.reasons.update(state["reasons"])  # in place: the stopper restored beside it shares this dict

    def on_trial_start(self, iteration, trials, trial, **info):
        self.ids[trial.path] = trial.trial_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "step" in result:
            # a Train checkpoint's path comes without its filesystem ("bucket/key" in S3)
            path = result.get(CHECKPOINT_PATH_KEY)
            location = storage.uri(self.storage_fs, path) if path and self.storage_fs else path
            self.evals.setdefault(trial.trial_id, []).append(_eval(result, location))
            self.history.setdefault(trial.trial_id, []).append(
                {
                    "step": int(result["step"]),
                    self.metric: _finite(result.get(self.metric)),
                    "lr_g": _finite(result.get("lr_g")),
                    "lr_d": _finite(result.get("lr_d")),
                    # the config that produced this result (PBT may already have changed trial.config)
                    "config": {k: result.get("config", trial.config).get(k) for k in self.keys},
                }
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        m = trial.last_result or {}
        reason = self.reasons.get(trial.trial_id) or reason_without_stopper(m, self.total_steps, self.scheduler_name)
        self.echo(f"trial {trial.trial_id}: {reason} at step {m.get('step', 0)}  " + quality_text(m))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.echo(f"trial {trial.trial_id}: failed after step {self._last_step(trial)}: {_last_error(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.echo(
            f"trial {trial.trial_id}: failed after step {self._last_step(trial)} ({_last_error(trial)}); "
            "going on from its last checkpoint"
        )

    def _last_step(self, trial) -> int:
        return max((row["step"] for row in self.history.get(trial.trial_id, [])), default=0)


def _last_error(trial) -> str:
    # Tune has just appended it to the trial's local staging directory (storage gets it later)
    path = Path(trial.error_file) if trial.error_file else None
    return error_line(path.read_text().split("Failure # ")[-1] if path and path.exists() else None)


def error_line(error) -> str:
    """The line of a trial's error (a traceback's text, or the exception) that says what went wrong: its last."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no error text)"


def quality_text(m: dict) -> str:
    return names.summary(m) or "  ".join(
        f"{k} {m[k]:.3g}" for k in ("loss_d", "loss_g") if isinstance(m.get(k), (int, float))
    )


def reason_without_stopper(m: dict, total_steps: int, scheduler_name: str | None) -> str:
    if not m:
        return "failed"
    if any(not math.isfinite(m.get(k, 0.0)) for k in names.LOSS_AND_GRAD):
        return "diverged_nan"
    if m.get("step", 0) >= total_steps:
        return "completed"
    return scheduler_name if scheduler_name in ("asha", "pbt") else "completed"


def fit_trials(
    spec: JobSpec,
    search: SearchSpec,
    info: DataInfo,
    name: str,
    storage_path: str,
    echo,
    parent=None,
    dataset=None,
    n_modes: int | None = None,
    resume: bool = False,
) -> tuple[list[dict], float]:
    """Run every trial; returns (their rows, sorted by trial id; wall seconds). `resume`: restore the
    search `<storage_path>/<name>` (Tune's `Tuner.restore`): trials that ended are not run again,
    unfinished ones go on from their last checkpoint."""
    space = tune_space(search)
    trainable = tune.with_parameters(
        trial_fn,
        base=spec.model_dump(mode="json"),
        info=info.__dict__,
        search_dir=storage.join(storage_path, name),
        parent=parent,
        dataset=dataset,
        metric=search.metric,
        mode=search.mode,
    )
    # One-worker trials are the worker: 1 CPU each. A multi-worker trial's own process holds no
    # CPU, or it would starve the Train workers it launches on a small machine (deadlock); Ray
    # refuses a request of nothing at all, so it asks for one byte of memory instead.
    per_trial = (
        {"cpu": spec.scaling.cpus_per_worker, "gpu": int(spec.scaling.gpu)}
        if spec.scaling.workers == 1
        else {"cpu": 0, "memory": 1}
    )
    # Tune's new console output ignores verbose=0; the legacy one honours it (our lines suffice)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune checkpoints the experiment at most every 10 s by default: a driver lost in that window
    # would run a trial that had ended again. A search's state is a few trials: save it every second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if resume:
        tuner = tune.Tuner.restore(
            storage.join(storage_path, name), tune.with_resources(trainable, per_trial), resume_unfinished=True
        )
        # The restored search runs the stopper and callbacks it started with (unpickled, their state
        # from its last checkpoint); Tune has no public handle on them (ray-project/ray#41364).
        log = next(c for c in tuner._local_tuner.get_run_config().callbacks if isinstance(c, TrialLog))
        log.echo = echo
        return _fit(tuner, log, spec.train.steps, search)
    stopper = DivergenceStopper(search, n_modes, spec.loss.type) if search.early_stop else None
    reasons = stopper.reasons if stopper else {}
    storage_fs = storage.resolve(storage_path)[0]
    log = TrialLog(echo, reasons, spec.train.steps, search.metric, list(search.space), search.scheduler, storage_fs)
    tuner = tune.Tuner(
        tune.with_resources(trainable, per_trial),
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=search.trials if not any("grid" in d for d in search.space.values()) else 1,
            metric=search.metric,
            mode=search.mode,
            scheduler=scheduler(search, space, spec.train.steps),
            search_alg=BasicVariantGenerator(random_state=search.seed, max_concurrent=search.max_concurrent),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            stop=stopper,
            verbose=0,
            callbacks=[log],
            # A one-worker trial whose process dies (a lost node, the OOM killer) goes on from its last
            # checkpoint, as `distgan train` does; a multi-worker trial's Train run restarts its own workers.
            failure_config=tune.FailureConfig(max_failures=spec.train.max_failures if spec.scaling.workers == 1 else 0),
        ),
    )
    return _fit(tuner, log, spec.train.steps, search)


def _fit(tuner, log: TrialLog, total_steps: int, search: SearchSpec) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    return trial_rows(grid, log.reasons, total_steps, search, log.history, log.evals, log.ids), wall


def can_resume(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def trial_rows(
    grid,
    reasons: dict,
    total_steps: int,
    search: SearchSpec,
    history: dict,
    evals: dict | None = None,
    ids: dict | None = None,
) -> list[dict]:
    """One row per trial: `metrics` and `checkpoint` of the eval it is ranked by (`eval_step`), from
    the checkpoints Tune holds (one-worker trials) or the Train checkpoint paths its reports
    forwarded (`evals`, multi-worker trials); `steps`: how far it trained. `ids`: trial ids by trial
    directory (`TrialLog.ids`)."""
    rows = []
    for result in grid:
        m = dict(result.metrics or {})
        trial_id = (ids or {}).get(result.path) or m.get("trial_id") or Path(result.path).name
        reason = reasons.get(trial_id) or (
            reason_without_stopper(m, total_steps, search.scheduler) if result.error is None else "failed"
        )
        saved = [_eval(cm, storage.uri(c.filesystem, c.path)) for c, cm in result.best_checkpoints or []]
        saved += [e for e in (evals or {}).get(trial_id, []) if e["checkpoint"]]
        ranked = ranking_eval(saved, search.metric, search.mode)
        metrics = {k: v for k, v in (ranked or _eval(m, None)).items() if k not in ("step", "checkpoint")}
        config = {k: _plain(v) for k, v in (result.config or {}).items() if k in search.space}
        rows.append(
            {
                "trial_id": trial_id,
                "config": config,
                "metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
                "steps": int(m.get("step", 0)),
                "eval_step": ranked["step"] if ranked else None,
                "stop_reason": reason,
                "error": error_line(result.error) if result.error is not None else None,
                "checkpoint": ranked["checkpoint"] if ranked else None,
                "history": history.get(trial_id, []),
            }
        )
    return sorted(rows, key=lambda r: r["trial_id"])


def _eval(m: dict, checkpoint: str | None) -> dict:
    """One report as an eval: the numbers the loop reported, its step, its checkpoint (or None)."""
    numbers = {
        k: float(v)
        for k, v in m.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and names.is_reported(k)
    }
    return numbers | {"step": int(m.get("step", 0)), "checkpoint": checkpoint}


def _plain(v):
    """numpy scalars from pandas -> Python values (JSON)."""
    return v.item() if hasattr(v, "item") else v


def _finite(v):
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def best_trial(trials: list[dict], search: SearchSpec) -> dict | None:
    """The trial whose ranked eval (`metrics`, at `eval_step`, with its checkpoint) is best."""
    scored = [
        t
        for t in trials
        if t["metrics"].get(search.metric) is not None
        and t["checkpoint"]
        and t["stop_reason"] not in ("diverged_nan", "failed")
    ]
    if not scored:
        return None
    sign = 1 if search.mode == "max" else -1
    return max(scored, key=lambda t: sign * t["metrics"][search.metric])


def results_table(trials: list[dict], search: SearchSpec, best: str | None) -> str:
    keys = list(search.space)
    header = ["trial", *keys, search.metric, "steps", "stop_reason"]
    rows = [header]
    for t in trials:
        cfg = [
            f"{t['config'].get(k):.3g}" if isinstance(t["config"].get(k), float) else str(t["config"].get(k))
            for k in keys
        ]
        q = t["metrics"].get(search.metric)
        rows.append(
            [
                ("* " if t["trial_id"] == best else "  ") + t["trial_id"],
                *cfg,
                "-" if q is None else f"{q:.4g}",
                str(t["steps"]),
                t["stop_reason"],
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
