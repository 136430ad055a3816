"""What early termination saves: the same search (same spec, same seeds, same sampled configs)
with the divergence stopper + ASHA, and with every trial run to the end. Prints the ratio of
total training steps and the best trial's quality in each.

    python benchmarks/search_early_stop.py [SEARCH.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time

from distgan import search, search_config, train


def run(path, overrides: list[str], early: bool) -> dict:
    spec, s = search_config.load_search(path, overrides + [f"search.early_stop={str(early).lower()}"])
    t0 = time.perf_counter()
    res = search.search(spec, s, echo=lambda line: None, tracking=train.Tracking(enabled=False))
    res["wall"] = time.perf_counter() - t0
    res["metric"] = s.metric
    return res


def describe(label: str, res: dict) -> str:
    best = next(t for t in res["trials"] if t["trial_id"] == res["best"])
    m = best["metrics"]
    quality = "  ".join(f"{k} {m[k]:.3g}" for k in ("modes", "high_quality", "reverse_kl") if m.get(k) is not None)
    reasons: dict[str, int] = {}
    for t in res["trials"]:
        reasons[t["stop_reason"]] = reasons.get(t["stop_reason"], 0) + 1
    return (
        f"{label:>16}: {res['steps']:>7} steps, {res['wall']:6.0f}s wall; best {res['best']} ({res['metric']} "
        f"{m[res['metric']]:.4g}: {quality}); stop reasons {reasons}"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("spec", nargs="?")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    early = run(args.spec, args.set, True)
    full = run(args.spec, args.set, False)
    print(describe("early stopping", early))
    print(describe("every trial full", full))
    print(f"ratio of total training steps early/full: {early['steps'] / full['steps']:.3f}  (target <= 0.6)")


if __name__ == "__main__":
    main()
