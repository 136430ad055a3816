"""Ctrl-C / SIGTERM of `distgan train`: a checkpoint at the step it stopped, the MLflow run KILLED,
exit 130 / 143, and the same name again resumes there with no metrics row doubled or missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import metric_steps, read_json, run_cli

pytestmark = pytest.mark.cluster

EVAL_EVERY = 10
NAME = "sig"


def _args(tmp_path, uri: str) -> list[str]:
    return [
        "train",
        "--workers",
        "1",
        "--name",
        NAME,
        "--tracking-uri",
        uri,
        "--experiment",
        f"sig-{tmp_path.name}",
        "--set",
        f"train.storage_path={tmp_path}",
        "--set",
        f"train.eval_every={EVAL_EVERY}",
        "--set",
        "train.checkpoint_every=100000",  # the only checkpoint is the one the signal asks for
    ]


def _interrupt(tmp_path, uri: str, sig: signal.Signals) -> tuple[dict, int, str]:
    """`distgan train` for 100,000 steps, sent `sig` after its third eval: its result, exit code and output."""
    args = _args(tmp_path, uri)
    out = tmp_path / "a.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distgan", *args, "--set", "train.steps=100000", "--json-out", str(out)],
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(metric_steps(tmp_path / NAME)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read()[-3000:] if proc.poll() else ""
            )
            time.sleep(0.2)
        t_signal = time.monotonic()
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
        stop_s = time.monotonic() - t_signal
    finally:
        if proc.poll() is None:
            proc.kill()
    res = read_json(out) if out.exists() else {}
    print(f"{sig.name}: stopped at step {res.get('steps')}, exit {proc.returncode} {stop_s:.1f}s after it")
    return res, proc.returncode, output


def _assert_killed_at_checkpoint(tmp_path, uri: str, res: dict, sig: signal.Signals) -> int:
    """The run stopped at a step with its checkpoint, every eval up to there recorded once, MLflow KILLED."""
    from mlflow.tracking import MlflowClient

    stopped = res["steps"]
    assert res["status"] == "killed" and res["interrupted_by"] == sig.name
    assert stopped > 0 and stopped % 10 == 0  # the loop checks for a stop every 10 steps
    assert res["checkpoint"] and res["checkpoint"].startswith(str(tmp_path / NAME))
    assert _checkpoint_step(res["checkpoint"]) == stopped  # the checkpoint is the step it stopped at
    assert metric_steps(tmp_path / NAME) == list(range(EVAL_EVERY, stopped + 1, EVAL_EVERY))
    client = MlflowClient(uri)
    assert client.get_run(res["mlflow_run_id"]).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(res["mlflow_run_id"], "loss_d")] == list(
        range(EVAL_EVERY, stopped + 1, EVAL_EVERY)
    )
    return stopped


def test_sigterm_checkpoints_ends_killed_and_rerun_resumes(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    res, code, output = _interrupt(tmp_path, mlflow_server.uri, signal.SIGTERM)
    assert code == 143, output[-3000:]
    stopped = _assert_killed_at_checkpoint(tmp_path, mlflow_server.uri, res, signal.SIGTERM)
    run_id = res["mlflow_run_id"]

    # the same name again: resumes at that step and ends at exactly train.steps
    total = stopped + 30
    out = tmp_path / "b.json"
    r = run_cli(
        *_args(tmp_path, mlflow_server.uri), "--set", f"train.steps={total}", "--json-out", str(out), cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["resumed_from"] == stopped and res["steps"] == total
    assert metric_steps(tmp_path / NAME) == list(range(EVAL_EVERY, total + 1, EVAL_EVERY))  # none doubled
    assert res["mlflow_run_id"] == run_id
    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss_d")] == list(
        range(EVAL_EVERY, total + 1, EVAL_EVERY)
    )


def test_ctrl_c_checkpoints_and_ends_killed(tmp_path, mlflow_server):
    res, code, output = _interrupt(tmp_path, mlflow_server.uri, signal.SIGINT)
    assert code == 130, output[-3000:]
    _assert_killed_at_checkpoint(tmp_path, mlflow_server.uri, res, signal.SIGINT)


def _checkpoint_step(path: str) -> int:
    from distgan.core import checkpoint

    return checkpoint.read(path)["step"]
