"""The training loop in one process, without Ray or MLflow (`LocalSession`): eval and checkpoint
cadence, the record, resume, divergence. Seconds, not minutes."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, metric_rows, metric_steps

from distgan import data, models
from distgan.core import checkpoint, engine, loop
from distgan.spec.job import load_spec
from distgan.tracking.record import RunRecord

SMALL = [
    "train.batch_size=64",
    "train.eval_every=20",
    "train.checkpoint_every=30",
    "train.eval_samples=200",
    "train.final_eval_seeds=1",
    "model.g_hidden=[32,32]",
    "model.d_hidden=[32,32]",
    "optim.lr_schedule=constant",  # the default job decays its lr; these tests read the lr back
]


def _run(tmp_path, steps: int, *overrides: str):
    spec = load_spec(None, [*SMALL, f"train.steps={steps}", *overrides])
    session = loop.LocalSession(tmp_path / "run")
    record = RunRecord(tmp_path / "run" / "distgan")
    return loop.run(spec, data.inspect(spec.data), session, record), session


def test_eval_and_checkpoint_cadence(tmp_path):
    result, session = _run(tmp_path, 60)
    assert result["status"] == "finished" and result["steps"] == 60 and result["resumed_from"] == 0
    assert [r["step"] for r in session.reports] == [20, 30, 40, 60]  # evals, checkpoints, and the end
    assert metric_steps(tmp_path / "run") == [20, 40, 60]  # evals only
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*")) == [
        "checkpoint_0000030",
        "checkpoint_0000060",
    ]
    state = checkpoint.read(session.latest_checkpoint())
    assert state["step"] == 60 and len(state["rng"]) == 1
    assert {"modes", "high_quality", "reverse_kl", "modes_se", "loss_d", "grad_norm_g"} <= set(result["metrics"])


def test_a_rerun_resumes_from_the_latest_checkpoint(tmp_path):
    _run(tmp_path, 60)
    result, session = _run(tmp_path, 90)
    assert result["resumed_from"] == 60 and result["steps"] == 90
    assert [r["step"] for r in session.reports] == [80, 90]
    assert metric_steps(tmp_path / "run") == [20, 40, 60, 80, 90]
    # a run resumed at its end reports the recorded final metrics and trains nothing
    result, session = _run(tmp_path, 90)
    assert result["resumed_from"] == 90 and result["steps"] == 90 and session.reports == []
    assert result["metrics"]["modes"] == pytest.approx(metric_rows(tmp_path / "run")[-1]["modes"])


def _poisoned_after(n: int):
    """data.batches whose stream turns to Inf after n batches: D's loss goes NaN, as in a real divergence."""
    real_batches = data.batches

    def batches(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            x, y = batch
            yield (x if i < n else x * float("inf")), y

    return batches


def test_a_diverging_run_ends_diverged_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "batches", _poisoned_after(45))
    result, session = _run(tmp_path, 200, "train.checkpoint_every=20")
    assert result["status"] == "diverged" and result["steps"] == 60  # the first report after step 45
    assert session.reports[-1]["step"] == result["steps"]
    newest = checkpoint.read(session.latest_checkpoint())
    assert newest["step"] < result["steps"]  # the diverged state was never saved


def test_the_health_monitor_names_the_classic_failure_and_can_stop_the_run(tmp_path):
    """The tutorial GAN (minimax loss, 5 D steps per G step): D wins outright by step 300."""
    spec = load_spec(REPO / "jobs" / "seed-minimax.yaml", ["train.stop_on_failure=true", "train.eval_samples=300"])
    lines = []
    session = loop.LocalSession(tmp_path / "run", echo=lines.append)
    result = loop.run(spec, data.inspect(spec.data), session, RunRecord(tmp_path / "run" / "distgan"))
    assert result["status"] == "diverged" and result["steps"] < 1000
    (signal,) = result["health"]
    assert signal["name"] == "d_collapse" and signal["step"] == result["steps"]
    assert "use loss.type=nonsaturating" in signal["message"]
    assert any(line.startswith("health: step") and "D wins outright" in line for line in lines)
    assert any("a health signal fired" in line for line in lines)


def test_a_healthy_run_reports_ok(tmp_path):
    result, _ = _run(tmp_path, 60)
    assert result["health"] == "ok"


