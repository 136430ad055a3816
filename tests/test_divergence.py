"""The early-stop signals on constructed metric streams."""

from __future__ import annotations

import math

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
