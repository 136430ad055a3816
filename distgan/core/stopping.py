"""Is this GAN run failing? The signals that end a search trial early, as pure logic (no Ray).

`TrialMonitor.update(metrics)` takes one eval's report and returns a stop reason or None:

- `diverged_nan`   a loss or gradient norm is NaN/Inf;
- `grad_explosion` a gradient norm above `grad_norm_max`;
- `d_collapse`     D's loss below `d_loss_floor` while G's loss rose, `d_collapse_evals` evals running
                   (D wins outright: G gets no useful gradient any more);
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
"""

from __future__ import annotations

import math

from distgan.metrics.names import LOSS_AND_GRAD, lower_is_better
from distgan.spec.search import StopRules


class TrialMonitor:
    def __init__(
        self,
        rules: StopRules,
        metric: str,
        mode: str,
        progress_keys: list[str] | None = None,
        n_modes: int | None = None,
    ):
        """n_modes: the mixture's modes, or the number of classes of labeled images (None: unknown)."""
        self.rules, self.sign, self.n_modes = rules, 1.0 if mode == "max" else -1.0, n_modes
        # a composite score can stall while its parts still improve (a mode lost, quality rising)
        self.progress_keys = progress_keys or [metric]
        self.peak_modes = 0.0
        self.evals = 0
        self.best = {k: -math.inf for k in (progress_keys or [metric])}
        self.since_best = 0
        self.collapse_run = 0
        self.last_loss_g = None
        self.converged_run = 0  # consecutive evals meeting every `converged` target

    def update(self, m: dict) -> str | None:
        r = self.rules
        self.evals += 1
        values = [m.get(k) for k in LOSS_AND_GRAD if k in m]
        if any(v is None or not math.isfinite(v) for v in values):
            return "diverged_nan"
        if max(m.get("grad_norm_d", 0.0), m.get("grad_norm_g", 0.0)) > r.grad_norm_max:
            return "grad_explosion"
        rising = self.last_loss_g is not None and m["loss_g"] > self.last_loss_g
        self.collapse_run = self.collapse_run + 1 if m["loss_d"] < r.d_loss_floor and rising else 0
        self.last_loss_g = m["loss_g"]
        if self.collapse_run >= r.d_collapse_evals:
            return "d_collapse"
        met = bool(r.converged) and all(_reached(m.get(k), k, v) for k, v in r.converged.items())
        self.converged_run = self.converged_run + 1 if met else 0
        if self.converged_run >= 2:
            return "converged"
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
        if self.evals <= r.grace_evals:
            return None
        if covered is not None and self.peak_modes >= 2 and covered < r.mode_fraction * self.peak_modes:
            return "mode_collapse"
        if covered is not None and self.n_modes and covered < r.min_mode_fraction * self.n_modes:
            return "mode_collapse"
        if self.since_best >= r.patience_evals:
            return "no_progress"
        return None


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
