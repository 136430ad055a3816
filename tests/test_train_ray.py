"""End to end on a real local Ray cluster: convergence, DDP sync, failure recovery, resume,
multi-node placement and Parquet data through Ray Data."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
from conftest import REPO, blob_images, metric_rows, metric_steps, read_json, run_cli, write_image_parquet
from PIL import Image

from distgan.commands import train
from distgan.errors import InputError
from distgan.runtime import ray_train
from distgan.spec import job as config
from distgan.tracking.run import TrackingOptions

pytestmark = pytest.mark.cluster


def test_grid25_two_workers_converges_with_ranks_in_sync(tmp_path):
    out = tmp_path / "result.json"
    r = run_cli(
        "train",
        str(REPO / "jobs" / "grid25.yaml"),
        "--workers",
        "2",
        "--json-out",
        str(out),
        "--set",
        f"train.storage_path={tmp_path}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["steps"] == 10000 and res["workers"] == 2
    m = res["metrics"]
    print(
        f"grid25 2 workers: {res['wall_s']}s, modes {m['modes']}±{m['modes_se']}, hq "
        f"{m['high_quality']:.3f}, rkl {m['reverse_kl']:.3f}"
    )
    assert m["modes"] >= 24 and m["high_quality"] >= 0.9  # the default job: 25/25 and >= 90%
    # DDP really synchronizes: both ranks hold bitwise-equal G and D after 10,000 steps
    digests = res["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] and res["ranks_in_sync"] is True
    # the run's record and console
    run_dir = tmp_path / res["name"]
    assert metric_steps(run_dir) == list(range(1000, 10001, 1000))
    assert (run_dir / "distgan" / "images" / "samples_0010000.png").exists()
    assert "step 10000/10000 | loss_d" in r.stdout and "modes" in r.stdout
    assert "Reporting training result" not in r.stdout + r.stderr


def test_killed_worker_resumes_from_checkpoint_and_rerun_resumes(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    marker = tmp_path / "killed"
    experiment = f"ft-{tmp_path.name}"
    args = [
        "train",
        "--workers",
        "2",
        "--name",
        "ft",
        "--set",
        f"train.storage_path={tmp_path}",
        "--tracking-uri",
        mlflow_server.uri,
        "--experiment",
        experiment,
        "--register",
        "ft-gan",
        "--set",
        "train.eval_every=25",
        "--set",
        "train.checkpoint_every=100",
    ]
    out = tmp_path / "a.json"
    # Killed at 175: Ray's controller has collected the step-100 checkpoint by then (a worker's
    # report waits until the previous one is collected, and reports at 125 and 150 came after it).
    r = run_cli(
        *args,
        "--set",
        "train.steps=300",
        "--json-out",
        str(out),
        cwd=tmp_path,
        env={"DISTGAN_FAULT_KILL_AT": "175:1", "DISTGAN_FAULT_MARKER": str(marker)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert marker.exists()  # rank 1 really was SIGKILLed at step 175
    assert res["status"] == "finished" and res["steps"] == 300
    assert res["resumed_from"] == 100  # the worker group restarted from the step-100 checkpoint
    assert res["ranks_in_sync"] is True
    assert metric_steps(tmp_path / "ft") == list(range(25, 301, 25))  # no gap, no duplicate

    # exactly one MLflow run, with params, every eval's metrics once, sample images and the model
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == res["mlflow_run_id"] and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["optim.lr_g"] == "0.001" and run.data.params["scaling.workers"] == "2"
    assert run.data.tags["dataset"] == "grid25" and run.data.tags["workers"] == "2" and run.data.tags["device"] == "cpu"
    for key in ("loss_d", "loss_g", "grad_norm_d", "img_per_s", "modes", "high_quality"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(25, 301, 25)), key
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]  # step images, key "samples"
    steps = {int(p.split("+")[2]) for p in images if p.startswith("images/samples+step+") and p.endswith(".png")}
    assert steps == set(range(25, 301, 25))
    assert {a.path for a in client.list_artifacts(run.info.run_id, "curves")} == {
        "curves/losses.png",
        "curves/quality.png",
    }
    assert res["model_uri"] == "models:/ft-gan/1" and res["logged_model_uri"]

    # the same run name again, with more steps: it continues from step 300
    out = tmp_path / "b.json"
    r = run_cli(*args, "--set", "train.steps=400", "--json-out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert res["resumed_from"] == 300 and res["steps"] == 400 and res["status"] == "finished"
    assert metric_steps(tmp_path / "ft") == list(range(25, 401, 25))
    assert res["mlflow_run_id"] == run.info.run_id and len(client.search_runs([exp.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")] == list(range(25, 401, 25))

    # a different model under the same name is refused before Ray starts
    r = run_cli(*args, "--set", "model.g_hidden=[32]", cwd=tmp_path)
    assert r.returncode == 2 and "run 'ft'" in r.stderr and "different model section" in r.stderr


def test_two_workers_spread_over_two_nodes(tmp_path, mlflow_server, monkeypatch):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        spec = config.load_spec(
            REPO / "jobs" / "ring8.yaml",
            [
                "scaling.workers=2",
                "scaling.placement=SPREAD",
                "train.steps=40",
                "train.eval_every=20",
                "train.checkpoint_every=20",
                f"train.storage_path={tmp_path}",
                "train.name=spread",
            ],
        )
        monkeypatch.chdir(tmp_path)
        # in-process MLflow calls of earlier tests (mlflow.set_tracking_uri) leave this set
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with pytest.raises(InputError, match="is a local SQLite file, but the cluster at .* has several nodes"):
            train.train(spec, address=cluster.address)  # the default tracking store cannot serve 3 nodes
        assert not (tmp_path / "spread").exists()
        res = train.train(
            spec, address=cluster.address, tracking=TrackingOptions(tracking_uri=mlflow_server.uri)
        ).to_json()
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    assert res["status"] == "finished" and res["steps"] == 40
    assert len(res["node_ids"]) == 2 and len(set(res["node_ids"])) == 2


def test_dcgan_trains_on_parquet_images_through_ray_data(tmp_path):
    import torch

    data = write_image_parquet(tmp_path / "blobs.parquet", blob_images(96, 16))
    # A user's feature network (a torch.export program): image metrics from both workers' samples, gathered on rank 0.
    net = tmp_path / "blobnet.pt2"
    program = torch.export.export(
        torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten()),
        (torch.zeros(4, 1, 16, 16),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
    )
    torch.export.save(program, str(net))
    out = tmp_path / "result.json"
    r = run_cli(
        "train",
        str(REPO / "jobs" / "parquet-images.yaml"),
        "--workers",
        "2",
        "--json-out",
        str(out),
        "--set",
        f"data.path={data}",
        "--set",
        "model.base_channels=16",
        "--set",
        "model.latent_dim=16",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.steps=30",
        "--set",
        "train.eval_every=15",
        "--set",
        "train.checkpoint_every=15",
        "--set",
        f"train.storage_path={tmp_path}",
        "--name",
        "pq",
        "--set",
        f"metrics.feature_net={net}",
        "--set",
        "train.eval_samples=101",
        "--set",
        "metrics.final_samples=301",
        "--no-tracking",
        cwd=tmp_path,
        env={"DISTGAN_CACHE": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["steps"] == 30 and res["ranks_in_sync"]
    assert np.isfinite(res["metrics"]["loss_d"]) and np.isfinite(res["metrics"]["loss_g"])
    m = res["metrics"]
    assert m["fd_blobnet"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["coverage"] <= 1 and "classes_covered" not in m
    assert m["final_fd_blobnet"] > 0 and "final_kid_blobnet_std" in m  # at metrics.final_samples, apart
    rows = metric_rows(tmp_path / "pq")
    assert [("fd_blobnet" in row) for row in rows] == [True, True]
    assert len(list((tmp_path / "cache" / "reference").glob("blobnet-*.npz"))) == 1  # real side computed once, cached
    grid = Image.open(tmp_path / "pq" / "distgan" / "images" / "samples_0000030.png")
    assert grid.size == ((8 * 17 + 1) * 4, (8 * 17 + 1) * 4)  # 8x8 grid of 16 px samples, 4x upscaled


def test_diverging_run_stops_with_status_diverged(tmp_path):
    out = tmp_path / "result.json"
    r = run_cli(
        "train",
        str(REPO / "jobs" / "ring8.yaml"),
        "--json-out",
        str(out),
        "--name",
        "nan",
        "--set",
        "loss.type=lsgan",
        "--set",
        "optim.lr_g=1",
        "--set",
        "optim.lr_d=1",
        "--set",
        "train.steps=200",
        "--set",
        "train.eval_every=10",
        "--set",
        "train.checkpoint_every=100",
        "--set",
        f"train.storage_path={tmp_path}",
        cwd=tmp_path,
    )
    assert r.returncode == 1
    res = read_json(out)
    assert res["status"] == "diverged" and res["steps"] == 10
    # the NaN/Inf that ended it (a loss or a gradient norm), written as JSON null
    assert None in [res["metrics"][k] for k in ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g")]
    assert "loss or gradient is NaN/Inf; stopping (status diverged)" in r.stdout


def test_seed_minimax_is_named_unhealthy_and_never_champion(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "result.json"
    r = run_cli(
        "train", str(REPO / "jobs" / "seed-minimax.yaml"), "--json-out", str(out),
        "--tracking-uri", mlflow_server.uri, "--register", "seed-minimax",
        "--set", "train.steps=400", "--set", "train.eval_samples=300", "--set", "metrics.final_samples=500",
        "--set", f"train.storage_path={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert res["status"] == "finished" and [s["name"] for s in res["health"]] == ["d_collapse"]
    assert "health: step" in r.stdout and "use loss.type=nonsaturating" in r.stdout
    # registered, but a run that is not healthy never takes champion (not even as the first version)
    assert res["model_uri"] == "models:/seed-minimax/1" and res["champion"] is False
    assert MlflowClient(mlflow_server.uri).get_run(res["mlflow_run_id"]).data.tags["distgan.health"] == "d_collapse"


def test_a_local_ray_passes_distgan_env_to_workers_by_inheritance(monkeypatch):
    """A Ray this process starts runs without a runtime env (so Ray's prestarted workers serve the run);
    its workers still see distgan's env vars, and one changed after the start goes to the Train workers
    in a runtime env."""
    monkeypatch.setenv("DISTGAN_PROBE", "at-start")
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)

    @ray.remote(num_cpus=0)
    def worker_sees() -> tuple:
        return os.environ.get("DISTGAN_PROBE"), os.environ.get("MLFLOW_DISABLE_TELEMETRY")

    with ray_train.ray_session(None):
        assert ray.get_runtime_context().runtime_env == {}
        assert ray.get(worker_sees.remote()) == ("at-start", "true")
        assert ray_train.worker_runtime_env() is None
        monkeypatch.setenv("DISTGAN_PROBE", "changed")
        assert ray_train.worker_runtime_env()["env_vars"]["DISTGAN_PROBE"] == "changed"
    assert not ray.is_initialized()
    assert ray_train.worker_runtime_env() == {"env_vars": ray_train.worker_env()}  # no local Ray of ours now


def test_the_console_shows_distgan_lines_only(tmp_path):
    """Ray's notices, its helper actors' error lines and MLflow's nags stay out of a user's console
    (-v shows them); -q leaves the result line alone."""
    args = ["train", str(REPO / "jobs" / "ring8.yaml"), "--no-tracking", "--set", "train.steps=40",
            "--set", "train.eval_every=20", "--set", "train.checkpoint_every=40", "--set", "train.final_eval_seeds=1",
            "--set", f"train.storage_path={tmp_path}"]  # fmt: skip
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert [line.split("/")[0] for line in lines[:2]] == ["step 20", "step 40"] and lines[-1].startswith(
        "finished: 40 steps"
    )
    assert len(lines) == 3
    r = run_cli("-q", *args, "--name", "quiet", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == ""
    assert [line.split(":")[0] for line in r.stdout.strip().splitlines()] == ["finished"]


def test_dcgan_two_workers_hold_the_same_batchnorm_buffers(tmp_path):
    # BatchNorm running stats are per rank during training (forward_sync_buffers=False); they are
    # averaged before every eval and checkpoint, so G, D and EMA-G match bitwise, buffers included.
    out = tmp_path / "result.json"
    settings = {
        "data.name": "digits",
        "model.arch": "dcgan",
        "model.base_channels": 8,
        "model.latent_dim": 16,
        "train.batch_size": 32,
        "train.steps": 10,
        "train.eval_every": 5,
        "train.checkpoint_every": 10,
        "train.eval_samples": 64,
        "metrics.final_samples": 64,
        "metrics.reference_samples": 200,
        "train.storage_path": tmp_path,
    }
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    r = run_cli(
        "train",
        "--workers",
        "2",
        "--json-out",
        str(out),
        "--no-tracking",
        *sets,
        cwd=tmp_path,
        env={"DISTGAN_CACHE": str(tmp_path / "cache")},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["steps"] == 10
    digests = res["param_digests"]
    assert len(digests) == 2 and set(digests[0]) == {"G", "D", "G_ema"}
    assert digests[0] == digests[1] and res["ranks_in_sync"] is True


def test_resnet_rpgan_with_r1_r2_on_two_workers_ends_in_sync(tmp_path):
    """The modern recipe (residual nets without normalization, relativistic pairing, R1 + R2) under DDP."""
    out = tmp_path / "result.json"
    sets = ["model.arch=resnet", "model.base_channels=8", "loss.type=rpgan", "loss.r1=0.1", "loss.r2=0.1",
            "train.steps=20", "train.eval_every=10", "train.checkpoint_every=20", "train.batch_size=32",
            "train.eval_samples=64", "metrics.final_samples=64", "scaling.cpus_per_worker=1",
            f"train.storage_path={tmp_path}"]  # fmt: skip
    args = [x for s in sets for x in ("--set", s)]
    r = run_cli("train", str(REPO / "jobs" / "digits.yaml"), "--workers", "2", "--no-tracking", "--json-out", str(out),
                *args, cwd=tmp_path, env={"DISTGAN_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["steps"] == 20 and res["workers"] == 2
    assert res["ranks_in_sync"] is True and res["param_digests"][0] == res["param_digests"][1]
    assert res["metrics"]["loss_d"] is not None and res["metrics"]["fd_digits"] > 0
