"""The image-quality path end to end, without Ray: feature networks, cached reference features,
and the Evaluator on generators built from real digits (a healthy one, and one collapsed to a class)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from distgan import data
from distgan.core.evaluator import Evaluator
from distgan.errors import InputError
from distgan.metrics import digits_net, features, reference
from distgan.spec import job as config


class RealDigits(torch.nn.Module):
    """A 'generator' that returns real digits picked by its latents: the best a GAN can do."""

    def __init__(self, images: np.ndarray):
        super().__init__()
        self.register_buffer("pool", torch.from_numpy(images))

    def forward(self, z):
        idx = (z[:, 0].abs() * 1e6).long() % len(self.pool)
        return self.pool[idx]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTGAN_CACHE", str(tmp_path / "cache"))


def _digits_evaluator(**metrics):
    spec = config.load_spec(config.JOBS_DIR / "digits.yaml", [f"metrics.{k}={v}" for k, v in metrics.items()])
    return Evaluator(spec, data.inspect(spec.data), torch.device("cpu"))


def test_shipped_digits_net_classifies_held_out_digits():
    from distgan.data.builtin import digits_array, digits_labels

    _, held_out = digits_net.split()
    net = features.load("digits")
    predicted = net.predict(torch.from_numpy(digits_array()[held_out]))
    assert (predicted == digits_labels()[held_out]).mean() > 0.98
    assert net.features(torch.zeros(3, 1, 8, 8)).shape == (3, digits_net.FEATURE_DIM)


def test_real_digits_score_well_and_a_collapsed_generator_does_not():
    from distgan.data.builtin import digits_array, digits_labels

    ev = _digits_evaluator()
    x, y = digits_array(), digits_labels()
    good = ev.image_metrics(RealDigits(x), 3000, seed=0)
    collapsed = ev.image_metrics(RealDigits(x[y == 3]), 3000, seed=0)
    assert good["classes_covered"] == 1.0 and good["class_kl"] < 0.02
    assert good["precision"] > 0.9 and good["recall"] > 0.9
    assert collapsed["classes_covered"] == 0.1
    assert collapsed["recall"] < 0.2
    assert collapsed["fd_digits"] > 50 * good["fd_digits"]
    assert collapsed["kid_digits"] > 0 and collapsed["kid_digits"] > 3 * collapsed["kid_digits_std"]


def test_reference_features_are_cached_by_fingerprint(tmp_path):
    from distgan.data.builtin import digits_array

    net = features.load("digits")
    x = digits_array()[:300]
    first = reference.reference(x, None, net)
    files = list(reference.cache_dir().glob("digits-*.npz"))
    assert [f.stem for f in files] == [f"digits-{first.fingerprint}"]
    again = reference.reference(x, None, net)
    np.testing.assert_array_equal(again.features, first.features)
    assert again.fingerprint == first.fingerprint
    other = reference.reference(x[::-1].copy(), None, net)  # other data, other key
    assert other.fingerprint != first.fingerprint and len(list(reference.cache_dir().glob("*.npz"))) == 2


def test_metric_names_carry_a_torchscript_network(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6)))
    path = tmp_path / "tiny_net.pt"
    net.save(str(path))
    ev = _digits_evaluator(feature_net=str(path))
    from distgan.data.builtin import digits_array

    q = ev.image_metrics(RealDigits(digits_array()), 500, seed=0)
    assert "fd_tiny_net" in q and "kid_tiny_net" in q and "fd_digits" not in q
    assert "classes_covered" not in q  # a feature net without a classifier head: no class metrics


def test_feature_net_refusals(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="takes 1-channel square images of 8 px or more; this data is 3x32x32"):
        features.check("digits", (3, 32, 32))
    with pytest.raises(InputError, match="no such TorchScript file"):
        features.check(str(tmp_path / "missing.pt"), (1, 8, 8))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # not cached, and offline (conftest)
    with pytest.raises(InputError, match="could not download the inception weights"):
        features.check("inception", (3, 32, 32))


def test_auto_picks_the_digits_net_for_digits():
    assert features.resolve("auto", "digits") == "digits"
    assert features.resolve("none", "digits") is None


def _digits_checkpoint(tmp_path, steps: int = 3, extra: tuple[str, ...] = ()):
    """A run's checkpoint as the loop writes it: a few steps of the real loop, in this process."""
    from distgan.core import loop

    spec = config.load_spec(
        config.JOBS_DIR / "digits.yaml",
        [
            "model.base_channels=8",
            "train.batch_size=32",
            f"train.steps={steps}",
            "train.eval_samples=64",
            "metrics.final_samples=64",
            *extra,
        ],
    )
    session = loop.LocalSession(tmp_path / "run")
    assert loop.run(spec, data.inspect(spec.data), session)["status"] == "finished"
    return session.latest_checkpoint()


