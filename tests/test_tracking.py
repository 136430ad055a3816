"""MLflow: URI resolution, a real `mlflow server` (registry, champion rule, pull errors, outages)."""

from __future__ import annotations

import getpass
import json
import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import REPO, MlflowServer, free_port, read_json, run_cli, spawn_server, stop_server, wait_until_up
from mlflow.tracking import MlflowClient

from distgan import models
from distgan.errors import InputError
from distgan.spec.job import ModelSpec
from distgan.tracking import client as tracking
from distgan.tracking import registry
from distgan.tracking.record import RunRecord


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_uri("sqlite:///sub.db") == f"sqlite:///{tmp_path}/sub.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/")
    assert tracking.resolve_uri(None) == "http://127.0.0.1:5000"
    assert tracking.resolve_uri("sqlite:////abs/x.db".replace("/abs", str(tmp_path))) == f"sqlite:///{tmp_path}/x.db"
    with pytest.raises(InputError, match="is not supported"):
        tracking.resolve_uri("file:///tmp/mlruns")
    with pytest.raises(InputError, match="does not exist"):
        tracking.resolve_uri("sqlite:////no/such/dir/mlflow.db")


def test_server_down_at_start_is_exit_2_within_seconds(tmp_path):
    port = free_port()  # nothing listens there
    t0 = time.perf_counter()
    r = run_cli(
        "train", "--tracking-uri", f"http://127.0.0.1:{port}", "--set", f"train.storage_path={tmp_path}", cwd=tmp_path
    )
    took = time.perf_counter() - t0
    assert r.returncode == 2
    assert f"MLflow tracking server http://127.0.0.1:{port} is not reachable (ConnectionError)" in r.stderr
    assert took < 30, took  # not MLflow's default minutes of retries
    assert not (tmp_path / "distgan_runs").exists() and list(tmp_path.iterdir()) == []


def _tiny_generator_run(uri: str, client: MlflowClient) -> tuple[str, str]:
    exp = client.get_experiment_by_name("registry-test") or client.get_experiment(
        client.create_experiment("registry-test")
    )
    run_id = client.create_run(exp.experiment_id).info.run_id
    spec = ModelSpec(latent_dim=2, g_hidden=[8])
    G, _ = models.build(spec, (2,))
    meta = {
        "model": spec.model_dump(mode="json"),
        "sample_shape": [2],
        "latent_dim": 2,
        "dataset": "grid25",
        "kind": "mixture",
    }
    return run_id, registry.log_generator(uri, run_id, G, meta)


def test_champion_rule_and_promote(mlflow_server, tmp_path):
    uri, client = mlflow_server.uri, MlflowClient(mlflow_server.uri)
    name = "champ-test"

    def new_version(modes, hq):
        run_id, model_uri = _tiny_generator_run(uri, client)
        return registry.register(
            uri,
            model_uri,
            name,
            "mixture",
            {"modes": modes, "high_quality": hq, "reverse_kl": 0.1},
            tags={"dataset": "grid25"},
            description="test",
        )

    first = new_version(20.0, 0.5)
    assert first["version"] == 1 and first["champion"] is True
    worse = new_version(18.0, 0.9)  # fewer modes: worse, whatever its high_quality
    assert worse["champion"] is False and client.get_model_version_by_alias(name, "champion").version == "1"
    tie_better = new_version(20.0, 0.6)  # same modes, more high-quality samples: better
    assert tie_better["champion"] is True and tie_better["previous_champion"] == 1
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    v = client.get_model_version(name, "3")
    assert v.tags["metric.modes"] == "20.0" and v.tags["dataset"] == "grid25" and v.description == "test"

    r = run_cli("models", "promote", name, "2", "--tracking-uri", uri, cwd=tmp_path)
    assert r.returncode == 0 and "champ-test@champion -> v2 (was v3)" in r.stdout
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    r = run_cli("models", "show", name, "--tracking-uri", uri, cwd=tmp_path)
    assert r.returncode == 0 and "v2    @champion" in r.stdout
    r = run_cli("models", "list", "--tracking-uri", uri, cwd=tmp_path)
    assert r.returncode == 0 and "champ-test" in r.stdout and "@champion=v2" in r.stdout


