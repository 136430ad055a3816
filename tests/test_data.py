"""Datasets: built-ins have the right shape and statistics; bad user data fails naming file and column."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, blob_images, png_bytes, run_cli, write_image_parquet
from PIL import Image

from distgan import data, storage
from distgan.data import builtin, files
from distgan.errors import InputError
from distgan.metrics.mixture import mixture_means, mixture_quality
from distgan.spec.job import DataSpec


def test_mixture_batches_follow_the_protocol():
    spec = DataSpec(name="grid25")
    batch, labels = next(data.batches(spec, data.inspect(spec), 5000, rank=0, world=1, seed=0))
    assert labels is None
    assert batch.shape == (5000, 2)
    q = mixture_quality(batch.numpy(), mixture_means("grid25"), 0.05)
    # in 2-D, P(|N(0, s^2 I)| <= 3s) = 1 - exp(-9/2) = 0.989: the best any generator can score
    assert (
        q["modes"] == 25 and q["high_quality"] == pytest.approx(1 - np.exp(-4.5), abs=0.006) and q["reverse_kl"] < 0.01
    )


def test_ranks_draw_different_batches_and_seeds_repeat():
    spec = DataSpec(name="ring8")
    info = data.inspect(spec)
    a0, _ = next(data.batches(spec, info, 8, 0, 2, seed=1))
    a1, _ = next(data.batches(spec, info, 8, 1, 2, seed=1))
    again, _ = next(data.batches(spec, info, 8, 0, 2, seed=1))
    assert not torch.equal(a0, a1) and torch.equal(a0, again)


def test_digits_are_real_8x8_in_unit_range_and_sharded():
    spec = DataSpec(name="digits")
    info = data.inspect(spec)
    assert info.sample_shape == (1, 8, 8) and info.num_rows == 1797
    batch, labels = next(data.batches(spec, info, 64, 0, 2, seed=0))
    assert batch.shape == (64, 1, 8, 8) and info.num_classes == 10
    # the labels travel with their images: each image is the digit its label names
    rows = {tuple(x.flatten().tolist()): y for x, y in zip(builtin.digits_array(), builtin.digits_labels())}
    assert [rows[tuple(x.flatten().tolist())] for x in batch] == labels.tolist()
    assert batch.min() >= -1 and batch.max() <= 1 and batch.max() == 1  # 16/8 - 1
    assert 0.2 < (batch > 0).float().mean() < 0.6  # real strokes, not noise


def test_stacked_digits_are_three_independent_real_digits():
    spec = DataSpec(name="stacked_digits")
    info = data.inspect(spec)
    assert info == data.DataInfo("stacked_digits", "image", (3, 8, 8), None)
    batch, _ = next(data.batches(spec, info, 4096, rank=0, world=1, seed=0))
    assert batch.shape == (4096, 3, 8, 8) and batch.min() >= -1 and batch.max() <= 1
    # every channel is one of the real digits, and the three are drawn independently
    flat = torch.from_numpy(builtin.digits_array()).flatten(1)
    assert all((flat == batch[i, c].flatten()).all(1).any() for i in range(8) for c in range(3))
    ink = batch.mean(dim=(2, 3))  # [N, 3]: how much ink each channel's digit has
    corr = np.corrcoef(ink.T.numpy())
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.06
    # drawn fresh per rank, repeatable by seed; the array draws as the first batch does
    again, _ = next(data.batches(spec, info, 4096, rank=0, world=1, seed=0))
    other, _ = next(data.batches(spec, info, 4096, rank=1, world=2, seed=0))
    assert torch.equal(batch, again) and not torch.equal(batch, other)
    images, triples = builtin.stacked_digits_array(16, seed=7)
    assert np.array_equal(images, next(builtin.stacked_digits_batches(16, seed=7)).numpy()) and triples.shape == (16, 3)


def test_stacked_digits_at_a_resolution_are_the_8px_stacks_resized():
    """Each digit is resized once, not each batch: the batches hold the values a resize of each drawn
    8 px stack gives (bilinear works plane by plane), bit for bit."""
    spec = DataSpec(name="stacked_digits", resolution=28)
    stream = data.batches(spec, data.inspect(spec), 64, rank=0, world=1, seed=3)
    stacks = builtin.stacked_digits_batches(64, seed=3 * 1_000_003)  # the 8 px draws of that stream (rank 0)
    for _ in range(3):
        batch, _ = next(stream)
        assert batch.shape == (64, 3, 28, 28) and torch.equal(batch, data._resized(next(stacks), 28))


@pytest.mark.parametrize("name", ["digits", "stacked_digits"])
def test_builtin_images_resized_once_or_per_batch_give_the_same_batches(name, monkeypatch):
    """Large resolutions resize each batch instead of holding every digit resized (RESIZED_BYTES)."""
    spec = DataSpec(name=name, resolution=20)
    info = data.inspect(spec)
    once = data.batches(spec, info, 32, rank=1, world=2, seed=4)
    monkeypatch.setattr(data, "RESIZED_BYTES", 0)
    per_batch = data.batches(spec, info, 32, rank=1, world=2, seed=4)
    for _ in range(30):  # past the end of an epoch of digits' rank 1 (898 rows)
        (a, la), (b, lb) = next(once), next(per_batch)
        assert a.shape == (32, 3 if name == "stacked_digits" else 1, 20, 20) and torch.equal(a, b)
        assert (la is None and lb is None) or torch.equal(la, lb)


def test_stacked_digits_reference_is_fixed_and_labeled_by_triple():
    info = data.inspect(DataSpec(name="stacked_digits"))
    a, la = data.real_images(DataSpec(name="stacked_digits", seed=0), info, 500)
    b, _ = data.real_images(DataSpec(name="stacked_digits", seed=9), info, 500)
    assert a.shape == (500, 3, 8, 8) and np.array_equal(a, b)  # the same images whatever the run's seed
    _, triples = builtin.stacked_digits_array(500, data.REFERENCE_SEED)
    assert np.array_equal(la, triples[:, 0] * 100 + triples[:, 1] * 10 + triples[:, 2]) and len(set(la)) > 350
    assert "stacked_digits" in dict(data.describe())


def test_parquet_vectors_and_images_are_described(tmp_path):
    vec = tmp_path / "v.parquet"
    pq.write_table(pa.table({"x": [[0.0, 1.0, 2.0]] * 10}), vec)
    assert data.inspect(DataSpec(name="parquet", path=str(vec), column="x")) == data.DataInfo(
        "parquet", "vector", (3,), 10
    )
    img = write_image_parquet(tmp_path / "i.parquet", blob_images(12, 16))
    assert data.inspect(DataSpec(name="parquet", path=str(img), column="image")) == data.DataInfo(
        "parquet", "image", (1, 16, 16), 12
    )


def _bad(spec: DataSpec, *fragments: str) -> None:
    with pytest.raises(InputError) as e:
        data.inspect(spec)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


def test_bad_parquet_inputs(tmp_path):
    _bad(DataSpec(name="parquet", path=str(tmp_path / "missing.parquet"), column="x"), "missing.parquet does not exist")
    (tmp_path / "emptydir").mkdir()
    _bad(DataSpec(name="parquet", path=str(tmp_path / "emptydir"), column="x"), "holds no *.parquet files")

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"x": pa.array([], pa.list_(pa.float32()))}), empty)
    _bad(DataSpec(name="parquet", path=str(empty), column="x"), "column 'x' is empty")

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"x": [[0.0, 1.0]] * 4, "y": [1, 2, 3, 4]}), good)
    _bad(DataSpec(name="parquet", path=str(good), column="z"), f"{good}: no column 'z' (columns: x, y)")
    _bad(
        DataSpec(name="parquet", path=str(good), column="y"),
        f"{good}: column 'y' is int64; expected binary (encoded images) or a list of floats",
    )

    nan = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"x": [[0.0, 1.0], [0.0, float("nan")], [1.0, 1.0]]}), nan)
    _bad(DataSpec(name="parquet", path=str(nan), column="x"), f"{nan} row 1 (column 'x') has NaN/Inf values")

    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"x": [[0.0, 1.0], [0.0, 1.0, 2.0]]}), ragged)
    _bad(
        DataSpec(name="parquet", path=str(ragged), column="x"),
        f"{ragged} row 1 (column 'x') is a vector of length 3, the data has length 2",
    )

    mixed = tmp_path / "mixed.parquet"
    write_image_parquet(mixed, blob_images(3, 16) + blob_images(1, 8))
    _bad(
        DataSpec(name="parquet", path=str(mixed), column="image"),
        "mixed image sizes",
        "row 0 is 16x16",
        "row 3 is 8x8",
        "set data.resolution",
    )

    junk = tmp_path / "junk.parquet"
    pq.write_table(pa.table({"image": [b"not an image"]}), junk)
    _bad(
        DataSpec(name="parquet", path=str(junk), column="image"),
        f"{junk} row 0 (column 'image') is not a readable image",
    )


def test_bad_image_folders(tmp_path):
    _bad(DataSpec(name="imagefolder", path=str(tmp_path / "nope")), "nope does not exist")
    (tmp_path / "empty").mkdir()
    _bad(DataSpec(name="imagefolder", path=str(tmp_path / "empty")), "holds no images")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(blob_images(2, 16)):
        Image.fromarray(im).save(folder / f"{i}.png")
    assert data.inspect(DataSpec(name="imagefolder", path=str(folder))).sample_shape == (1, 16, 16)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "odd.png")
    _bad(DataSpec(name="imagefolder", path=str(folder)), "mixed image sizes", "odd.png is 8x8")


def test_bad_data_via_cli_exits_2(tmp_path):
    nan = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"x": [[float("nan"), 1.0]] * 4}), nan)
    r = run_cli(
        "train", "--set", "data.name=parquet", "--set", f"data.path={nan}", "--set", "data.column=x", cwd=tmp_path
    )
    assert r.returncode == 2 and f"{nan} row 0 (column 'x') has NaN/Inf values" in r.stderr

    odd = write_image_parquet(tmp_path / "odd.parquet", blob_images(40, 30))
    r = run_cli(
        "train",
        "--set",
        "data.name=parquet",
        "--set",
        f"data.path={odd}",
        "--set",
        "data.column=image",
        "--set",
        "model.arch=dcgan",
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "model.arch=dcgan makes square images of 8, 10, 12," in r.stderr
    assert "this data is 30x30: resize it" in r.stderr

    few = write_image_parquet(tmp_path / "few.parquet", blob_images(10, 8))
    r = run_cli(
        "train",
        "--set",
        "data.name=parquet",
        "--set",
        f"data.path={few}",
        "--set",
        "data.column=image",
        "--set",
        "model.arch=dcgan",
        "--set",
        "metrics.feature_net=none",
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "parquet has 10 rows: 10 per worker, fewer than the per-worker batch 128" in r.stderr
    assert not (tmp_path / "distgan_runs").exists()


@pytest.mark.parametrize("name", ["grid25", "digits"])
def test_data_seed_seeds_the_builtin_draws(name):
    def first(seed: int) -> torch.Tensor:
        spec = DataSpec(name=name, seed=seed)
        return next(data.batches(spec, data.inspect(spec), 64, rank=0, world=1, seed=0))[0]

    assert torch.equal(first(0), first(0)) and torch.equal(first(1), first(1))
    assert not torch.equal(first(0), first(1))


def test_a_failed_dataset_shard_is_raised_for_user_data_and_none_for_builtins(monkeypatch):
    """get_dataset_shard failing for Parquet/image data must surface as itself, not as None (which
    the loop read as 'built-in data' and which blew up later as an AttributeError)."""
    import ray.train

    from distgan.runtime.ray_train import RaySession

    def broken(name):
        raise RuntimeError(f"shard {name!r} unavailable")

    monkeypatch.setattr(ray.train, "get_dataset_shard", broken)
    session = object.__new__(RaySession)  # only what data_shard reads; no Ray Train context here
    session.uses_ray_data = True
    with pytest.raises(RuntimeError, match="shard 'train' unavailable"):
        session.data_shard()
    session.uses_ray_data = False
    assert session.data_shard() is None
    sentinel = object()
    monkeypatch.setattr(ray.train, "get_dataset_shard", lambda name: sentinel)
    session.uses_ray_data = True
    assert session.data_shard() is sentinel


def _numbered_images(ids) -> list[bytes]:
    """8x8 grayscale PNGs whose first two pixels spell the row id: every row recognisable after decoding."""
    out = []
    for i in ids:
        im = np.zeros((8, 8), np.uint8)
        im[0, 0], im[0, 1] = i // 256, i % 256
        out.append(png_bytes(im))
    return out


def _row_ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).tolist()


def test_class_sorted_parquet_gives_mixed_batches_every_pass_in_a_new_order(tmp_path, monkeypatch):
    """One class-sorted file, written as most tools write it (one row group): the batches a worker
    gets mix the classes (majority share < 25% of 10 classes), each pass of the pipeline holds
    every row the same number of times (20,000 rows are 157 units: a pass of 256 units visits them
    twice), and the second pass is not the first again. The Train worker holds a CPU the whole
    time: the pipeline runs on the one left for it."""
    import ray

    from distgan.runtime import ray_data

    monkeypatch.setattr(ray_data, "PASS_UNITS", 256)  # the default's 1,024: the same, in four times the rows

    classes, per_class, batch = 10, 2000, 32  # 20,000 rows: five times the shuffle buffer
    rows = classes * per_class
    path = tmp_path / "by-class.parquet"
    labels = np.repeat(np.arange(classes), per_class)
    pq.write_table(pa.table({"image": _numbered_images(range(rows)), "label": labels}), path)
    spec = DataSpec(name="parquet", path=str(path), column="image", label_column="label")
    info = data.inspect(spec)
    assert info.num_classes == classes and info.num_rows == rows and info.sample_shape == (1, 8, 8)
    repeats = ray_data.pass_repeats(len(files.units(spec)))
    assert repeats == 2
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        assert ray_data.worker_cpus(1.0, 2, ray_data.cluster_cpus()) == 0.5  # two workers would leave one CPU

        @ray.remote(num_cpus=ray_data.worker_cpus(1.0, 1, 2))
        class Worker:
            def ready(self):
                return True

        worker = Worker.remote()
        ray.get(worker.ready.remote())
        ds = ray_data.datasets(spec, info)["train"]
        stream = iter(data.ShardStream(ds.streaming_split(1)[0], batch, seed=0, info=info))
        per_pass = repeats * rows // batch
        batches = [next(stream) for _ in range(2 * per_pass)]
    finally:
        ray.shutdown()
    assert all(x.dtype == torch.uint8 and x.shape == (batch, 1, 8, 8) for x, _ in batches)
    # the labels travel with their images
    assert all((y == torch.from_numpy(labels[_row_ids(x)])).all() for x, y in batches)
    majority = np.array([torch.bincount(y, minlength=classes).max().item() / batch for _, y in batches])
    print("majority-class share", majority.mean())
    assert majority.mean() < 0.25, majority.mean()
    first = [i for x, _ in batches[:per_pass] for i in _row_ids(x)]
    second = [i for x, _ in batches[per_pass:] for i in _row_ids(x)]
    assert np.bincount(first, minlength=rows).tolist() == [repeats] * rows  # every row, as often as every other
    assert first != second


def test_a_worker_counts_every_skipped_row_of_a_pass_and_trains_on_good_rows_only(tmp_path, monkeypatch):
    """data.on_bad_image=skip through the real pipeline: of 8 units, 7 are all bad, so a read task
    of 4 units keeps no row and sends a blank count_only row. The worker's stream counts the rows
    every task skipped, exactly, and yields only full batches of good rows. The stream is cut after
    one pass: the next pass finds no rows, and says so."""
    import ray

    from distgan.runtime import ray_data

    monkeypatch.setattr(ray_data, "PASS_UNITS", 8)  # one pass: each unit once, two tasks of four
    n, batch = files.UNIT_ROWS, 32
    images = _numbered_images(range(1, n + 1)) + [b"not an image"] * (7 * n)  # ids 1..128: none is blank
    path = tmp_path / "mostly-bad.parquet"
    pq.write_table(pa.table({"image": images}), path, row_group_size=n)
    spec = DataSpec(name="parquet", path=str(path), column="image", on_bad_image="skip")
    info = data.inspect(spec)
    assert ray_data.pass_repeats(len(files.units(spec))) == 1

    class OnePass:  # the worker's real shard for one pass, then nothing
        def __init__(self, shard):
            self.shard, self.passes = shard, 0

        def iter_torch_batches(self, **kwargs):
            self.passes += 1
            return self.shard.iter_torch_batches(**kwargs) if self.passes == 1 else iter(())

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        stream = data.ShardStream(OnePass(ray_data.datasets(spec, info)["train"].streaming_split(1)[0]), batch, 0, info)
        batches, it = [], iter(stream)
        with pytest.raises(RuntimeError, match=rf"fewer than {batch} usable rows \({7 * n} bad rows skipped\)"):
            while True:
                batches.append(next(it))
    finally:
        ray.shutdown()
    assert stream.skipped == 7 * n
    ids = [i for x, _ in batches for i in _row_ids(x)]
    assert all(len(x) == batch for x, _ in batches) and len(batches) in (3, 4)  # one may hold the blank row
    assert len(set(ids)) == len(ids) and set(ids) <= set(range(1, n + 1))


def test_the_skips_counted_on_the_short_last_batch_of_a_pass_are_counted(tmp_path, monkeypatch):
    """Every row the worker gets carries a count here (one unit a task, one good row a unit), and 8
    rows in batches of 3 leave a short last batch of 2: it is not trained on, but its count is."""
    import ray

    from distgan.runtime import ray_data

    monkeypatch.setattr(ray_data, "PASS_UNITS", 8)  # one pass: each unit once
    monkeypatch.setattr(ray_data, "TASK_UNITS", 1)
    n, units = files.UNIT_ROWS, 8
    images = [blob for i in range(units) for blob in _numbered_images([i + 1]) + [b"not an image"] * (n - 1)]
    path = tmp_path / "one-good-row-a-unit.parquet"
    pq.write_table(pa.table({"image": images}), path, row_group_size=n)
    spec = DataSpec(name="parquet", path=str(path), column="image", on_bad_image="skip")
    info = data.inspect(spec)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        stream = data.ShardStream(ray_data.datasets(spec, info)["train"].streaming_split(1)[0], 3, 0, info)
        it = iter(stream)
        batches = [next(it)[0] for _ in range(3)]  # the first pass's two full batches, then the second's first
    finally:
        ray.shutdown()
    assert [len(x) for x in batches] == [3, 3, 3]
    assert stream.skipped == (units + 3) * (n - 1)  # the first pass's 8 rows' counts (the short batch's 2 too), then 3


def test_the_decoded_copy_is_one_epoch_per_pass_in_a_new_order(tmp_path):
    """`distgan search` decodes the data once (materialize): its passes are not repeated (there is no
    decoding to wait for, and Ray Data's readers refuse one block twice at once). Two passes read
    through the worker's stream hold every row once each, in a new order the second time."""
    import ray

    from distgan.runtime import ray_data

    rows, batch = 8 * files.UNIT_ROWS, 64
    path = tmp_path / "small.parquet"
    pq.write_table(pa.table({"image": _numbered_images(range(rows))}), path, row_group_size=files.UNIT_ROWS)
    spec = DataSpec(name="parquet", path=str(path), column="image")
    info = data.inspect(spec)
    assert ray_data.pass_repeats(len(files.units(spec))) > 1  # streamed, a pass would visit the data many times
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"])
    try:
        ds = ray_data.datasets(spec, info, materialize=True)["train"]
        stream = iter(data.ShardStream(ds.streaming_split(1)[0], batch, seed=0, info=info))
        ids = [_row_ids(next(stream)[0]) for _ in range(2 * rows // batch)]
    finally:
        ray.shutdown()
    first = [i for b in ids[: rows // batch] for i in b]
    second = [i for b in ids[rows // batch :] for i in b]
    assert sorted(first) == sorted(second) == list(range(rows)) and first != second


def test_a_map_task_reads_a_few_units_unless_their_rows_are_large():
    from distgan.runtime import ray_data

    def per_task(kind, shape):
        return ray_data.units_per_task(files.Layout(kind, shape, 1000, None))

    assert per_task("image", (1, 8, 8)) == per_task("image", (3, 64, 64)) == per_task("vector", (2,)) == 4
    assert per_task("image", (3, 128, 128)) == 2  # 6 MiB of uint8 rows a unit: two fit 16 MiB
    assert per_task("image", (3, 256, 256)) == per_task("vector", (100_000,)) == 1


def test_rows_skipped_in_a_map_task_are_all_counted_even_a_task_with_no_good_row(tmp_path):
    """data.on_bad_image=skip: the count of dropped rows rides on the task's first row. A unit
    whose every row is bad has no row of its own to carry its count; it is counted all the same. A
    task with no good row at all sends one blank row marked count_only, to carry the count."""
    from distgan.runtime import ray_data

    n = files.UNIT_ROWS
    images = _numbered_images(range(4 * n))
    bad = [*range(n, 2 * n), 2 * n + 5, 2 * n + 6, 2 * n + 7]  # all of unit 1, three rows of unit 2
    for i in bad:
        images[i] = b"not an image"
    path = tmp_path / "some-bad.parquet"
    pq.write_table(pa.table({"image": images}), path, row_group_size=n)
    spec = DataSpec(name="parquet", path=str(path), column="image", on_bad_image="skip")
    info = data.inspect(spec)
    layout = files.Layout(info.kind, info.sample_shape, info.num_rows, None)
    assert ray_data.units_per_task(layout) == 4  # the four units are one task
    out = ray_data._read_units(
        pa.Table.from_pylist(files.units(spec)), spec, files.decoder(spec, layout), None, storage.resolve(str(path))[0]
    )
    assert len(out["x"]) == len(out["skipped"]) == 4 * n - len(bad)
    assert out["skipped"].sum() == len(bad) and out["skipped"][1:].sum() == 0
    assert sorted(_row_ids(torch.from_numpy(out["x"]))) == sorted(set(range(4 * n)) - set(bad))
    assert not out["count_only"].any()

    all_bad = pa.Table.from_pylist(files.units(spec)[1:2])
    out = ray_data._read_units(all_bad, spec, files.decoder(spec, layout), None, storage.resolve(str(path))[0])
    assert out["count_only"].tolist() == [True] and out["skipped"].tolist() == [n]
    assert out["x"].shape == (1, 1, 8, 8) and not out["x"].any()  # blank: never trained on (ShardStream drops it)


def test_a_long_row_group_is_read_once_for_all_its_slices(tmp_path, monkeypatch):
    """pandas and pyarrow write one row group per million rows by default, and Parquet reads a group
    whole: a 128-row unit read per slice would read such a file once per 128 rows. A process keeps
    the groups it read (up to GROUP_CACHE_BYTES) for their other slices; a larger group is read
    per slice, and the checks warn of it. The driver keeps no group after its checks."""
    rows = 8 * files.UNIT_ROWS
    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({"image": _numbered_images(range(rows))}), path)  # one row group
    spec = DataSpec(name="parquet", path=str(path), column="image")
    info = data.inspect(spec)
    assert not files._GROUPS
    dec = files.decoder(spec, files.Layout(info.kind, info.sample_shape, info.num_rows, None))
    fs = storage.resolve(str(path))[0]
    reads = []
    read_row_group = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, i, **kw: reads.append(i) or read_row_group(self, i, **kw)
    )

    def every_row() -> list[int]:
        return [
            i
            for u in files.units(spec)
            for i in _row_ids(torch.from_numpy(files.read_unit(spec, dec, None, u, fs)["x"]))
        ]

    assert len(files.units(spec)) == 8
    assert every_row() == list(range(rows)) and reads == [0]

    files.clear_caches()
    monkeypatch.setattr(files, "GROUP_CACHE_BYTES", 1000)
    with pytest.warns(UserWarning, match=r"one-group.parquet: row group 0 holds 1,024 rows .*each 128-row slice"):
        data.inspect(spec)
    reads.clear()
    assert every_row() == list(range(rows)) and reads == [0] * 8


def test_units_are_listed_once_per_version_of_the_files(tmp_path):
    """The checks and the pipeline share one listing of units; a rewritten file is listed again."""
    path = tmp_path / "d.parquet"
    spec = DataSpec(name="parquet", path=str(path), column="image")
    pq.write_table(pa.table({"image": _numbered_images(range(200))}), path, row_group_size=100)
    data.inspect(spec)
    first = files.units(spec)
    assert [(u["row_group"], u["start"], u["first_row"]) for u in first] == [(0, 0, 0), (1, 0, 100)]
    assert files.units(spec)[0] is first[0]  # the listing inspect made, not a new one
    first.clear()  # a caller's list is its own
    assert len(files.units(spec)) == 2
    pq.write_table(pa.table({"image": _numbered_images(range(300))}), path, row_group_size=100)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a new version, whatever the clock
    assert [u["first_row"] for u in files.units(spec)] == [0, 100, 200]


@pytest.mark.parametrize("resolution", [28, 32])
def test_the_digits_train_with_dcgan_at_28_and_32_px(tmp_path, resolution):
    """data.resolution resizes the 8 px digits; dcgan starts from a 7x7 map for 28 (7*4) and 4x4 for 32."""
    from distgan.core import loop
    from distgan.spec.job import load_spec

    spec = load_spec(
        REPO / "jobs" / "digits.yaml",
        [
            f"data.resolution={resolution}",
            "model.base_channels=8",
            "model.extra_layers=0",
            "train.steps=4",
            "train.batch_size=32",
            "train.eval_every=4",
            "train.eval_samples=100",
            "metrics.final_samples=100",
            "metrics.reference_samples=200",
        ],
    )
    info = data.inspect(spec.data)
    assert info.sample_shape == (1, resolution, resolution)
    x, labels = next(data.batches(spec.data, info, 8, rank=0, world=1, seed=0))
    assert x.shape == (8, 1, resolution, resolution) and -1 <= x.min() and x.max() <= 1 and labels.shape == (8,)
    result = loop.run(spec, info, loop.LocalSession(tmp_path / "run"))
    assert result["status"] == "finished" and result["steps"] == 4
    assert result["metrics"]["fd_digits"] > 0 and 0 < result["metrics"]["classes_covered"] <= 1


def _cli_exit_2(tmp_path, *sets: str, env=None) -> str:
    args = [a for s in sets for a in ("--set", s)]
    r = run_cli("train", *args, "--no-tracking", cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line
    assert not (tmp_path / "distgan_runs").exists()  # before anything is written
    return r.stderr


def test_bad_user_data_is_one_line_and_exit_2_before_ray(tmp_path):
    blobs = [png_bytes(im) for im in blob_images(64, 8)]
    negative = tmp_path / "negative.parquet"
    pq.write_table(pa.table({"image": blobs, "label": [-1] + [1] * 63}), negative)
    floats = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"image": blobs, "label": [0.5] * 64}), floats)
    image = ["data.name=parquet", "data.column=image", "data.label_column=label", "model.arch=dcgan"]
    err = _cli_exit_2(tmp_path, f"data.path={negative}", *image)
    assert f"{negative}: label column 'label' holds -1; labels must be class ids 0..K-1" in err
    err = _cli_exit_2(tmp_path, f"data.path={floats}", *image)
    assert f"{floats}: label column 'label' is double; labels must be integer class ids" in err
    err = _cli_exit_2(tmp_path, f"data.path={negative}", "data.resolution=4", *image)
    assert "data.resolution: Input should be greater than or equal to 8 (got 4)" in err
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")}
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path)}
    err = _cli_exit_2(tmp_path, "data.path=s3://some-bucket/images", *image, env=env)
    assert "s3://some-bucket/images: no S3 credentials found; set AWS_ACCESS_KEY_ID" in err


def test_images_of_any_size_are_resized_and_cropped_to_data_resolution(tmp_path):
    """Mixed sizes and shapes with data.resolution: center crop keeps the middle, none squashes."""
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 10:30] = 255  # the middle square is white, the sides black
    tall = np.full((30, 10), 255, np.uint8)
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"image": [png_bytes(wide), png_bytes(tall)]}), path)
    spec = DataSpec(name="parquet", path=str(path), column="image", resolution=16)
    info = data.inspect(spec)
    assert info.sample_shape == (1, 16, 16)
    centre, _ = data.real_images(spec, info, 2)
    assert centre.shape == (2, 1, 16, 16) and centre.min() > 0.9  # the white middle of both
    squash, _ = data.real_images(spec.model_copy(update={"crop": "none"}), info, 2)
    assert squash[0, 0, :, 0].max() < -0.9 and squash[0, 0, :, 8].min() > 0.9  # black sides kept
    as_rgb = spec.model_copy(update={"channels": 3})
    rgb, _ = data.real_images(as_rgb, data.inspect(as_rgb), 2)
    assert rgb.shape == (2, 3, 16, 16) and np.array_equal(rgb[:, 0], rgb[:, 2])  # grey in all three
