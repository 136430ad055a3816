"""The adversarial step on its own (no Ray): what it optimizes, how often, EMA, NaN signal, state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from distgan import models
from distgan.core import engine, losses
from distgan.metrics.mixture import mixture_means
from distgan.spec.job import JobSpec


def _engine(**sections) -> engine.Engine:
    spec = JobSpec.model_validate({"model": {"latent_dim": 4, "g_hidden": [16], "d_hidden": [16]}, **sections})
    torch.manual_seed(0)
    G, D = models.build(spec.model, (2,))
    return engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, torch.device("cpu"))


def _real(n=32):
    return torch.randn(n, 2)


@pytest.mark.parametrize("loss", ["minimax", "nonsaturating", "hinge", "wgan_gp", "lsgan", "rpgan"])
def test_every_loss_steps_and_reports(loss):
    eng = _engine(loss={"type": loss, "r1": 0.1, "r2": 0.1})
    stats = eng.step([_real()])
    expected = {"loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "r1", "r2", "critic_gap"}
    expected |= {"gp"} if loss == "wgan_gp" else {"d_accuracy"}  # the critic of wgan_gp does not classify
    assert set(stats) == expected
    assert engine.all_finite(stats)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_n_critic_discriminator_updates_per_generator_update():
    eng = _engine(optim={"n_critic": 3})
    for _ in range(2):
        eng.step([_real() for _ in range(3)])
    step_count = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert step_count(eng.opt_d) == 6 and step_count(eng.opt_g) == 2
    with pytest.raises(AssertionError):
        eng.step([_real()])


def test_discriminator_statistics_are_means_over_the_critic_steps():
    eng = _engine(optim={"n_critic": 3, "lr_d": 1e-2})
    seen, d_step = [], eng.d_step

    def recorded(real, labels=None, **kwargs):
        seen.append(d_step(real, labels, **kwargs))
        return seen[-1]

    eng.d_step = recorded
    stats = eng.step([_real() for _ in range(3)])
    assert len(seen) == 3
    for key in ("loss_d", "grad_norm_d", "critic_gap", "d_accuracy"):
        values = [float(s[key]) for s in seen]
        assert float(stats[key]) == pytest.approx(sum(values) / 3, rel=1e-6), key
    # D learns between its steps: the last step alone differs from the mean
    assert float(stats["loss_d"]) != pytest.approx(float(seen[-1]["loss_d"]), rel=1e-6)


def test_separate_learning_rates_and_betas():
    eng = _engine(optim={"lr_g": 1e-3, "lr_d": 4e-3, "betas_g": [0.0, 0.9], "betas_d": [0.5, 0.99]})
    assert eng.opt_g.param_groups[0]["lr"] == 1e-3 and eng.opt_d.param_groups[0]["lr"] == 4e-3
    assert eng.opt_g.param_groups[0]["betas"] == (0.0, 0.9) and eng.opt_d.param_groups[0]["betas"] == (0.5, 0.99)


def test_g_step_leaves_d_untouched_and_d_trainable_after():
    eng = _engine()
    before = [p.clone() for p in eng.D.parameters()]
    eng.g_step(_real(16))
    assert all(torch.equal(a, b) for a, b in zip(before, eng.D.parameters()))
    assert all(p.requires_grad for p in eng.D.parameters())


def test_ema_is_the_ramped_exponential_average():
    eng = _engine(optim={"ema": 0.9})
    g = engine.unwrap(eng.G)
    ema0 = [p.clone() for p in eng.G_ema.parameters()]
    eng.step([_real()])
    decay = min(0.9, 2 / 11)  # first update: (1 + 1) / (10 + 1)
    for e0, e1, p in zip(ema0, eng.G_ema.parameters(), g.parameters()):
        torch.testing.assert_close(e1, decay * e0 + (1 - decay) * p)
    for _ in range(200):
        eng.update_ema()
    for e, p in zip(eng.G_ema.parameters(), g.parameters()):  # G fixed -> EMA converges to it
        torch.testing.assert_close(e, p, atol=1e-6, rtol=0)


def test_nan_is_a_signal_not_a_crash():
    eng = _engine()
    stats = eng.step([torch.full((32, 2), float("nan"))])
    assert not engine.all_finite(stats)
    assert math.isnan(float(stats["loss_d"]))


def test_discriminator_learns_to_separate_fixed_fake():
    """With G frozen, D steps must drive the D loss down (the loss is really minimized)."""
    eng = _engine(optim={"lr_d": 1e-2})
    eng.G.requires_grad_(False)
    real = torch.as_tensor(mixture_means("ring8"), dtype=torch.float32).repeat(8, 1)
    first = float(eng.d_step(real)["loss_d"])
    for _ in range(200):
        last = float(eng.d_step(real)["loss_d"])
    assert last < 0.5 * first


def test_state_dict_round_trip_continues_identically():
    a = _engine()
    a.step([_real()])
    b = _engine(optim={"lr_g": 0.5})  # different settings: the state overrides weights, not lr
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as through torch.save/load: no shared tensors
    b.set_lrs(a.opt_g.param_groups[0]["lr"], a.opt_d.param_groups[0]["lr"])
    real = _real()
    torch.manual_seed(7)
    sa = a.step([real])
    torch.manual_seed(7)
    sb = b.step([real])
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(x, y) for x, y in zip(a.G_ema.parameters(), b.G_ema.parameters()))


def _d_after(eng: engine.Engine, reals: list) -> list[torch.Tensor]:
    torch.manual_seed(3)
    for real in reals:
        eng.step([real])
    return [p.detach().clone() for p in eng.D.parameters()]


@pytest.mark.parametrize("r1, r2", [(0.5, 0.0), (0.0, 0.5), (0.5, 0.5)])
def test_lazy_penalties_are_k_times_the_weight_on_every_kth_d_step(r1, r2):
    reals = [_real() for _ in range(5)]
    # reg_every=3: D steps 0 and 3 take the penalties at 3x the weight, steps 1, 2 and 4 none
    lazy = _d_after(_engine(loss={"r1": r1, "r2": r2, "reg_every": 3}), reals)
    by_hand = _engine(loss={"r1": r1, "r2": r2})
    torch.manual_seed(3)
    for i, real in enumerate(reals):
        by_hand.loss = by_hand.loss.model_copy(update={"r1": 3 * r1 * (i % 3 == 0), "r2": 3 * r2 * (i % 3 == 0)})
        by_hand.step([real])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(lazy, by_hand.D.parameters()))
    every_step = _d_after(_engine(loss={"r1": r1, "r2": r2}), reals)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(lazy, every_step))


def test_lazy_penalties_count_d_steps_across_g_steps_and_hold_their_last_value():
    eng = _engine(loss={"r1": 0.1, "reg_every": 2}, optim={"n_critic": 3})
    regularized, d_step = [], eng.d_step

    def recorded(real, labels=None, regularize=True):
        regularized.append(regularize)
        return d_step(real, labels, regularize)

    eng.d_step = recorded
    first = eng.step([_real() for _ in range(3)])  # D steps 0, 1, 2
    eng.step([_real() for _ in range(3)])  # D steps 3, 4, 5
    assert regularized == [True, False, True, False, True, False]
    # a step without R1 reports the last measured one: the mean over steps is the mean of the R1s
    held = d_step(_real(), regularize=False)
    assert torch.equal(held["r1"], eng._penalties["r1"]) and float(first["r1"]) > 0


def test_lazy_penalty_phase_and_last_value_survive_a_state_dict_round_trip():
    a = _engine(loss={"r1": 0.1, "reg_every": 4})
    for _ in range(3):
        a.step([_real()])
    b = _engine(loss={"r1": 0.1, "reg_every": 4})
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    real = _real()
    torch.manual_seed(7)
    sa = a.step([real])  # D step 3: no R1, the value of step 0 held
    torch.manual_seed(7)
    sb = b.step([real])
    assert torch.equal(sa["r1"], sb["r1"]) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bf16_autocast_step_runs_on_cpu():
    eng = _engine()
    eng.bf16 = True
    assert engine.all_finite(eng.step([_real()]))


def _fp16_engine(**sections) -> engine.Engine:
    spec = JobSpec.model_validate({"model": {"latent_dim": 4, "g_hidden": [16], "d_hidden": [16]}, **sections})
    torch.manual_seed(0)
    G, D = models.build(spec.model, (2,))
    return engine.Engine(G, D, spec.loss, spec.optim, 4, torch.device("cpu"), precision="fp16")


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan_gp"])
def test_fp16_autocast_with_a_grad_scaler_per_optimizer_on_cpu(loss):
    eng = _fp16_engine(loss={"type": loss, "r1": 0.1, "r2": 0.1}, optim={"n_critic": 2})
    assert eng.scaler_d is not None and eng.scaler_g is not None and eng.scaler_d is not eng.scaler_g
    skipped_d = skipped_g = 0.0
    for _ in range(4):  # n_critic D steps per G step: one scaler update per optimizer step
        stats = eng.step([_real(), _real()])
        assert engine.all_finite(stats)
        skipped_d, skipped_g = skipped_d + 2 * float(stats["amp_skipped_d"]), skipped_g + float(stats["amp_skipped_g"])
    assert float(stats["amp_skipped_d"]) == 0 and float(stats["amp_skipped_g"]) == 0  # the scale has settled
    # Adam counts the steps it took; the scaler skipped the others (fp16 overflow at the initial 2**16 scale)
    step_count = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert step_count(eng.opt_d) + skipped_d == 8 and step_count(eng.opt_g) + skipped_g == 4
    state = eng.state_dict()  # the scales travel with the checkpoint
    assert state["scaler_d"]["scale"] == eng.scaler_d.get_scale() and "scaler_g" in state


def test_fp16_overflowing_step_is_skipped_and_reported():
    eng = _fp16_engine(loss={"r1": 1.0})
    eng.scaler_d = torch.amp.GradScaler("cpu", init_scale=3e38)  # loss * scale overflows fp32: inf grads
    before = [p.clone() for p in eng.D.parameters()]
    stats = eng.d_step(_real())
    assert float(stats["amp_skipped_d"]) == 1.0
    assert float(stats["grad_norm_d"]) == 0.0 and float(stats["r1"]) == 0.0 and math.isfinite(float(stats["loss_d"]))
    assert all(torch.equal(a, b) for a, b in zip(before, eng.D.parameters()))  # the step was skipped
    assert eng.scaler_d.get_scale() == pytest.approx(1.5e38)  # and the scale backed off


def test_a_scaled_penalty_equals_the_plain_one():
    """The AMP gradient-penalty recipe (grad of the scaled output, then unscaled) is the same penalty."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(16, 2, requires_grad=True)
    plain = losses.input_gradient_penalty(net(x), x)
    scaled = losses.input_gradient_penalty(net(x), x, torch.tensor(1024.0))
    torch.testing.assert_close(scaled, plain)
    torch.testing.assert_close(
        losses.gradient_penalty(net(x), x, torch.tensor(8.0)), losses.gradient_penalty(net(x), x)
    )


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        _fp16_engine().__class__(*_parts(), precision="fp8")


