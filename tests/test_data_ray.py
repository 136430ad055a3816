"""User data on a real local Ray, streamed through Ray Data: labels and a bad image met mid-stream,
data in object storage (a real S3-protocol server on loopback)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, blob_images, metric_rows, png_bytes, read_json, run_cli

from distgan.data import files
from distgan.spec.job import DataSpec

pytestmark = pytest.mark.cluster

TINY = [
    "--set", "model.base_channels=8", "--set", "model.latent_dim=16", "--set", "train.batch_size=64",
    "--set", "train.eval_samples=100", "--set", "metrics.final_samples=100", "--set", "metrics.feature_net=none",
    "--set", "model.spectral_norm=false", "--no-tracking",
]  # fmt: skip


def _labeled_parquet(path, rows: int, bad: tuple[int, ...] = ()) -> str:
    """8x8 images with labels 0..9 in row groups of UNIT_ROWS rows; the rows in `bad` are not images."""
    blobs = [png_bytes(im) for im in blob_images(rows, 8)]
    for row in bad:
        blobs[row] = b"not an image"
    table = pa.table({"image": blobs, "label": [i % 10 for i in range(rows)]})
    pq.write_table(table, path, row_group_size=files.UNIT_ROWS)
    return str(path)


def _unsampled_rows(path: str) -> tuple[int, ...]:
    """A row in each unit the driver's checks do not sample: only the training run meets them."""
    spec = DataSpec(name="parquet", path=path, column="image")
    units = files.units(spec)
    sampled = set(files.spread(len(units), 16))
    return tuple(u["first_row"] + 5 for i, u in enumerate(units) if i not in sampled)


