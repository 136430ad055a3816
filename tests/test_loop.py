"""The training loop in one process, without Ray or MLflow (`LocalSession`): eval and checkpoint
cadence, the record, resume, divergence. Seconds, not minutes."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from distgan import data
from distgan.core import checkpoint, loop
from distgan.spec.job import load_spec
from distgan.tracking.record import RunRecord

SMALL = [
    "train.batch_size=64",
    "train.eval_every=20",
    "train.checkpoint_every=30",
    "train.eval_samples=200",
    "train.final_eval_seeds=1",
    "model.g_hidden=[32,32]",
    "model.d_hidden=[32,32]",
]


def _run(tmp_path, steps: int, *overrides: str):
    spec = load_spec(None, [*SMALL, f"train.steps={steps}", *overrides])
    session = loop.LocalSession(tmp_path / "run")
    record = RunRecord(tmp_path / "run" / "distgan")
    return loop.run(spec, data.inspect(spec.data), session, record), session


def _recorded_steps(tmp_path) -> list[int]:
    return [
        json.loads(line)["step"] for line in (tmp_path / "run" / "distgan" / "metrics.jsonl").read_text().splitlines()
    ]


def test_eval_and_checkpoint_cadence(tmp_path):
    result, session = _run(tmp_path, 60)
    assert result["status"] == "finished" and result["steps"] == 60 and result["resumed_from"] == 0
    assert [r["step"] for r in session.reports] == [20, 30, 40, 60]  # evals, checkpoints, and the end
    assert _recorded_steps(tmp_path) == [20, 40, 60]  # evals only
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*")) == [
        "checkpoint_0000030",
        "checkpoint_0000060",
    ]
    state = checkpoint.read(session.latest_checkpoint())
    assert state["step"] == 60 and len(state["rng"]) == 1
    assert {"modes", "high_quality", "reverse_kl", "modes_se", "loss_d", "grad_norm_g"} <= set(result["metrics"])


def test_a_rerun_resumes_from_the_latest_checkpoint(tmp_path):
    _run(tmp_path, 60)
    result, session = _run(tmp_path, 90)
    assert result["resumed_from"] == 60 and result["steps"] == 90
    assert [r["step"] for r in session.reports] == [80, 90]
    assert _recorded_steps(tmp_path) == [20, 40, 60, 80, 90]
    # a run resumed at its end reports the recorded final metrics and trains nothing
    result, session = _run(tmp_path, 90)
    assert result["resumed_from"] == 90 and result["steps"] == 90 and session.reports == []
    assert result["metrics"]["modes"] == pytest.approx(
        json.loads((tmp_path / "run/distgan/metrics.jsonl").read_text().splitlines()[-1])["modes"]
    )


def _poisoned_after(n: int):
    """data.batches whose stream turns to Inf after n batches: D's loss goes NaN, as in a real divergence."""
    real_batches = data.batches

    def batches(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            yield batch if i < n else batch * float("inf")

    return batches


def test_a_diverging_run_ends_diverged_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "batches", _poisoned_after(45))
    result, session = _run(tmp_path, 200, "train.checkpoint_every=20")
    assert result["status"] == "diverged" and result["steps"] == 60  # the first report after step 45
    assert session.reports[-1]["step"] == result["steps"]
    newest = checkpoint.read(session.latest_checkpoint())
    assert newest["step"] < result["steps"]  # the diverged state was never saved


def test_the_health_monitor_names_the_classic_failure_and_can_stop_the_run(tmp_path):
    """The tutorial GAN (minimax loss, 5 D steps per G step): D wins outright by step 300."""
    spec = load_spec(REPO / "jobs" / "seed-minimax.yaml", ["train.stop_on_failure=true", "train.eval_samples=300"])
    lines = []
    session = loop.LocalSession(tmp_path / "run", echo=lines.append)
    result = loop.run(spec, data.inspect(spec.data), session, RunRecord(tmp_path / "run" / "distgan"))
    assert result["status"] == "diverged" and result["steps"] < 1000
    (signal,) = result["health"]
    assert signal["name"] == "d_collapse" and signal["step"] == result["steps"]
    assert "use loss.type=nonsaturating" in signal["message"]
    assert any(line.startswith("health: step") and "D wins outright" in line for line in lines)
    assert any("a health signal fired" in line for line in lines)


def test_a_healthy_run_reports_ok(tmp_path):
    result, _ = _run(tmp_path, 60)
    assert result["health"] == "ok"
