"""MLflow as distgan uses it: settings, the tracking URI, a client, and the fluent API pointed at one URI."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlparse

from distgan.errors import InputError

# Fail fast instead of MLflow's default ~4 minutes of retries per call: the sender retries itself.
MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # its "Downloading artifacts" bars (the champion check, pull): distgan prints its own lines only
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# A tracking server's login (`distgan tracking-server --auth`): MLflow's client reads these. They go
# to jobs only through their env, never into params, tags or logs.
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def credentials_env() -> dict[str, str]:
    return {k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)}


def configure_env() -> None:
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


def resolve_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's local SQLite store in the current
    directory; SQLite paths made absolute (Ray workers run in other directories)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if not path.startswith("/"):
            path = str(Path(path).resolve())
        if not Path(path).parent.is_dir():
            raise InputError(f"tracking URI {uri}: directory {Path(path).parent} does not exist")
        return f"sqlite:///{path}"
    if scheme in ("http", "https", "databricks"):
        return uri.rstrip("/")
    raise InputError(
        f"tracking URI {uri!r} is not supported: use sqlite:///PATH/mlflow.db or http://HOST:PORT of an `mlflow server`"
    )


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An HTTP tracking server must answer now, or the user hears so in seconds (exit 2)."""
    if not uri.startswith("http"):
        return
    import requests

    try:
        requests.get(f"{uri}/health", timeout=timeout).raise_for_status()
    except Exception as e:
        raise InputError(
            f"MLflow tracking server {uri} is not reachable ({type(e).__name__}); start it "
            f"(`mlflow server --host 127.0.0.1 --port PORT ...`) or pass another --tracking-uri"
        ) from None


def mlflow_client(uri: str):
    """An MlflowClient for tracking and registry at `uri` (MLflow's settings for distgan applied)."""
    from mlflow.tracking import MlflowClient

    configure_env()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def fluent_uri(uri: str):
    """MLflow's fluent API (log_model, register_model) pointed at `uri` for the block only.
    mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, where Ray would copy
    it to the workers of a later run in this process: restore what the caller had."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
