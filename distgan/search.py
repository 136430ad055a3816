"""The Ray Tune wiring: trials of the same training loop, the divergence stopper, results.

Each trial is one training run. A one-worker trial runs `distgan.loop.run` in its own process (no
TorchTrainer start per trial); a multi-worker trial launches a TorchTrainer whose rank-0 reports
reach Tune through `TuneReportCallback`. The divergence stopper (`distgan.divergence`) and
ASHA/PBT end bad trials early; every ended trial records why (`stop_reason`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from distgan import data, evaluation, loop, registry
from distgan import tracking as tracking_lib
from distgan.config import JobSpec, validate_spec
from distgan.data import DataInfo
from distgan.divergence import TrialMonitor
from distgan.metrics.mixture import mixture_means
from distgan.search_config import SearchSpec, apply_config, tune_space
from distgan.metrics import digits_net, features, is_quality
from distgan.train import DEFAULT_STORAGE, Tracking, _worker_env, ray_runtime_env


class TuneSession:
    """`loop.Session` for a one-worker trial running in its Tune trial process."""

    rank, world = 0, 1

    def __init__(self, dataset, gpu: bool, cpus: float):
        import ray

        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        # Tune trial processes, unlike Train workers, keep torch's default of one thread per core:
        # concurrent trials would oversubscribe the CPUs several times over.
        torch.set_num_threads(max(1, int(cpus)))
        self.node_id = ray.get_runtime_context().get_node_id()
        self._dataset = dataset

    def prepare_model(self, model):
        return model.to(self.device)

    def latest_checkpoint(self) -> Path | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        return Path(ckpt.to_directory()) if ckpt else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    def data_shard(self):
        return self._dataset

    def progress(self, line: str) -> None:
        pass  # the search prints one line per ended trial instead


def _child_run(uri: str, parent: dict, trial_id: str, config: dict) -> str:
    """This trial's nested MLflow run: found again after a restore, created once."""
    from mlflow.entities import Param

    client = tracking_lib.mlflow_client(uri)
    found = client.search_runs(
        [parent["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}' and tags.`distgan.trial_id` = '{trial_id}'",
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        parent["experiment_id"],
        run_name=trial_id,
        tags={"mlflow.parentRunId": parent["run_id"], "distgan.trial_id": trial_id},
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in config.items()])
    return run.info.run_id


def trial_fn(config: dict, base: dict, info: dict, tracking: dict | None, dataset=None) -> None:
    """One trial: the job spec with `config` applied, trained by the same loop."""
    from ray import tune

    spec = validate_spec(apply_config(base, config), "trial")
    trial_id = tune.get_context().get_trial_id()
    spec.train.name = trial_id
    child = None
    if tracking:
        child = {"uri": tracking["uri"], "run_id": _child_run(tracking["uri"], tracking, trial_id, config)}
    info = DataInfo(**info)
    if spec.scaling.workers == 1:
        loop.run(
            spec,
            info,
            TuneSession(dataset, spec.scaling.gpu, spec.scaling.cpus_per_worker),
            tune.get_context().get_trial_dir() + "/distgan",
            child,
        )
        return
    _torch_trainer_trial(spec, info, child, dataset)


def _torch_trainer_trial(spec: JobSpec, info: DataInfo, child: dict | None, dataset) -> None:
    """A multi-worker trial: a TorchTrainer whose rank-0 reports are forwarded to Tune."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from distgan.train import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "data_info": info.__dict__,
            "record_dir": tune.get_context().get_trial_dir() + "/distgan",
            "tracking": child,
            "progress": None,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.workers,
            use_gpu=spec.scaling.gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker},
            placement_strategy=spec.scaling.placement,
        ),
        torch_config=TorchConfig(backend="nccl" if spec.scaling.gpu else "gloo"),
        run_config=RunConfig(
            name=spec.train.name,
            storage_path=tune.get_context().get_trial_dir(),
            callbacks=[TuneReportCallback()],
            worker_runtime_env={"env_vars": _worker_env()},
        ),
        datasets={"train": dataset} if dataset is not None else None,
    )
    trainer.fit()


def _stopper(search: SearchSpec, n_modes: int | None, loss: str):
    from ray import tune

    class DivergenceStopper(tune.Stopper):
        """Feeds every report to its trial's monitor; remembers why it stopped each trial."""

        def __init__(self):
            self.monitors: dict[str, TrialMonitor] = {}
            self.reasons: dict[str, str] = {}

        def __call__(self, trial_id: str, result: dict) -> bool:
            if "loss_d" not in result:
                return False
            progress = ["modes", "high_quality"] if search.metric == "mixture_score" else None
            monitor = self.monitors.get(trial_id)
            if monitor is None:  # the trial's own loss type: the space may draw it
                trial_loss = (result.get("config") or {}).get("loss.type", loss)
                monitor = TrialMonitor(search.stop, search.metric, search.mode, progress, n_modes, trial_loss)
                self.monitors[trial_id] = monitor
            reason = monitor.update(result)
            if reason:
                self.reasons[trial_id] = reason
            return reason is not None

        def stop_all(self) -> bool:
            return False

    return DivergenceStopper()


def _scheduler(search: SearchSpec, space: dict, total_steps: int):
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    if search.scheduler == "asha":
        return ASHAScheduler(
            time_attr="step",
            grace_period=search.asha.grace_period,
            reduction_factor=search.asha.reduction_factor,
            max_t=total_steps,
        )
    if search.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="step",
            perturbation_interval=search.pbt.perturbation_interval,
            hyperparam_mutations={k: space[k] for k in search.pbt.mutate},
            quantile_fraction=search.pbt.quantile_fraction,
            synch=False,
        )
    return None