def _checkpointed_run(tmp_path):
    """A 30-step run with one checkpoint; its state (read on the CPU) and its directory."""
    _, session = _run(tmp_path, 30)
    ckpt = session.latest_checkpoint()
    return checkpoint.read(ckpt), ckpt


def test_resume_loads_on_the_cpu_whatever_the_device(tmp_path):
    # The checkpoint's RNG states must reach torch.set_rng_state as CPU ByteTensors, and the engine
    # state the engine's own device, whatever device the run is on ("meta" stands in for CUDA here).
    state, ckpt = _checkpointed_run(tmp_path)
    spec = load_spec(None, [*SMALL, "train.steps=30"])
    G, D = models.build(spec.model, (2,))
    eng = engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, torch.device("cpu"))
    torch.manual_seed(123)
    assert loop.resume(ckpt, eng, 0, 1, spec.train.seed, torch.device("meta")) == 30
    assert torch.equal(torch.get_rng_state(), _cpu_state(state["rng"][0]))
    for name, value in G.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, state["engine"]["G"][name]), name


def _cpu_state(saved):
    return saved if isinstance(saved, torch.Tensor) else saved["cpu"]


def _draws(saved: list, rank: int, world: int, step: int = 30) -> torch.Tensor:
    loop.restore_rng(saved, rank, world, seed=0, step=step, device=torch.device("cpu"))
    return torch.randn(8)


def test_restore_rng_gives_each_rank_its_own_stream():
    cpu = torch.device("cpu")
    torch.manual_seed(1)
    one = loop.rng_state(cpu)
    torch.manual_seed(2)
    two = loop.rng_state(cpu)
    # same world: each rank continues exactly where it was
    for rank, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        expected = torch.randn(8)
        assert torch.equal(_draws([one, two], rank, 2), expected)
    # another world size: every rank its own stream, a pure function of (seed, step, rank)
    draws = [_draws([one], rank, 3) for rank in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not torch.equal(draws[0], draws[2])
    assert torch.equal(draws[1], _draws([two, one], 1, 3))
    assert not torch.equal(draws[1], _draws([one], 1, 3, step=60))


@pytest.mark.parametrize(
    "asked, arch, device, bf16_supported, chosen",
    [
        ("auto", "mlp", "cuda", True, "fp32"),  # 2-D points: a 16-bit mantissa quantises them
        ("auto", "dcgan", "cuda", True, "bf16"),
        ("auto", "resnet", "cuda", True, "bf16"),
        ("auto", "dcgan", "cuda", False, "fp16"),  # pre-Ampere: fp16 autocast + GradScaler
        ("auto", "resnet", "cuda", False, "fp16"),
        ("auto", "mlp", "cuda", False, "fp32"),
        ("auto", "dcgan", "cpu", True, "fp32"),
        ("fp32", "dcgan", "cuda", True, "fp32"),
        ("bf16", "mlp", "cpu", False, "bf16"),  # asked for: honoured
        ("fp16", "mlp", "cpu", True, "fp16"),
        ("fp16", "dcgan", "cuda", True, "fp16"),
    ],
)
def test_precision_choice(asked, arch, device, bf16_supported, chosen):
    assert loop.choose_precision(asked, arch, torch.device(device), bf16_supported=bf16_supported) == chosen


def test_channels_last_only_for_conv_nets_on_a_gpu():
    assert loop.use_channels_last("dcgan", torch.device("cuda")) and loop.use_channels_last(
        "resnet", torch.device("cuda")
    )
    assert not loop.use_channels_last("mlp", torch.device("cuda"))
    assert not loop.use_channels_last("dcgan", torch.device("cpu"))


def test_prefetcher_yields_the_same_batches_on_the_cpu():
    batches = [(torch.randn(4, 3, 8, 8), None) for _ in range(5)]
    got = list(loop.Prefetcher(iter(batches), torch.device("cpu"), channels_last=True))
    assert len(got) == 5 and all(a[0] is b[0] and a[1] is None for a, b in zip(got, batches))  # the stream as it is


def test_prefetcher_turns_uint8_images_into_floats_and_keeps_labels():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 1, 3)
    ((got, labels),) = loop.Prefetcher(iter([(x, torch.tensor([7]))]), torch.device("cpu"))
    assert got.dtype == torch.float32
    assert got.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    assert labels.tolist() == [7]


