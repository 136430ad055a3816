"""The pretrained feature networks, without the internet: their state-dict layouts (the official
files must load strictly), the download into the torch cache from a loopback server, the checksum
refusal, the one-line offline error, and features of the right size. The served files are the real
architectures' state dicts with random values (the official ones cannot be fetched here), so the
registry's digests are pointed at them, as a mirror's URL never could."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, closed_port, run_cli, write_image_parquet

from distgan.errors import InputError
from distgan.metrics import dinov2, features, inception, weights


def _random_weights(net: torch.nn.Module, path: Path) -> str:
    """Save `net`'s state dict with random values at `path`; its sha256. Convolutions get He
    initialisation so the activations stay O(1) through 94 layers (not denormal: slow on CPUs)."""
    gen = torch.Generator().manual_seed(0)
    state = net.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            fan_in = value[0].numel() if value.dim() > 1 else 1
            std = (2 / fan_in) ** 0.5 if value.dim() == 4 else 0.02
            value.copy_(torch.randn(value.shape, generator=gen) * std)
            if key.endswith(("running_var", "bn.weight", "norm1.weight", "norm2.weight", "norm.weight")):
                value.copy_(1 + value.abs())
            if key.endswith("gamma"):
                value.fill_(0.5)
    torch.save(state, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A loopback HTTP server over a folder holding both networks' files; (URL, {name: sha256})."""
    root = tmp_path_factory.mktemp("mirror")
    digests = {
        "inception": _random_weights(inception.FIDInceptionV3(), root / weights.REGISTRY["inception"].file),
        "dinov2": _random_weights(dinov2.DinoV2(), root / weights.REGISTRY["dinov2"].file),
    }
    (root / "junk.pth").write_bytes(b"not the weights")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", digests
    server.shutdown()
    server.server_close()
    thread.join()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(served, tmp_path, monkeypatch):
    """A fresh torch cache, the loopback mirror, and the registry's digests set to its files."""
    url, digests = served
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(weights.URL_ENV, url)
    monkeypatch.setattr(weights, "_verified", {})
    for name, digest in digests.items():
        monkeypatch.setitem(weights.REGISTRY, name, dataclasses.replace(weights.REGISTRY[name], sha256=digest))
    return url


def test_inception_state_dict_is_pytorch_fids():
    state = inception.FIDInceptionV3().state_dict()
    # 94 conv+bn layers (conv.weight, bn.weight/bias/running_mean/running_var/num_batches_tracked) + fc
    assert len(state) == 94 * 6 + 2
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048) and shapes["fc.bias"] == (1008,)
    assert not any(k.startswith("AuxLogits") or k.endswith(".conv.bias") for k in state)


def test_dinov2_state_dict_is_the_official_vits14s():
    state = dinov2.DinoV2().state_dict()
    block = [
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
        "mlp.fc2.bias", "ls2.gamma",
    ]  # fmt: skip
    expected = ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    expected += [f"blocks.{i}.{k}" for i in range(12) for k in block] + ["norm.weight", "norm.bias"]
    assert list(state) == expected  # no register_tokens, no chunked blocks, no mean/std buffers
    assert tuple(state["pos_embed"].shape) == (1, 1 + 37 * 37, 384)
    assert tuple(state["patch_embed.proj.weight"].shape) == (384, 3, 14, 14)
    assert tuple(state["blocks.11.attn.qkv.weight"].shape) == (1152, 384)
    assert tuple(state["blocks.0.mlp.fc1.weight"].shape) == (1536, 384)


