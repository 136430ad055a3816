"""Shared fixtures. Every Ray the tests start gets its own short RAY_TMPDIR (Unix socket paths
must stay short); runs go to pytest's tmp dirs; nothing is stopped by name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def ray_tmpdir():
    path = tempfile.mkdtemp(prefix="dgt-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = path
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    yield path


@pytest.fixture(scope="session", autouse=True)
def no_weight_downloads(tmp_path_factory):
    """No test reaches the internet for feature-network weights: an empty torch cache, and a
    download location on a closed loopback port (a test that needs weights serves its own)."""
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))
    os.environ["DISTGAN_WEIGHTS_URL"] = f"http://127.0.0.1:{closed_port()}/weights"


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_ray_connection_left_behind():
    """A test that used Ray in this process leaves it disconnected: a later in-process run must start
    or join the Ray it asks for (Ray Data's background threads can re-initialize a local Ray after a
    test's own shutdown, and the next `train(address=...)` would then run there)."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`distgan ARGS` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "distgan", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def metric_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's `distgan/metrics.jsonl`, one per eval ([] before the first)."""
    path = Path(run_dir) / "distgan" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metric_steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in metric_rows(run_dir)]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def blob_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Grayscale images of one bright square at a random place: simple, structured, learnable."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.zeros((size, size), dtype=np.uint8)
        x, y = rng.integers(0, size - size // 2, 2)
        img[y : y + size // 2, x : x + size // 2] = 255
        out.append(img)
    return out


def write_image_parquet(path: Path, images: list[np.ndarray], column: str = "image") -> Path:
    pq.write_table(pa.table({column: [png_bytes(im) for im in images], "label": list(range(len(images)))}), path)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(cmd: list[str], env: dict, root: Path) -> subprocess.Popen:
    """A server process in its own session (stopped by its group), its output in `root/server.log`."""
    log = open(root / "server.log", "ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_up(url: str, proc: subprocess.Popen, root: Path, name: str, timeout: float) -> None:
    """Until `url` answers (any HTTP status counts), or RuntimeError with the server's log."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP error status: it is up
                return
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(root / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.3)
    raise RuntimeError(f"{name} did not start in time")


def stop_server(proc: subprocess.Popen | None) -> None:
    """SIGTERM to the server's process group (the server and its workers only), then SIGKILL."""
    import signal

    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class MlflowServer:
    """A real `mlflow server` on a loopback port, with lean settings (one worker, no job execution); stopped by PID.
    With `admin_password`, MLflow's basic-auth app, its users in `root` (user `admin`)."""

    def __init__(self, root: Path, port: int | None = None, admin_password: str | None = None):
        self.root, self.port, self.admin_password = Path(root), port or free_port(), admin_password
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root}/mlflow.db",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        if self.admin_password:
            ini = self.root / "basic_auth.ini"
            ini.write_text(
                f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{self.root}/basic_auth.db\n"
                f"admin_username = admin\nadmin_password = {self.admin_password}\n"
            )
            cmd += ["--app-name", "basic-auth"]
            env |= {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
        self.proc = spawn_server(cmd, env, self.root)
        wait_until_up(f"{self.uri}/health", self.proc, self.root, "mlflow server", timeout)
        return self

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pyfunc_venv() -> Path:
    """A virtualenv with mlflow and torch but NOT distgan, built once and reused (about a minute):
    $DISTGAN_TEST_VENV, else /tmp/distgan-pyfunc-venv-<torch>-<mlflow>."""
    import mlflow
    import torch

    torch_version = torch.__version__.split("+")[0]
    path = Path(os.environ.get("DISTGAN_TEST_VENV", f"/tmp/distgan-pyfunc-venv-{torch_version}-{mlflow.__version__}"))
    python = path / "bin" / "python"
    probe = [
        str(python),
        "-c",
        "import mlflow, torch; import importlib.util as u; assert u.find_spec('distgan') is None",
    ]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on PYTHONPATH is not "installed"
    if not (python.exists() and subprocess.run(probe, cwd="/", env=clean, capture_output=True).returncode == 0):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", f"mlflow=={mlflow.__version__}"],
            check=True,
        )
        subprocess.run(probe, cwd="/", env=clean, check=True)
    return python


class S3Server:
    """A real S3-protocol server (moto's standalone server) on a loopback port, stopped by PID.

    `env` holds what a client needs (endpoint and test credentials); `use()` puts it into this
    process's environment, where pyarrow, Ray's workers (started from it) and subprocesses find it."""

    def __init__(self, root: Path):
        self.root, self.port = Path(root), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait on an instance-metadata lookup
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        server = Path(sys.executable).with_name("moto_server")
        self.proc = spawn_server([str(server), "-H", "127.0.0.1", "-p", str(self.port)], dict(os.environ), self.root)
        wait_until_up(self.endpoint, self.proc, self.root, "moto_server", timeout)
        return self

    def create_bucket(self, name: str) -> str:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(
            endpoint_override=self.endpoint, access_key="testing", secret_key="testing", allow_bucket_creation=True
        ).create_dir(name)
        return f"s3://{name}"

    def use(self, monkeypatch) -> None:
        for k, v in self.env.items():
            monkeypatch.setenv(k, v)

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3-server")).start()
    yield server
    server.stop()
