"""Where files live: local paths and URIs (`s3://`, `gs://`, `hdfs://`, `file://`, anything `pyarrow.fs`
resolves), one interface for the data, the run directories and the checkpoints.

Credentials come from where each SDK looks for them (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
AWS_PROFILE, an instance role; AWS_ENDPOINT_URL points at any S3-compatible server). Errors are
InputError with the location and a fix, raised before anything runs on Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from distgan.errors import InputError


def is_remote(location: str) -> bool:
    """True for a URI with a scheme other than file:// (a Windows drive letter is not a scheme)."""
    scheme, sep, _ = str(location).partition("://")
    return bool(sep) and len(scheme) > 1 and scheme != "file"


def absolute(location: str) -> str:
    """A URI as it is; a local path made absolute (Ray Train needs one, and so does a worker elsewhere)."""
    if is_remote(location):
        return str(location).rstrip("/")
    return str(Path(str(location).removeprefix("file://")).expanduser().resolve())


# Where the AWS SDK finds credentials besides the instance metadata service.
AWS_CREDENTIAL_SOURCES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                          "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")  # fmt: skip


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI; InputError when the URI is not usable."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), absolute(location)
    if str(location).startswith("s3://") and not _aws_credentials_possible() and "anonymous=" not in str(location):
        raise InputError(
            f"{location}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE), or add ?anonymous=true to the URI for a public bucket"
        )
    try:
        return pafs.FileSystem.from_uri(str(location))
    except Exception as e:  # unknown scheme, missing optional SDK, malformed URI
        raise InputError(
            f"{location}: cannot open this location ({_reason(e)}); check the URI and its scheme"
        ) from None


def _aws_credentials_possible() -> bool:
    """False only when no source of AWS credentials exists: none in the environment, no shared
    credentials/config file, and the instance metadata service is turned off."""
    if any(os.environ.get(k) for k in AWS_CREDENTIAL_SOURCES):
        return True
    files = [
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    ]
    if any(Path(f).expanduser().is_file() for f in files):
        return True
    return os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true"


def info(fs: pafs.FileSystem, path: str, location: str) -> pafs.FileInfo:
    """The file info of `path`, turning the SDKs' errors (no bucket, no credentials) into one InputError line."""
    try:
        return fs.get_file_info(path)
    except Exception as e:
        raise InputError(f"{location}: cannot read it ({_reason(e)}){_credentials_hint(location)}") from None


def list_files(location: str, suffixes: set[str] | None = None) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    """(filesystem, infos sorted by path) of the file at `location` or the files under it (with one of
    `suffixes`); an info holds the path, size and modification time."""
    fs, path = resolve(location)
    found = info(fs, path, location)
    if found.type == pafs.FileType.NotFound:
        _require_bucket(fs, path, location, "check the URI")
        raise InputError(f"{location} does not exist; check the path")
    if found.type == pafs.FileType.File:
        return fs, [found]
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except Exception as e:
        raise InputError(f"{location}: cannot list it ({_reason(e)}){_credentials_hint(location)}") from None
    files = sorted(
        (
            e
            for e in entries
            if e.type == pafs.FileType.File
            and not Path(e.path).name.startswith((".", "_"))  # _SUCCESS, .crc: writers' markers, not data
            and (suffixes is None or Path(e.path).suffix.lower() in suffixes)
        ),
        key=lambda e: e.path,
    )
    return fs, files


def join(location: str, *parts: str) -> str:
    """`location/part/...` for a local path or a URI alike."""
    return "/".join([str(location).rstrip("/"), *parts])


def uri(fs: pafs.FileSystem, path: str) -> str:
    """The location of `path` in `fs` (Ray's checkpoints come as a pair): a local path, or a URI."""
    return path if fs.type_name == "local" else f"{fs.type_name}://{path}"


def check_storage(location: str) -> None:
    """InputError (one line) unless `location` can be used as storage: a scheme pyarrow knows, a
    bucket that exists, credentials that may read it. Nothing is written."""
    fs, path = resolve(location)
    info(fs, path, location)  # no credentials or access denied: the SDK's error, as one line
    _require_bucket(fs, path, location, "create it or fix the URI")


def _require_bucket(fs: pafs.FileSystem, path: str, location: str, fix: str) -> None:
    """InputError when `location` is in object storage and its bucket does not exist."""
    bucket = path.split("/")[0]
    if is_remote(location) and info(fs, bucket, location).type == pafs.FileType.NotFound:
        raise InputError(f"{location}: bucket {bucket!r} does not exist; {fix}")


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def read_optional(location: str) -> bytes | None:
    """The file at `location`, or None when there is none."""
    try:
        return read_bytes(*resolve(location))
    except FileNotFoundError:
        return None


def write(location: str, data: bytes) -> None:
    write_bytes(*resolve(location), data)


def remove(location: str) -> None:
    """Delete the file at `location`; none there is fine."""
    fs, path = resolve(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Written whole or not at all where the filesystem allows it: a temporary name, then a rename
    (object stores write an object in one request, so they need no rename)."""
    if isinstance(fs, pafs.LocalFileSystem):  # object stores have no directories to make
        fs.create_dir(os.path.dirname(path), recursive=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        finally:
            if os.path.exists(tmp):  # a failed write (a full disk) leaves nothing behind
                os.remove(tmp)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def _reason(e: Exception) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _credentials_hint(location: str) -> str:
    if str(location).startswith("s3://"):
        return "; S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    if str(location).startswith("gs://"):
        return "; GCS credentials come from GOOGLE_APPLICATION_CREDENTIALS"
    return ""
