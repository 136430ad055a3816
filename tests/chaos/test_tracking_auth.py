"""An authenticated tracking server: no login, no access; distgan with a login in its env trains and
registers, and the password appears nowhere distgan writes or prints. `distgan tracking-server`
refuses to listen beyond loopback without --auth or --insecure."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest
from conftest import MlflowServer, read_json, run_cli

PASSWORD = "s3cret-Pa55-0f-the-admin"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), admin_password=PASSWORD).start()
    yield server
    server.stop()


def _status(url: str, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.cluster
def test_login_required_and_never_recorded(tmp_path, auth_server):
    from mlflow.tracking import MlflowClient

    search = f"{auth_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search) == 401
    assert _status(search, ("admin", "wrong")) == 401
    assert _status(search, ("admin", PASSWORD)) == 200

    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    out = tmp_path / "r.json"
    args = ["train", "--workers", "1", "--name", "authed", "--set", f"train.storage_path={tmp_path}"]
    args += ["--set", "train.steps=40", "--set", "train.eval_every=20", "--tracking-uri", auth_server.uri]
    r = run_cli(*args, "--register", "authed-gan", "--json-out", str(out), cwd=tmp_path, env=login)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = read_json(out)
    assert res["status"] == "finished" and res["model_uri"] == "models:/authed-gan/1"

    client = MlflowClient(auth_server.uri)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in login.items():
            mp.setenv(k, v)
        run = client.get_run(res["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")] == [20, 40]
        recorded = " ".join(f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
    assert PASSWORD not in recorded
    assert PASSWORD not in r.stdout + r.stderr and PASSWORD not in out.read_text()
    written = [p for p in (tmp_path / "authed").rglob("*") if p.is_file()]
    assert any(p.name == "metrics.jsonl" for p in written)
    assert [p for p in written if PASSWORD.encode() in p.read_bytes()] == []  # checkpoints and spec included


@pytest.mark.parametrize(
    "flags, env, message",
    [
        (
            ["--host", "0.0.0.0"],
            {},
            "--host 0.0.0.0 exposes the tracking server beyond this machine without a login: add --auth",
        ),
        (["--host", "0.0.0.0", "--auth"], {"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, "--auth needs the admin's password"),
    ],
    ids=["open-host", "auth-without-password"],
)
def test_tracking_server_beyond_loopback_needs_auth_or_insecure(tmp_path, flags, env, message):
    r = run_cli("tracking-server", *flags, "--port", "1", cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"distgan tracking-server: error: {message}")


def test_tracking_server_auth_command(monkeypatch):
    from distgan.tracking.server import tracking_server_command

    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", PASSWORD)
    argv, env = tracking_server_command("0.0.0.0", 5000, None, None, None, 1, auth=True)
    assert argv[argv.index("--app-name") + 1] == "basic-auth" and argv[argv.index("--host") + 1] == "0.0.0.0"
    assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
    argv, _ = tracking_server_command("0.0.0.0", 5000, None, None, None, 1, insecure=True)
    assert "--app-name" not in argv
