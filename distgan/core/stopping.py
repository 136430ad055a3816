"""Is this GAN run failing? The signals that end a search trial early, as pure logic (no Ray).

`TrialMonitor.update(metrics)` takes one eval's report and returns a stop reason or None
(`signals(metrics)`: every reason that holds, most severe first):

- `diverged_nan`   a loss or gradient norm is NaN/Inf;
- `grad_explosion` a gradient norm above `grad_norm_max`;
- `d_collapse`     D wins outright, `d_collapse_evals` evals running, judged by the loss (`collapse_rule`):
                   a classifier D (minimax, nonsaturating, hinge, lsgan, rpgan) decides right on at least
                   `d_accuracy_max` of real and fake samples (`d_accuracy`); the wgan_gp critic's gap
                   (`critic_gap`, its Wasserstein estimate) grows by `gap_growth` every eval and is
                   `gap_factor` x its largest over the first `gap_reference_evals` evals. Reports
                   without these statistics (recorded before they existed) fall back to: D's loss below
                   `d_loss_floor` while G's loss rose, except for wgan_gp, whose D loss is negative
                   by design;
- `mode_collapse`  after `grace_evals`, the modes covered (or, for labeled images, the classes:
                   `classes_covered` x the number of classes) fell below `mode_fraction` of the most
                   this trial has covered (it found modes and lost them), or stay below
                   `min_mode_fraction` of all of them (it never spread out);
- `no_progress`    after `grace_evals`, none of the progress metrics (the search metric, or e.g. both
                   `modes` and `high_quality` for mixtures) set a new best for `patience_evals`;
- `converged`      every target in `converged` is met (e.g. modes 25 and high_quality 0.8; a
                   distance such as fd_digits is met at or below its target) on two consecutive
                   evals (one favourable eval is noise): the trial has nothing left to prove.

`ranking_eval(evals, metric, mode)` is the eval a trial is ranked by (and whose checkpoint a search
publishes): its best eval of the metric.

`distgan.core.health` reads the same signals (the first four) during plain training.
"""

from __future__ import annotations

import math

from distgan.metrics.names import LOSS_AND_GRAD, lower_is_better
from distgan.spec.search import StopRules


def collapse_rule(loss: str | None, m: dict) -> str | None:
    """Which evidence of D winning outright a report carries: 'gap' (the wgan_gp critic),
    'accuracy' (the engine reports d_accuracy for every loss whose D classifies), 'loss_floor' (older
    reports: the D loss alone, for a loss unknown or non-negative), or None (nothing to judge by)."""
    if loss == "wgan_gp":
        return "gap" if "critic_gap" in m else None  # its loss_d is negative by design: no floor
    if "d_accuracy" in m:
        return "accuracy"
    return "loss_floor"


class CollapseRule:
    """`d_collapse`: does D win outright for `d_collapse_evals` evals running? Fed one report per eval."""

    def __init__(self, rules: StopRules, loss: str | None = None):
        self.rules, self.loss = rules, loss
        self.run = 0  # consecutive evals with the evidence
        self.evals = 0
        self.gap_reference = 0.0  # the largest |critic_gap| of the first `gap_reference_evals` evals
        self.last: dict = {}
        self.evidence: str | None = None

    def update(self, m: dict) -> bool:
        self.evals += 1
        self.evidence = collapse_rule(self.loss, m)
        winning = self.evidence is not None and _D_WINS[self.evidence](self, m)
        self.run = self.run + 1 if winning else 0
        if self.evals <= self.rules.gap_reference_evals and "critic_gap" in m:
            self.gap_reference = max(self.gap_reference, abs(m["critic_gap"]))
        self.last = m
        return self.run >= self.rules.d_collapse_evals


def _accurate(rule: CollapseRule, m: dict) -> bool:
    return m["d_accuracy"] >= rule.rules.d_accuracy_max


def _critic_runs_away(rule: CollapseRule, m: dict) -> bool:
    # A healthy critic's gap shrinks as G catches up (or wanders); only a growing one that is already
    # well past its early size counts: the early evals are when D first learns to separate at all.
    r, gap, last = rule.rules, m["critic_gap"], rule.last.get("critic_gap")
    if rule.evals <= r.gap_reference_evals or last is None:
        return False
    return gap > last + r.gap_growth * abs(last) and gap >= r.gap_factor * rule.gap_reference