def test_dinov2_position_embeddings_are_interpolated_as_the_official_code_does():
    net = dinov2.DinoV2()
    torch.nn.init.normal_(net.pos_embed)
    assert net.interpolate_pos_encoding(518, 518) is net.pos_embed  # its own grid: unchanged
    pos = net.interpolate_pos_encoding(224, 224)
    assert pos.shape == (1, 1 + 16 * 16, 384)
    grid = net.pos_embed[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic")
    torch.testing.assert_close(pos[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 256, 384))
    torch.testing.assert_close(pos[:, 0], net.pos_embed[:, 0])


def test_auto_means_inception_for_other_images_and_names_follow_the_network():
    assert features.resolve("auto", "imagefolder") == "inception"
    assert features.resolve("auto", "parquet") == "inception"
    assert features.resolve("auto", "digits") == "digits"
    assert features.resolve("dinov2", "parquet") == "dinov2"
    assert features.network_name("dinov2") == "dinov2" and features.network_name("inception") == "inception"
    with pytest.raises(InputError, match="takes grayscale or RGB images; this data is 4x32x32"):
        features.check("inception", (4, 32, 32))


def test_inception_is_downloaded_verified_loaded_and_embeds(mirror, tmp_path, monkeypatch):
    features.check("inception", (1, 32, 32))  # the preflight: downloads and verifies
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert cached.is_file() and cached.parent == tmp_path / "torch" / "hub" / "checkpoints"
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temp file left behind
    # cached and verified: no network from here on (the mirror's port is closed)
    monkeypatch.setenv(weights.URL_ENV, f"http://127.0.0.1:{closed_port()}")
    net = features.load("inception")  # torch.load(weights_only=True) + load_state_dict(strict=True)
    assert net.name == "inception" and net.digest == weights.REGISTRY["inception"].sha256[:16]
    rgb = torch.from_numpy(np.stack(blob_images(2, 32))).float().div(127.5).sub(1).unsqueeze(1).repeat(1, 3, 1, 1)
    rgb[1, 0] = -rgb[1, 0]  # a colour image
    f_rgb = net.features(rgb)
    f_gray = net.features(rgb[:1, :1])  # grayscale = the same plane in R, G and B
    assert f_rgb.shape == (2, 2048) and f_gray.shape == (1, 2048) and f_rgb.dtype == np.float32
    assert np.isfinite(f_rgb).all() and not np.allclose(f_rgb[0], f_rgb[1], atol=1e-4)
    np.testing.assert_allclose(f_gray[0], f_rgb[0], rtol=1e-4, atol=1e-5)  # deterministic, batch-independent


def test_dinov2_is_downloaded_and_embeds_384_features(mirror):
    net = features.load("dinov2")  # first use: downloaded here
    assert weights.path("dinov2").is_file()
    x = torch.from_numpy(np.stack(blob_images(2, 16))).float().div(127.5).sub(1).unsqueeze(1)
    f = net.features(x)
    assert f.shape == (2, 384) and np.isfinite(f).all() and not np.allclose(f[0], f[1], atol=1e-4)
    # deterministic, and grayscale is the same plane in R, G and B
    np.testing.assert_allclose(net.features(x.repeat(1, 3, 1, 1)), f, rtol=1e-4, atol=1e-5)


def test_a_file_that_is_not_the_official_one_is_refused_and_removed(mirror, monkeypatch):
    # the URL override serves another file: the pinned digest still decides
    monkeypatch.setitem(weights.REGISTRY, "dinov2", dataclasses.replace(weights.REGISTRY["dinov2"], file="junk.pth"))
    with pytest.raises(InputError, match="checksum mismatch .* the download is corrupt or not the official file"):
        weights.fetch("dinov2")
    folder = weights.path("dinov2").parent
    assert list(folder.iterdir()) == []  # neither the file nor a temp file
    # a corrupt file already in the cache: refused, removed, and the next call downloads a good copy
    weights.path("inception").write_bytes(b"truncated")
    with pytest.raises(InputError, match="checksum mismatch .* at .*removed: run again"):
        weights.fetch("inception")
    assert not weights.path("inception").exists()
    assert weights.fetch("inception").is_file()


def test_offline_is_one_line_naming_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = f"http://127.0.0.1:{closed_port()}/w"
    monkeypatch.setenv(weights.URL_ENV, url)
    with pytest.raises(InputError) as e:
        features.check("inception", (3, 32, 32))
    msg = str(e.value)
    assert "\n" not in msg and f"{url}/pt_inception-2015-12-05-6726825d.pth" in msg
    assert f"place that file at {tmp_path / 'torch' / 'hub' / 'checkpoints'}" in msg
    assert weights.REGISTRY["inception"].sha256 in msg
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []


def test_train_on_your_images_fetches_inception_before_ray(tmp_path):
    """`auto` on a Parquet of images means Inception: offline, exit 2 in one line before Ray starts
    and before anything is written (conftest points the download at a closed port)."""
    images = write_image_parquet(tmp_path / "mine.parquet", blob_images(64, 16))
    r = run_cli(
        "train",
        *("--set", "data.name=parquet", "--set", f"data.path={images}", "--set", "data.column=image"),
        *("--set", "model.arch=dcgan", "--set", "train.batch_size=32", "--set", "scaling.workers=1"),
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "could not download the inception weights from http://127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "distgan_runs").exists()