def _trial_log(echo, reasons: dict, total_steps: int, metric: str, keys: list[str], scheduler: str):
    """A Tune callback that keeps every trial's reports (step, metric, learning rates in use, the
    config at that point: PBT changes it) and prints one line per ended trial (Tune's own status
    table is off)."""
    from ray import tune

    class TrialLog(tune.Callback):
        def __init__(self):
            self.history: dict[str, list[dict]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "step" in result:
                self.history.setdefault(trial.trial_id, []).append(
                    {
                        "step": int(result["step"]),
                        metric: _finite(result.get(metric)),
                        "lr_g": _finite(result.get("lr_g")),
                        "lr_d": _finite(result.get("lr_d")),
                        # the config that produced this result (PBT may already have changed trial.config)
                        "config": {k: result.get("config", trial.config).get(k) for k in keys},
                    }
                )

        def on_trial_complete(self, iteration, trials, trial, **info):
            m = trial.last_result or {}
            reason = reasons.get(trial.trial_id) or _reason_without_stopper(m, total_steps, scheduler)
            echo(f"trial {trial.trial_id}: {reason} at step {m.get('step', 0)}  " + _quality_text(m))

    return TrialLog()


def _quality_text(m: dict) -> str:
    return evaluation.headline(m) or "  ".join(
        f"{k} {m[k]:.3g}" for k in ("loss_d", "loss_g") if isinstance(m.get(k), (int, float))
    )


def _reason_without_stopper(m: dict, total_steps: int, scheduler: str | None) -> str:
    if not m:
        return "failed"
    if any(not math.isfinite(m.get(k, 0.0)) for k in ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g")):
        return "diverged_nan"
    if m.get("step", 0) >= total_steps:
        return "completed"
    return scheduler if scheduler in ("asha", "pbt") else "completed"


def _console(line: str) -> None:
    # A module-level function: Tune pickles its callbacks, and `print` itself may be patched.
    print(line, flush=True)


def search(
    spec: JobSpec, search_spec: SearchSpec, address: str | None = None, echo=_console, tracking: Tracking | None = None
) -> dict:
    """Run the search; returns the result document (README, `distgan search --json-out`)."""
    from distgan.train import preflight

    tracking = tracking or Tracking()
    info = preflight(spec)
    uri = tracking.prepare()
    storage = Path(spec.train.storage_path or DEFAULT_STORAGE).resolve()
    name = f"search-{spec.data.name}-{datetime.now():%Y%m%d-%H%M%S}"

    import ray
    from ray import tune

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, runtime_env=ray_runtime_env(), logging_level=logging.WARNING, configure_logging=True)
    try:
        parent = None
        if uri:
            run_dir = storage / name
            parent_id = tracking_lib.open_run(
                uri,
                tracking.experiment,
                spec.model_copy(update={"train": spec.train.model_copy(update={"name": name})}),
                run_dir,
                {"distgan.kind": "search", "dataset": spec.data.name},
            )
            from mlflow.entities import Param

            client = tracking_lib.mlflow_client(uri)
            search_params = {f"search.space.{k}": v for k, v in search_spec.space.items()} | {
                f"search.{k}": v for k, v in search_spec.model_dump(exclude={"space"}).items()
            }
            client.log_batch(parent_id, params=[Param(k, str(v)[:500]) for k, v in search_params.items()])
            exp_id = client.get_run(parent_id).info.experiment_id
            parent = {"uri": uri, "run_id": parent_id, "experiment_id": exp_id}
        dataset = data.ray_dataset(spec.data, info) if info.uses_ray_data else None
        space = tune_space(search_spec)
        trainable = tune.with_parameters(
            trial_fn, base=spec.model_dump(mode="json"), info=info.__dict__, tracking=parent, dataset=dataset
        )
        # One-worker trials are the worker: 1 CPU each. A multi-worker trial's own process holds no
        # CPU, or it would starve the Train workers it launches on a small machine (deadlock).
        per_trial = (
            {"cpu": spec.scaling.cpus_per_worker, "gpu": int(spec.scaling.gpu)}
            if spec.scaling.workers == 1
            else {"cpu": 0}
        )
        # Tune's new console output ignores verbose=0; the legacy one honours it (our lines suffice)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        n_modes = len(mixture_means(spec.data.name)) if info.kind == "mixture" else None
        if features.choose(spec, info) == "digits":  # labeled images: classes play the part of modes
            n_modes = digits_net.NUM_CLASSES
        stopper = _stopper(search_spec, n_modes, spec.loss.type) if search_spec.early_stop else None
        reasons = stopper.reasons if stopper else {}
        log = _trial_log(
            echo, reasons, spec.train.steps, search_spec.metric, list(search_spec.space), search_spec.scheduler
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, per_trial),
            param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=search_spec.trials if not any("grid" in d for d in search_spec.space.values()) else 1,
                metric=search_spec.metric,
                mode=search_spec.mode,
                scheduler=_scheduler(search_spec, space, spec.train.steps)
                if search_spec.early_stop or search_spec.scheduler == "pbt"
                else None,
                search_alg=_seeded_searcher(search_spec),
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), stop=stopper, verbose=0, callbacks=[log]),
        )
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        trials = _trial_rows(grid, reasons, spec.train.steps, search_spec, log.history)
        best = _best(trials, search_spec)
        doc = {
            "status": "finished" if best else "failed",
            "name": name,
            "trials": trials,
            "best": best["trial_id"] if best else None,
            "metrics": best["metrics"] if best else {},
            "steps": sum(t["steps"] for t in trials),
            "checkpoint": best["checkpoint"] if best else None,
            "mlflow_run_id": parent["run_id"] if parent else None,
            "logged_model_uri": None,
            "model_uri": None,
            "champion": None,
            "wall_s": round(wall, 2),
        }
        echo(results_table(trials, search_spec, doc["best"]))
        if parent:
            _record(doc, parent, trials, spec, info, tracking, search_spec)
        return doc
    finally:
        if started_ray:
            ray.shutdown()


