"""The tracking server away at the end of a run: `distgan train` cannot finish its MLflow run and leaves
`distgan/tracking_pending.json`; with the server back, `distgan track sync RUN_DIR` sends what MLflow lacks
(metric points, sample images), logs and registers the generator, and closes the run, each thing once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import MlflowServer, metric_rows, read_json, run_cli

pytestmark = pytest.mark.cluster

NAME, MODEL, STEPS, EVAL_EVERY = "away", "sync-gan", 60, 10


def _image_steps(client, run_id: str) -> list[int]:
    """Steps of the full-size sample images MLflow holds (`images/samples+step+<S>+timestamp+...png`)."""
    names = [a.path.removeprefix("images/") for a in client.list_artifacts(run_id, "images")]
    return sorted(int(n.split("+")[2]) for n in names if n.startswith("samples+step+") and n.endswith(".png"))


def _state(client, run_id: str) -> dict:
    experiment_id = client.get_run(run_id).info.experiment_id
    return {
        "loss_d": [m.step for m in client.get_metric_history(run_id, "loss_d")],
        "images": _image_steps(client, run_id),
        "models": [
            m.model_id
            for m in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
        ],
        "versions": [v.version for v in client.search_model_versions(f"name='{MODEL}' and run_id='{run_id}'")],
        "status": client.get_run(run_id).info.status,
    }


def _train_while_the_server_goes(tmp_path, server: MlflowServer) -> tuple[dict, int, str]:
    """`distgan train` whose tracking server is stopped once it has its first eval, and stays away to the end."""
    from mlflow.tracking import MlflowClient

    out = tmp_path / "train.json"
    args = ["train", "--workers", "1", "--name", NAME, "--tracking-uri", server.uri, "--register", MODEL]
    args += ["--experiment", f"sync-{tmp_path.name}", "--json-out", str(out)]
    for key, value in (("storage_path", tmp_path), ("steps", STEPS), ("eval_every", EVAL_EVERY)):
        args += ["--set", f"train.{key}={value}"]
    # nets and a batch whose 60 steps stay healthy: the default job's read as mode collapse at step 40, and an
    # unhealthy run is never champion
    args += ["--set", "model.g_hidden=[256,256,256]", "--set", "model.d_hidden=[256,256,256]"]
    args += ["--set", "train.batch_size=512"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distgan", *args],
        cwd=tmp_path,
        env={**os.environ, "DISTGAN_TRACKING_FLUSH_S": "3"},  # held records: not worth a long wait here
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, client = time.monotonic() + 150, MlflowClient(server.uri)
        saved = tmp_path / NAME / "distgan" / "mlflow.json"
        while not (saved.exists() and client.get_metric_history(read_json(saved)["run_id"], "loss_d")):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read()[-3000:] if proc.poll() else ""
            )
            time.sleep(0.1)
        server.stop()
        output, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    return (read_json(out) if out.exists() else {}), proc.returncode, output


def test_sync_finishes_a_run_whose_server_was_away_at_the_end_once(tmp_path):
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        t0 = time.monotonic()
        res, code, output = _train_while_the_server_goes(tmp_path, server)
        assert code == 0 and res["status"] == "finished" and res["steps"] == STEPS, output[-3000:]
        run_dir, run_id = tmp_path / NAME, res["mlflow_run_id"]
        assert res["tracking_error"] and res["logged_model_uri"] is None and res["model_uri"] is None
        assert (run_dir / "distgan" / "tracking_pending.json").exists()
        assert f"distgan track sync {run_dir}" in output, output[-3000:]

        # still away: exit 1, nothing lost
        r = run_cli("track", "sync", str(run_dir), cwd=tmp_path)
        assert r.returncode == 1 and "not reachable" in r.stderr, r.stdout + r.stderr
        assert (run_dir / "distgan" / "tracking_pending.json").exists()

        server.start()  # the same port and store
        client = MlflowClient(server.uri)
        steps = [row["step"] for row in metric_rows(run_dir)]
        assert steps == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        before = _state(client, run_id)
        assert 0 < len(before["loss_d"]) < len(steps) and before["models"] == [] and before["versions"] == []
        assert before["status"] == "RUNNING"

        r = run_cli("track", "sync", str(run_dir), "--json-out", str(tmp_path / "sync.json"), cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        synced = read_json(tmp_path / "sync.json")
        after = _state(client, run_id)
        image_steps = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "distgan" / "images").glob("samples_*.png"))
        assert image_steps == steps
        assert after["loss_d"] == steps  # every step once: none doubled, none missing
        rows = metric_rows(run_dir)
        for key in {k for row in rows for k in row} - {"step"}:  # each key at the steps that have it, once
            want = [row["step"] for row in rows if row.get(key) is not None]
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == want, key
        assert after["images"] == image_steps
        assert len(after["models"]) == 1 and len(after["versions"]) == 1
        assert after["status"] == "FINISHED"
        version = client.get_model_version_by_alias(MODEL, "champion")
        assert version.run_id == run_id and str(version.version) == str(after["versions"][0])
        assert synced["status"] == "synced" and synced["logged"] and synced["registered"] and synced["champion"]
        assert synced["metric_points"] > 0 and synced["images"] == len(image_steps) - len(before["images"])
        assert synced["model_uri"] == f"models:/{MODEL}/{version.version}"
        assert "metric points sent:" in r.stdout and f"registered: models:/{MODEL}/" in r.stdout, r.stdout
        assert not (run_dir / "distgan" / "tracking_pending.json").exists()
        note = client.get_run(run_id).data.tags["mlflow.note.content"]
        assert note.count(f"**finished** after {STEPS} steps") == 1, note

        # again: nothing to sync, nothing changed
        r = run_cli("track", "sync", str(run_dir), cwd=tmp_path)
        assert r.returncode == 0 and "nothing to sync" in r.stdout, r.stdout + r.stderr
        assert _state(client, run_id) == after
        print(f"train+sync: {time.monotonic() - t0:.0f}s; MLflow had {len(before['loss_d'])}/{len(steps)} steps")
    finally:
        server.stop()


def test_sync_refuses_what_is_no_tracked_run(tmp_path):
    (tmp_path / "plain" / "distgan").mkdir(parents=True)
    r = run_cli("track", "sync", str(tmp_path / "plain"), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is not a tracked run: it has no distgan/mlflow.json" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    saved = tmp_path / "plain" / "distgan" / "mlflow.json"
    saved.write_text('{"tracking_uri": "http://127.0.0.1:9", "run_id": "abc", "experiment_id": "1"}')
    r = run_cli("track", "sync", str(tmp_path / "plain"), "--tracking-uri", "http://127.0.0.1:10", cwd=tmp_path)
    assert r.returncode == 2 and "is not this run's tracking URI http://127.0.0.1:9" in r.stderr, r.stderr
    r = run_cli("track", "sync", str(tmp_path / "plain"), cwd=tmp_path)  # no pending file: done already
    assert r.returncode == 0 and "nothing to sync" in r.stdout, r.stdout + r.stderr
