"""The health monitor of plain training: on recorded traces of real runs (benchmarks/record_traces.py)
and on constructed reports, one per signal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distgan.core.health import FIXES, HEALTH_SIGNALS, HealthMonitor, fix
from distgan.core.losses import LOSS_TYPES
from distgan.core.stopping import TrialMonitor
from distgan.spec.search import StopRules

TRACES = Path(__file__).parent / "data" / "traces"
HEALTHY = ("grid25_nonsaturating", "grid25_hinge", "grid25_wgan_gp")
# trace -> (the signal that must fire first, a fragment of its fix, the step it must fire by)
FAILING = {
    "digits_minimax_ncritic5": ("d_collapse", "the minimax G loss saturates; use loss.type=nonsaturating", 1000),
    "grid25_lsgan_lr1": ("diverged_nan", "the least-squares loss is unbounded", 50),
    "grid25_lsgan_lr01": ("grad_explosion", "the least-squares loss has unbounded gradients", 50),
}


def _trace(name: str) -> dict:
    return json.loads((TRACES / f"{name}.json").read_text())


def _watch(doc: dict) -> HealthMonitor:
    n_modes = 25 if doc["spec"]["data"]["name"] == "grid25" else None
    mon = HealthMonitor(doc["spec"]["loss"]["type"], n_modes=n_modes)
    for report in doc["evals"]:
        mon.update(report["step"], report)
    return mon


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_runs_stay_ok(name):
    doc = _trace(name)
    assert len(doc["evals"]) >= 16 and all(math.isfinite(v) for e in doc["evals"] for v in e.values())
    assert max(e["modes"] for e in doc["evals"]) >= 20  # it is healthy: it spread over the grid
    assert _watch(doc).report() == "ok"


@pytest.mark.parametrize("name", FAILING)
def test_failing_runs_fire_their_signal_with_its_fix(name):
    signal, fix_text, by_step = FAILING[name]
    first = _watch(_trace(name)).report()[0]
    assert first["name"] == signal and first["step"] <= by_step, first
    assert first["message"].startswith(f"step {first['step']}: ") and fix_text in first["message"], first["message"]


def test_the_minimax_run_is_d_winning_outright_not_a_crash():
    doc = _trace("digits_minimax_ncritic5")
    first = _watch(doc).report()[0]
    at = next(e for e in doc["evals"] if e["step"] == first["step"])
    assert at["d_accuracy"] >= 0.99 and at["loss_d"] < 0.1 and at["grad_norm_d"] < 10
    assert f"accuracy {at['d_accuracy']:.2f}" in first["message"]


def test_wgan_gp_trace_is_the_old_rules_false_alarm():
    """Without d_accuracy and critic_gap, and without the loss type (what the monitor saw before),
    the loss_d floor rule stops this healthy run; with them it does not."""
    doc = _trace("grid25_wgan_gp")
    old_view = [{k: v for k, v in e.items() if k not in ("d_accuracy", "critic_gap")} for e in doc["evals"]]
    blind = TrialMonitor(StopRules(), "modes", "max")
    assert "d_collapse" in [blind.update(e) for e in old_view]
    aware = TrialMonitor(StopRules(), "modes", "max", loss="wgan_gp")
    assert all("d_collapse" not in aware.signals(e) for e in doc["evals"])


# Constructed reports: (loss, reports as (step, changes to a healthy report), signal, its step, fix fragment)
def _ok(**more) -> dict:
    return {
        "loss_d": 1.2,
        "loss_g": 0.8,
        "grad_norm_d": 1.0,
        "grad_norm_g": 1.0,
        "d_accuracy": 0.7,
        "critic_gap": 0.5,
    } | more


def _critic(gap: float) -> dict:
    return {
        k: v for k, v in _ok(loss_d=-gap, critic_gap=gap).items() if k != "d_accuracy"
    }  # no accuracy: no classifier


CASES = {
    "NaN": (
        "nonsaturating",
        [(100, _ok()), (200, _ok(loss_g=math.nan))],
        "diverged_nan",
        200,
        "lower optim.lr_d and optim.lr_g",
    ),
    "exploding D gradient": ("hinge", [(100, _ok(grad_norm_d=5e4))], "grad_explosion", 100, "grad_norm_d 5e+04 > 1000"),
    "minimax D wins": (
        "minimax",
        [(s, _ok(loss_d=0.01, d_accuracy=1.0)) for s in (100, 200, 300)],
        "d_collapse",
        300,
        "accuracy 1.00, 3 evals running): G gets no gradient",
    ),
    "nonsaturating D wins": (
        "nonsaturating",
        [(s, _ok(d_accuracy=0.995)) for s in (100, 200, 300)],
        "d_collapse",
        300,
        "add loss.r1",
    ),
    "wgan_gp critic runs away": (
        "wgan_gp",
        [(s * 100, _critic(g)) for s, g in enumerate((1, 2, 1.5, 3, 9, 12, 20), 1)],
        "d_collapse",
        700,
        "critic_gap 20, 10x its early size",
    ),
    "modes lost": (
        "nonsaturating",
        [(s * 100, _ok(modes=m)) for s, m in enumerate((10, 20, 22, 21, 6), 1)],
        "mode_collapse",
        500,
        "6 of 25 modes covered, at most 22 so far",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_signal_names_its_step_numbers_and_fix(case):
    loss, reports, signal, step, text = CASES[case]
    mon = HealthMonitor(loss, n_modes=25)
    fired = [s for at, report in reports for s in mon.update(at, report)]
    assert fired and fired[0].name == signal and fired[0].step == step, fired
    assert fired[0].message.startswith(f"step {step}: ") and text in fired[0].message, fired[0].message
    assert mon.report()[0] == {"name": signal, "step": step, "message": fired[0].message}


def test_report_keeps_the_first_firing_of_each_signal_in_step_order():
    mon = HealthMonitor("minimax", StopRules(d_collapse_evals=1, grace_evals=0), n_modes=25)
    assert mon.update(100, _ok(modes=20.0)) == []
    assert [s.name for s in mon.update(200, _ok(d_accuracy=1.0, modes=20.0))] == ["d_collapse"]
    assert [s.name for s in mon.update(300, _ok(d_accuracy=1.0, modes=5.0))] == ["d_collapse", "mode_collapse"]
    assert [(s["name"], s["step"]) for s in mon.report()] == [("d_collapse", 200), ("mode_collapse", 300)]


def test_search_only_signals_are_not_health_failures():
    # flat progress for many evals, every converged target met: a search would stop it, training is fine
    mon = HealthMonitor("hinge", StopRules(grace_evals=0, patience_evals=1, converged={"modes": 20}), n_modes=25)
    for step in range(100, 1100, 100):
        assert mon.update(step, _ok(modes=24.0)) == []
    assert mon.report() == "ok"


@pytest.mark.parametrize("loss", LOSS_TYPES)
def test_every_signal_has_a_fix_for_every_loss(loss):
    assert all(fix(signal, loss) for signal in HEALTH_SIGNALS)
    assert set(FIXES) == set(HEALTH_SIGNALS)


def test_the_fix_depends_on_the_loss():
    assert "loss.type=nonsaturating" in fix("d_collapse", "minimax")
    assert "loss.type=nonsaturating" not in fix("d_collapse", "nonsaturating")
    assert "loss.gp" in fix("d_collapse", "wgan_gp")
