"""`distgan submit`, `distgan jobs` and `distgan tracking-server` on real components: a two-node
Ray cluster started from the CLI (`ray start --head` + `ray start --address`, own temp dir and
ports, token auth), a real MLflow server; and cluster.yaml through Ray's own config validation."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO, free_port, read_json, run_cli, stop_server

GRID25 = str(REPO / "jobs" / "grid25.yaml")
SHORT = [
    "--set",
    "train.steps=200",
    "--set",
    "train.eval_every=100",
    "--set",
    "train.checkpoint_every=100",
    "--set",
    "train.final_eval_seeds=2",
]


WORKER_PORTS = range(47100, 47700)  # the nodes' worker port ranges below


def _free_port() -> int:
    """A free port outside the worker port ranges: Ray refuses a component port inside them."""
    while (port := free_port()) in WORKER_PORTS:
        pass
    return port


class LocalRayCluster:
    """A head node and one worker node on this machine, started with `ray start` as a user would.
    Every process it starts carries a marker in its environment (Ray workers and job drivers inherit
    the raylet's); `stop` ends exactly those processes by PID (never `ray stop`, which kills by name)."""

    def __init__(self, temp_dir: str, head_cpus: int = 1, worker_cpus: int = 2):
        self.temp_dir, self.head_cpus, self.worker_cpus = temp_dir, head_cpus, worker_cpus
        self.marker = uuid.uuid4().hex
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # The cluster's own token: `ray start` with token auth needs one, and a fresh machine has no
        # ~/.ray/auth_token (nor should a test write there).
        self.token_path = os.path.join(temp_dir, "auth_token")
        with open(self.token_path, "w") as f:
            f.write(uuid.uuid4().hex + uuid.uuid4().hex)
        self._saved_token_path = None

    def _ray_start(self, *args: str, temp_dir: str) -> None:
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            "DISTGAN_TEST_CLUSTER": self.marker,
        }
        r = subprocess.run(
            [
                "ray",
                "start",
                *args,
                "--temp-dir",
                temp_dir,
                "--node-ip-address",
                "127.0.0.1",
                "--disable-usage-stats",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def start(self) -> LocalRayCluster:
        """Start both nodes; until `stop`, clients started from this process use the cluster's token."""
        self._saved_token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        os.environ["RAY_AUTH_TOKEN_PATH"] = self.token_path
        self._ray_start(
            "--head",
            "--port",
            str(self.gcs_port),
            "--num-cpus",
            str(self.head_cpus),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--ray-client-server-port",
            str(_free_port()),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--min-worker-port",
            "47100",
            "--max-worker-port",
            "47399",
            temp_dir=self.temp_dir,
        )
        self._ray_start(
            "--address",
            f"127.0.0.1:{self.gcs_port}",
            "--num-cpus",
            str(self.worker_cpus),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--min-worker-port",
            "47400",
            "--max-worker-port",
            "47699",
            # a node's own temp dir, as on separate machines: two nodes sharing one would share its
            # runtime_resources, where each node's pip plugin builds (and deletes) the same virtualenv
            temp_dir=os.path.join(self.temp_dir, "node2"),
        )
        return self

    def processes(self) -> list[psutil.Process]:
        mine = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("DISTGAN_TEST_CLUSTER") == self.marker:
                    mine.append(p)
            except (psutil.Error, OSError):
                pass
        return mine

    def stop(self) -> None:
        if os.environ.get("RAY_AUTH_TOKEN_PATH") == self.token_path:
            if self._saved_token_path is None:
                os.environ.pop("RAY_AUTH_TOKEN_PATH")
            else:
                os.environ["RAY_AUTH_TOKEN_PATH"] = self._saved_token_path
        for _ in range(3):  # a dying raylet may still start a worker: sweep until none is left
            procs = self.processes()
            if not procs:
                return
            for p in procs:
                try:
                    p.terminate()
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=15)
            for p in alive:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def cluster():
    import tempfile

    c = LocalRayCluster(tempfile.mkdtemp(prefix="dgsub-", dir="/tmp"))
    try:
        yield c.start()
    finally:
        c.stop()
    assert not c.processes()
    shutil.rmtree(c.temp_dir, ignore_errors=True)


def _submit(cluster, *args, cwd, env=None, timeout=600):
    return run_cli("submit", *args, "--address", cluster.address, cwd=cwd, env=env, timeout=timeout)


def _jobs(cluster, *args, cwd, env=None):
    return run_cli("jobs", *args, "--address", cluster.address, cwd=cwd, env=env, timeout=120)


def _job_ids(cluster, cwd) -> list[str]:
    r = _jobs(cluster, "list", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return [line.split()[0] for line in r.stdout.splitlines() if not line.startswith("no jobs")]


# --- without a cluster --------------------------------------------------------------------------


def _cluster_config(tree: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before any cloud call: merge the provider's defaults, check the schema.
    config = prepare_config(copy.deepcopy(tree))
    validate_config(config)
    return config


def test_cluster_yaml_passes_rays_validation():
    tree = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = _cluster_config(tree)
    nodes = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [n for n in nodes if n != config["head_node_type"]]
    assert gpu_types and all(nodes[n]["max_workers"] >= nodes[n]["min_workers"] for n in gpu_types)
    head_cmds = " ".join(config["head_start_ray_commands"])
    assert "distgan tracking-server --host 0.0.0.0" in head_cmds and "s3://" in head_cmds
    # the exposed tracking server asks for a login: its admin password comes from a mounted file
    assert "--auth" in head_cmds and "--insecure" not in head_cmds
    assert 'MLFLOW_AUTH_ADMIN_PASSWORD="$(cat ~/.distgan/mlflow_admin_password)"' in head_cmds
    assert config["file_mounts"]["/home/ray/.distgan/mlflow_admin_password"] == "~/.distgan/mlflow_admin_password"
    assert any("pip install" in c and "distgan" in c for c in config["setup_commands"])


@pytest.mark.parametrize("breakage", ["no node_config", "unknown key", "unknown head type"])
def test_broken_cluster_yaml_fails_validation(breakage):
    import jsonschema

    tree = yaml.safe_load((REPO / "cluster.yaml").read_text())
    if breakage == "no node_config":
        del tree["available_node_types"]["gpu_1x"]["node_config"]
    elif breakage == "unknown key":
        tree["available_node_types"]["gpu_1x"]["max_workerz"] = 4
    else:
        tree["head_node_type"] = "cpu_head"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _cluster_config(tree)


def test_nothing_listening_is_exit_2_within_seconds(tmp_path):
    port = free_port()  # bound and released: nothing listens there now
    t0 = time.monotonic()
    r = run_cli("submit", GRID25, "--address", f"http://127.0.0.1:{port}", cwd=tmp_path, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    assert took < 10, took
    assert f"no Ray dashboard answers at http://127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_local_sqlite_store_refused_for_a_remote_cluster(tmp_path):
    # refused before any connection: a remote head cannot see this machine's SQLite file
    r = run_cli(
        "submit",
        GRID25,
        "--address",
        "http://10.0.0.7:8265",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 2 and "is a SQLite file on this machine" in r.stderr


RUNTIME_ENV_ERRORS = {
    # file content (None: no such file), extra CLI args, the one line expected
    "missing file": (None, [], "cannot read it (No such file or directory)"),
    "bad YAML": ("pip: [a\n", [], "is not valid YAML or JSON at line 2, column 1"),
    "not a mapping": ("- pip\n", [], "must be a mapping of runtime env fields"),
    "unknown key": ("pipp: [a]\n", [], "unknown runtime env field(s) pipp; Ray knows conda, config, container"),
    "pip and conda": (
        "pip: [a]\nconda: {dependencies: [b]}\n",
        [],
        "The 'pip' field, 'uv' field, and 'conda' field of runtime_env cannot be specified at the same time",
    ),
    "env var not a string": ("env_vars: {A: 1}\n", [], "runtime_env['env_vars'] must be of type Dict[str, str]"),
    "tracking URI clash": (
        "env_vars: {MLFLOW_TRACKING_URI: 'http://10.0.0.8:5000'}\n",
        ["--tracking-uri", "http://10.0.0.7:5000"],
        "sets env var MLFLOW_TRACKING_URI=http://10.0.0.8:5000, but this job needs "
        "MLFLOW_TRACKING_URI=http://10.0.0.7:5000 (pass --tracking-uri instead)",
    ),
    "setup hook": (
        "worker_process_setup_hook: mypkg.setup\n",
        [],
        "drop worker_process_setup_hook: distgan's job sets its own",
    ),
    "image_uri with --ship-code": (
        "image_uri: 'docker.io/me/gan:1'\n",
        ["--ship-code", "--no-tracking"],
        "with distgan's own settings: The 'image_uri' field currently cannot be used together with other fields",
    ),
}


@pytest.mark.parametrize("case", list(RUNTIME_ENV_ERRORS))
def test_bad_runtime_env_is_exit_2_before_connecting(case, tmp_path):
    """Refused before any connection: the address is a closed port, so a check that ran after
    connecting would answer "no Ray dashboard answers" instead (and nothing can have been sent)."""
    text, args, expected = RUNTIME_ENV_ERRORS[case]
    env_file = tmp_path / "env.yaml"
    if text is not None:
        env_file.write_text(text)
    port = free_port()
    r = run_cli(
        "submit", GRID25, "--address", f"http://127.0.0.1:{port}", "--runtime-env", str(env_file), *args, cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_tracking_server_serves_with_lean_settings(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distgan",
            "tracking-server",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--artifacts-destination",
            str(tmp_path / "art"),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "tracking server did not come up"
                time.sleep(0.5)
        # exec'd: the server is the process we started, with one worker and job execution off
        me = psutil.Process(proc.pid)
        assert (
            "mlflow" in " ".join(me.cmdline())
            and "--workers" in me.cmdline()
            and me.cmdline()[me.cmdline().index("--workers") + 1] == "1"
        )
        assert me.environ()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    finally:
        stop_server(proc)


# --- on a two-node cluster ----------------------------------------------------------------------


@pytest.mark.cluster
def test_submit_follow_trains_tracks_and_registers(cluster, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "submit.json"
    experiment = f"submit-{tmp_path.name}"
    # two workers SPREAD: one on the head (1 CPU), one on the worker node, DDP across the nodes
    r = _submit(
        cluster,
        GRID25,
        "--follow",
        "--register",
        "submit-gan",
        "--tracking-uri",
        mlflow_server.uri,
        "--experiment",
        experiment,
        "--workers",
        "2",
        "--set",
        "scaling.placement=SPREAD",
        *SHORT,
        "--workdir",
        str(tmp_path / "job"),
        "--json-out",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = read_json(out)
    job_id = doc["job_id"]
    assert doc["job_status"] == "SUCCEEDED" and doc["status"] == "finished" and doc["steps"] == 200
    assert len(set(doc["node_ids"])) == 2 and doc["ranks_in_sync"] is True
    assert "step 200/200 | loss_d" in r.stdout and '"mlflow_run_id"' not in r.stdout  # the result document is held back

    # the run is in MLflow, finished, with its generator registered
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(doc["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["scaling.workers"] == "2"
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert doc["model_uri"] == "models:/submit-gan/1"
    version = client.get_model_version("submit-gan", "1")
    assert version.run_id == doc["mlflow_run_id"]

    # the jobs commands see it
    logs = _jobs(cluster, "logs", job_id, cwd=tmp_path)
    assert logs.returncode == 0 and re.search(r"step 100/200 \| loss_d .* img/s", logs.stdout), logs.stdout[-2000:]
    status = _jobs(cluster, "status", job_id, cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED")
    assert job_id in _job_ids(cluster, tmp_path)


@pytest.mark.cluster
def test_jobs_stop_stops_a_running_job(cluster, tmp_path):
    r = _submit(
        cluster,
        GRID25,
        "--no-tracking",
        "--set",
        "train.steps=100000",
        "--set",
        "train.eval_every=50",
        "--workdir",
        str(tmp_path / "job"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    job_id = r.stdout.strip()
    # `jobs logs --follow` streams the progress lines while the job runs, and ends with it
    follower = subprocess.Popen(
        [sys.executable, "-m", "distgan", "jobs", "logs", job_id, "--follow", "--address", cluster.address],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in follower.stdout:
            seen.append(line)
            if re.search(r"step\s+50/100000 \|", line):
                break
        else:
            pytest.fail("".join(seen)[-3000:])
        stopped = _jobs(cluster, "stop", job_id, cwd=tmp_path)
        assert stopped.returncode == 0 and stopped.stdout.strip() == f"{job_id}: STOPPED", (
            stopped.stdout + stopped.stderr
        )
        follower.stdout.read()
        assert follower.wait(60) == 1  # following a job that did not succeed exits 1
    finally:
        if follower.poll() is None:
            follower.kill()
    status = _jobs(cluster, "status", job_id, cwd=tmp_path)
    assert status.stdout.startswith("STOPPED"), status.stdout


@pytest.mark.cluster
def test_search_spec_runs_as_a_search_job(cluster, tmp_path):
    out = tmp_path / "search.json"
    # --ship-code: this checkout's package travels with the job (py_modules) and is what runs there
    r = _submit(
        cluster,
        str(REPO / "jobs" / "search-grid25.yaml"),
        "--follow",
        "--no-tracking",
        "--ship-code",
        "--set",
        "search.trials=2",
        "--set",
        "search.max_concurrent=1",
        "--set",
        "search.asha.grace_period=50",
        "--set",
        "train.steps=100",
        "--set",
        "train.eval_every=50",
        "--set",
        "train.checkpoint_every=50",
        "--set",
        "train.final_eval_seeds=1",
        "--workdir",
        str(tmp_path / "job"),
        "--json-out",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = read_json(out)
    assert doc["job_status"] == "SUCCEEDED" and doc["status"] == "finished"
    assert len(doc["trials"]) == 2 and doc["best"]
    assert doc["entrypoint"].split("-m distgan ")[1].startswith("search search-grid25.yaml")
    from distgan.runtime import jobs as submit

    job = submit.connect(cluster.address).client.get_job_info(doc["job_id"])
    assert len(job.runtime_env["py_modules"]) == 1 and job.runtime_env["env_vars"]["MLFLOW_DISABLE_TELEMETRY"] == "true"


@pytest.mark.cluster
def test_bad_spec_is_refused_before_anything_is_sent(cluster, tmp_path):
    before = _job_ids(cluster, tmp_path)
    r = _submit(cluster, GRID25, "--set", "optim.lr_gg=1e-3", cwd=tmp_path)
    assert r.returncode == 2 and "lr_gg" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: grid25}\ntrain: {steps: -5}\n")
    r = _submit(cluster, str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "train.steps" in r.stderr
    assert _job_ids(cluster, tmp_path) == before


@pytest.mark.cluster
def test_missing_or_wrong_token_is_a_clear_exit_2(cluster, tmp_path):
    # no token anywhere this client looks (HOME without ~/.ray/auth_token, no RAY_AUTH_TOKEN)
    env = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": "", "RAY_AUTH_MODE": ""}
    r = _jobs(cluster, "list", cwd=tmp_path, env=env)
    assert (
        r.returncode == 2
        and "requires an auth token and none was found" in r.stderr
        and "ray get-auth-token" in r.stderr
    )
    r = _jobs(cluster, "list", cwd=tmp_path, env={**env, "RAY_AUTH_MODE": "token"})
    assert r.returncode == 2 and "RAY_AUTH_MODE=token but no Ray auth token" in r.stderr
    r = _jobs(cluster, "list", cwd=tmp_path, env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert r.returncode == 2 and "refused the auth token from RAY_AUTH_TOKEN" in r.stderr


@pytest.mark.cluster
def test_plain_ray_job_submit_with_env_vars_runs_a_distgan_job(cluster, mlflow_server, tmp_path):
    """Ray's own CLI, the job's env vars in its runtime env (which distgan's driver must not
    declare again: Ray refuses that merge), `distgan train --address auto` as the entrypoint."""
    job_id = f"plain-{uuid.uuid4().hex[:8]}"
    renv = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_DISABLE_TELEMETRY": "true"}}
    entrypoint = [sys.executable, "-m", "distgan", "train", GRID25, "--address", "auto", *SHORT,
                  "--set", f"train.storage_path={tmp_path}", "--experiment", "plain-ray-job"]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    r = subprocess.run(
        ["ray", "job", "submit", "--address", cluster.address, "--submission-id", job_id,
         "--runtime-env-json", json.dumps(renv), "--", *entrypoint],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = subprocess.run(["ray", "job", "status", "--address", cluster.address, job_id], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0 and "succeeded" in (status.stdout + status.stderr).lower()
    logs = r.stdout + r.stderr
    assert "finished: 200 steps" in logs and f"at {mlflow_server.uri}" in logs  # tracked where the job env said
    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("plain-ray-job") is not None


def _probe_wheel(tmp_path: Path, value: str) -> Path:
    """A one-module package as a wheel, written here (no index, no build backend needed). Its .pth
    file makes every Python process of the environment it is installed in import the module at
    start-up, and the module writes a record of that process (its command line, the module's VALUE,
    the env var RTENV_PROBE_TOKEN) to the directory in RTENV_PROBE_OUT."""
    import base64
    import hashlib
    import zipfile

    module = (
        "import json, os\n"
        f"VALUE = {value!r}\n"
        "out = os.environ.get('RTENV_PROBE_OUT')\n"
        "if out:\n"
        "    with open(f'{out}/{os.getpid()}.json', 'w') as f:\n"
        "        cmdline = open('/proc/self/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        "        json.dump({'cmdline': cmdline, 'value': VALUE, 'token': os.environ.get('RTENV_PROBE_TOKEN')}, f)\n"
    )
    info = "distgan_rtenv_probe-1.0.dist-info"
    files = {
        "distgan_rtenv_probe.py": module,
        "distgan_rtenv_probe.pth": "import distgan_rtenv_probe\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: distgan-rtenv-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
        f"{len(text.encode())}"
        for name, text in files.items()
    ]
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    wheel = tmp_path / "distgan_rtenv_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


@pytest.mark.cluster
def test_runtime_env_file_is_merged_with_distgans(cluster, tmp_path):
    """The user's runtime env (a pip package, env vars) merged with distgan's.

    Why this proves the job ran in the merged env: Ray's pip plugin installs every `pip` entry
    before the job starts and fails the job when one cannot be installed, so SUCCEEDED with the
    probe's wheel listed means it was installed. The probe's .pth file runs in every Python process
    started in that environment and records the process's command line, the probe's VALUE (random:
    only this build has it) and the env var from the same file: a record from the `distgan train`
    driver shows the job's own process importing the package with the user's env var set. The
    Jobs API's record of the job shows the user's entries next to distgan's own env vars, and the
    user's value where the user overrode one of distgan's MLflow settings."""
    value, token = uuid.uuid4().hex, uuid.uuid4().hex
    wheel = _probe_wheel(tmp_path, value)
    seen = tmp_path / "seen"
    seen.mkdir()
    env_file = tmp_path / "env.yaml"
    env_file.write_text(
        yaml.safe_dump(
            {
                "pip": [str(wheel)],
                "env_vars": {
                    "RTENV_PROBE_TOKEN": token,
                    "RTENV_PROBE_OUT": str(seen),
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                },
            }
        )
    )
    out = tmp_path / "submit.json"
    r = _submit(
        cluster,
        GRID25,
        "--follow",
        "--no-tracking",
        "--runtime-env",
        str(env_file),
        "--set",
        "train.steps=50",
        "--set",
        "train.eval_every=50",
        "--set",
        "train.checkpoint_every=50",
        "--set",
        "train.final_eval_seeds=1",
        "--workdir",
        str(tmp_path / "job"),
        "--json-out",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = read_json(out)
    assert doc["job_status"] == "SUCCEEDED" and doc["status"] == "finished" and doc["steps"] == 50

    records = [json.loads(f.read_text()) for f in seen.glob("*.json")]
    drivers = [rec for rec in records if "-m distgan train grid25.yaml" in rec["cmdline"]]
    assert len(drivers) == 1, records
    assert drivers[0]["value"] == value and drivers[0]["token"] == token

    from distgan.runtime import jobs

    renv = jobs.connect(cluster.address).client.get_job_info(doc["job_id"]).runtime_env
    assert renv["pip"]["packages"] == [str(wheel)], renv
    env_vars = renv["env_vars"]
    assert env_vars["RTENV_PROBE_TOKEN"] == token and env_vars["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert env_vars["MLFLOW_DISABLE_TELEMETRY"] == "true" and env_vars["RAY_AUTH_MODE"] == "token"  # distgan's


def _job_python_seen_from(python: str, site_packages: str | None, tmp_path) -> str:
    """What the entrypoint's interpreter expression prints in a shell whose parent is `python`
    (as the job's shell is the supervisor's child), that parent having loaded ray/_raylet.so
    from `site_packages` as a Ray worker has."""
    from distgan.commands.submit import DEFAULT_PYTHON

    script = tmp_path / "parent.py"
    script.write_text(
        "import ctypes, subprocess, sys\n"
        "if sys.argv[1] != '-':\n"
        "    ctypes.CDLL(sys.argv[1] + '/ray/_raylet.so')\n"
        "print(subprocess.run(['sh', '-c', 'echo ' + sys.argv[2]], capture_output=True, text=True).stdout.strip())\n"
    )
    r = subprocess.run([python, str(script), site_packages or "-", DEFAULT_PYTHON], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_job_python_is_the_supervisors_virtualenv_not_its_base_interpreter(tmp_path):
    """A virtualenv's python is a symlink to the base interpreter: /proc/PID/exe names the base
    one, where distgan is not installed (the job died with 'No module named distgan')."""
    base = os.path.realpath(sys._base_executable)
    venv = tmp_path / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert (venv / "bin" / "python").is_symlink()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = venv / "lib" / version / "site-packages"
    (site / "ray").mkdir(parents=True)
    # any shared library stands in for Ray's extension module: what matters is where it is mapped from
    shutil.copy(
        next(Path(base).resolve().parents[1].glob(f"lib/{version}/lib-dynload/_json*.so")), site / "ray/_raylet.so"
    )
    assert _job_python_seen_from(str(venv / "bin" / "python"), str(site), tmp_path) == str(venv / "bin" / "python")
    # not in a virtualenv: the interpreter itself
    assert os.path.realpath(_job_python_seen_from(base, None, tmp_path)) == base