def _seeded_searcher(search_spec: SearchSpec):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=search_spec.seed, max_concurrent=search_spec.max_concurrent)


def _trial_rows(grid, reasons: dict, total_steps: int, search_spec: SearchSpec, history: dict) -> list[dict]:
    rows = []
    for result in grid:
        m = dict(result.metrics or {})
        trial_id = m.get("trial_id") or Path(result.path).name
        reason = reasons.get(trial_id) or (
            _reason_without_stopper(m, total_steps, search_spec.scheduler) if result.error is None else "failed"
        )
        metrics = {
            k: (v if math.isfinite(v) else None)
            for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and _is_reported(k)
        }
        config = {k: _plain(v) for k, v in (result.config or {}).items() if k in search_spec.space}
        rows.append(
            {
                "trial_id": trial_id,
                "config": config,
                "metrics": metrics,
                "steps": int(m.get("step", 0)),
                "stop_reason": reason,
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
                "history": history.get(trial_id, []),
            }
        )
    return sorted(rows, key=lambda r: r["trial_id"])


# The loop's own metrics, not Tune's bookkeeping (training_iteration, time_total_s, pid, ...).
_LOOP = {"loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "d_accuracy", "critic_gap", "r1", "r2", "gp"}
_LOOP |= {"img_per_s", "step_time", "eval_s", "lr_g", "lr_d", "mixture_score"}


def _is_reported(key: str) -> bool:
    return key in _LOOP or is_quality(key) or key.startswith("kid_")  # kid_<net>_se too


def _plain(v):
    """numpy scalars from pandas -> Python values (JSON)."""
    return v.item() if hasattr(v, "item") else v


def _finite(v):
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _best(trials: list[dict], search_spec: SearchSpec) -> dict | None:
    scored = [
        t
        for t in trials
        if t["metrics"].get(search_spec.metric) is not None
        and t["checkpoint"]
        and t["stop_reason"] not in ("diverged_nan", "failed")
    ]
    if not scored:
        return None
    sign = 1 if search_spec.mode == "max" else -1
    return max(scored, key=lambda t: sign * t["metrics"][search_spec.metric])


def results_table(trials: list[dict], search_spec: SearchSpec, best: str | None) -> str:
    keys = list(search_spec.space)
    header = ["trial", *keys, search_spec.metric, "steps", "stop_reason"]
    rows = [header]
    for t in trials:
        cfg = [
            f"{t['config'].get(k):.3g}" if isinstance(t["config"].get(k), float) else str(t["config"].get(k))
            for k in keys
        ]
        q = t["metrics"].get(search_spec.metric)
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


def _record(
    doc: dict,
    parent: dict,
    trials: list[dict],
    spec: JobSpec,
    info: DataInfo,
    tracking: Tracking,
    search_spec: SearchSpec,
) -> None:
    """Parent run: table (CSV, Parquet), stability map, quality curves, best generator; child tags."""
    import pandas as pd

    from distgan import plots

    uri, client = parent["uri"], tracking_lib.mlflow_client(parent["uri"])
    children = client.search_runs(
        [parent["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}'"
    )
    stop_reasons = {t["trial_id"]: t["stop_reason"] for t in trials}
    for run in children:
        reason = stop_reasons.get(run.data.tags.get("distgan.trial_id"))
        if reason:
            client.set_tag(run.info.run_id, "stop_reason", reason)
            client.set_terminated(run.info.run_id, "FINISHED" if reason not in ("failed", "diverged_nan") else "FAILED")
    table = pd.DataFrame(
        [
            {
                "trial_id": t["trial_id"],
                **t["config"],
                **t["metrics"],
                "steps": t["steps"],
                "stop_reason": t["stop_reason"],
            }
            for t in trials
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(f"{tmp}/trials.csv", index=False)
        table.to_parquet(f"{tmp}/trials.parquet", index=False)
        Path(f"{tmp}/stability_map.png").write_bytes(plots.stability_map_png(trials, list(search_spec.space)))
        curves = {
            t["trial_id"]: [
                (h["step"], h[search_spec.metric]) for h in t["history"] if h[search_spec.metric] is not None
            ]
            for t in trials
        }
        Path(f"{tmp}/quality_over_steps.png").write_bytes(plots.trial_curves_png(curves, search_spec.metric))
        for f in ("trials.csv", "trials.parquet", "stability_map.png", "quality_over_steps.png"):
            client.log_artifact(parent["run_id"], f"{tmp}/{f}", "search")
    best = next((t for t in trials if t["trial_id"] == doc["best"]), None)
    if best:
        from mlflow.entities import Metric

        client.log_batch(
            parent["run_id"],
            metrics=[
                Metric(k, v, int(time.time() * 1000), best["steps"])
                for k, v in best["metrics"].items()
                if v is not None
            ],
        )
        client.set_tag(parent["run_id"], "best_trial", best["trial_id"])
        best_spec = validate_spec(apply_config(spec.model_dump(mode="json"), best["config"]), "best trial")
        generator = loop.checkpoint_generator(
            loop.read_checkpoint(best["checkpoint"]), best_spec.model, info.sample_shape
        )
        meta = registry.generator_meta(best_spec.model, info, "ema", best["steps"])
        doc["logged_model_uri"] = registry.log_generator(uri, parent["run_id"], generator, meta)
        if tracking.register:
            reg = registry.register(
                uri,
                doc["logged_model_uri"],
                tracking.register,
                info.kind,
                best["metrics"],
                tags={
                    "dataset": spec.data.name,
                    "job": doc["name"],
                    "run_id": parent["run_id"],
                    "trial": best["trial_id"],
                },
                description=f"best of {len(trials)} trials of {doc['name']} ({best['trial_id']}); "
                + _quality_text(best["metrics"]),
            )
            doc["model_uri"], doc["champion"] = reg["model_uri"], reg["champion"]
    client.set_terminated(parent["run_id"], "FINISHED" if doc["status"] == "finished" else "FAILED")
