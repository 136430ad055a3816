"""The driver of `distgan search` killed mid-search: `distgan search --resume DIR` goes on. The trial
that had ended is not run again and keeps its stop reason, the one that was running goes on from
its checkpoint, and MLflow holds one parent run with one child per trial, no step twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, metric_steps, read_json, run_cli
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster

STEPS, EVAL_EVERY = 10_000, 1000  # ring8's tiny MLP runs some 500 steps/s here


def _spec(tmp_path: Path) -> Path:
    # run one after the other: lr_d = 1 diverges (stopped at its first eval), then the healthy one
    path = tmp_path / "search.yaml"
    tree = {
        "base": str(REPO / "jobs" / "ring8.yaml"),
        "model": {"g_hidden": [64, 64], "d_hidden": [64, 64]},
        "loss": {"type": "lsgan"},
        "train": {
            "steps": STEPS,
            "eval_every": EVAL_EVERY,
            "batch_size": 64,
            "final_eval_seeds": 1,
            "storage_path": str(tmp_path / "runs"),
        },
        "search": {
            "space": {"optim.lr_d": {"grid": [1.0, 5.0e-4]}},
            "scheduler": "none",
            "max_concurrent": 1,
            "stop": {"grace_evals": 100, "patience_evals": 100},
        },
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def _trial_dirs(search_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in search_dir.glob("*/distgan/metrics.jsonl"))


def _kill_driver_mid_search(tmp_path: Path, uri: str) -> tuple[Path, Path, str]:
    """Start the search; SIGKILL its driver once the first trial has ended and the second has
    checkpointed three times. Returns (the search directory, the second trial's directory, the
    driver's output)."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "distgan", "search", str(_spec(tmp_path)), "--tracking-uri", uri,
         "--experiment", "resume", "--register", "ring8-resumed"],
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: what it started is ended with it below
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()[-3000:]
            searches = list((tmp_path / "runs").glob("search-*"))
            trials = _trial_dirs(searches[0]) if searches else []
            if len(trials) == 2 and max(metric_steps(trials[1]), default=0) >= 3 * EVAL_EVERY:
                break
            time.sleep(0.2)
        time.sleep(3)  # the experiment's state is saved every second
        driver.kill()
        output = driver.communicate(timeout=30)[0]
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # the local Ray it started, had it outlived its driver
        except ProcessLookupError:
            pass
    return searches[0], trials[1], output


def test_a_search_whose_driver_was_killed_resumes_without_rerunning_ended_trials(tmp_path, mlflow_server):
    search_dir, running, output = _kill_driver_mid_search(tmp_path, mlflow_server.uri)
    (ended,) = [t for t in _trial_dirs(search_dir) if t != running]
    assert metric_steps(ended) == [EVAL_EVERY]  # stopped at its first eval (gradients exploded, or NaN)
    ((ended_id, reason),) = re.findall(r"^trial (\S+): (\S+) at step", output, re.M)
    assert reason in ("grad_explosion", "diverged_nan") and ended_id in ended.name
    killed_at = max(metric_steps(running))
    assert EVAL_EVERY < killed_at < STEPS

    out = tmp_path / "resumed.json"
    r = run_cli("search", "--resume", str(search_dir), "--tracking-uri", mlflow_server.uri, "--experiment",
                "resume", "--register", "ring8-resumed", "--json-out", str(out), cwd=tmp_path, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = read_json(out)
    rows = {t["trial_id"]: t for t in res["trials"]}
    assert len(rows) == 2
    diverged = next(t for t in rows.values() if t["config"]["optim.lr_d"] == 1.0)
    healthy = next(t for t in rows.values() if t["config"]["optim.lr_d"] == 5.0e-4)
    # the ended trial kept its reason and was not run again (the resumed driver never reports it)
    assert (diverged["trial_id"], diverged["stop_reason"], diverged["steps"]) == (ended_id, reason, EVAL_EVERY)
    assert f"trial {diverged['trial_id']}:" not in r.stdout
    assert metric_steps(ended) == [EVAL_EVERY]
    # the running one went on from its checkpoint to the end, every eval once in its record and history
    assert (healthy["stop_reason"], healthy["steps"]) == ("completed", STEPS)
    evals = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert metric_steps(running) == evals
    assert [h["step"] for h in healthy["history"]] == evals
    assert res["best"] == healthy["trial_id"] and res["model_uri"] == "models:/ring8-resumed/1"

    # MLflow: one parent (the one the first driver opened), one child per trial, each step once
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("resume")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`distgan.kind` = 'search'")
    assert [p.info.run_id for p in parents] == [res["mlflow_run_id"]]
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["best_trial"] == healthy["trial_id"]
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{res['mlflow_run_id']}'"
    )
    by_trial = {c.data.tags["distgan.trial_id"]: c for c in children}
    assert sorted(by_trial) == sorted(rows) and len(children) == 2
    assert by_trial[diverged["trial_id"]].data.tags["stop_reason"] == reason
    assert by_trial[healthy["trial_id"]].data.tags["stop_reason"] == "completed"
    for trial_id, steps in ((diverged["trial_id"], [EVAL_EVERY]), (healthy["trial_id"], evals)):
        history = client.get_metric_history(by_trial[trial_id].info.run_id, "loss_d")
        assert sorted(m.step for m in history) == steps
    print(f"driver killed at step {killed_at} of the running trial; the resumed search took {res['wall_s']}s")


def test_resume_errors_before_ray(tmp_path):
    r = run_cli("search", "--resume", str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.returncode == 2 and f"no search to resume at {tmp_path / 'nothing'}" in r.stderr
    r = run_cli("search", "jobs/search-grid25.yaml", "--resume", "x", cwd=tmp_path)
    assert r.returncode == 2 and "--resume runs the search with the spec it started with" in r.stderr
