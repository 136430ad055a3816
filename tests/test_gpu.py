"""On a CUDA GPU only (skipped elsewhere, never faked): the GPU path against the CPU's, resume, bf16, eval.

Run on the device machine with `python -m pytest -q tests/test_gpu.py` (see README, GPUs)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import REPO

from distgan import data, models
from distgan.core import checkpoint, engine, loop
from distgan.spec.job import DataSpec, JobSpec, load_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
SMALL = [
    "train.batch_size=64",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "train.eval_samples=200",
    "train.final_eval_seeds=1",
    "model.g_hidden=[32,32]",
    "model.d_hidden=[32,32]",
]
IMAGE = [
    "data.name=digits",
    "model.arch=dcgan",
    "model.base_channels=16",
    "train.batch_size=64",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "train.eval_samples=200",
    "metrics.final_samples=200",
    "metrics.reference_samples=200",
    "metrics.feature_net=digits",
]


@pytest.fixture
def exact_fp32():
    """fp32 without TF32 and with deterministic cuDNN, so that the GPU's numbers follow the CPU's."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved
    torch.backends.cudnn.deterministic = False


@pytest.mark.parametrize("arch, shape", [("mlp", (2,)), ("dcgan", (1, 16, 16))])
def test_fp32_steps_on_the_gpu_follow_the_cpu(exact_fp32, arch, shape):
    spec = JobSpec.model_validate(
        {
            "data": {"name": "ring8" if arch == "mlp" else "digits"},
            "model": {"arch": arch, "latent_dim": 8, "g_hidden": [32], "d_hidden": [32], "base_channels": 8},
            "loss": {"r1": 0.1},
        }
    )
    torch.manual_seed(0)
    G, D = models.build(spec.model, shape)
    engines = {}
    for dev in (torch.device("cpu"), CUDA):
        g, d = copy.deepcopy(G).to(dev), copy.deepcopy(D).to(dev)
        if loop.use_channels_last(arch, dev):
            engine.to_channels_last(g, d)
        eng = engine.Engine(g, d, spec.loss, spec.optim, 8, dev, precision="fp32")
        latents = torch.Generator().manual_seed(1)  # the same latents on both: drawn on the CPU
        eng._latents = lambda n, eng=eng, gen=latents: torch.randn(n, eng.latent_dim, generator=gen).to(eng.device)
        engines[dev.type] = eng
    reals = torch.Generator().manual_seed(2)
    for _ in range(10):
        real = torch.rand(32, *shape, generator=reals) * 2 - 1
        cpu, gpu = engines["cpu"].step([real]), engines["cuda"].step([real.to(CUDA)])
    for key in ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "r1"):
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=2e-3, atol=1e-5, msg=key)


def _run(tmp_path, steps: int, *overrides: str):
    spec = load_spec(None, [*SMALL, f"train.steps={steps}", *overrides])
    session = loop.LocalSession(tmp_path / "run", device="cuda")
    return loop.run(spec, data.inspect(spec.data), session), session


def test_kill_and_resume_on_cuda_restores_the_step_and_the_rng(tmp_path):
    full, _ = _run(tmp_path / "full", 20)
    _run(tmp_path / "cut", 10)  # "killed" after the checkpoint at step 10
    state = checkpoint.read(checkpoint.latest(tmp_path / "cut" / "run"))
    assert state["step"] == 10 and "cuda" in state["rng"][0]  # the GPU generator's state is kept
    resumed, session = _run(tmp_path / "cut", 20)
    assert resumed["resumed_from"] == 10 and resumed["steps"] == 20
    assert [r["step"] for r in session.reports] == [20]
    # A resumed data stream is reseeded (loop.run), so the weights differ from the uncut run's; what must
    # hold is that the GPU generator goes on from the checkpoint's state (one rank, same world size).
    torch.cuda.set_rng_state(state["rng"][0]["cuda"], CUDA)
    after = torch.randn(4, device=CUDA)
    loop.restore_rng(state["rng"], 0, 1, 0, 10, CUDA)
    torch.testing.assert_close(torch.randn(4, device=CUDA), after, rtol=0, atol=0)
    assert full["steps"] == 20 and full["status"] == resumed["status"] == "finished"


def test_bf16_end_to_end_on_a_conv_net(tmp_path):
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    spec = load_spec(None, [*IMAGE, "train.steps=20"])
    result = loop.run(spec, data.inspect(spec.data), loop.LocalSession(tmp_path / "run", device="cuda"))
    assert result["precision"] == "bf16" and result["status"] == "finished"  # auto: bf16 for dcgan on this GPU
    assert all(v == v and abs(v) != float("inf") for v in result["metrics"].values())


