"""distgan search: spec validation (exit 2 before any trial), early stops with reasons, PBT."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
import yaml
from conftest import REPO, read_json, run_cli
from mlflow.tracking import MlflowClient

from distgan.commands import search
from distgan.core import checkpoint
from distgan.errors import InputError
from distgan.runtime import tune
from distgan.spec.search import SearchSpec
from distgan.tracking.run import TrackingOptions


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "search.space.optim.lr_gg={loguniform: [1.0e-4, 1.0e-3]}",
            "search.space key 'optim.lr_gg' is not a job-spec key; did you mean 'optim.lr_g'?",
        ),
        (
            "search.space.optim.lr_g={normal: [0, 1]}",
            "search.space.optim.lr_g: {'normal': [0, 1]} is not a distribution",
        ),
        ("search.space.optim.lr_g={loguniform: [0, 1.0e-3]}", "search.space.optim.lr_g.loguniform: low must be > 0"),
        ("search.space.optim.lr_g={uniform: [0.1]}", "needs [low, high] numbers with low < high"),
        (
            "search.space.optim.lr_g={loguniform: [1.0e-4, 5]}",
            "search.space.optim.lr_g can draw 5, which the job spec refuses",
        ),
        ("search.space.loss.type={choice: [hinge, wgan]}", "search.space.loss.type can draw 'wgan'"),
        ("search.metric=fid_digits", "search.metric 'fid_digits' is not reported for grid25 data"),
        ("search.schedular=pbt", "unknown key 'search.schedular': did you mean 'scheduler'?"),
        ("search.trials=0", "search.trials: Input should be greater than or equal to 1"),
        ("search.asha.grace_period=5000", "search.asha.grace_period=5000 is more than train.steps=4000; lower it"),
    ],
)
def test_bad_search_specs_exit_2_before_any_trial(override, message, tmp_path):
    with pytest.raises(InputError) as e:
        search.load(None, [override])
    assert message in str(e.value)


def test_bad_search_spec_via_cli(tmp_path):
    r = run_cli("search", "--set", "search.space.optim.lr_gg={loguniform: [1.0e-4, 1.0e-3]}", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'optim.lr_g'?" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # no Ray, no MLflow store, no run directory
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "ring8.yaml", "search": {"space": {}}}))
    r = run_cli("search", "s.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "search.space is empty" in r.stderr


def test_default_search_spec_is_valid():
    spec, s = search.load(REPO / "jobs" / "search-grid25.yaml")
    assert spec.data.name == "grid25" and s.trials == 16 and s.metric == "mixture_score" and s.scheduler == "asha"


def test_image_search_ranks_by_the_feature_networks_fd_lower_is_better(tmp_path):
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump({"base": "digits.yaml", "search": {"space": {"optim.lr_g": {"loguniform": [1.0e-4, 1.0e-3]}}}})
    )
    _, s = search.load(tmp_path / "s.yaml")
    assert s.metric == "fd_digits" and s.mode == "min"
    _, s = search.load(tmp_path / "s.yaml", ["search.metric=classes_covered"])
    assert s.mode == "max"
    with pytest.raises(InputError, match="search.metric 'fd_inception' is not reported for digits data"):
        search.load(tmp_path / "s.yaml", ["search.metric=fd_inception"])
    with pytest.raises(InputError, match="no headline quality metric"):
        search.load(tmp_path / "s.yaml", ["metrics.feature_net=none"])


def _search_spec(tmp_path, space: dict, **search_keys) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "jobs" / "ring8.yaml"),
                "train": {
                    "steps": 400,
                    "batch_size": 128,
                    "eval_every": 50,
                    "checkpoint_every": 100,
                    "final_eval_seeds": 2,
                    "storage_path": str(tmp_path / "runs"),
                },
                "search": {"space": space, "trials": 1, "max_concurrent": 2, **search_keys},
            }
        )
    )
    return str(path)


@pytest.mark.cluster
def test_diverging_trials_end_early_healthy_run_on_and_best_is_registered(tmp_path, mlflow_server):
    # lr_d = 1 sends D's gradient norm to ~1e7 within 50 steps (lsgan, ring8): grad_explosion
    path = _search_spec(
        tmp_path,
        {"optim.lr_d": {"grid": [5.0e-4, 1.0]}, "loss.type": {"choice": ["lsgan"]}},
        scheduler="none",
        stop={"patience_evals": 100, "grace_evals": 100},
    )
    out = tmp_path / "result.json"
    # run from a git checkout: its commit tags the search's run and, from there, each trial's (trials run elsewhere)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    git_commit = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q"]
    subprocess.run([*git_commit, "--allow-empty", "-m", "search test"], check=True)
    r = run_cli(
        "search",
        path,
        "--json-out",
        str(out),
        "--tracking-uri",
        mlflow_server.uri,
        "--experiment",
        "search-test",
        "--register",
        "ring8-search",
        "--system-metrics",
        cwd=tmp_path,
        env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = read_json(out)
    by_lr = {t["config"]["optim.lr_d"]: t for t in res["trials"]}
    assert set(by_lr) == {5.0e-4, 1.0}
    diverged, healthy = by_lr[1.0], by_lr[5.0e-4]
    assert diverged["stop_reason"] == "grad_explosion" and diverged["steps"] == 50
    assert healthy["stop_reason"] == "completed" and healthy["steps"] == 400
    assert (
        res["best"] == healthy["trial_id"] and res["model_uri"] == "models:/ring8-search/1" and res["champion"] is True
    )
    assert "stop_reason" in r.stdout and "grad_explosion at step 50" in r.stdout
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("search-test")
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{res['mlflow_run_id']}'"
    )
    assert sorted(c.data.tags["stop_reason"] for c in children) == ["completed", "grad_explosion"]
    shared = ("git.commit", "mlflow.source.git.commit", "mlflow.user", "distgan.version")
    parent_tags = client.get_run(res["mlflow_run_id"]).data.tags
    assert len(parent_tags["git.commit"]) == 40
    for child in children:  # each trial's run page: its data, what it trained, where it came from
        assert {k: child.data.tags.get(k) for k in shared} == {k: parent_tags[k] for k in shared}
        assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["ring8"]
        assert child.data.tags["mlflow.source.name"] == "distgan search"
        assert "on ring8" in child.data.tags["mlflow.note.content"]
        assert "lsgan loss, 400 generator steps" in child.data.tags["mlflow.note.content"]
    # --system-metrics: the healthy trial's rank 0 sampled its node (every second here) for its ~400 steps
    (completed,) = [c for c in children if c.data.tags["stop_reason"] == "completed"]
    assert 0 <= completed.data.metrics["system/cpu_utilization_percentage"] <= 100
    assert {a.path for a in client.list_artifacts(res["mlflow_run_id"], "search")} == {
        "search/trials.csv",
        "search/trials.parquet",
        "search/stability_map.png",
        "search/quality_over_steps.png",
    }


@pytest.mark.cluster
def test_pbt_exploits_and_the_mutated_lr_is_in_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _search_spec(
        tmp_path,
        {"optim.lr_g": {"loguniform": [1.0e-4, 1.0e-3]}, "optim.lr_d": {"loguniform": [1.0e-4, 1.0e-3]}},
        trials=2,
        scheduler="pbt",
        early_stop=False,
        # synchronous: both trials meet at every perturbation point, so the lower one exploits the
        # other whatever the machine's load does to their speeds
        pbt={"perturbation_interval": 100, "quantile_fraction": 0.5, "synchronous": True},
    )
    spec, s = search.load(path, ["train.steps=600"])
    res = search.search(spec, s, echo=lambda line: None, tracking=TrackingOptions(enabled=False)).to_json()
    assert res["status"] == "finished" and len(res["trials"]) == 2
    assert len({t["trial_id"] for t in res["trials"]}) == 2  # each row is its own trial, exploited or not
    exploited = False
    for trial in res["trials"]:
        rows = trial["history"]
        assert trial["stop_reason"] == "completed" and rows and rows[-1]["step"] == 600, trial
        # nothing is exploited at the last step: the row's config is the one its last steps trained with
        assert trial["config"] == rows[-1]["config"]
        first = rows[0]["config"]["optim.lr_g"]
        for row in rows:
            # what the optimizer uses is what the (possibly mutated) config says, never the donor's
            assert row["lr_g"] == pytest.approx(row["config"]["optim.lr_g"]) and row["lr_d"] == pytest.approx(
                row["config"]["optim.lr_d"]
            )
            exploited |= row["config"]["optim.lr_g"] != first
    assert exploited, "PBT never exploited/explored"


@pytest.mark.cluster
def test_a_failed_trial_says_why_and_the_search_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the first trial process to reach step 100 is killed (once: the marker records it)
    monkeypatch.setenv("DISTGAN_FAULT_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("DISTGAN_FAULT_KILL_AT", "100:0")
    path = _search_spec(tmp_path, {"optim.lr_g": {"grid": [2.0e-4, 5.0e-4]}}, scheduler="none", early_stop=False)
    spec, s = search.load(path, ["train.steps=200", "train.max_failures=0"])
    lines = []
    res = search.search(spec, s, echo=lines.append, tracking=TrackingOptions(enabled=False)).to_json()
    failed = [t for t in res["trials"] if t["stop_reason"] == "failed"]
    (completed,) = [t for t in res["trials"] if t["stop_reason"] == "completed"]
    assert len(failed) == 1 and res["status"] == "finished" and res["best"] == completed["trial_id"]
    assert "died" in failed[0]["error"] and completed["error"] is None
    assert [row["step"] for row in failed[0]["history"]] == [50]
    said = [line for line in lines if line.startswith(f"trial {failed[0]['trial_id']}: failed after step 50: ")]
    assert said and "died" in said[0], lines


@pytest.mark.cluster
def test_a_trial_whose_process_dies_goes_on_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTGAN_FAULT_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("DISTGAN_FAULT_KILL_AT", "100:0")  # mid-run, after the step-50 checkpoint
    path = _search_spec(tmp_path, {"optim.lr_g": {"grid": [2.0e-4]}}, scheduler="none", early_stop=False)
    spec, s = search.load(path, ["train.steps=200"])  # train.max_failures: 3
    lines = []
    res = search.search(spec, s, echo=lines.append, tracking=TrackingOptions(enabled=False)).to_json()
    (trial,) = res["trials"]
    assert (tmp_path / "killed").exists() and res["status"] == "finished"
    assert (trial["stop_reason"], trial["steps"], trial["error"]) == ("completed", 200, None)
    assert [row["step"] for row in trial["history"]] == [50, 100, 150, 200]  # each step once: 100 replayed
    assert any(line.endswith("going on from its last checkpoint") and "after step 50 (" in line for line in lines)


@pytest.mark.cluster
def test_image_search_reports_fd_and_picks_the_lowest(tmp_path, mlflow_server):
    path = tmp_path / "search.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "jobs" / "digits.yaml"),
                "model": {"base_channels": 8},
                "train": {
                    "steps": 200,
                    "batch_size": 64,
                    "eval_every": 100,
                    "checkpoint_every": 100,
                    "eval_samples": 300,
                    "storage_path": str(tmp_path / "runs"),
                },
                "metrics": {"final_samples": 500},
                "scaling": {"cpus_per_worker": 1},
                "search": {
                    "space": {"optim.lr_g": {"grid": [2.0e-4, 1.0e-3]}},
                    "scheduler": "none",
                    "max_concurrent": 2,
                },
            }
        )
    )
    out = tmp_path / "result.json"
    r = run_cli(
        "search",
        str(path),
        "--json-out",
        str(out),
        "--tracking-uri",
        mlflow_server.uri,
        "--register",
        "digits-search",
        cwd=tmp_path,
        env={"DISTGAN_CACHE": str(tmp_path / "cache")},
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = read_json(out)
    fds = {t["trial_id"]: t["metrics"]["fd_digits"] for t in res["trials"]}
    assert len(fds) == 2 and all(v > 0 for v in fds.values())
    assert res["best"] == min(fds, key=fds.get)  # a distance: lower is better
    assert {"classes_covered", "precision", "recall"} <= set(res["trials"][0]["metrics"])
    version = MlflowClient(mlflow_server.uri).get_model_version("digits-search", "1")
    assert float(version.tags["metric.fd_digits"]) == pytest.approx(fds[res["best"]]) and res["champion"] is True


def test_trials_checkpoint_at_every_eval_and_only_then():
    spec, s = search.load(REPO / "jobs" / "search-grid25.yaml")  # eval 250, checkpoint 500
    trial = tune.trial_spec(spec.model_dump(mode="json"), {"optim.lr_g": 1.0e-3})
    assert (trial.train.eval_every, trial.train.checkpoint_every, trial.optim.lr_g) == (250, 250, 1.0e-3)


def test_the_stopper_counts_evals_only():
    s = SearchSpec(space={"optim.lr_g": {"grid": [1.0e-3]}}, metric="mixture_score", mode="max")
    s.stop.grace_evals, s.stop.patience_evals = 1, 1
    stopper = tune.DivergenceStopper(s, n_modes=8)
    losses = {"loss_d": 1.2, "loss_g": 0.8, "grad_norm_d": 1.0, "grad_norm_g": 1.0}
    evals = {"mixture_score": 6.0, "modes": 6.0, "high_quality": 0.5}
    reports = [losses | evals | {"step": 100}, losses | {"step": 150}, losses | {"step": 300}]
    reports.append(losses | evals | {"step": 200})
    # checkpoint-only reports (no metric) are neither grace nor patience: the second eval ends it
    assert [stopper("t1", r) for r in reports] == [False, False, False, True]
    assert stopper.monitors["t1"].evals == 2 and stopper.reasons == {"t1": "no_progress"}


def _result(metrics, checkpoints=(), path="/runs/search/trial_a"):
    ckpt = lambda p: SimpleNamespace(path=p, filesystem=pafs.LocalFileSystem())  # noqa: E731
    return SimpleNamespace(
        metrics=metrics,
        path=path,
        error=None,
        config={"optim.lr_g": 1.0e-3},
        checkpoint=ckpt(checkpoints[-1][0]) if checkpoints else None,
        best_checkpoints=[(ckpt(p), m) for p, m in checkpoints],
    )


def test_a_trial_row_is_the_trial_whose_directory_it_is():
    # PBT hands an exploiting trial the result of the checkpoint it loads: "a"'s, trial_id and all
    s = SearchSpec(space={"optim.lr_g": {"grid": [1.0e-3]}}, metric="mixture_score", mode="max")
    log = tune.TrialLog(print, {}, 400, "mixture_score", ["optim.lr_g"], "pbt")
    for trial_id, score in [("a", 1.0), ("b", 2.0)]:
        trial = SimpleNamespace(trial_id=trial_id, path=f"/runs/search/trial_{trial_id}", config={"optim.lr_g": 1e-3})
        log.on_trial_start(0, [], trial)
        log.on_trial_result(0, [], trial, {"trial_id": trial_id, "step": 400, "mixture_score": score})
    donors = {"trial_id": "a", "step": 400, "mixture_score": 1.0}
    grid = [_result(donors, path="/runs/search/trial_a"), _result(donors, path="/runs/search/trial_b")]
    rows = tune.trial_rows(grid, {}, 400, s, log.history, log.evals, log.ids)
    assert [r["trial_id"] for r in rows] == ["a", "b"]
    assert [[h["mixture_score"] for h in r["history"]] for r in rows] == [[1.0], [2.0]]


def test_a_trial_row_is_its_best_eval_with_that_evals_checkpoint():
    s = SearchSpec(space={"optim.lr_g": {"grid": [1.0e-3]}}, metric="mixture_score", mode="max")
    at = lambda step, score: {"trial_id": "a", "step": step, "mixture_score": score, "modes": score}  # noqa: E731
    # one-worker trial: Tune holds its checkpoints with the metrics reported beside them
    one = _result(at(400, 24.2), [("/c/200", at(200, 25.8)), ("/c/400", at(400, 24.2))])
    (row,) = tune.trial_rows([one], {}, 400, s, {})
    assert (row["steps"], row["eval_step"], row["checkpoint"]) == (400, 200, "/c/200")
    assert row["metrics"]["mixture_score"] == 25.8 and row["metrics"]["modes"] == 25.8
    # multi-worker trial: Tune holds no checkpoint; each eval forwarded its Train checkpoint's path
    log = tune.TrialLog(print, {}, 400, "mixture_score", ["optim.lr_g"], "none")
    trial = SimpleNamespace(trial_id="a", config={"optim.lr_g": 1.0e-3})
    for step, score in [(200, 25.8), (400, 24.2)]:
        log.on_trial_result(0, [], trial, at(step, score) | {"checkpoint_path": f"/t/{step}"})
    multi = _result(at(400, 24.2) | {"checkpoint_path": "/t/400"})
    (row,) = tune.trial_rows([multi], {}, 400, s, log.history, log.evals)
    assert (row["steps"], row["eval_step"], row["checkpoint"], row["metrics"]["mixture_score"]) == (
        400,
        200,
        "/t/200",
        25.8,
    )


def _tiny_ring8(tmp_path, train: dict, scaling: dict | None = None, **search_keys) -> str:
    path = tmp_path / "search.yaml"
    tree = {
        "base": str(REPO / "jobs" / "ring8.yaml"),
        "model": {"g_hidden": [64, 64], "d_hidden": [64, 64]},
        "train": {"batch_size": 64, "final_eval_seeds": 1, "storage_path": str(tmp_path / "runs"), **train},
        "search": {
            "space": {"optim.lr_g": {"grid": [5.0e-4]}},
            "scheduler": "none",
            "max_concurrent": 1,
            "stop": {"grace_evals": 100, "patience_evals": 100},
            **search_keys,
        },
    }
    if scaling:
        tree["scaling"] = scaling
    path.write_text(yaml.safe_dump(tree))
    return str(path)


@pytest.mark.cluster
def test_checkpoints_between_evals_do_not_abort_a_search(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _tiny_ring8(tmp_path, {"steps": 300, "eval_every": 100, "checkpoint_every": 150})
    spec, s = search.load(path)
    res = search.search(spec, s, echo=lambda line: None, tracking=TrackingOptions(enabled=False)).to_json()
    assert res["status"] == "finished"
    (trial,) = res["trials"]
    assert trial["stop_reason"] == "completed" and trial["steps"] == 300
    assert [row["step"] for row in trial["history"]] == [100, 200, 300]  # evals only, each with its checkpoint
    assert checkpoint.read(res["checkpoint"])["step"] == trial["eval_step"]


@pytest.mark.cluster
def test_two_worker_search_registers_the_generator_measured(tmp_path, mlflow_server):
    path = _tiny_ring8(
        tmp_path,
        {"steps": 200, "eval_every": 50, "checkpoint_every": 100, "max_failures": 0},
        {"workers": 2, "cpus_per_worker": 1},
    )
    out = tmp_path / "result.json"
    r = run_cli(
        "search",
        path,
        "--json-out",
        str(out),
        "--tracking-uri",
        mlflow_server.uri,
        "--experiment",
        "search-2w",
        "--register",
        "ring8-2w",
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["model_uri"] == "models:/ring8-2w/1"
    (best,) = [t for t in res["trials"] if t["trial_id"] == res["best"]]
    assert best["steps"] == 200 and [row["step"] for row in best["history"]] == [50, 100, 150, 200]
    # the registered generator was saved at the step its metrics were measured
    measured = {row["step"]: row["mixture_score"] for row in best["history"]}
    assert checkpoint.read(res["checkpoint"])["step"] == best["eval_step"]
    assert best["metrics"]["mixture_score"] == pytest.approx(measured[best["eval_step"]])
    assert best["metrics"]["mixture_score"] == max(measured.values())
    version = MlflowClient(mlflow_server.uri).get_model_version("ring8-2w", "1")
    for key in ("modes", "high_quality"):  # the version's tags: the measured numbers (mixture_score = their sum)
        assert float(version.tags[f"metric.{key}"]) == pytest.approx(best["metrics"][key])


def test_the_trial_log_pickles_even_when_print_was_swapped(monkeypatch):
    # Ray's tqdm patch may replace builtins.print in the driver before the Tuner pickles its callbacks
    import builtins
    import pickle

    log = tune.TrialLog(print, {}, 400, "mixture_score", ["optim.lr_g"], "none")
    monkeypatch.setattr(builtins, "print", lambda *a, **k: None)
    assert pickle.loads(pickle.dumps(log)).keys == ["optim.lr_g"]