def test_image_champion_is_the_lower_fd_of_the_same_network(mlflow_server):
    uri, client = mlflow_server.uri, MlflowClient(mlflow_server.uri)
    name = "image-champ"

    def new_version(metrics):
        _, model_uri = _tiny_generator_run(uri, client)
        return registry.register(uri, model_uri, name, "image", metrics, tags={}, description="test")

    assert new_version({"fd_digits": 20.0, "precision": 0.5})["champion"] is True
    assert new_version({"fd_digits": 25.0})["champion"] is False  # higher FD: worse
    assert new_version({"fd_inception": 1.0})["champion"] is False  # another network: not comparable
    assert new_version({})["champion"] is False  # no number at all
    better = new_version({"fd_digits": 12.5, "classes_covered": 1.0})
    assert better["champion"] is True and better["previous_champion"] == 1
    tags = client.get_model_version(name, str(better["version"])).tags
    assert (
        tags["metric.fd_digits"] == "12.5"
        and tags["metric.classes_covered"] == "1.0"
        and tags["distgan.kind"] == "image"
    )


def test_unknown_models_and_malformed_uris_exit_2(mlflow_server, tmp_path):
    uri, client = mlflow_server.uri, MlflowClient(mlflow_server.uri)
    _, model_uri = _tiny_generator_run(uri, client)
    registry.register(uri, model_uri, "known-model", "mixture", {"modes": 1.0, "high_quality": 0.1}, {}, "d")
    cases = {
        "models:/unknown-model/1": "no registered model 'unknown-model'; registered: ",
        "models:/known-model/9": "model 'known-model' has no version 9; versions: 1",
        "models:/known-model@best": "model 'known-model' has no alias 'best'; aliases: champion",
        "models:/known-model": "model URI 'models:/known-model' is malformed",
        "s3://bucket/model": "is malformed; use models:/NAME/VERSION",
    }
    for bad, message in cases.items():
        r = run_cli("pull", bad, "--tracking-uri", uri, "--out", str(tmp_path / "s"), cwd=tmp_path)
        assert r.returncode == 2, (bad, r.stderr)
        assert message in r.stderr, (bad, r.stderr)
        assert "Traceback" not in r.stderr
    assert "known-model" in run_cli("pull", "models:/unknown-model/1", "--tracking-uri", uri, cwd=tmp_path).stderr
    r = run_cli("models", "promote", "known-model", "5", "--tracking-uri", uri, cwd=tmp_path)
    assert r.returncode == 2 and "has no version 5; versions: 1" in r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.cluster
def test_server_stopped_and_restarted_mid_run_loses_nothing(tmp_path):
    import subprocess
    import sys

    server = MlflowServer(tmp_path / "server").start()
    try:
        out = tmp_path / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "distgan",
            "train",
            str(REPO / "jobs" / "ring8.yaml"),
            "--tracking-uri",
            server.uri,
            "--json-out",
            str(out),
            "--name",
            "outage",
            "--set",
            "train.steps=2000",
            "--set",
            "train.eval_every=50",
            "--set",
            "train.checkpoint_every=500",
            "--set",
            "train.batch_size=256",
            "--set",  # the 256-wide nets this run's length (the outage's window) was sized with
            "model.g_hidden=[256,256,256]",
            "--set",
            "model.d_hidden=[256,256,256]",
            "--set",
            f"train.storage_path={tmp_path}",
        ]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 300
        run_id = None
        while time.monotonic() < deadline and proc.poll() is None:  # wait until metrics flow
            saved = tmp_path / "outage" / "distgan" / "mlflow.json"
            if saved.exists():
                run_id = json.loads(saved.read_text())["run_id"]
                if len(client.get_metric_history(run_id, "loss_d")) >= 3:
                    break
            time.sleep(1)
        assert run_id and proc.poll() is None, "training ended before the outage could start"
        server.stop()
        time.sleep(12)  # training goes on meanwhile
        server.start()
        stdout, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-3000:]
    finally:
        server.stop()
    server.start()
    try:
        res = read_json(out)
        assert res["status"] == "finished" and res["tracking_undelivered"] == 0
        assert "unreachable" in stdout and "is back after" in stdout
        steps = [m.step for m in MlflowClient(server.uri).get_metric_history(run_id, "loss_d")]
        assert sorted(steps) == list(range(50, 2001, 50))  # every eval, once: nothing lost in the outage
    finally:
        server.stop()