def test_fp16_with_grad_scalers_end_to_end(tmp_path):
    spec = load_spec(None, [*IMAGE, "train.steps=20", "train.precision=fp16", "loss.r1=0.1"])
    result = loop.run(spec, data.inspect(spec.data), loop.LocalSession(tmp_path / "run", device="cuda"))
    assert result["precision"] == "fp16" and result["status"] == "finished"
    assert 0 <= result["metrics"]["amp_skipped_d"] < 1


def test_eval_of_a_checkpoint_trained_on_the_gpu_runs_there_and_agrees_with_the_cpu(tmp_path):
    from distgan.commands.evaluate import evaluate

    spec = load_spec(None, [*IMAGE, "train.steps=10"])
    loop.run(spec, data.inspect(spec.data), loop.LocalSession(tmp_path / "run", device="cuda"))
    on_gpu = evaluate(str(tmp_path / "run"), n=500)  # --device auto
    on_cpu = evaluate(str(tmp_path / "run"), n=500, device="cpu")
    assert (on_gpu.device, on_cpu.device) == ("cuda", "cpu")
    assert on_gpu.metrics["fd_digits"] > 0
    # the same latents (drawn on the CPU) through the same nets: equal up to the GPU's float arithmetic
    for name in ("fd_digits", "classes_covered", "precision", "recall"):
        assert on_gpu.metrics[name] == pytest.approx(on_cpu.metrics[name], rel=0.02, abs=0.01), name


def test_the_prefetcher_yields_the_same_batches_on_the_gpu():
    batches = [(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), torch.arange(8)) for _ in range(4)]
    got = list(loop.Prefetcher(iter(batches), CUDA, channels_last=True))
    assert len(got) == 4
    for (a, y), (b, labels) in zip(got, batches):
        assert a.is_cuda and a.is_contiguous(memory_format=torch.channels_last) and a.dtype == torch.float32
        assert torch.equal(a.cpu(), b.float() / 127.5 - 1) and torch.equal(y.cpu(), labels)


def test_builtin_images_are_kept_and_drawn_on_the_gpu_as_on_the_cpu():
    """The built-in images go to the GPU once and their batches are gathered there: the same batches
    as on the CPU, handed on by the Prefetcher (drawn on its side stream) in NHWC order."""
    for name in ("digits", "stacked_digits"):
        spec = DataSpec(name=name, resolution=28)
        info = data.inspect(spec)
        on_cpu = data.batches(spec, info, 64, 0, 1, seed=5)
        on_gpu = loop.Prefetcher(data.batches(spec, info, 64, 0, 1, seed=5, device=CUDA), CUDA, channels_last=True)
        for _ in range(3):
            (x, y), (gx, gy) = next(on_cpu), next(on_gpu)
            assert gx.is_cuda and gx.is_contiguous(memory_format=torch.channels_last), name
            assert torch.equal(gx.cpu(), x), name
            assert (gy is None and y is None) or torch.equal(gy.cpu(), y), name


def test_user_data_reaches_a_gpu_train_worker_on_the_host_pinned(tmp_path):
    """Ray's iter_torch_batches would copy a Train worker's batches to its GPU itself ("auto"), on
    the default stream, where counting the skipped rows makes the host wait for the step before.
    The shard's batches stay on the host, pinned by Ray's prefetch threads; the loop's Prefetcher
    copies them one step ahead."""
    import os

    import numpy as np
    import ray
    import ray.train
    from conftest import write_image_parquet
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from distgan.runtime import ray_data

    path = write_image_parquet(tmp_path / "x.parquet", [np.full((8, 8), i, np.uint8) for i in range(64)])
    spec = DataSpec(name="parquet", path=str(path), column="image")
    info = data.inspect(spec)
    seen = tmp_path / "seen"

    def worker():
        x, _ = next(iter(data.ShardStream(ray.train.get_dataset_shard("train"), 16, 0, info)))
        seen.write_text(f"{x.device.type} {x.is_pinned()}")  # one machine: the worker writes, the test reads

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        TorchTrainer(
            worker,
            datasets=ray_data.datasets(spec, info),
            scaling_config=ScalingConfig(num_workers=1, use_gpu=True),
            run_config=RunConfig(storage_path=str(tmp_path / "runs")),
        ).fit()
    finally:
        ray.shutdown()
    assert seen.read_text() == "cpu True"


def test_benchmark_runs_on_the_gpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_step", REPO / "benchmarks" / "gpu_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(
        ["--device", "cuda", "--batch", "64", "--steps", "3", "--warmup", "1", "--reps", "1", "--skip-ray"]
    )
    assert all(
        row["bare"] > 0 and row["engine"] > 0 and row["fed"] > 0 and row["engine_mem_gib"] > 0 for row in out["rows"]
    )