def _parts():
    spec = JobSpec.model_validate({"model": {"latent_dim": 4, "g_hidden": [16], "d_hidden": [16]}})
    G, D = models.build(spec.model, (2,))
    return G, D, spec.loss, spec.optim, 4, torch.device("cpu")


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    """A compile that fails at the first step: one warning, the state before it put back, eager after."""

    class Broken(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

        def forward(self, *a):
            raise RuntimeError("no C compiler\nmore")

    monkeypatch.setattr(torch, "compile", Broken)
    eager = _engine()
    torch.manual_seed(0)
    G, D = models.build(eager_spec().model, (2,))
    eng = engine.Engine(G, D, eager_spec().loss, eager_spec().optim, 4, torch.device("cpu"), compile=True)
    assert eng.compiled and engine.unwrap(eng.G) is G
    real = _real()
    torch.manual_seed(5)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .RuntimeError: no C compiler") as caught:
        got = eng.step([real])
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert not eng.compiled and eng.G is G and eng.D is D
    torch.manual_seed(5)
    want = eager.step([real])
    assert all(torch.equal(got[k], want[k]) for k in want)  # as if it had run eager from the start
    eng.step([real])  # no second warning, no second try


def eager_spec():
    return JobSpec.model_validate({"model": {"latent_dim": 4, "g_hidden": [16], "d_hidden": [16]}})


def test_compile_keeps_d_eager_when_a_penalty_needs_its_double_backward(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m: torch.nn.Sequential(m))  # a stand-in wrapper
    G, D, loss, optim, latent, dev = _parts()
    eng = engine.Engine(G, D, loss.model_copy(update={"r1": 1.0}), optim, latent, dev, compile=True)
    assert eng.D is D and eng.G is not G


def test_sample_is_seeded_and_keeps_global_rng():
    eng = _engine()
    state = torch.get_rng_state()
    a = engine.sample(eng.G_ema, 100, 4, torch.device("cpu"), seed=3, batch=33)
    b = engine.sample(eng.G_ema, 100, 4, torch.device("cpu"), seed=3)
    assert a.shape == (100, 2) and torch.allclose(a, b, atol=1e-6)
    assert torch.equal(state, torch.get_rng_state())


def _image_engine(policy=(), **sections) -> engine.Engine:
    model = {"arch": "resnet", "latent_dim": 4, "base_channels": 4}
    tree = {"data": {"name": "digits"}, "model": model, "augment": {"policy": list(policy)}, **sections}
    spec = JobSpec.model_validate(tree)
    torch.manual_seed(0)
    G, D = models.build(spec.model, (1, 16, 16))
    cpu = torch.device("cpu")
    return engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, cpu, augment_policy=spec.augment.policy)