PYFUNC_CHECK = """
import json, sys
import mlflow, numpy as np, torch
model = mlflow.pyfunc.load_model(sys.argv[1])
z = np.load(sys.argv[2])
native = mlflow.pytorch.load_model(sys.argv[1])(torch.from_numpy(z)).detach().numpy()
print(json.dumps({"one": model.predict(z[:1]).tolist(), "many": model.predict(z).tolist(), "native": native.tolist()}))
"""


@pytest.mark.cluster
def test_register_alias_pull_and_pyfunc_without_distgan(mlflow_server, pyfunc_venv, tmp_path):

    import numpy as np

    from distgan.tracking import hub

    out = tmp_path / "result.json"
    r = run_cli(
        "train",
        str(REPO / "jobs" / "ring8.yaml"),
        "--tracking-uri",
        mlflow_server.uri,
        "--register",
        "ring8-pull",
        "--system-metrics",
        "--json-out",
        str(out),
        "--set",
        "train.steps=200",
        "--set",
        "train.eval_every=100",
        "--set",
        f"train.storage_path={tmp_path}",
        cwd=tmp_path,
        env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = read_json(out)
    assert res["model_uri"] == "models:/ring8-pull/1" and res["champion"] is True
    assert "registered models:/ring8-pull/1 (champion)" in r.stdout
    assert "Add type hints" not in r.stdout + r.stderr
    assert "Downloading artifacts" not in r.stdout + r.stderr  # MLflow's progress bars stay off the console

    # the run: rank 0's system metrics, the sample scatter at each eval as a step image, the result in its description
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(res["mlflow_run_id"])
    assert 0 <= run.data.metrics["system/cpu_utilization_percentage"] <= 100
    assert _image_steps(client, run.info.run_id, "samples") == [100, 200]
    headline = f"**finished** after 200 steps: modes {res['metrics']['modes']:.3g}  high_quality "
    assert headline in run.data.tags["mlflow.note.content"].split("\n\n")[-1]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["ring8"]

    # distgan pull in a fresh process, by alias
    pulled = tmp_path / "pulled"
    r = run_cli(
        "pull",
        "models:/ring8-pull@champion",
        "--n",
        "300",
        "--seed",
        "5",
        "--out",
        str(pulled),
        "--format",
        "png",
        "--format",
        "npy",
        "--format",
        "parquet",
        "--tracking-uri",
        mlflow_server.uri,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    samples = np.load(pulled / "samples.npy")
    assert samples.shape == (300, 2) and np.isfinite(samples).all()
    import pyarrow.parquet as pq

    table = pq.read_table(pulled / "samples.parquet")
    assert table.num_rows == 300 and np.allclose(
        np.stack(table.column("sample").to_numpy(zero_copy_only=False)), samples
    )
    assert (pulled / "samples.png").read_bytes()[:4] == b"\x89PNG"

    # distgan eval of the registered model and of the run's checkpoint: the same generator, the same numbers
    from distgan.commands.evaluate import evaluate

    by_uri = evaluate("models:/ring8-pull@champion", n=500, tracking_uri=mlflow_server.uri).to_json()
    by_checkpoint = evaluate(res["checkpoint"], n=500).to_json()
    assert by_uri["dataset"] == "ring8" and by_uri["metrics"] == by_checkpoint["metrics"]
    assert 0 <= by_uri["metrics"]["modes"] <= 8 and "modes_se" in by_uri["metrics"]

    # the same weights through distgan.tracking.hub (state_dict, no unpickling) give the same samples
    G, meta = hub.load_generator("models:/ring8-pull/1", mlflow_server.uri)
    from distgan.core import engine

    again = engine.sample(G, 300, meta["latent_dim"], torch.device("cpu"), 5).numpy()
    assert np.allclose(again, samples, atol=1e-6)

    # the pyfunc in a virtualenv with mlflow and torch but not distgan, batch 1 and 37
    z = np.random.default_rng(0).standard_normal((37, meta["latent_dim"])).astype(np.float32)
    preds = _without_distgan(pyfunc_venv, tmp_path, PYFUNC_CHECK, "models:/ring8-pull@champion", z, mlflow_server.uri)
    expected = G(torch.from_numpy(z)).detach().numpy()
    assert np.array(preds["one"]).shape == (1, 2) and np.array(preds["many"]).shape == (37, 2)
    assert np.allclose(preds["many"], expected, atol=1e-5) and np.allclose(preds["one"], expected[:1], atol=1e-5)
    assert np.allclose(preds["native"], expected, atol=1e-5)  # mlflow.pytorch.load_model, without distgan too


def test_run_record_keeps_the_resumed_trajectory(tmp_path):
    record = RunRecord(tmp_path / "rec")
    for step in (10, 20, 30):
        record.log_metrics({"loss_d": float(step)}, step)
    # a resume from the step-10 checkpoint re-measures 20 and 30: the new values replace the dead
    # trajectory's, and each step still appears once
    record = RunRecord(tmp_path / "rec")
    record.truncate_after(10)
    assert [r["step"] for r in record.metric_history()] == [10]
    for step in (20, 30, 40):
        record.log_metrics({"loss_d": -float(step)}, step)
    rows = record.metric_history()
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert [r["loss_d"] for r in rows] == [10.0, -20.0, -30.0, -40.0]
    record.log_metrics({"loss_d": 0.0}, 40)  # a step already recorded in this attempt is not written twice
    assert [r["step"] for r in record.metric_history()] == [10, 20, 30, 40]
    record.truncate_after(0)  # restarted before any checkpoint: nothing of the dead attempt stays
    assert record.metric_history() == []
    assert record.close() == 0


def test_logged_model_uri_is_accepted_and_a_missing_one_is_exit_2(mlflow_server, tmp_path):
    """MLflow 3's own logged-model URI (models:/m-<id>, the result's logged_model_uri) loads."""
    import re

    from distgan.tracking import hub

    uri, client = mlflow_server.uri, MlflowClient(mlflow_server.uri)
    _, model_uri = _tiny_generator_run(uri, client)
    assert re.fullmatch(r"models:/m-[0-9a-f]{32}", model_uri), model_uri
    assert hub.check_uri(model_uri, uri) == model_uri
    G, meta = hub.load_generator(model_uri, uri)
    assert meta["latent_dim"] == 2 and G(torch.randn(3, 2)).shape == (3, 2)
    missing = "models:/m-" + "0" * 32
    with pytest.raises(InputError, match=f"no logged model m-{'0' * 32} at {uri}"):
        hub.check_uri(missing, uri)
    r = run_cli("pull", missing, "--tracking-uri", uri, "--out", str(tmp_path / "s"), cwd=tmp_path)
    assert r.returncode == 2 and f"no logged model m-{'0' * 32}" in r.stderr, r.stderr[-2000:]


def test_sender_drops_a_refused_record_and_delivers_the_rest_quickly(mlflow_server, tmp_path, monkeypatch):
    """A permanent refusal (HTTP 400: invalid metric key) must not hold every later record."""
    monkeypatch.setenv("DISTGAN_TRACKING_FLUSH_S", "20")
    uri, client = mlflow_server.uri, MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("sender-test") or client.get_experiment(client.create_experiment("sender-test"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    warned = []
    record = RunRecord(tmp_path / "rec", {"uri": uri, "run_id": run_id}, warned.append)
    record.log_metrics({"loss_d": 1.0}, step=1)
    record.log_metrics({"loss_d": 2.0, "bad*key": 2.0}, step=2)  # refused: 400 INVALID_PARAMETER_VALUE
    record.log_metrics({"loss_d": 3.0}, step=3)
    t0 = time.perf_counter()
    undelivered = record.close()
    took = time.perf_counter() - t0
    assert undelivered == 0 and took < 10, (undelivered, took, warned)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss_d")] == [(1, 1.0), (3, 3.0)]
    assert record.sender.dropped == 1 and record.sender.delivered == 2
    assert any("dropped" in w and "INVALID_PARAMETER_VALUE" in w for w in warned), warned
    assert not any("unreachable" in w for w in warned), warned
    # A run the server does not know (404 on every record): all dropped at once, nothing held to the end.
    warned.clear()
    record = RunRecord(tmp_path / "rec2", {"uri": uri, "run_id": "0" * 32}, warned.append)
    record.log_image(b"png", "samples_0000001.png")
    record.log_metrics({"loss_d": 1.0}, step=1)
    t0 = time.perf_counter()
    undelivered = record.close()
    assert undelivered == 0 and time.perf_counter() - t0 < 10, (undelivered, warned)
    assert record.sender.dropped == 2 and record.sender.delivered == 0
    assert "RESOURCE_DOES_NOT_EXIST" in warned[0], warned


def test_champion_lookup_none_only_when_there_is_none(mlflow_server):
    uri = mlflow_server.uri
    client = tracking.mlflow_client(uri)
    name = "no-champion-yet"
    client.create_registered_model(name)
    assert registry._champion(client, name) is None  # the alias is not set yet
    assert registry._champion(client, "no-such-model") is None
    dead = tracking.mlflow_client(f"http://127.0.0.1:{free_port()}")  # nothing listens: not "no champion"
    with pytest.raises(Exception) as e:
        registry._champion(dead, name)
    assert "Connection" in str(e.value) or "connect" in str(e.value).lower()


def _image_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    """Steps of the full-size images MLflow holds under `key` (`images/<key>+step+<S>+timestamp+...png`)."""
    paths = [a.path.removeprefix("images/") for a in client.list_artifacts(run_id, "images")]
    return sorted(int(p.split("+")[2]) for p in paths if p.startswith(f"{key}+step+") and p.endswith(".png"))


def test_run_record_sends_step_images_and_system_metrics(mlflow_server, tmp_path, monkeypatch):
    from conftest import png_bytes

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("record-test") or client.get_experiment(client.create_experiment("record-test"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    tracking_run = {"uri": mlflow_server.uri, "run_id": run_id}
    png = png_bytes(np.full((8, 8), 128, dtype=np.uint8))

    record = RunRecord(tmp_path / "rec", tracking_run, system_metrics=True)
    for step in (10, 20):
        record.log_metrics({"loss_d": float(step)}, step)
        record.log_image(png, f"samples_{step:07d}.png", step)
    time.sleep(3)  # the monitor samples every second
    assert record.close() == 0
    assert _image_steps(client, run_id, "samples") == [10, 20]
    assert sorted(p.name for p in (tmp_path / "rec" / "images").iterdir()) == [
        "samples_0000010.png",
        "samples_0000020.png",
    ]
    metrics = client.get_run(run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    first = [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    assert first and first == list(range(len(first)))

    # a restarted attempt replays step 20: its image is recorded once; the system metrics' steps go on
    record = RunRecord(tmp_path / "rec", tracking_run, system_metrics=True)
    record.truncate_after(10)
    for step in (20, 30):
        record.log_metrics({"loss_d": -float(step)}, step)
        record.log_image(png, f"samples_{step:07d}.png", step)
    time.sleep(2)
    assert record.close() == 0
    assert _image_steps(client, run_id, "samples") == [10, 20, 30]
    again = [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    assert again[: len(first)] == first and again[len(first) :] == list(range(len(first), len(again)))
    assert len(again) > len(first)
    # without --system-metrics there is no monitor
    plain = RunRecord(tmp_path / "rec2", tracking_run)
    assert plain.monitor is None and plain.close() == 0


def test_open_run_logs_dataset_source_tags_and_description(mlflow_server, tmp_path, monkeypatch):
    import json as json_

    from conftest import blob_images, write_image_parquet

    from distgan import data
    from distgan.spec.job import JobSpec
    from distgan.tracking import run as tracking_run

    monkeypatch.chdir(REPO)  # a git checkout: the commit tag
    client = MlflowClient(mlflow_server.uri)
    write_image_parquet(tmp_path / "blobs.parquet", blob_images(12, 8))
    cases = {
        "ring8": JobSpec.model_validate({"data": {"name": "ring8", "seed": 3}, "train": {"name": "ds-ring8"}}),
        "parquet": JobSpec.model_validate(
            {
                "data": {"name": "parquet", "path": str(tmp_path / "blobs.parquet"), "column": "image"},
                "model": {"arch": "dcgan"},
                "train": {"name": "ds-parquet", "steps": 60},
            }
        ),
    }
    digests = {}
    for key, spec in cases.items():
        info = data.inspect(spec.data)
        run_id = tracking_run.open_run(mlflow_server.uri, "dataset-test", spec, tmp_path / key, {}, info)
        run = client.get_run(run_id)
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "distgan train" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] == getpass.getuser()  # the run page's "Created by"
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.source.git.commit"] == tags["git.commit"]
        (inp,) = run.inputs.dataset_inputs
        ds = inp.dataset
        assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "train"}
        profile = json_.loads(ds.profile)
        assert profile == {"kind": info.kind, "sample_shape": list(info.sample_shape), "num_rows": info.num_rows}
        assert json_.loads(ds.schema)["mlflow_colspec"][0]["tensor-spec"]["shape"] == [-1, *info.sample_shape]
        digests[key] = ds.digest
        if key == "ring8":
            assert ds.name == "ring8" and ds.source_type == "code"
            assert json_.loads(ds.source) == {"tags": {"builtin": "distgan.data.builtin:ring8", "data.seed": "3"}}
            assert tags["mlflow.note.content"].startswith("mlp GAN (latent 64) on ring8, mixture samples of shape [2]")
        else:
            assert ds.name == "blobs.parquet" and ds.source_type == "local"
            assert json_.loads(ds.source) == {"uri": str(tmp_path / "blobs.parquet")}
            assert "dcgan GAN (latent 64) on parquet (" in tags["mlflow.note.content"]
            assert "60 generator steps of batch 512 on 1 CPU worker" in tags["mlflow.note.content"]
        tracking_run.append_note(mlflow_server.uri, run_id, "**finished** after 60 steps: modes 8")
        note = client.get_run(run_id).data.tags["mlflow.note.content"]
        assert note.endswith(".\n\n**finished** after 60 steps: modes 8")
    assert len(digests["ring8"]) == len(digests["parquet"]) == 10
    # the digest is the content's: the same bytes elsewhere give the same digest, other bytes another
    parquet = cases["parquet"].data
    moved = parquet.model_copy(update={"path": str(tmp_path / "copy" / "blobs.parquet")})
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "blobs.parquet").write_bytes((tmp_path / "blobs.parquet").read_bytes())
    info = data.inspect(parquet)
    assert tracking_run.dataset(moved, info).digest == digests["parquet"]
    write_image_parquet(tmp_path / "copy" / "blobs.parquet", blob_images(12, 8, seed=1))
    assert tracking_run.dataset(moved, info).digest != digests["parquet"]
    other_seed = cases["ring8"].data.model_copy(update={"seed": 4})
    assert tracking_run.dataset(other_seed, data.inspect(other_seed)).digest != digests["ring8"]


def test_registered_generator_loads_with_mlflow_and_serves(mlflow_server, tmp_path):
    """The native PyTorch flavour: mlflow.pytorch and pyfunc load it (any batch), distgan's hub
    rebuilds it from the state_dict, and `mlflow models serve` answers /invocations with its samples."""
    import os
    import urllib.request

    import mlflow

    from distgan.tracking import hub

    uri, client = mlflow_server.uri, MlflowClient(mlflow_server.uri)
    t0 = time.perf_counter()
    run_id, model_uri = _tiny_generator_run(uri, client)
    reg = registry.register(uri, model_uri, "served-gan", "mixture", {"modes": 3.0, "high_quality": 0.5}, {}, "d")
    took = time.perf_counter() - t0
    assert took < 5, took  # README: log_model + register in about a second
    G, meta = hub.load_generator(reg["model_uri"], uri)
    z = np.random.default_rng(0).standard_normal((37, 2)).astype(np.float32)
    expected = G(torch.from_numpy(z)).detach().numpy()
    for other in ("models:/served-gan@champion", f"runs:/{run_id}/generator"):
        assert np.array_equal(hub.load_generator(other, uri)[0](torch.from_numpy(z)).detach().numpy(), expected)

    with tracking.fluent_uri(uri):
        native = mlflow.pytorch.load_model(reg["model_uri"])
        assert np.allclose(native(torch.from_numpy(z)).detach().numpy(), expected, atol=1e-6)
        pyfunc = mlflow.pyfunc.load_model(reg["model_uri"])
        assert pyfunc.predict(z[:1]).shape == (1, 2) and np.allclose(pyfunc.predict(z), expected, atol=1e-6)
        info = mlflow.models.get_model_info(reg["model_uri"])
    assert set(info.flavors) == {"pytorch", "python_function"}
    assert info.signature.inputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 2)}}
    ]
    assert info.saved_input_example_info["type"] == "ndarray"

    port = free_port()
    proc = spawn_server(
        ["mlflow", "models", "serve", "-m", reg["model_uri"], "--env-manager", "local"]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        {**os.environ, "MLFLOW_TRACKING_URI": uri},
        tmp_path,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc, tmp_path, "mlflow models serve", 120)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": z.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        preds = np.array(json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"])
        assert preds.shape == (37, 2) and np.allclose(preds, expected, atol=1e-5)
    finally:
        stop_server(proc)