def _below_floor(rule: CollapseRule, m: dict) -> bool:
    last_g = rule.last.get("loss_g")
    return m["loss_d"] < rule.rules.d_loss_floor and last_g is not None and m["loss_g"] > last_g


_D_WINS = {"accuracy": _accurate, "gap": _critic_runs_away, "loss_floor": _below_floor}


class TrialMonitor:
    def __init__(
        self,
        rules: StopRules,
        metric: str,
        mode: str,
        progress_keys: list[str] | None = None,
        n_modes: int | None = None,
        loss: str | None = None,
    ):
        """n_modes: the mixture's modes, or the number of classes of labeled images (None: unknown).
        loss: the loss type (loss.type), which decides how D winning outright shows."""
        self.rules, self.sign, self.n_modes = rules, 1.0 if mode == "max" else -1.0, n_modes
        # a composite score can stall while its parts still improve (a mode lost, quality rising)
        self.progress_keys = progress_keys or [metric]
        self.peak_modes = 0.0
        self.covered: float | None = None
        self.evals = 0
        self.best = {k: -math.inf for k in self.progress_keys}
        self.since_best = 0
        self.collapse = CollapseRule(rules, loss)
        self.converged_run = 0  # consecutive evals meeting every `converged` target

    def update(self, m: dict) -> str | None:
        reasons = self.signals(m)
        return reasons[0] if reasons else None

    def signals(self, m: dict) -> list[str]:
        """Every stop reason that holds at this report, most severe first (one call per report)."""
        r = self.rules
        self.evals += 1
        values = [m.get(k) for k in (*LOSS_AND_GRAD, "critic_gap") if k in m]
        if any(v is None or not math.isfinite(v) for v in values):
            return ["diverged_nan"]  # nothing else can be judged from this report
        out = []
        if max(m.get("grad_norm_d", 0.0), m.get("grad_norm_g", 0.0)) > r.grad_norm_max:
            out.append("grad_explosion")
        if self.collapse.update(m):
            out.append("d_collapse")
        met = bool(r.converged) and all(_reached(m.get(k), k, v) for k, v in r.converged.items())
        self.converged_run = self.converged_run + 1 if met else 0
        if self.converged_run >= 2:
            out.append("converged")
        improved = False
        for key in self.progress_keys:
            score = m.get(key)
            if score is not None and math.isfinite(score) and self.sign * score > self.best[key]:
                self.best[key], improved = self.sign * score, True
        self.since_best = 0 if improved else self.since_best + 1
        covered = m.get("modes")
        if covered is None and "classes_covered" in m and self.n_modes:
            covered = m["classes_covered"] * self.n_modes  # classes, counted like modes
        if covered is not None:
            self.peak_modes = max(self.peak_modes, covered)
        self.covered = covered
        if self.evals <= r.grace_evals:
            return out
        lost = covered is not None and self.peak_modes >= 2 and covered < r.mode_fraction * self.peak_modes
        never_spread = covered is not None and bool(self.n_modes) and covered < r.min_mode_fraction * self.n_modes
        if lost or never_spread:
            out.append("mode_collapse")
        if self.since_best >= r.patience_evals:
            out.append("no_progress")
        return out


def _reached(value: float | None, metric: str, target: float) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return value <= target if lower_is_better(metric) else value >= target


def ranking_eval(evals: list[dict], metric: str, mode: str) -> dict | None:
    """The eval (a dict with `step` and the metrics reported at it) that a trial is ranked by: its
    best of `metric` (on a tie the later one); None when no eval measured it.

    The best, not the last, so that an early stop neither flatters nor penalises a trial against
    those that run on: a trial's best can only grow as it runs, so a stop never makes it look
    better, and the stops end trials that no longer improve (`no_progress`: no new best for the
    patience) or that sit at their targets (`converged`: met twice), which is what their best
    already shows. The last would compare a stopped trial's frozen value with the others' values at
    their end, while GAN metrics swing from eval to eval. A search publishes the checkpoint of this
    very eval, so the generator registered is the one measured."""
    sign = 1.0 if mode == "max" else -1.0
    scored = [e for e in evals if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])]
    return max(scored, key=lambda e: (sign * e[metric], e["step"])) if scored else None
