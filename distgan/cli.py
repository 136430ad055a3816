"""`distgan` command line: argument parsing only; every command calls the library.

Exit codes: 0 ok, 2 bad input (spec, data, address), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from distgan.errors import InputError


def _train(args: argparse.Namespace) -> int:
    from distgan import config, train

    overrides = list(args.set)
    if args.workers is not None:
        overrides.append(f"scaling.workers={args.workers}")
    if args.gpu:
        overrides.append("scaling.gpu=true")
    if args.name:
        overrides.append(f"train.name={args.name}")
    spec = config.load_spec(args.job, overrides)
    result = train.train(spec, address=args.address)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    m = result["metrics"]
    headline = "  ".join(f"{k} {m[k]:.3g}" for k in ("modes", "high_quality", "reverse_kl") if m.get(k) is not None)
    print(f"{result['status']}: {result['steps']} steps in {result['wall_s']:.0f}s  {headline}  run {result['run_dir']}")
    if result.get("error"):
        print(result["error"], file=sys.stderr)
    return 0 if result["status"] == "finished" else 1


def _datasets(args: argparse.Namespace) -> int:
    from distgan import data

    for name, about in data.describe():
        print(f"{name:12} {about}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distgan", description="Distributed GAN training on Ray, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GAN from a job spec (default: the built-in grid25 job)")
    t.add_argument("job", nargs="?", help="job spec YAML (omit for the built-in default job)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key, e.g. optim.lr_g=2e-4")
    t.add_argument("--address", help="join this Ray cluster (default: start a local Ray in-process)")
    t.add_argument("--workers", type=int, help="number of Train workers (scaling.workers)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker (scaling.gpu)")
    t.add_argument("--name", help="run name (train.name); an existing name resumes that run")
    t.add_argument("--json-out", metavar="FILE", help="write the result as one JSON document")
    t.set_defaults(fn=_train)

    d = sub.add_parser("datasets", help="list the data sources")
    d.set_defaults(fn=_datasets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except InputError as e:
        print(f"distgan {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