def _train(tmp_path, data: str, *extra: str, env=None):
    out = tmp_path / f"result-{len(list(tmp_path.glob('result-*')))}.json"
    r = run_cli(
        "train",
        str(REPO / "jobs" / "parquet-images.yaml"),
        "--json-out", str(out), "--set", f"data.path={data}", "--set", "data.label_column=label",
        "--set", f"train.storage_path={tmp_path / 'runs'}", *TINY, *extra,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    return r, (read_json(out) if out.exists() else None)


def test_a_bad_image_mid_stream_is_skipped_and_counted_or_ends_the_run_naming_it(tmp_path):
    probe = _labeled_parquet(tmp_path / "probe.parquet", 20 * files.UNIT_ROWS)
    bad = _unsampled_rows(probe)
    assert len(bad) == 4  # of 20 units, 16 sampled by the checks
    data = _labeled_parquet(tmp_path / "labeled.parquet", 20 * files.UNIT_ROWS, bad=bad)

    # skip: 60 steps of 64 rows read 30 units; a fifth of a pass's units hold a bad row
    r, res = _train(
        tmp_path, data, "--workers", "1", "--name", "skip", "--set", "data.on_bad_image=skip",
        "--set", "train.steps=60", "--set", "train.eval_every=30", "--set", "train.checkpoint_every=60",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert res["status"] == "finished" and res["steps"] == 60
    assert res["metrics"]["data_skipped"] >= 1
    rows = metric_rows(tmp_path / "runs" / "skip")
    assert [row["data_skipped"] for row in rows][-1] == res["metrics"]["data_skipped"]

    # fail (the default), on two workers: the run ends with the file and row, after no restart
    r, res = _train(
        tmp_path, data, "--workers", "2", "--name", "fail",
        "--set", "train.steps=400", "--set", "train.eval_every=100", "--set", "train.checkpoint_every=100",
    )  # fmt: skip
    assert r.returncode == 1
    named = re.search(rf"{re.escape(data)} row (\d+) \(column 'image'\) is not a readable image", res["error"])
    assert res["status"] == "failed" and named and int(named[1]) in bad
    assert "data.on_bad_image=skip" in res["error"] and f"row {named[1]}" in r.stderr
    # one epoch is 2,560 / 64 = 40 steps: it stopped within the first two epochs' worth, not at the end of restarts
    assert res["steps"] <= 2 * 40 + 20


def test_training_reads_parquet_from_object_storage(tmp_path, s3_server, monkeypatch):
    s3_server.use(monkeypatch)
    bucket = s3_server.create_bucket("train-data")
    local = _labeled_parquet(tmp_path / "labeled.parquet", 4 * files.UNIT_ROWS)
    pq.write_table(pq.read_table(local), f"{bucket}/digits/part-0.parquet", row_group_size=files.UNIT_ROWS)

    # data and run (checkpoints, record) both in the bucket; then a resume from there
    in_bucket = ["--workers", "1", "--name", "s3", "--set", f"train.storage_path={bucket}/runs"]
    every = ["--set", "train.eval_every=10", "--set", "train.checkpoint_every=10"]
    r, res = _train(tmp_path, f"{bucket}/digits", *in_bucket, *every, "--set", "train.steps=20")
    assert r.returncode == 0, r.stderr[-3000:]
    assert res["status"] == "finished" and res["steps"] == 20 and res["metrics"]["data_skipped"] == 0
    assert res["checkpoint"].startswith(f"{bucket}/runs/s3/checkpoint_")
    r, res = _train(tmp_path, f"{bucket}/digits", *in_bucket, *every, "--set", "train.steps=30")
    assert r.returncode == 0, r.stderr[-3000:]
    assert res["status"] == "finished" and res["resumed_from"] == 20 and res["steps"] == 30
    assert not (tmp_path / "s3:").exists()

    # a missing bucket or key: one line, exit 2, before Ray
    for where, message in [
        ("s3://no-such-bucket/x", "bucket 'no-such-bucket' does not exist"),
        (f"{bucket}/nothing-here", f"{bucket}/nothing-here does not exist; check the path"),
    ]:
        r, _ = _train(tmp_path, where, "--name", "missing")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_dataset_four_times_the_object_store_trains_to_the_end_on_two_workers(tmp_path):
    """640 MB of encoded 128 px images, a 150 MB object store, two workers on three CPUs: the stream
    decodes and resizes (to 16 px) in map tasks and never holds the data; more than one epoch."""
    import os

    import numpy as np
    import ray

    from distgan.commands import train
    from distgan.spec.job import load_spec
    from distgan.tracking.run import TrackingOptions

    rng = np.random.default_rng(0)
    distinct = [png_bytes(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(64)]  # ~49 KB each
    rows = 640 * 2**20 // len(distinct[0]) + 1
    path = tmp_path / "big.parquet"
    table = pa.table({"image": [distinct[i % len(distinct)] for i in range(rows)]})
    # no compression or dictionary: every row's bytes are on disk and read back, as with real photos
    pq.write_table(table, path, row_group_size=files.UNIT_ROWS, compression="NONE", use_dictionary=False)
    del table
    store = 150 * 2**20
    assert path.stat().st_size >= 4 * store
    spec = load_spec(
        REPO / "jobs" / "parquet-images.yaml",
        [f"data.path={path}", "data.resolution=16", "model.base_channels=8", "model.latent_dim=16",
         "model.spectral_norm=false", "train.batch_size=64", f"train.steps={rows // 64 + 20}",
         "train.eval_every=1000000", "train.checkpoint_every=1000000", "train.eval_samples=64",
         "metrics.final_samples=64", "metrics.feature_net=none", "scaling.workers=2", "train.max_failures=0",
         f"train.storage_path={tmp_path / 'runs'}", "train.name=big"],
    )  # fmt: skip
    ray.init(num_cpus=3, object_store_memory=store, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        result = train.train(spec, tracking=TrackingOptions(enabled=False), echo=print)
    finally:
        ray.shutdown()
    assert result.status == "finished", result.error
    assert result.steps == rows // 64 + 20 and result.ranks_in_sync  # every row once, then some
