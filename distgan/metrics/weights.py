"""Pretrained weights of the standard feature networks, fetched on first use into the torch hub
cache (`torch.hub.get_dir()/checkpoints/`, i.e. `$TORCH_HOME/hub/checkpoints`, where pytorch-fid
and torch.hub keep them too) and verified by sha256 every time they are used.

`DISTGAN_WEIGHTS_URL` replaces the download location of every file by `<that URL>/<file name>` (a
mirror inside a closed network; the tests' loopback server). It never disables the checksum: a
file from anywhere must be the official one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from distgan.errors import InputError

URL_ENV = "DISTGAN_WEIGHTS_URL"
TIMEOUT_S = 30  # per network operation, not for the whole file


@dataclass(frozen=True)
class Weights:
    file: str  # the name in the cache, the official one (others' caches are shared)
    url: str
    sha256: str
    size: int  # bytes, for the progress bar and the README; the digest is what is checked


# The digests are not published beside the files. Each was checked to be the one that several
# unrelated public projects pin for the same file (and, for Inception, to begin with the 6726825d
# that the official file name carries, torch.hub's convention for a sha256 prefix).
REGISTRY: dict[str, Weights] = {
    "inception": Weights(
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        95_628_359,
    ),
    "dinov2": Weights(
        "dinov2_vits14_pretrain.pth",
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9",
        88_283_115,
    ),
}

_verified: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) already hashed in this process


def path(name: str) -> Path:
    """Where the weights of `name` live (whether or not they are there yet)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / REGISTRY[name].file


def url(name: str) -> str:
    base = os.environ.get(URL_ENV)
    return f"{base.rstrip('/')}/{REGISTRY[name].file}" if base else REGISTRY[name].url


def fetch(name: str) -> Path:
    """The verified weights file of `name`, downloaded once. InputError (one line) when it cannot
    be downloaded or is not the official file."""
    w, dest = REGISTRY[name], path(name)
    if dest.is_file():
        _verify_cached(name, dest)
        return dest
    source = url(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a temp file in the same folder, renamed when whole and verified: a crash, a full disk or a
    # concurrent download (several workers on one node) never leaves a partial file at `dest`
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{w.file}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _download(source, out, w.size, name)
        if digest != w.sha256:
            raise InputError(
                f"checksum mismatch for the {name} weights from {source}: sha256 {digest}, expected {w.sha256}; "
                "the download is corrupt or not the official file"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _remember(dest)
    return dest


def _verify_cached(name: str, dest: Path) -> None:
    stat = dest.stat()
    if _verified.get(dest) == (stat.st_size, stat.st_mtime_ns):
        return
    digest = _sha256(dest)
    if digest != REGISTRY[name].sha256:
        dest.unlink()  # removed so that the next run downloads a good copy
        raise InputError(
            f"checksum mismatch for the {name} weights at {dest}: sha256 {digest}, expected {REGISTRY[name].sha256}; "
            "the file is corrupt or not the official file (removed: run again to download it)"
        )
    _remember(dest)


def _remember(dest: Path) -> None:
    stat = dest.stat()
    _verified[dest] = (stat.st_size, stat.st_mtime_ns)


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(source: str, out, expected_size: int, name: str) -> str:
    """Copy `source` into `out`; its sha256. Network failures become the one-line offline error."""
    h = hashlib.sha256()
    done = 0
    progress = sys.stderr.isatty()
    try:
        with urllib.request.urlopen(source, timeout=TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or expected_size)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    print(
                        f"\rdownloading {name} weights: {done / 2**20:.0f}/{total / 2**20:.0f} MiB",
                        end="",
                        file=sys.stderr,
                    )
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise InputError(
            f"could not download the {name} weights from {source} ({reason}); offline, place that file at "
            f"{path(name)} (sha256 {REGISTRY[name].sha256})"
        ) from None
    finally:
        if progress and done:
            print(file=sys.stderr)
    return h.hexdigest()
