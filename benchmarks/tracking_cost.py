"""What MLflow tracking costs.

1. The default grid25 job (1 worker) with tracking off and on, in pairs run off/on/on/off (MLflow's
   default SQLite store in a temp dir): total wall time of `train()` each, and the ratio on/off.
2. `log_model` + `register` of the grid25 generator against a local `mlflow server`: first call in
   the process (cold) and a second one (warm).
3. `distgan pull models:/NAME@champion` as a user runs it: wall time of the whole command,
   Python start included.

    python benchmarks/tracking_cost.py [--steps 5000] [--pairs 2] [--skip-overhead]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import MlflowServer  # noqa: E402  (the tests' server helper: lean settings, stopped by PID)

from distgan import config, models, registry, train  # noqa: E402


def timed_train(spec, tracking: train.Tracking) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = train.train(spec, echo=lambda line: None, tracking=tracking)
    return time.perf_counter() - t0, res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--pairs", type=int, default=2, help="on/off pairs, run in ABBA order (default 2)")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with tempfile.TemporaryDirectory(prefix="dgb-") as tmp:
        tmp = Path(tmp)
        if not args.skip_overhead:
            # off, on, on, off, ...: drift in the machine's speed hits both sides alike
            walls: dict[str, list[float]] = {"off": [], "on": []}
            order = [m for i in range(args.pairs) for m in (("off", "on") if i % 2 == 0 else ("on", "off"))]
            for i, mode in enumerate(order):
                spec = config.load_spec(
                    None,
                    [
                        f"train.steps={args.steps}",
                        f"train.storage_path={tmp / 'runs'}",
                        f"train.name=tracking-{i}-{mode}",
                    ],
                )
                wall, res = timed_train(
                    spec, train.Tracking(enabled=mode == "on", tracking_uri=f"sqlite:///{tmp}/mlflow.db")
                )
                assert res["status"] == "finished", res
                walls[mode].append(wall)
                print(f"  run {i + 1}/{len(order)} tracking {mode}: {wall:.1f}s", flush=True)
            on, off = sum(walls["on"]), sum(walls["off"])
            print(
                f"default grid25 job, {args.steps} steps, 1 worker, {args.pairs} pair(s): tracking off {off / args.pairs:.1f}s, "
                f"on {on / args.pairs:.1f}s on average (sqlite store, incl. model logging); ratio on/off {on / off:.3f}  (target <= 1.05)"
            )

        server = MlflowServer(tmp / "server").start()
        try:
            spec = config.load_spec(None)
            generator, _ = models.build(spec.model, (2,))
            meta = {
                "model": spec.model.model_dump(mode="json"),
                "sample_shape": [2],
                "latent_dim": spec.model.latent_dim,
                "dataset": "grid25",
                "kind": "mixture",
            }
            from mlflow.tracking import MlflowClient

            client = MlflowClient(server.uri)
            exp_id = client.create_experiment("bench")
            for label in ("cold", "warm"):
                run_id = client.create_run(exp_id).info.run_id
                t0 = time.perf_counter()
                model_uri = registry.log_generator(server.uri, run_id, generator, meta)
                t1 = time.perf_counter()
                registry.register(
                    server.uri, model_uri, "bench-grid25", "mixture", {"modes": 25.0, "high_quality": 0.9}, {}, "bench"
                )
                t2 = time.perf_counter()
                print(
                    f"log_model + register ({label}): {t2 - t0:.2f}s (log_model {t1 - t0:.2f}s, register {t2 - t1:.2f}s)  (target < 3 s)"
                )
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "distgan",
                    "pull",
                    "models:/bench-grid25@champion",
                    "--n",
                    "2500",
                    "--out",
                    str(tmp / "pulled"),
                    "--tracking-uri",
                    server.uri,
                ],
                capture_output=True,
                text=True,
            )
            took = time.perf_counter() - t0
            assert r.returncode == 0, r.stderr
            print(
                f"distgan pull models:/bench-grid25@champion --n 2500 (png + npy): {took:.2f}s wall, Python start included  (target < 10 s)"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