def test_the_run_result_says_which_precision_ran(tmp_path):
    result, _ = _run(tmp_path, 4, "train.eval_every=4", "train.precision=bf16", "train.eval_samples=100")
    assert result["precision"] == "bf16" and result["compiled"] is False and result["status"] == "finished"


IMAGE = [
    "data.name=digits",
    "model.arch=dcgan",
    "model.base_channels=8",
    "model.latent_dim=16",
    "train.batch_size=32",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "train.eval_samples=100",
    "metrics.final_samples=100",
    "metrics.reference_samples=200",
]


def test_a_diverging_image_run_ends_diverged(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "batches", _poisoned_after(15))
    result, session = _run(tmp_path, 100, *IMAGE)
    assert result["status"] == "diverged" and result["steps"] == 20
    assert checkpoint.read(session.latest_checkpoint())["step"] == 10
    assert "fd_digits" not in session.reports[-1]  # the NaN generator is not evaluated


def test_a_resume_replaces_the_rows_of_the_dead_trajectory(tmp_path, monkeypatch):
    def die_at_50(step, rank, node_id):
        if step == 50:
            raise RuntimeError("worker lost")

    monkeypatch.setattr(loop, "_maybe_fail", die_at_50)
    with pytest.raises(RuntimeError, match="worker lost"):
        _run(tmp_path, 60, "optim.lr_g=1e-4")  # recorded 20 and 40, checkpointed 30, died at 50
    assert metric_steps(tmp_path / "run") == [20, 40]
    monkeypatch.undo()
    result, _ = _run(tmp_path, 60, "optim.lr_g=2e-4")  # resumes from 30, with the spec's new lr
    assert result["resumed_from"] == 30
    rows = metric_rows(tmp_path / "run")
    assert [(r["step"], r["lr_g"]) for r in rows] == [(20, 1e-4), (40, 2e-4), (60, 2e-4)]


def test_a_cosine_lr_schedule_decays_to_zero_over_the_run(tmp_path):
    assert engine.lr_factor("cosine", 1, 100) == 1.0 and engine.lr_factor("constant", 100, 100) == 1.0
    assert engine.lr_factor("linear", 51, 100) == pytest.approx(0.5)
    _, session = _run(tmp_path, 60, "optim.lr_schedule=cosine", "optim.lr_g=1e-3", "optim.lr_d=2e-3")
    lrs = {r["step"]: (r["lr_g"], r["lr_d"]) for r in session.reports if "lr_g" in r}
    assert lrs[20] == pytest.approx(
        (1e-3 * engine.lr_factor("cosine", 20, 60), 2e-3 * engine.lr_factor("cosine", 20, 60))
    )
    assert lrs[60][0] < 1e-5 and lrs[60][1] < 2e-5


CONDITIONAL_SMALL = [  # jobs/digits-conditional.yaml made cheap: a narrower DCGAN, batch 64, 200 steps
    "model.base_channels=16",
    "train.batch_size=64",
    "train.steps=200",
    "train.eval_every=100",
    "train.checkpoint_every=100",
    "train.eval_samples=1000",
    "metrics.final_samples=1000",
]


def test_a_conditional_digits_run_makes_the_class_it_is_asked_for(tmp_path):
    """The loop hands the real labels to the engine; the digits classifier reads the class asked for."""
    from distgan.commands.evaluate import evaluate

    spec = load_spec(REPO / "jobs" / "digits-conditional.yaml", CONDITIONAL_SMALL)
    session = loop.LocalSession(tmp_path / "run")
    result = loop.run(spec, data.inspect(spec.data), session, RunRecord(tmp_path / "run" / "distgan"))
    assert result["status"] == "finished" and result["health"] == "ok"
    assert result["metrics"]["class_accuracy"] >= 0.9 and result["metrics"]["classes_covered"] == 1.0
    assert (tmp_path / "run" / "distgan" / "images" / "samples_0000200.png").exists()
    # the checkpoint holds a conditional G (its class embedding); `distgan eval` rebuilds and scores it
    again = evaluate(str(tmp_path / "run"), n=1000).to_json()
    assert again["metrics"]["class_accuracy"] == pytest.approx(result["metrics"]["class_accuracy"])
