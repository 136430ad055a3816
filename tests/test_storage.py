"""Runs in object storage: `train.storage_path=s3://...` on a real S3-protocol server on loopback
(moto's), through a real local Ray: Ray Train's checkpoints and distgan's run record land in the
bucket, and a second call with the same name resumes from there. Bad storage is refused before Ray."""

from __future__ import annotations

import json
import os
import uuid

import pyarrow.fs as pafs
import pytest
from conftest import S3Server, run_cli

from distgan.commands import train
from distgan.core import checkpoint
from distgan.errors import InputError
from distgan.spec.job import load_spec
from distgan.tracking.run import TrackingOptions

pytestmark = pytest.mark.cluster

SMALL = [
    "data.name=ring8",
    "train.batch_size=64",
    "train.eval_every=10",
    "train.checkpoint_every=20",
    "train.eval_samples=200",
    "train.final_eval_seeds=1",
    "model.g_hidden=[32,32]",
    "model.d_hidden=[32,32]",
    "scaling.workers=1",
]


def _bucket(s3_server) -> str:
    return s3_server.create_bucket(f"runs-{uuid.uuid4().hex[:12]}")


def _s3(s3_server) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=s3_server.endpoint, access_key="testing", secret_key="testing")


def _files(s3_server, prefix: str) -> list[str]:
    found = _s3(s3_server).get_file_info(pafs.FileSelector(prefix, recursive=True))
    return sorted(f.path.removeprefix(prefix + "/") for f in found if f.type == pafs.FileType.File)


def _read(s3_server, path: str) -> str:
    with _s3(s3_server).open_input_stream(path) as f:
        return f.read().decode()


