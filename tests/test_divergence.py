"""The early-stop signals on constructed metric streams."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distgan.core.stopping import TrialMonitor, ranking_eval
from distgan.spec.search import StopRules


def _healthy(i: int) -> dict:
    return {
        "loss_d": 1.2,
        "loss_g": 0.8,
        "grad_norm_d": 1.0,
        "grad_norm_g": 1.0,
        "modes": min(25.0, 10.0 + 3 * i),
        "mixture_score": min(25.0, 10.0 + 3 * i),
    }


def _run(stream, **rules) -> list:
    mon = TrialMonitor(StopRules(**rules), "mixture_score", "max")
    return [mon.update(m) for m in stream]


def test_healthy_run_is_never_stopped():
    assert _run([_healthy(i) for i in range(6)], patience_evals=10) == [None] * 6


def test_nan_and_inf_stop_at_once():
    for bad in (math.nan, math.inf):
        assert _run([_healthy(0), _healthy(1) | {"loss_g": bad}]) == [None, "diverged_nan"]


def test_gradient_explosion():
    assert _run([_healthy(0) | {"grad_norm_d": 5e3}], grad_norm_max=1e3) == ["grad_explosion"]
    assert _run([_healthy(0) | {"grad_norm_g": 999.0}], grad_norm_max=1e3) == [None]


def test_d_collapse_needs_consecutive_evals():
    win = lambda g: _healthy(0) | {"loss_d": 0.01, "loss_g": g}  # noqa: E731
    assert _run([win(1.0), win(2.0), win(3.0), win(4.0)], d_collapse_evals=3, patience_evals=10) == [
        None,
        None,
        None,
        "d_collapse",
    ]
    # the streak breaks when G's loss stops rising
    assert _run([win(1.0), win(2.0), win(1.5), win(2.0), win(3.0)], d_collapse_evals=3, patience_evals=10) == [None] * 5


def test_mode_collapse_after_grace():
    modes = [20.0, 22.0, 21.0, 8.0]
    stream = [_healthy(0) | {"modes": m, "mixture_score": m} for m in modes]
    assert _run(stream, grace_evals=2, mode_fraction=0.5, patience_evals=10) == [None, None, None, "mode_collapse"]
    # inside the grace period the same drop is tolerated
    assert _run(stream, grace_evals=4, mode_fraction=0.5, patience_evals=10) == [None] * 4


def test_no_progress_after_patience():
    flat = [_healthy(0) | {"modes": 12.0, "mixture_score": 12.0}] * 6
    # best set at eval 1; evals 2-4 bring nothing: the third of them ends it
    assert _run(flat, grace_evals=1, patience_evals=3) == [
        None,
        None,
        None,
        "no_progress",
        "no_progress",
        "no_progress",
    ]


def test_converged_when_all_targets_met():
    stream = [
        _healthy(0) | {"modes": 24.0, "high_quality": 0.9},
        _healthy(0) | {"modes": 25.0, "high_quality": 0.7},
        _healthy(0) | {"modes": 25.0, "high_quality": 0.85},
    ]
    assert _run(stream, converged={"modes": 25, "high_quality": 0.8}, patience_evals=10) == [None, None, None]
    # met on two consecutive evals: only then does the trial stop
    stream.append(_healthy(0) | {"modes": 25.0, "high_quality": 0.82})
    assert _run(stream, converged={"modes": 25, "high_quality": 0.8}, patience_evals=10) == [
        None,
        None,
        None,
        "converged",
    ]


def test_one_favourable_eval_does_not_converge():
    # targets met once, missed, met once again: never two evals running
    hq = [0.85, 0.7, 0.9, 0.75, 0.81]
    stream = [_healthy(0) | {"modes": 25.0, "high_quality": h} for h in hq]
    assert _run(stream, converged={"modes": 25, "high_quality": 0.8}, patience_evals=10) == [None] * 5


def test_progress_in_any_part_of_a_composite_score_counts():
    # a mode lost once (25 -> 24) while high_quality keeps rising: the score stalls, the run improves
    stream = [
        _healthy(0) | {"modes": m, "high_quality": hq, "mixture_score": m + hq}
        for m, hq in [(25, 0.05), (24, 0.08), (24, 0.11), (24, 0.14), (24, 0.17), (24, 0.20)]
    ]
    composite = TrialMonitor(StopRules(grace_evals=1, patience_evals=3), "mixture_score", "max")
    assert [composite.update(m) for m in stream][-1] == "no_progress"
    parts = TrialMonitor(StopRules(grace_evals=1, patience_evals=3), "mixture_score", "max", ["modes", "high_quality"])
    assert [parts.update(m) for m in stream] == [None] * 6


def test_a_trial_that_never_spreads_out_is_mode_collapse():
    stuck = [_healthy(0) | {"modes": 1.0, "high_quality": hq, "mixture_score": 1 + hq} for hq in (0.2, 0.4, 0.6, 0.8)]
    mon = TrialMonitor(
        StopRules(grace_evals=3, patience_evals=10), "mixture_score", "max", ["modes", "high_quality"], n_modes=25
    )
    assert [mon.update(m) for m in stuck] == [None, None, None, "mode_collapse"]


def test_lost_classes_of_labeled_images_are_mode_collapse_and_fd_converges_downward():
    def img(covered, fd):
        return {
            "loss_d": 1.2,
            "loss_g": 0.8,
            "grad_norm_d": 1.0,
            "grad_norm_g": 1.0,
            "classes_covered": covered,
            "fd_digits": fd,
        }

    rules = StopRules(grace_evals=2, patience_evals=10, converged={"fd_digits": 5.0})
    # ten classes found, then only three left: collapse (classes count like modes, 10 of them)
    mon = TrialMonitor(rules, "fd_digits", "min", n_modes=10)
    assert [mon.update(img(c, 50.0)) for c in (1.0, 1.0, 1.0, 0.3)] == [None, None, None, "mode_collapse"]
    # FD is a distance: the target is met at or below it, not above
    mon = TrialMonitor(rules, "fd_digits", "min", n_modes=10)
    assert [mon.update(img(1.0, fd)) for fd in (40.0, 20.0, 4.9, 4.8)] == [None, None, None, "converged"]


def test_a_trial_is_ranked_by_its_best_eval_and_its_checkpoint_is_that_evals():
    evals = [
        {"step": 100, "mixture_score": 20.0, "checkpoint": "c100"},
        {"step": 200, "mixture_score": 25.8, "checkpoint": "c200"},
        {"step": 300, "mixture_score": 24.1, "checkpoint": "c300"},
        {"step": 400, "mixture_score": math.nan, "checkpoint": "c400"},
    ]
    assert ranking_eval(evals, "mixture_score", "max") == evals[1]
    # a distance: the lowest; on a tie the later (longer trained) eval
    fd = [{"step": 100, "fd_digits": 9.0}, {"step": 200, "fd_digits": 4.0}, {"step": 300, "fd_digits": 4.0}]
    assert ranking_eval(fd, "fd_digits", "min") == fd[2]
    assert ranking_eval([{"step": 100, "loss_d": 1.0}], "fd_digits", "min") is None
    # stopping a trial early never makes it look better than running on: its best only grows
    running = [*evals[:3], {"step": 500, "mixture_score": 25.9, "checkpoint": "c500"}]
    assert (
        ranking_eval(evals[:3], "mixture_score", "max")["mixture_score"]
        <= ranking_eval(running, "mixture_score", "max")["mixture_score"]
    )


# d_collapse, loss-aware. Each case: loss type, the reports (changes to a healthy one), the signal each gets.
D, C = "d_collapse", None


def _acc(a: float, **more) -> dict:
    return {"d_accuracy": a, "critic_gap": 0.5} | more


def _gap(g: float) -> dict:
    return {"loss_d": -g, "critic_gap": g}  # wgan_gp: loss_d is minus the gap (penalty apart)


def _old(loss_d: float, loss_g: float) -> dict:
    return {"loss_d": loss_d, "loss_g": loss_g}  # reports from before d_accuracy and critic_gap


COLLAPSE_CASES = {
    "a classifier D right on 99% of samples 3 evals running": ("nonsaturating", [_acc(0.995)] * 3, [C, C, D]),
    "the streak breaks when D errs again": (
        "hinge",
        [_acc(0.995), _acc(0.995), _acc(0.9), _acc(0.995), _acc(0.995)],
        [C] * 5,
    ),
    "lsgan and minimax alike": ("lsgan", [_acc(1.0)] * 4, [C, C, D, D]),
    "a low loss_d with loss_g rising is no evidence when d_accuracy is there": (
        "minimax",
        [_acc(0.8, loss_d=0.01, loss_g=g) for g in (1.0, 2.0, 3.0, 4.0)],
        [C] * 4,
    ),
    # the early evals set the scale (the largest gap: 3); the gap must pass 4 x 3 and keep growing
    "a critic gap that keeps growing, far past its early size": (
        "wgan_gp",
        [_gap(g) for g in (2, 3, 2.5, 4, 8, 13, 20, 30)],
        [C] * 7 + [D],
    ),
    "a large gap that has stopped growing": ("wgan_gp", [_gap(g) for g in (2, 3, 2.5, 13, 13.2, 13.1, 13.3)], [C] * 7),
    "a growing gap still near its early size": (
        "wgan_gp",
        [_gap(g) for g in (2, 3, 2.5, 2.7, 2.9, 3.2, 3.5, 3.9)],
        [C] * 8,
    ),
    "wgan_gp's negative loss_d with loss_g rising (the old rule's false alarm)": (
        "wgan_gp",
        [_gap(1.0) | {"loss_g": g} for g in (1.0, 2.0, 3.0, 4.0)],
        [C] * 4,
    ),
    "old reports: D's loss under the floor while G's rises": (
        "nonsaturating",
        [_old(0.01, g) for g in (1.0, 2.0, 3.0, 4.0)],
        [C, C, C, D],
    ),
    "old reports of wgan_gp: its loss_d says nothing": (
        "wgan_gp",
        [_old(-5.0, g) for g in (1.0, 2.0, 3.0, 4.0)],
        [C] * 4,
    ),
}


@pytest.mark.parametrize("case", COLLAPSE_CASES)
def test_d_collapse_reads_the_evidence_of_each_loss(case):
    loss, reports, expected = COLLAPSE_CASES[case]
    mon = TrialMonitor(StopRules(grace_evals=0, patience_evals=100), "mixture_score", "max", loss=loss)
    assert [mon.update(_healthy(0) | r) for r in reports] == expected


def test_collapse_thresholds_are_rules():
    reports = [_healthy(0) | _acc(0.96)] * 2
    strict = TrialMonitor(StopRules(d_collapse_evals=2), "mixture_score", "max", loss="hinge")
    lenient = TrialMonitor(StopRules(d_collapse_evals=2, d_accuracy_max=0.95), "mixture_score", "max", loss="hinge")
    assert [strict.update(r) for r in reports] == [None, None]
    assert [lenient.update(r) for r in reports] == [None, "d_collapse"]


def test_signals_lists_every_reason_that_holds():
    mon = TrialMonitor(StopRules(d_collapse_evals=1, grace_evals=0), "modes", "max", n_modes=25, loss="minimax")
    assert mon.signals(_healthy(0) | _acc(1.0) | {"grad_norm_g": 5e3, "modes": 2.0}) == [
        "grad_explosion",
        "d_collapse",
        "mode_collapse",
    ]


def test_the_search_stopper_judges_each_trial_by_its_own_loss_type():
    """A healthy wgan_gp trial in a search whose base loss is another (loss.type drawn by the space)."""
    from distgan.runtime.tune import DivergenceStopper
    from distgan.spec.search import SearchSpec

    doc = json.loads((Path(__file__).parent / "data" / "traces" / "grid25_wgan_gp.json").read_text())
    for e in doc["evals"]:  # the search metric, as the loop reports it with every eval
        e["mixture_score"] = e["modes"] + e["high_quality"]
    search = SearchSpec(
        space={"loss.type": {"choice": ["nonsaturating", "wgan_gp"]}},
        metric="mixture_score",
        mode="max",
        stop=StopRules(patience_evals=100),
    )
    stopper = DivergenceStopper(search, 25, "nonsaturating")
    assert not any(stopper("t1", e | {"config": {"loss.type": "wgan_gp"}}) for e in doc["evals"])
    # the same reports, judged as if the trial's loss were the base's (no d_accuracy: the old floor rule)
    assert any(stopper("t2", e | {"config": {}}) for e in doc["evals"]) and stopper.reasons == {"t2": "d_collapse"}
