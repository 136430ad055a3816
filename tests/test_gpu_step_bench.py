"""benchmarks/gpu_step.py in its CPU smoke mode: bare step (a), Engine step (b) and fed Engine (b'), no Ray."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def test_gpu_step_benchmark_smoke_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_step", REPO / "benchmarks" / "gpu_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--device", "cpu", "--size", "32", "--batch", "16", "--steps", "2", "--warmup", "1", "--reps", "1"]
    out = bench.main([*argv, "--arch", "dcgan", "--base-channels", "8", "--skip-ray"])
    (row,) = out["rows"]
    assert row["bare"] > 0 and row["engine"] > 0 and row["fed"] > 0 and row["engine_precision"] == "fp32"
    assert "(a) bare" in capsys.readouterr().out