CONDITIONAL_CHECK = """
import json, sys
import mlflow, numpy as np, torch
G = mlflow.pytorch.load_model(sys.argv[1])
z = torch.from_numpy(np.load(sys.argv[2]))
print(json.dumps({"samples": G(z, torch.arange(len(z)) % 10).detach().numpy().tolist()}))
"""


def test_conditional_generator_pull_class_and_load_without_distgan(mlflow_server, pyfunc_venv, tmp_path):

    import pyarrow.parquet as pq

    from distgan.core import engine
    from distgan.data import DataInfo
    from distgan.tracking import hub

    uri, client = mlflow_server.uri, MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("registry-test") or client.get_experiment(
        client.create_experiment("registry-test")
    )
    spec = ModelSpec(arch="dcgan", latent_dim=8, base_channels=8, conditional=True)
    info = DataInfo("digits", "image", (1, 8, 8), 1797, num_classes=10)
    torch.manual_seed(0)
    G, _ = models.build(spec, info.sample_shape, info.num_classes)
    run_id = client.create_run(exp.experiment_id).info.run_id
    meta = registry.generator_meta(spec, info, "ema", 1)
    logged = registry.log_generator(uri, run_id, G, meta)
    registry.register(uri, logged, "digits-cond", "image", {}, {}, "conditional")
    signature = mlflow_signature(uri, "models:/digits-cond/1")  # latents and class ids
    assert [(s["name"], s["tensor-spec"]["dtype"], s["tensor-spec"]["shape"]) for s in signature] == [
        ("latents", "float32", (-1, 8)),
        ("classes", "int64", (-1,)),
    ]

    # distgan pull --class 3 in a fresh process: 40 samples of class 3 (the parquet says so per row)
    pulled = tmp_path / "pulled"
    args = ["pull", "models:/digits-cond/1", "--n", "40", "--seed", "5", "--tracking-uri", uri]
    r = run_cli(*args, "--class", "3", "--out", str(pulled), "--format", "npy", "--format", "parquet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "40 samples of class 3 of shape (1, 8, 8)" in r.stdout
    samples = np.load(pulled / "samples.npy")
    cpu = torch.device("cpu")
    of_class = lambda k: engine.sample(G, 40, 8, cpu, 5, classes=torch.full((40,), k)).numpy()  # noqa: E731
    assert np.allclose(samples, of_class(3), atol=1e-6) and not np.allclose(samples, of_class(4), atol=1e-3)
    assert pq.read_table(pulled / "samples.parquet").column("class").to_pylist() == [3] * 40

    # the Python API: load_generator gives G(z, class ids), as trained
    G2, meta2 = hub.load_generator("models:/digits-cond/1", uri)
    z, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 7, 8, 9])
    assert meta2["num_classes"] == 10 and torch.allclose(G2(z, y), G(z, y), atol=1e-6)

    # --class out of range, and --class for an unconditional model: exit 2, one line, nothing written
    r = run_cli(*args, "--class", "10", "--out", str(tmp_path / "bad"), cwd=tmp_path)
    assert (
        r.returncode == 2
        and r.stderr.strip() == "distgan pull: error: --class 10: models:/digits-cond/1 makes classes 0..9"
    )
    _, plain = _tiny_generator_run(uri, client)
    r = run_cli("pull", plain, "--class", "0", "--out", str(tmp_path / "bad"), "--tracking-uri", uri, cwd=tmp_path)
    assert r.returncode == 2 and f"--class 0: {plain} is not class-conditional; leave out --class" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()

    # without distgan: MLflow's PyTorch flavour alone loads it and takes the class ids as the second input
    native = np.array(
        _without_distgan(pyfunc_venv, tmp_path, CONDITIONAL_CHECK, "models:/digits-cond/1", z.numpy(), uri)["samples"]
    )
    assert np.allclose(native, G(z, torch.arange(6) % 10).detach().numpy(), atol=1e-5)


def _without_distgan(python, tmp_path, script: str, model_uri: str, z: np.ndarray, tracking_uri: str) -> dict:
    """`script MODEL_URI z.npy` run by the `pyfunc_venv` Python (mlflow and torch, no distgan); the
    JSON of its last output line."""
    np.save(tmp_path / "z.npy", z)
    (tmp_path / "check.py").write_text(script)
    p = subprocess.run(
        [str(python), str(tmp_path / "check.py"), model_uri, str(tmp_path / "z.npy")],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
        env={"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def mlflow_signature(uri: str, model_uri: str) -> list[dict]:
    """The input signature a logged model was stored with, as MLflow wrote it."""
    import mlflow

    from distgan.tracking.client import fluent_uri

    with fluent_uri(uri):
        return mlflow.models.get_model_info(model_uri).signature.inputs.to_dict()
