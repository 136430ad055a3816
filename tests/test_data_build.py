"""`distgan data build`: each source kind into Parquet, read back with pyarrow and compared pixel by
pixel with the source (PNG is lossless); options, shards, bad images, atomic writes. No Ray."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import read_json, run_cli
from PIL import Image

from distgan import data
from distgan.cli import main
from distgan.commands.data_build import build
from distgan.data import build as data_build
from distgan.data.build import Options
from distgan.spec.job import DataSpec


def pixels(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def table(out: Path):
    return pq.read_table(out)


def classes_of(out: Path):
    first = out if out.is_file() else sorted(out.glob("*.parquet"))[0]
    metadata = pq.read_schema(first).metadata or {}
    return json.loads(metadata[b"distgan.classes"]) if b"distgan.classes" in metadata else None


def noise(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """Two class folders: cat (3 PNGs of different sizes), dog (2 JPEGs); the pixels in row order."""
    src = tmp_path / "pets"
    (src / "cat").mkdir(parents=True)
    (src / "dog").mkdir()
    expected = []
    for i, shape in enumerate([(12, 10, 3), (9, 14, 3), (16, 16, 3)]):
        Image.fromarray(noise(shape, i)).save(src / "cat" / f"{i}.png")
        expected.append(noise(shape, i))
    for i in range(2):
        Image.fromarray(noise((20, 20, 3), 10 + i)).save(src / "dog" / f"{i}.jpg", quality=90)
        expected.append(np.asarray(Image.open(src / "dog" / f"{i}.jpg")))  # what decoding the JPEG gives
    (src / "dog" / "notes.txt").write_text("not an image: ignored")
    return src, expected


def test_an_image_folder_becomes_labeled_png_rows_in_source_order(folder, tmp_path):
    src, expected = folder
    result = build(str(src), str(tmp_path / "pets.parquet"), Options(), progress=False)
    t = table(tmp_path / "pets.parquet")
    assert (result.images, result.skipped, result.shards, result.source_kind) == (5, 0, 1, "folder")
    assert t.column_names == ["image", "label"] and str(t.schema.field("label").type) == "int64"
    assert t.column("label").to_pylist() == [0, 0, 0, 1, 1]
    assert classes_of(tmp_path / "pets.parquet") == ["cat", "dog"] == result.classes
    for blob, want in zip(t.column("image").to_pylist(), expected):
        np.testing.assert_array_equal(pixels(blob), want)
    assert result.bytes == sum(len(b) for b in t.column("image").to_pylist())


@pytest.mark.parametrize("root", ["pets/", ""], ids=["zipped-folder", "class-folders-at-top"])
def test_a_zip_reads_as_the_folder_it_holds(folder, tmp_path, root):
    src, _ = folder
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(src.rglob("*"), reverse=True):  # the zip's own order does not matter
            if path.is_file():
                z.write(path, root + path.relative_to(src).as_posix())
    build(str(src), str(tmp_path / "from-folder.parquet"), Options(), progress=False)
    result = build(str(archive), str(tmp_path / "from-zip.parquet"), Options(), progress=False)
    assert result.source_kind == "zip" and result.classes == ["cat", "dog"]
    assert table(tmp_path / "from-zip.parquet").equals(table(tmp_path / "from-folder.parquet"))


def test_a_damaged_zip_member_is_a_bad_image(folder, tmp_path):
    src, expected = folder
    archive = tmp_path / "cats.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path in sorted((src / "cat").glob("*.png")):
            z.write(path, path.name)
        info = z.getinfo("1.png")
    raw = bytearray(archive.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF  # one byte of 1.png's data: a CRC error
    archive.write_bytes(bytes(raw))
    result = build(str(archive), str(tmp_path / "out.parquet"), Options(), False)
    assert (result.images, result.skipped_files, result.classes) == (2, [f"{archive}:1.png"], None)
    blobs = table(tmp_path / "out.parquet").column("image").to_pylist()
    np.testing.assert_array_equal(pixels(blobs[1]), expected[2])


def write_idx(path: Path, array: np.ndarray) -> None:
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_an_mnist_idx_pair_keeps_pixels_and_labels(tmp_path, gz):
    images, labels = noise((30, 28, 28), 0), np.arange(30, dtype=np.uint8) % 10
    write_idx(tmp_path / f"train-images-idx3-ubyte{gz}", images)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{gz}", labels)
    result = build(str(tmp_path / f"train-images-idx3-ubyte{gz}"), str(tmp_path / "mnist.parquet"), Options(), False)
    t = table(tmp_path / "mnist.parquet")
    assert result.source_kind == "idx" and result.images == 30
    assert t.column("label").to_pylist() == labels.tolist()
    assert classes_of(tmp_path / "mnist.parquet") == [str(d) for d in range(10)]
    decoded = np.stack([pixels(b) for b in t.column("image").to_pylist()])
    np.testing.assert_array_equal(decoded, images)  # grayscale stays one channel


def test_a_single_idx_file_is_unlabeled(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", noise((5, 8, 8), 1))
    build(str(tmp_path / "t10k-images-idx3-ubyte"), str(tmp_path / "out.parquet"), Options(), False)
    assert table(tmp_path / "out.parquet").column_names == ["image"] and classes_of(tmp_path / "out.parquet") is None


def test_an_npz_with_labels_maps_their_values_to_class_ids(tmp_path):
    images, y = noise((4, 10, 12, 3), 2), np.array([7, 3, 9, 3])
    np.savez(tmp_path / "d.npz", x=images, y=y)
    result = build(str(tmp_path / "d.npz"), str(tmp_path / "out.parquet"), Options(), False)
    t = table(tmp_path / "out.parquet")
    assert result.classes == ["3", "7", "9"] == classes_of(tmp_path / "out.parquet")
    assert t.column("label").to_pylist() == [1, 0, 2, 0]
    np.testing.assert_array_equal(np.stack([pixels(b) for b in t.column("image").to_pylist()]), images)


def test_an_unlabeled_npz_and_a_rgba_array(tmp_path):
    np.savez(tmp_path / "gray.npz", noise((3, 9, 9), 3))  # arr_0
    build(str(tmp_path / "gray.npz"), str(tmp_path / "gray.parquet"), Options(), False)
    assert table(tmp_path / "gray.parquet").column_names == ["image"]
    rgba = noise((2, 6, 6, 4), 4)
    np.savez(tmp_path / "rgba.npz", images=rgba)
    build(str(tmp_path / "rgba.npz"), str(tmp_path / "rgba.parquet"), Options(), False)
    blobs = table(tmp_path / "rgba.parquet").column("image").to_pylist()
    np.testing.assert_array_equal(np.stack([pixels(b) for b in blobs]), rgba[..., :3])  # RGBA -> RGB


def test_resolution_resizes_the_shorter_side_and_keeps_the_center(tmp_path):
    src = tmp_path / "mixed"
    src.mkdir()
    # red | green | blue: the center 32x32 (and the LANCZOS kernel's reach past it) is all green
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :8, 0], wide[:, 8:56, 1], wide[:, 56:, 2] = 255, 255, 255
    Image.fromarray(wide).save(src / "a.png")
    Image.fromarray(noise((50, 7, 3), 5)).save(src / "b.png")
    Image.fromarray(noise((40, 40), 6)).save(src / "c.png")
    result = build(str(src), str(tmp_path / "out.parquet"), Options(resolution=16), False)
    assert result.classes is None
    images = [pixels(b) for b in table(tmp_path / "out.parquet").column("image").to_pylist()]
    assert [im.shape for im in images] == [(16, 16, 3), (16, 16, 3), (16, 16)]
    assert (images[0][..., 1] == 255).all() and (images[0][..., [0, 2]] == 0).all()  # only the green center


@pytest.mark.parametrize(
    ("channels", "modes"), [(None, ["RGB", "L", "RGB"]), (1, ["L", "L", "L"]), (3, ["RGB", "RGB", "RGB"])]
)
def test_channels(tmp_path, channels, modes):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(noise((8, 8, 3), 0)).save(src / "a.png")
    Image.fromarray(noise((8, 8), 1)).save(src / "b.png")
    Image.fromarray(noise((8, 8, 4), 2), "RGBA").save(src / "c.png")
    build(str(src), str(tmp_path / "out.parquet"), Options(channels=channels), False)
    got = [Image.open(io.BytesIO(b)).mode for b in table(tmp_path / "out.parquet").column("image").to_pylist()]
    assert got == modes


@pytest.fixture
def many(tmp_path) -> Path:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(300):
        Image.fromarray(noise((16, 16), i)).save(src / f"{i:04d}.png")
    return src


def test_shards_split_by_image_bytes_with_small_row_groups(many, tmp_path):
    out = tmp_path / "big.parquet"
    result = build(str(many), str(out), Options(shard_mb=0.05), False)  # ~51 KB of PNGs per shard
    parts = sorted(out.glob("*.parquet"))
    assert out.is_dir() and [p.name for p in parts[:2]] == ["part-00000.parquet", "part-00001.parquet"]
    assert result.shards == len(parts) > 1 and result.files == [str(p) for p in parts]
    sizes = [sum(len(b) for b in pq.read_table(p).column("image").to_pylist()) for p in parts]
    assert max(sizes) <= 0.05 * 2**20 and sum(sizes) == result.bytes
    names = [f"{i:04d}.png" for i in range(300)]
    got = [b for p in parts for b in pq.read_table(p).column("image").to_pylist()]
    want = [data_build.png((many / n).read_bytes, Options()) for n in names]
    assert got == want  # every image once, in source order across the shards
    for p in parts:
        md = pq.ParquetFile(p).metadata
        assert all(md.row_group(g).num_rows <= data_build.ROW_GROUP_ROWS for g in range(md.num_row_groups))


def test_one_file_when_it_fits_with_row_groups_of_128(many, tmp_path):
    result = build(str(many), str(tmp_path / "all.parquet"), Options(), False)
    md = pq.ParquetFile(tmp_path / "all.parquet").metadata
    assert result.files == [str(tmp_path / "all.parquet")] and md.num_rows == 300
    assert [md.row_group(g).num_rows for g in range(md.num_row_groups)] == [128, 128, 44]
    build(str(many), str(tmp_path / "dir"), Options(limit=10), False)  # OUT without .parquet: a directory
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["part-00000.parquet"]
    assert pq.read_table(tmp_path / "dir").num_rows == 10


def test_bad_images_are_skipped_and_counted(folder, tmp_path):
    src, expected = folder
    (src / "cat" / "3.png").write_bytes(b"not a png")
    jpeg = (src / "dog" / "0.jpg").read_bytes()
    (src / "dog" / "2.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    result = build(str(src), str(tmp_path / "out.parquet"), Options(), False)
    assert (result.images, result.skipped) == (5, 2)
    assert result.skipped_files == [str(src / "cat" / "3.png"), str(src / "dog" / "2.jpg")]
    t = table(tmp_path / "out.parquet")
    assert t.column("label").to_pylist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(pixels(t.column("image")[4].as_py()), expected[4])


def test_decompression_bombs_are_bad_images(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name, side in [("a", 8), ("b", 13), ("c", 20)]:
        Image.fromarray(noise((side, side), side)).save(src / f"{name}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # 13x13 = 169: PIL warns; 20x20 = 400: PIL refuses
    result = build(str(src), str(tmp_path / "out.parquet"), Options(), False)
    assert (result.images, result.skipped, result.skipped_files) == (1, 2, [str(src / "b.png"), str(src / "c.png")])
    assert main(["-q", "data", "build", str(src), str(tmp_path / "strict.parquet"), "--strict"]) == 2


def leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


def test_strict_stops_at_the_first_bad_image_leaving_nothing(many, tmp_path, capsys):
    (many / "0250.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    rc = main(["data", "build", str(many), str(out), "--strict", "--shard-mb", "0.01"])
    err = capsys.readouterr().err
    assert rc == 2 and "0250.png is not a readable image" in err and "--strict" in err
    assert leftovers(tmp_path, {"many"}) == []  # shards were written before 0250; none is left


def test_an_existing_out_is_refused_and_survives_a_failed_overwrite(many, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["data", "build", str(many), str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    (many / "0100.png").write_bytes(b"broken")
    assert main(["data", "build", str(many), str(out), "--overwrite", "--strict"]) == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and leftovers(tmp_path, {"many", "out"}) == []
    assert main(["-q", "data", "build", str(many), str(out), "--overwrite"]) == 0
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"] and leftovers(tmp_path, {"many", "out"}) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-q", "data", "build", str(many), str(empty), "--limit", "3"]) == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "x.csv").write_text("a,b"), "not a source data build knows"),
        (lambda d: None, "holds no images"),
        (lambda d: np.savez(d / "x.npz", x=np.zeros((2, 4, 4), np.float32)), "images must be uint8"),
        (lambda d: np.savez(d / "x.npz", x=np.zeros((2, 4, 4), np.uint8), y=[1]), "1 labels for 2 images"),
        (lambda d: (d / "x.zip").write_bytes(b"PK nope"), "not a readable zip"),
        (lambda d: (d / "train-images-idx3-ubyte").write_bytes(b"\0\0\x0d\x03"), "not an idx file of unsigned"),
        (lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken"), "cannot read it"),
        (lambda d: np.savez(d / "x.npz", x=np.array([None, 1])), "not a readable .npz file"),
        (lambda d: np.savez(d / "x.npz", pixels=np.zeros((2, 4, 4), np.uint8)), "no images array"),
    ],
    ids=[
        "unknown-kind",
        "empty-folder",
        "float-npz",
        "label-count",
        "bad-zip",
        "float-idx",
        "bad-gz",
        "object-npz",
        "no-images-key",
    ],
)
def test_bad_sources_are_input_errors(tmp_path, capsys, make, message):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    make(src_dir)
    (src,) = list(src_dir.iterdir()) or [src_dir]
    assert main(["data", "build", str(src), str(tmp_path / "out.parquet")]) == 2
    assert message in capsys.readouterr().err
    assert leftovers(tmp_path, {"src"}) == []


def test_images_at_the_top_and_in_class_folders_are_refused(folder, tmp_path, capsys):
    src, _ = folder
    shutil.copy(src / "cat" / "0.png", src / "stray.png")
    assert main(["data", "build", str(src), str(tmp_path / "out.parquet")]) == 2
    assert "has images at its top (stray.png) and in class subfolders" in capsys.readouterr().err
    assert main(["data", "build", str(src), str(src / "out.parquet")]) == 2  # OUT inside SRC
    assert "overlap" in capsys.readouterr().err


def test_the_trainer_accepts_the_output(folder, tmp_path):
    src, _ = folder
    build(str(src), str(tmp_path / "pets.parquet"), Options(resolution=16), False)
    info = data.inspect(DataSpec(name="parquet", path=str(tmp_path / "pets.parquet"), column="image"))
    assert (info.kind, info.sample_shape, info.num_rows) == ("image", (3, 16, 16), 5)
    spec = DataSpec(name="parquet", path=str(tmp_path / "pets.parquet"), column="image", label_column="label")
    assert data.inspect(spec).num_classes == 2


def test_the_builder_and_the_folder_reader_agree_on_formats_and_channels(tmp_path):
    """Gray-with-alpha (LA) images are gray to both, and .tif/.tiff files are images to both: training
    on a folder and on what `data build` made of it sees the same images."""
    src = tmp_path / "gray"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.stack([noise((8, 8), i), np.full((8, 8), 255, np.uint8)], -1), "LA").save(src / f"{i}.png")
    Image.fromarray(noise((8, 8), 3)).save(src / "3.tif")
    Image.fromarray(noise((8, 8), 4)).save(src / "4.tiff")
    folder = data.inspect(DataSpec(name="imagefolder", path=str(src)))
    build(str(src), str(tmp_path / "gray.parquet"), Options(), False)
    built = data.inspect(DataSpec(name="parquet", path=str(tmp_path / "gray.parquet"), column="image"))
    assert (folder.num_rows, folder.sample_shape) == (built.num_rows, built.sample_shape) == (5, (1, 8, 8))


def test_cli(folder, tmp_path):
    src, _ = folder
    r = run_cli("data", "build", str(src), "pets-data", "--resolution", "8", "--json-out", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = read_json(tmp_path / "r.json")
    assert r.stdout.strip().splitlines()[-1] == (
        f"wrote 5 images (0 skipped), 2 classes, 1 shard(s), {doc['bytes']:,} bytes: {tmp_path / 'pets-data'}"
    )
    assert "5/5" in r.stderr  # the progress bar
    assert doc["files"] == [str(tmp_path / "pets-data" / "part-00000.parquet")] and doc["classes"] == ["cat", "dog"]
    assert {k: doc[k] for k in ("status", "source_kind", "images", "skipped", "shards")} == {
        "status": "finished",
        "source_kind": "folder",
        "images": 5,
        "skipped": 0,
        "shards": 1,
    }
    quiet = run_cli("-q", "data", "build", str(src), "again.parquet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.startswith("wrote 5 images")