def _images(n=8):
    return torch.rand(n, 1, 16, 16) * 2 - 1


def _count_d_forwards(eng: engine.Engine) -> list[torch.Tensor]:
    """The inputs of every D forward from now on."""
    seen: list[torch.Tensor] = []
    eng.D.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("policy", [(), ("color", "translation", "cutout")])
def test_rpgan_r1_r2_steps_a_resnet(policy):
    eng = _image_engine(policy, loss={"type": "rpgan", "r1": 1.0, "r2": 1.0})
    g0, d0 = [p.clone() for p in eng.G.parameters()], [p.clone() for p in eng.D.parameters()]
    for _ in range(2):
        stats = eng.step([_images()])
    assert set(stats) == {"loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "r1", "r2", "d_accuracy", "critic_gap"}
    assert engine.all_finite(stats) and float(stats["r1"]) > 0 and float(stats["r2"]) > 0
    assert not all(torch.equal(a, b) for a, b in zip(g0, eng.G.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, eng.D.parameters()))


def test_rpgan_g_step_is_one_d_forward_over_real_and_fake():
    eng = _image_engine(loss={"type": "rpgan"})
    seen = _count_d_forwards(eng)
    real = _images(8)
    eng.g_step(real)
    assert len(seen) == 1 and seen[0].shape == (16, 1, 16, 16)
    assert torch.equal(seen[0][:8], real)  # real first, then the fakes it is paired with
    eng_ns = _image_engine()
    seen_ns = _count_d_forwards(eng_ns)
    eng_ns.g_step(real)
    assert [x.shape[0] for x in seen_ns] == [8]  # other losses: fakes only


def test_rpgan_g_loss_matches_the_pairing_by_hand():
    eng = _image_engine(loss={"type": "rpgan"})
    G_before, real = copy.deepcopy(eng.G), _images(4)
    torch.manual_seed(3)
    stats = eng.g_step(real)
    torch.manual_seed(3)
    with torch.no_grad():
        r, f = eng.D(real), eng.D(G_before(torch.randn(4, 4)))  # D is untouched by the G step
    assert float(stats["loss_g"]) == pytest.approx(torch.nn.functional.softplus(r - f).mean().item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["nonsaturating", "rpgan"])
def test_augmentation_reaches_d_in_both_steps(loss):
    eng = _image_engine(("translation", "cutout"), loss={"type": loss})
    seen = _count_d_forwards(eng)
    real = _images(8) + 2  # no zeros, so shifted-in and cut-out pixels show
    eng.step([real])
    d_input, g_input = seen
    assert d_input.shape == (16, 1, 16, 16)
    assert not torch.equal(d_input[:8], real) and (d_input[:8] == 0).any()
    if loss == "rpgan":
        assert not torch.equal(g_input[:8], real) and (g_input[:8] == 0).any()
    assert (g_input == 0).any()
    plain = _image_engine(loss={"type": loss})
    seen_plain = _count_d_forwards(plain)
    plain.step([real])
    assert torch.equal(seen_plain[0][:8], real)


def test_compile_runs_or_falls_back_cleanly_on_cpu():
    """The real torch.compile (inductor needs a C compiler on the CPU): compiled, or one warning and
    eager; either way the step's numbers are finite and close to the eager step's."""
    import warnings

    G, D, loss, optim, latent, dev = _parts()
    eager_G, eager_D = copy.deepcopy(G), copy.deepcopy(D)
    eng = engine.Engine(G, D, loss, optim, latent, dev, compile=True)
    ref = engine.Engine(eager_G, eager_D, loss, optim, latent, dev)
    real = _real()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(3)
        got = eng.step([real])
    fallbacks = [w for w in caught if "train.compile" in str(w.message)]
    assert eng.compiled != bool(fallbacks) and len(fallbacks) <= 1
    torch.manual_seed(3)
    want = ref.step([real])
    assert engine.all_finite(got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


# --- class-conditional models: the labels of each real batch go with its fakes ---


def _conditional_engine(arch="resnet", policy=(), **sections) -> engine.Engine:
    model = {"arch": arch, "latent_dim": 4, "base_channels": 4, "conditional": True}
    tree = {"data": {"name": "digits"}, "model": model, "augment": {"policy": list(policy)}, **sections}
    spec = JobSpec.model_validate(tree)
    torch.manual_seed(0)
    G, D = models.build(spec.model, (1, 16, 16), num_classes=10)
    cpu = torch.device("cpu")
    return engine.Engine(G, D, spec.loss, spec.optim, spec.model.latent_dim, cpu, augment_policy=spec.augment.policy)


def _labels(n=8):
    return torch.arange(n) % 10


@pytest.mark.parametrize("arch", ["mlp", "dcgan", "resnet"])
@pytest.mark.parametrize(
    "loss", [{"type": "nonsaturating", "r1": 1.0}, {"type": "rpgan", "r1": 1.0, "r2": 1.0}, {"type": "wgan_gp"}]
)
def test_conditional_step_with_labels_trains_the_class_embeddings(arch, loss):
    eng = _conditional_engine(arch, ("translation", "cutout"), loss=loss, optim={"n_critic": 2})
    g0, d0 = eng.G.class_embed.weight.clone(), eng.D.class_embed.weight.clone()
    stats = eng.step([_images(), _images()], [_labels(), _labels().flip(0)])
    assert engine.all_finite(stats)
    assert {"loss_d", "loss_g"} <= set(stats) and set(loss) - {"type"} <= set(stats)
    assert not torch.equal(eng.G.class_embed.weight, g0) and not torch.equal(eng.D.class_embed.weight, d0)


@pytest.mark.parametrize("loss", ["nonsaturating", "rpgan", "wgan_gp"])
def test_fakes_take_the_labels_of_their_real_batch(loss):
    eng = _conditional_engine(loss={"type": loss})
    g_labels, d_labels = [], []
    eng.G.register_forward_hook(lambda m, args, out: g_labels.append(args[1].clone()))
    eng.D.register_forward_hook(lambda m, args, out: d_labels.append(args[1].clone()))
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    eng.step([_images()], [y])
    assert [g.tolist() for g in g_labels] == [y.tolist()] * 2  # the D step's fakes, then the G step's
    copies = 3 if loss == "wgan_gp" else 2  # real, fake (, interpolates): each sample with its class
    assert torch.equal(d_labels[0], y.repeat(copies))
    assert torch.equal(d_labels[1], y.repeat(2) if loss == "rpgan" else y)


def test_conditional_r1_is_the_input_gradient_of_d_at_the_real_images_and_labels():
    eng = _conditional_engine(loss={"type": "nonsaturating", "r1": 1.0})
    D_before, real, y = copy.deepcopy(eng.D), _images(), _labels()
    stats = eng.d_step(real, y)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D_before(x, y).sum(), x)
    assert float(stats["r1"]) == pytest.approx(grad.pow(2).flatten(1).sum(1).mean().item(), rel=1e-5)


def test_sample_draws_the_classes_it_is_given():
    eng = _conditional_engine()
    classes = engine.random_classes(500, 10, seed=3)
    assert torch.equal(classes, engine.random_classes(500, 10, seed=3)) and set(classes.tolist()) == set(range(10))
    a = engine.sample(eng.G_ema, 6, 4, torch.device("cpu"), seed=1, classes=torch.tensor([0, 0, 0, 7, 7, 7]))
    b = engine.sample(eng.G_ema, 6, 4, torch.device("cpu"), seed=1, classes=torch.tensor([0, 0, 0, 0, 0, 0]))
    assert torch.equal(a[:3], b[:3]) and not torch.equal(a[3:], b[3:])  # same latents, another class
