"""A node lost mid-run: on a local three-node cluster (a CPU-less head, two one-CPU nodes), the node
where rank 1 trains is ended (its processes SIGKILLed by PID) mid-step. The run goes on with both
workers on the node left, from the latest checkpoint, and ends at exactly `train.steps` with one
MLflow run and every eval recorded once."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import REPO, metric_steps
from mlflow.tracking import MlflowClient

from distgan.commands import train
from distgan.spec import job as config
from distgan.tracking.run import TrackingOptions

pytestmark = pytest.mark.cluster

STEPS, EVAL_EVERY, CHECKPOINT_EVERY, HOLD_AT = 200, 20, 40, 110


def _end_rank_1s_node(cluster, marker, run_dir, times: dict) -> None:
    """Once rank 1 holds at HOLD_AT (its node id in `marker`), SIGKILL that node's processes; then
    time how long until the run records an eval past the step it was lost at."""
    deadline = time.monotonic() + 300
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    node_id = marker.read_text()
    (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
    times["lost_node"] = node_id
    times["killed"] = time.monotonic()
    cluster.remove_node(node, allow_graceful=False)
    while max(metric_steps(run_dir), default=0) <= HOLD_AT and time.monotonic() < deadline:
        time.sleep(0.2)
    times["recovered"] = time.monotonic()


def test_a_lost_node_the_run_goes_on_from_its_checkpoint_on_the_node_left(tmp_path, mlflow_server, monkeypatch):
    from ray.cluster_utils import Cluster

    marker = tmp_path / "held"
    monkeypatch.setenv("DISTGAN_FAULT_HOLD_AT", f"{HOLD_AT}:1")
    monkeypatch.setenv("DISTGAN_FAULT_MARKER", str(marker))
    monkeypatch.chdir(tmp_path)
    spec = config.load_spec(
        REPO / "jobs" / "ring8.yaml",
        [
            "model.g_hidden=[64, 64]",
            "model.d_hidden=[64, 64]",
            "scaling.workers=2",
            "scaling.cpus_per_worker=0.5",  # the node left holds both workers
            "scaling.placement=SPREAD",
            f"train.steps={STEPS}",
            f"train.eval_every={EVAL_EVERY}",
            f"train.checkpoint_every={CHECKPOINT_EVERY}",
            f"train.storage_path={tmp_path}",
            "train.name=lost",
            "train.max_failures=3",  # the default, said: a lost node costs one restart
        ],
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    times: dict = {}
    try:
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        killer = threading.Thread(
            target=_end_rank_1s_node, args=(cluster, marker, tmp_path / "lost", times), daemon=True
        )
        killer.start()
        t0 = time.monotonic()
        res = train.train(
            spec,
            address=cluster.address,
            tracking=TrackingOptions(tracking_uri=mlflow_server.uri, experiment=f"lost-{tmp_path.name}"),
        ).to_json()
        wall = time.monotonic() - t0
        killer.join(30)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    assert times.get("lost_node"), "rank 1 never reached the step it was to be held at"
    assert res["status"] == "finished" and res["steps"] == STEPS, res["error"]
    # resumed from the newest checkpoint before the loss (step 80: reports at 100 came after it)
    assert res["resumed_from"] == 80
    # both ranks ended on the node left, in step
    assert len(res["node_ids"]) == 2 and len(set(res["node_ids"])) == 1 and res["node_ids"][0] != times["lost_node"]
    assert res["ranks_in_sync"] is True
    evals = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert metric_steps(tmp_path / "lost") == evals
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(f"lost-{tmp_path.name}")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == res["mlflow_run_id"] and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")] == evals
    print(
        f"node lost at step {HOLD_AT}; resumed from {res['resumed_from']}; first eval past it "
        f"{times['recovered'] - times['killed']:.1f}s after the kill; run {wall:.1f}s"
    )