def test_distgan_eval_on_a_checkpoint(tmp_path):
    from conftest import read_json, run_cli

    ckpt = _digits_checkpoint(tmp_path)
    out = tmp_path / "eval.json"
    r = run_cli(
        "eval",
        str(tmp_path / "run"),
        "--n",
        "400",
        "--json-out",
        str(out),
        cwd=tmp_path,
        env={"DISTGAN_CACHE": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = read_json(out)
    assert res["dataset"] == "digits" and res["feature_net"] == "digits" and res["n"] == 400
    assert res["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    assert res["metrics"]["fd_digits"] > 0 and 0 <= res["metrics"]["classes_covered"] <= 1
    assert "fd_digits" in r.stdout
    # a 2-D dataset for an image generator, and a source that does not exist: exit 2, one line
    r = run_cli("eval", str(ckpt / "state.pt"), "--data", "grid25", cwd=tmp_path)
    assert r.returncode == 2 and "makes images; grid25 is 2-D points" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", str(tmp_path / "nope"), cwd=tmp_path)
    assert r.returncode == 2 and "neither a file/directory nor a model URI" in r.stderr
    if not torch.cuda.is_available():  # asking for a GPU that is not there
        r = run_cli("eval", str(tmp_path / "run"), "--device", "cuda", cwd=tmp_path)
        assert r.returncode == 2 and "sees no CUDA GPU here; use --device cpu" in r.stderr
        assert "Traceback" not in r.stderr


def test_eval_of_a_run_directory_skips_a_corrupt_newest_checkpoint_as_a_resume_does(tmp_path, capsys):
    from distgan.commands.evaluate import evaluate

    newest = Path(_digits_checkpoint(tmp_path, steps=4, extra=("train.checkpoint_every=2",)))
    older = newest.parent / "checkpoint_0000002"
    assert newest.name == "checkpoint_0000004" and older.is_dir()
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:1000])  # a copy cut short
    capsys.readouterr()
    of_run = evaluate(str(tmp_path / "run"), n=200, device="cpu")
    warning = capsys.readouterr().err
    assert "checkpoint_0000004" in warning and "unusable; evaluating" in warning and "step 2" in warning
    assert of_run.metrics == evaluate(str(older), n=200, device="cpu").metrics
    # with no checkpoint left that verifies: exit-2 input error naming the run directory
    (older / "state.pt").write_bytes(b"")
    with pytest.raises(
        InputError, match=r"no checkpoint in \S+/run verifies: .*checkpoint_0000004.*checkpoint_0000002"
    ) as e:
        evaluate(str(tmp_path / "run"), n=200, device="cpu")
    assert "resume" not in str(e.value)  # the words of an eval, not of a training resume


def test_final_eval_ranks_on_the_eval_sample_size_and_reports_the_large_sample_apart():
    """FD's small-sample bias: the final eval's headline must be measured on as many samples as every
    other eval (so that the search and the champion rule compare like with like)."""
    from distgan.data.builtin import digits_array
    from distgan.metrics import names

    spec = config.load_spec(config.JOBS_DIR / "digits.yaml", ["train.eval_samples=400", "metrics.final_samples=1200"])
    ev = Evaluator(spec, data.inspect(spec.data), torch.device("cpu"))
    G = RealDigits(digits_array())
    seed = spec.train.seed
    during = ev.evaluate(G, step=10, final=False, record=None)
    final = ev.evaluate(G, step=20, final=True, record=None)
    at_400, at_1200 = ev.image_metrics(G, 400, seed), ev.image_metrics(G, 1200, seed)
    assert at_400["fd_digits"] > 1.3 * at_1200["fd_digits"]  # the bias that made them incomparable
    assert final["fd_digits"] == during["fd_digits"] == at_400["fd_digits"]
    assert final["kid_digits"] == at_400["kid_digits"] and final["precision"] == at_400["precision"]
    assert final[names.final("fd_digits")] == at_1200["fd_digits"]
    assert final["final_kid_digits_std"] == at_1200["kid_digits_std"]
    # ranked and promoted on the plain (same-size) names only
    assert names.rank_key("image", final) == ("fd_digits", (-at_400["fd_digits"],))
    assert names.rank_key("image", {"final_fd_digits": 0.1}) is None
    assert not names.is_quality("final_fd_digits") and not names.is_quality("kid_digits_std")
    assert names.is_reported("final_fd_digits") and names.lower_is_better("final_fd_digits")
    from mlflow.utils.validation import _validate_metric_name

    for key in final:
        _validate_metric_name(key)


def test_image_metrics_do_not_depend_on_the_number_of_workers():
    from distgan.data.builtin import digits_array

    spec = config.load_spec(config.JOBS_DIR / "digits.yaml", [])
    info, cpu, G = data.inspect(spec.data), torch.device("cpu"), RealDigits(digits_array())
    one = Evaluator(spec, info, cpu).image_metrics(G, 2500, seed=3)
    sent = []
    rank1 = Evaluator(spec, info, cpu, rank=1, world=2, gather=lambda obj: sent.append(obj) or [[], obj])
    assert rank1.image_metrics(G, 2500, seed=3) == {}
    rank0 = Evaluator(spec, info, cpu, rank=0, world=2, gather=lambda obj: [obj, sent[0]])
    two = rank0.image_metrics(G, 2500, seed=3)
    assert two == pytest.approx(one, rel=1e-9, abs=1e-12)


def _stacked_evaluator(*overrides: str):
    spec = config.load_spec(
        None, ["data.name=stacked_digits", "model.arch=dcgan", "metrics.feature_net=none", *overrides]
    )
    return Evaluator(spec, data.inspect(spec.data), torch.device("cpu"))


def test_stacked_digits_count_1000_modes_and_the_final_eval_draws_25600():
    from distgan.data.builtin import stacked_digits_array
    from distgan.metrics import names

    ev = _stacked_evaluator("train.eval_samples=2000")
    assert ev.n_modes == 1000
    images, _ = stacked_digits_array(30_000, seed=1)
    real = RealDigits(images)
    final = ev.evaluate(real, step=10, final=True, record=None)
    assert final["modes"] >= 990 and final["reverse_kl"] < 0.1  # 25,600 samples: every triple seen
    during = ev.evaluate(real, step=5, final=False, record=None)
    assert during["modes"] < 900  # 2,000 samples cannot cover 1,000 triples: the final eval draws more
    collapsed = ev.evaluate(RealDigits(images[:1]), step=10, final=True, record=None)
    assert collapsed["modes"] == 1 and collapsed["reverse_kl"] == pytest.approx(np.log(1000))
    assert names.rank_key("image", final) == ("stacked", (final["modes"], -final["reverse_kl"]))
    assert names.rank_key("image", final) > names.rank_key("image", collapsed)
    assert names.headline_metric("image", None, "stacked_digits") == "modes"
    assert not names.lower_is_better("modes")


class RealDigitsOfClass(torch.nn.Module):
    """A class-conditional 'generator' that returns a real digit of the class asked for (or, with
    `shuffled`, of a class drawn at random: one that ignores its class)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shuffled: bool = False):
        super().__init__()
        if shuffled:
            labels = np.random.default_rng(0).permutation(labels)
        self.pools = [torch.from_numpy(images[labels == k]) for k in range(10)]

    def forward(self, z, y):
        idx = (z[:, 0].abs() * 1e6).long()
        return torch.stack([self.pools[k][i % len(self.pools[k])] for k, i in zip(y.tolist(), idx.tolist())])


def test_class_accuracy_of_real_digits_is_the_classifiers_accuracy_and_of_shuffled_ones_a_tenth():
    from distgan.data.builtin import digits_array, digits_labels
    from distgan.metrics.image import class_accuracy

    x, y = digits_array(), digits_labels()
    predicted = features.load("digits").predict(torch.from_numpy(x))
    per_class = np.mean([(predicted[y == k] == k).mean() for k in range(10)])
    assert class_accuracy(y, predicted) == pytest.approx(per_class) and per_class > 0.98
    assert class_accuracy(np.random.default_rng(0).permutation(y), predicted) == pytest.approx(0.1, abs=0.03)
    assert class_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == 0.5  # each class counts once

    # The Evaluator of a conditional job: classes drawn uniformly, each sample judged against its own.
    spec = config.load_spec(config.JOBS_DIR / "digits-conditional.yaml", ["train.eval_samples=2000"])
    ev = Evaluator(spec, data.inspect(spec.data), torch.device("cpu"))
    right = ev.image_metrics(RealDigitsOfClass(x, y), 2000, seed=0)
    wrong = ev.image_metrics(RealDigitsOfClass(x, y, shuffled=True), 2000, seed=0)
    assert right["class_accuracy"] == pytest.approx(per_class, abs=0.01)
    assert wrong["class_accuracy"] == pytest.approx(0.1, abs=0.03)
    assert right["classes_covered"] == wrong["classes_covered"] == 1.0  # coverage alone cannot tell them apart
    unconditional = _digits_evaluator().image_metrics(RealDigits(x), 500, seed=0)
    assert "class_accuracy" not in unconditional


def test_a_conditional_run_records_one_row_of_samples_per_class():
    from PIL import Image

    from distgan.data.builtin import digits_array, digits_labels

    spec = config.load_spec(config.JOBS_DIR / "digits-conditional.yaml", ["metrics.feature_net=none"])
    ev = Evaluator(spec, data.inspect(spec.data), torch.device("cpu"))
    images = []
    ev.evaluate(RealDigitsOfClass(digits_array(), digits_labels()), 10, final=False, record=_Images(images))
    (png,) = images
    grid = np.asarray(Image.open(__import__("io").BytesIO(png)))
    # 10 rows (classes) of 8 columns of 8x8 images with 1-px gaps, upscaled 4x
    assert grid.shape[:2] == ((10 * 9 + 1) * 4, (8 * 9 + 1) * 4)
    net = digits_net.load()
    cells = grid[4::4, 4::4][: 10 * 9].reshape(10, 9, -1, 9)[:, :8, :, :8].transpose(0, 2, 1, 3)
    cells = torch.from_numpy(cells[:, :8].astype(np.float32) / 127.5 - 1).reshape(80, 1, 8, 8)
    assert (net(cells).argmax(1).reshape(10, 8) == torch.arange(10)[:, None]).float().mean() > 0.9


class _Images:
    def __init__(self, out: list):
        self.out = out

    def log_image(self, png: bytes, name: str, step: int | None = None) -> None:
        self.out.append(png)
