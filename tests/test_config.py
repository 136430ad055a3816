"""Job spec validation: each bad input exits 2 with a message naming the problem, before Ray starts."""

from __future__ import annotations

import time

import pytest
from conftest import REPO, run_cli

from distgan.errors import InputError
from distgan.spec.job import JobSpec, flatten, load_spec


def test_default_job_is_grid25_job_file():
    assert load_spec(None) == load_spec(REPO / "jobs" / "grid25.yaml")


def test_overrides_are_typed_and_nested():
    spec = load_spec(
        REPO / "jobs" / "ring8.yaml", ["optim.lr_g=3e-4", "model.g_hidden=[64, 32]", "model.spectral_norm=true"]
    )
    assert spec.optim.lr_g == 3e-4 and spec.model.g_hidden == [64, 32] and spec.model.spectral_norm is True
    assert spec.data.name == "ring8"
    assert flatten(spec)["optim.lr_g"] == 3e-4
    # YAML 1.1 booleans stay strings unless they say true/false
    assert load_spec(None, ["train.name=off"]).train.name == "off"
    assert load_spec(None, ["model.spectral_norm=True"]).model.spectral_norm is True


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lr_gg=1e-3"], "unknown key 'optim.lr_gg': did you mean 'optim.lr_g'?"),
        (["trian.steps=5"], "unknown key 'trian': did you mean 'train'?"),
        (["optim.lr_d=0"], "optim.lr_d: Input should be greater than 0"),
        (["optim.lr_g=-1"], "optim.lr_g: Input should be greater than 0"),
        (["train.batch_size=0"], "train.batch_size: Input should be greater than or equal to 1"),
        (["scaling.workers=0"], "scaling.workers: Input should be greater than or equal to 1"),
        (["train.steps=abc"], "train.steps: Input should be a valid integer"),
        (
            ["loss.type=wgan"],
            "loss.type: Input should be 'minimax', 'nonsaturating', 'hinge', 'wgan_gp', 'lsgan' or 'rpgan'",
        ),
        (["optim.betas_g=[0.5, 1.5]"], "optim.betas_g must be two numbers in [0, 1)"),
        (["scaling.workers=3"], "train.batch_size=128 does not split evenly over scaling.workers=3"),
        (["model.arch=dcgan"], "model.arch=dcgan makes images; grid25 is 2-D points: use model.arch=mlp"),
        (["data.name=parquet"], "data.name=parquet needs data.path"),
        (["data.path=/x.parquet"], "data.path is only for parquet/imagefolder data"),
        (["optim.lr_g"], "expected key.path=value"),
    ],
)
def test_bad_spec_values_are_input_errors(overrides, message):
    with pytest.raises(InputError, match=None) as e:
        load_spec(REPO / "jobs" / "grid25.yaml", overrides)
    assert message in str(e.value)


def test_bad_spec_via_cli_exits_2_fast_with_one_line(tmp_path):
    t0 = time.perf_counter()
    r = run_cli(
        "train",
        str(REPO / "jobs" / "grid25.yaml"),
        "--set",
        "optim.lr_gg=1e-3",
        "--set",
        f"train.storage_path={tmp_path}",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == "distgan train: error: jobs/grid25.yaml: unknown key 'optim.lr_gg': did you mean 'optim.lr_g'?".replace(
            "jobs/grid25.yaml", str(REPO / "jobs" / "grid25.yaml")
        )
    )
    assert "Traceback" not in r.stderr
    assert time.perf_counter() - t0 < 30  # no Ray was started
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_missing_and_malformed_job_files(tmp_path):
    r = run_cli("train", "nope.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "job spec 'nope.yaml' not found" in r.stderr
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    r = run_cli("train", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "is not valid YAML" in r.stderr
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    r = run_cli("train", "list.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "must be a mapping of sections" in r.stderr


def test_gpu_asked_where_there_is_none(tmp_path):
    r = run_cli("train", "--gpu", "--set", "train.steps=1", cwd=tmp_path)
    assert r.returncode == 2
    assert "scaling.gpu=true with 1 worker(s) needs 1 GPU(s); this machine has 0" in r.stderr
    assert not (tmp_path / "distgan_runs").exists()


def test_all_shipped_job_specs_validate():
    from distgan.spec.search import load_search

    for path in sorted((REPO / "jobs").glob("*.yaml")):
        if path.name.startswith("search-"):
            spec, _ = load_search(path)
        else:
            spec = load_spec(path, ["data.path=/data"] if "parquet" in path.name else [])
        assert isinstance(spec, JobSpec)


def test_version_flag(tmp_path):
    import distgan

    r = run_cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"distgan {distgan.__version__}"


@pytest.mark.parametrize("data", ["grid25", "stacked_digits"])
def test_conditional_on_unlabeled_data_exits_2_before_ray(tmp_path, data):
    arch = "mlp" if data == "grid25" else "dcgan"
    sets = [f"data.name={data}", f"model.arch={arch}", "model.conditional=true", f"train.storage_path={tmp_path}"]
    r = run_cli("train", *[a for s in sets for a in ("--set", s)], "--no-tracking", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"distgan train: error: model.conditional needs labeled data: {data} has no class labels; "
        "set data.label_column or use digits"
    )
    assert list(tmp_path.iterdir()) == []  # refused before Ray started: nothing written


def test_a_run_recorded_before_model_conditional_existed_resumes(tmp_path):
    import yaml

    from distgan.commands import preflight

    spec = load_spec(None, [f"train.storage_path={tmp_path}", "train.name=old"])
    recorded = spec.model_dump(mode="json")
    del recorded["model"]["conditional"]  # what spec.yaml held before the key existed
    (tmp_path / "old" / "distgan").mkdir(parents=True)
    (tmp_path / "old" / "distgan" / "spec.yaml").write_text(yaml.safe_dump(recorded))
    preflight.check_resume(spec, tmp_path / "old")  # the same unconditional model: no error
    with pytest.raises(InputError, match="different model section"):
        preflight.check_resume(
            spec.model_copy(update={"model": spec.model.model_copy(update={"conditional": True})}), tmp_path / "old"
        )