def test_a_run_in_s3_checkpoints_there_and_resumes_from_there(tmp_path, s3_server, mlflow_server, monkeypatch):
    s3_server.use(monkeypatch)
    monkeypatch.chdir(tmp_path)
    storage = f"{_bucket(s3_server)}/runs"
    tracking = TrackingOptions(tracking_uri=mlflow_server.uri, experiment=f"s3-{tmp_path.name}")
    overrides = [*SMALL, f"train.storage_path={storage}", "train.name=s3run"]

    first = train.train(load_spec(None, [*overrides, "train.steps=40"]), echo=lambda line: None, tracking=tracking)
    assert first.status == "finished" and first.steps == 40 and first.error is None
    prefix = storage.removeprefix("s3://") + "/s3run"
    assert first.run_dir == f"{storage}/s3run"
    assert first.checkpoint.startswith(f"{storage}/s3run/checkpoint_")
    assert checkpoint.read(first.checkpoint)["step"] == 40  # read back from the bucket, verified
    files = _files(s3_server, prefix)
    saved = [f for f in files if f.startswith("checkpoint_") and f.endswith("/state.pt")]
    assert len(saved) == 2  # the two newest, as Ray Train keeps them
    assert all(f"{s.rsplit('/', 1)[0]}/state.pt.sha256" in files for s in saved)
    assert {"distgan/spec.yaml", "distgan/metrics.jsonl", "distgan/mlflow.json"} <= set(files)
    assert "distgan/images/samples_0000040.png" in files
    mlflow_json = json.loads(_read(s3_server, f"{prefix}/distgan/mlflow.json"))
    assert mlflow_json["run_id"] == first.mlflow_run_id and first.logged_model_uri
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # no local `s3:/...` directory

    # Everything the resume needs is read from the bucket, not from this machine.
    second = train.train(load_spec(None, [*overrides, "train.steps=60"]), echo=lambda line: None, tracking=tracking)
    assert second.status == "finished" and second.resumed_from == 40 and second.steps == 60
    assert second.mlflow_run_id == first.mlflow_run_id  # one MLflow run, continued
    rows = [json.loads(line) for line in _read(s3_server, f"{prefix}/distgan/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]  # every eval once
    assert checkpoint.read(second.checkpoint)["step"] == 60

    # Nothing left to train: the result still carries the final metrics, read back from the bucket.
    third = train.train(load_spec(None, [*overrides, "train.steps=60"]), echo=lambda line: None, tracking=tracking)
    assert third.status == "finished" and third.resumed_from == 60 and third.steps == 60
    assert third.metrics["reverse_kl"] == pytest.approx(rows[-1]["reverse_kl"])


def test_a_broken_newest_checkpoint_in_s3_falls_back_through_ray(tmp_path, s3_server, monkeypatch):
    s3_server.use(monkeypatch)
    monkeypatch.chdir(tmp_path)
    storage = f"{_bucket(s3_server)}/runs"
    overrides = [*SMALL, f"train.storage_path={storage}", "train.name=broken"]
    first = train.train(
        load_spec(None, [*overrides, "train.steps=40"]), echo=lambda line: None, tracking=TrackingOptions(enabled=False)
    )
    assert first.status == "finished"
    newest = first.checkpoint.removeprefix("s3://")
    fs = _s3(s3_server)
    with fs.open_output_stream(f"{newest}/state.pt") as f:  # cut short, as a broken upload leaves it
        f.write(b"PK\x03\x04 not a whole checkpoint")
    previous = sorted(c for c in _files(s3_server, newest.rsplit("/", 1)[0]) if c.endswith("/state.pt"))[0]

    lines: list[str] = []
    second = train.train(
        load_spec(None, [*overrides, "train.steps=60"]), echo=lines.append, tracking=TrackingOptions(enabled=False)
    )
    warnings = [line for line in lines if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and first.checkpoint in warnings[0] and "does not match its sha256" in warnings[0]
    assert f"resuming from {storage}/broken/{previous.rsplit('/', 1)[0]} (step 20)" in warnings[0]
    assert second.status == "finished" and second.resumed_from == 20 and second.steps == 60
    rows = _read(s3_server, f"{storage.removeprefix('s3://')}/broken/distgan/metrics.jsonl").splitlines()
    assert [json.loads(r)["step"] for r in rows] == [10, 20, 30, 40, 50, 60]


@pytest.fixture(scope="module")
def denying_s3_server(tmp_path_factory):
    """A second moto server that enforces authentication (moto checks credentials once this many
    requests went unchecked: 0), so the test credentials are refused."""
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    try:
        server = S3Server(tmp_path_factory.mktemp("s3-denying")).start()
    finally:
        del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
    yield server
    server.stop()


def _refused(spec_overrides: list[str]) -> str:
    import ray

    with pytest.raises(InputError) as e:
        train.train(load_spec(None, [*SMALL, *spec_overrides]), tracking=TrackingOptions(enabled=False))
    assert not ray.is_initialized()  # refused before Ray started
    return str(e.value)


def test_bad_storage_is_refused_before_ray(tmp_path, s3_server, denying_s3_server, monkeypatch):
    s3_server.use(monkeypatch)
    monkeypatch.chdir(tmp_path)
    message = _refused(["train.storage_path=s3://no-such-bucket-here/runs", "train.name=x"])
    assert (
        message
        == "s3://no-such-bucket-here/runs/x: bucket 'no-such-bucket-here' does not exist; create it or fix the URI"
    )
    message = _refused(["train.storage_path=nosuchscheme://bucket/runs", "train.name=x"])
    assert message.startswith("nosuchscheme://bucket/runs/x: cannot open this location (")
    assert "check the URI and its scheme" in message
    monkeypatch.setenv("AWS_ENDPOINT_URL", denying_s3_server.endpoint)
    message = _refused(["train.storage_path=s3://some-bucket/runs", "train.name=x"])
    assert message.startswith("s3://some-bucket/runs/x: cannot read it (") and "ACCESS_DENIED" in message
    assert "S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in message
    assert "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_cli_exits_2_on_a_missing_bucket(tmp_path, s3_server):
    r = run_cli(
        "train",
        "--no-tracking",
        "--set",
        "train.storage_path=s3://no-such-bucket-here/runs",
        cwd=tmp_path,
        env=s3_server.env,
    )
    assert r.returncode == 2, r.stderr
    assert "bucket 'no-such-bucket-here' does not exist; create it or fix the URI" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


# one-worker trials are Tune trial processes; a two-worker trial runs a Ray Train run of its own
@pytest.mark.parametrize("workers", [1, 2])
def test_a_search_on_s3_storage_keeps_its_trials_checkpoints_there(tmp_path, s3_server, monkeypatch, workers):
    import yaml

    from distgan.commands import search

    s3_server.use(monkeypatch)
    monkeypatch.chdir(tmp_path)
    storage = f"{_bucket(s3_server)}/runs"
    path = tmp_path / "search.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"name": "ring8"},
                "model": {"g_hidden": [32, 32], "d_hidden": [32, 32]},
                "train": {"steps": 40, "eval_every": 20, "batch_size": 64, "eval_samples": 200, "final_eval_seeds": 1},
                "search": {"space": {"optim.lr_g": {"grid": [5.0e-4]}}, "scheduler": "none", "max_concurrent": 1},
                "scaling": {"workers": workers, "cpus_per_worker": 1},
            }
        )
    )
    spec, s = search.load(str(path), [f"train.storage_path={storage}"])
    res = search.search(spec, s, echo=lambda line: None, tracking=TrackingOptions(enabled=False))
    assert res.status == "finished" and res.steps == 40
    assert res.checkpoint.startswith(f"{storage}/{res.name}/")
    assert checkpoint.read(res.checkpoint)["step"] == res.trials[0]["eval_step"]
    assert [row["step"] for row in res.trials[0]["history"]] == [20, 40]
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())
