"""Cluster operations: cluster.yaml against Ray's schema, the launcher's commands, and a real
`ray job submit` of a tiny training run to a local Ray cluster started with `ray start --head`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import FIXTURES

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _load_launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rlhf_rm_launcher_submit", REPO / "launchers" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit = _load_launcher()  # launchers/submit.py (a script, not a package module)


# -- cluster.yaml ----------------------------------------------------------------------------------

def test_cluster_yaml_matches_ray_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # our file as written: no unknown or misspelt keys
    validate_config(prepare_config(config))  # after Ray merges its AWS defaults, as `ray up` does

    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    assert any(n["resources"].get("GPU", 0) >= 1 for n in nodes.values()), "no GPU worker type"
    assert nodes[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    setup = " && ".join(config["setup_commands"])
    assert setup.index("torch==") < setup.index("-e ~/rlhf_rm"), "torch must be installed before the project"
    assert config["file_mounts"]["~/rlhf_rm"] == "."


# -- launcher --------------------------------------------------------------------------------------

def test_launcher_passes_overrides_through_and_adds_cluster_defaults():
    opts, passthrough = submit.parse(["train", "--address", "http://127.0.0.1:1", "--", "data.limit=8",
                                      "data.dev=[a, b]"])
    command = submit.submit_command(opts, submit.job_command("train", passthrough, "python", "/out", "T"))
    entry = command[command.index("--") + 1:]
    assert entry == ["python", "-m", "rlhf_rm.train", "data.limit=8", "data.dev=[a, b]",
                     "hydra.run.dir=/out/train/T", "ray.address=auto", "trainer.storage_path=/out/ray",
                     "trainer.max_failures=3"]
    env = submit.runtime_env([])
    assert {".venv", "outputs", ".git"} <= set(env["excludes"])

    # What the user set wins over the defaults; serve deploys detached and returns at once.
    user_set = ["ray.address=ray://h:10001", "hydra.run.dir=/r", "trainer.storage_path=s3://b/rm",
                "trainer.max_failures=0"]
    assert submit.job_command("train", user_set, "python", "/out", "T") == ["python", "-m", "rlhf_rm.train", *user_set]
    opts, passthrough = submit.parse(["serve", "--", "/ckpt", "num_replicas=2"])
    command = submit.submit_command(opts, submit.job_command("serve", passthrough, "python", "/out", "T"))
    assert "--no-wait" in command
    assert command[command.index("--") + 1:] == ["python", "-m", "rlhf_rm.serve", "/ckpt", "num_replicas=2",
                                                 "ray_address=auto", "detach=true"]
    opts, passthrough = submit.parse(["evaluate", "--gpus", "1", "--", "/ckpt"])
    command = submit.submit_command(opts, submit.job_command("evaluate", passthrough, "python", "/out", "T"))
    assert command[command.index("--entrypoint-num-gpus") + 1] == "1"
    assert command[command.index("--") + 1:] == ["python", "-m", "rlhf_rm.evaluate", "/ckpt",
                                                 "hydra.run.dir=/out/evaluate/T"]


def test_launcher_prints_the_submission_that_resumes_the_run(capsys):
    """A train job gets a run_name chosen at submit and a failure budget; the printed `resume:` submission, parsed
    again, produces the same run_name and checkpoint storage (so it continues, not starts over)."""
    import re
    import shlex

    assert submit.main(["train", "--address", "http://127.0.0.1:1", "--dry-run", "--", "data.limit=8"]) == 0
    printed = capsys.readouterr().out
    [name] = re.findall(r"^run_name: (\S+)$", printed, re.M)
    [resume] = re.findall(r"^resume: +(.+)$", printed, re.M)
    submitted = shlex.split(printed.splitlines()[-2])
    assert f"run_name={name}" in submitted and "trainer.max_failures=3" in submitted
    argv = shlex.split(resume)
    assert argv[:3] == ["python", "launchers/submit.py", "train"]
    opts, passthrough = submit.parse(argv[2:])
    again = submit.job_command(opts.job, passthrough, "python", opts.output_root, "LATER", "another_name")
    for pinned in (f"run_name={name}", "data.limit=8"):
        assert pinned in again
    assert [a for a in again if a.startswith("trainer.storage_path=")] == [
        a for a in submitted if a.startswith("trainer.storage_path=")]


def test_train_prints_the_command_that_resumes_it(tmp_path):
    from rlhf_rm.config import compose, settings_from
    from rlhf_rm.train import resume_line

    settings = settings_from(compose(["data.limit=8", "run_name=abc"]))
    typed = ["data.limit=8", "run_name=old", "hydra.run.dir=/elsewhere"]
    line = resume_line(settings, tmp_path / "run", typed)
    assert line.splitlines()[0] == "run_name: abc"
    command = line.splitlines()[1].split()[1:]
    assert command == ["python", "-m", "rlhf_rm.train", "data.limit=8", "run_name=abc",
                       f"trainer.storage_path={Path('outputs/ray').resolve()}", f"hydra.run.dir={tmp_path / 'run'}"]


def test_launcher_never_puts_secret_values_on_a_command_line_or_in_job_metadata(monkeypatch, capsys):
    """--env WANDB_API_KEY used to put the key's value into --runtime-env-json (visible in `ps` and the printed
    command), then into a runtime-env file — which Ray still records in its job table for anyone who can list
    jobs. A credential-looking name is now refused before anything is submitted (it reaches jobs through the
    nodes' ~/.rlhf_rm/secrets.env, which cluster.yaml's `ray start` exports); other names are forwarded privately."""
    secret = "wandb-secret-value-123"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_PROJECT", "rm-project")
    submitted = []
    monkeypatch.setattr(submit.subprocess, "run", lambda command, env: submitted.append(command))
    for argv in (["train", "--dry-run", "--env", "WANDB_API_KEY"], ["train", "--env", "WANDB_API_KEY"],
                 ["serve", "--env", "RLHF_RM_SERVE_TOKEN"]):
        monkeypatch.setenv("RLHF_RM_SERVE_TOKEN", secret)
        with pytest.raises(SystemExit, match="looks like a secret.*secrets.env"):
            submit.main([*argv, "--", "data.limit=8"])
    assert not submitted and secret not in capsys.readouterr().out

    seen = {}

    def record_submit(command, env):
        runtime_env = Path(command[command.index("--runtime-env") + 1])
        seen.update(command=command, mode=runtime_env.stat().st_mode & 0o777, file=runtime_env,
                    runtime_env=yaml.safe_load(runtime_env.read_text()))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(submit.subprocess, "run", record_submit)
    assert submit.main(["train", "--env", "WANDB_PROJECT", "--", "data.limit=8"]) == 0
    assert secret not in capsys.readouterr().out and not any(secret in part for part in seen["command"])
    assert seen["runtime_env"]["env_vars"] == {"TOKENIZERS_PARALLELISM": "false", "WANDB_PROJECT": "rm-project"}
    assert seen["mode"] == 0o600 and not seen["file"].exists()  # private to us, and removed after submitting


@pytest.mark.slow
def test_cluster_nodes_export_the_secrets_file_into_ray_start(tmp_path):
    """The one way secrets reach jobs: every node's `ray start` runs with ~/.rlhf_rm/secrets.env exported
    (and a node without the file still starts)."""
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        export = start[start.index("set -a"):start.index("ray start")]  # (ulimit needs root: not run here)
        for home, expected in ((tmp_path / "bare", ""), (tmp_path / "node", "WANDB_API_KEY=k-123")):
            if expected:
                (home / ".rlhf_rm").mkdir(parents=True, exist_ok=True)
                (home / ".rlhf_rm" / "secrets.env").write_text(expected + "\n")
            home.mkdir(exist_ok=True)
            result = subprocess.run(["bash", "-c", export + " env"], capture_output=True, text=True,
                                    env={"PATH": os.environ["PATH"], "HOME": str(home)})
            assert result.returncode == 0, result.stderr
            assert (expected in result.stdout.splitlines()) if expected else "WANDB_API_KEY" not in result.stdout


class _NodeOverShell:
    """A node provider whose "nodes" are home directories on this machine: Ray's NodeUpdater runs its commands
    there through bash (HOME = the node's home) instead of SSH. Only the transport is replaced; which files reach
    a node, and from where, is Ray's own code (the head's bootstrap config, NodeUpdater.sync_file_mounts)."""

    def __init__(self, homes: dict):
        self.homes = homes

    def prepare_for_head_node(self, config):
        return config

    def get_command_runner(self, log_prefix, node_id, *args):
        home = self.homes[node_id]
        return SimpleNamespace(run=lambda command, **_: subprocess.run(
            ["bash", "-c", command], env={"PATH": os.environ["PATH"], "HOME": str(home)}, check=True))

    def rsync_up(self, node_id):
        """rsync from the head's files (this process's HOME) to `node_id`'s home, as Ray's rsync would."""
        def sync(local_path, remote_path, **_):
            target = Path(remote_path.replace("~", str(self.homes[node_id]), 1))
            if os.path.isdir(local_path):
                shutil.copytree(local_path, target, dirs_exist_ok=True)
            else:
                shutil.copy2(local_path, target)
        return sync


@pytest.mark.slow
def test_a_node_the_autoscaler_adds_after_ray_up_gets_the_secrets_file(tmp_path, monkeypatch):
    """Secrets used to reach only the nodes running when `ray rsync-up` ran. Now cluster.yaml's file_mounts carry
    ~/.rlhf_rm/secrets.env: `ray up` writes the head's autoscaler config (Ray's _set_up_config_for_head_node),
    and the updater the autoscaler starts for a new GPU node syncs its file mounts from the head
    (NodeUpdater.sync_file_mounts); that node's `ray start` then exports the key."""
    from ray.autoscaler._private.commands import _set_up_config_for_head_node
    from ray.autoscaler._private.updater import NodeUpdater
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    config["file_mounts"] = {k: v for k, v in config["file_mounts"].items() if k != "~/rlhf_rm"}  # not the repo
    head_home, worker_home = tmp_path / "head", tmp_path / "new_gpu_node"
    (head_home / ".rlhf_rm").mkdir(parents=True)
    worker_home.mkdir()
    (head_home / ".rlhf_rm" / "secrets.env").write_text("WANDB_API_KEY=k-123\n")  # on the head since `ray up`
    (head_home / ".rlhf_rm" / "secrets.env").chmod(0o600)
    nodes = _NodeOverShell({"gpu-1": worker_home})
    _, bootstrap = _set_up_config_for_head_node(config, nodes, no_restart=False)
    head_config = json.loads(Path(bootstrap.name).read_text())  # what the head's autoscaler runs with
    assert head_config["file_mounts"]["~/.rlhf_rm/secrets.env"] == "~/.rlhf_rm/secrets.env"

    monkeypatch.setenv("HOME", str(head_home))  # the autoscaler runs on the head: its ~ is the head's
    updater = NodeUpdater(node_id="gpu-1", provider_config=head_config["provider"], provider=nodes,
                          auth_config=head_config["auth"], cluster_name=head_config["cluster_name"],
                          file_mounts=head_config["file_mounts"], initialization_commands=[], setup_commands=[],
                          ray_start_commands=[], runtime_hash="", file_mounts_contents_hash="", is_head_node=False,
                          cluster_synced_files=head_config.get("cluster_synced_files"))
    updater.sync_file_mounts(nodes.rsync_up("gpu-1"))
    arrived = worker_home / ".rlhf_rm" / "secrets.env"
    assert arrived.read_text() == "WANDB_API_KEY=k-123\n"
    chmod = next(c for c in head_config["setup_commands"] if "secrets.env" in c)
    subprocess.run(["bash", "-c", chmod], env={"PATH": os.environ["PATH"], "HOME": str(worker_home)}, check=True)
    assert arrived.stat().st_mode & 0o777 == 0o600
    start = next(c for c in head_config["worker_start_ray_commands"] if "ray start" in c)
    export = start[start.index("set -a"):start.index("ray start")]
    result = subprocess.run(["bash", "-c", export + " env"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "HOME": str(worker_home)})
    assert "WANDB_API_KEY=k-123" in result.stdout.splitlines()


# -- a real local cluster --------------------------------------------------------------------------

def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def env_without_ray_address() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def stop_own_cluster(pgid: int, grace_s: float = 10.0) -> None:
    """`ray stop` for exactly the cluster we started. Plain `ray stop` terminates every Ray process
    on the machine by name, including other people's runs and other tests' `ray.init()` clusters.
    Ours are the processes in the process group of our `ray start` plus all their descendants
    (workers and job drivers start their own sessions under the raylet)."""
    import psutil

    ours = {}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                ours[proc.pid] = proc
                ours.update({child.pid: child for child in proc.children(recursive=True)})
        except (psutil.Error, ProcessLookupError):
            pass
    for proc in ours.values():
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(ours.values()), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def start_head(temp_dir: str) -> tuple[subprocess.Popen, str, int]:
    """`ray start --head` on 127.0.0.1 with fresh ports; returns (process, output, dashboard port)."""
    (gcs, dashboard, client, agent_http, agent_grpc, runtime_env_agent, metrics, node_manager,
     object_manager) = free_ports(9)
    start = subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
         f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
         "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", "--include-dashboard=true",
         "--disable-usage-stats"],
        # A new session makes `ray start` a group leader (group id = its pid); the cluster processes it
        # leaves behind stay in that group, so they can be found and stopped by it.
        start_new_session=True, env=env_without_ray_address(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = start.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        start.kill()
        output, _ = start.communicate()
    return start, output, dashboard


@pytest.fixture(scope="module")
def local_cluster():
    """A head node on 127.0.0.1 with its own ports and temp dir. The temp dir keeps our address out of
    /tmp/ray/ray_current_cluster, so a later `ray.init()` in this session never joins (or trips on) it."""
    groups, temp_dirs = [], []
    try:
        # Ray gives the raylet a fixed 30 s to register; on a loaded machine a start can miss it. Retry.
        for _ in range(3):
            temp_dirs.append(tempfile.mkdtemp(prefix="rrm", dir="/tmp"))  # short: Ray's unix sockets live below
            start, output, dashboard = start_head(temp_dirs[-1])
            groups.append(start.pid)
            if start.returncode == 0:
                break
            stop_own_cluster(start.pid)
        assert start.returncode == 0, output
        address = f"http://127.0.0.1:{dashboard}"
        _wait_for_job_server(address, timeout_s=120)
        yield {"address": address, "temp_dir": temp_dirs[-1]}
    finally:
        for pgid in groups:
            stop_own_cluster(pgid)
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


def ray_auth_headers() -> dict:
    """`ray start` turns on token auth when a token exists (~/.ray/auth_token). We send it as a header
    instead of enabling Ray's auth mode in this process, which later `ray.init()` calls would inherit."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.exists():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=ray_auth_headers())


def _wait_for_job_server(address: str, timeout_s: float) -> None:
    # The client checks the server's version on construction.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job_client(address)
            return
        except (ConnectionError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray job server at {address} not up after {timeout_s}s: {exc}") from exc
        time.sleep(1)


@pytest.mark.slow
def test_ray_job_submit_trains_tiny_model(local_cluster, tiny_backbone, tmp_path):
    """launchers/submit.py → `ray job submit` → SUCCEEDED (one Train worker: the 2-worker DDP path is
    tests/test_train.py's; here the point is the job path), with the checkpoint and metrics.json in the
    run dir; the uploaded working dir is the repo without .venv/outputs (a few hundred KiB, not GiB)."""
    from ray.job_submission import JobStatus

    ray_address_file = Path("/tmp/ray/ray_current_cluster")
    address_before = ray_address_file.read_text() if ray_address_file.exists() else None
    run_dir = tmp_path / "run"
    submission_id = f"rlhf_rm_test_{os.getpid()}_{int(time.time())}"
    submitted = subprocess.run(
        [sys.executable, str(REPO / "launchers" / "submit.py"), "train", "--address", local_cluster["address"],
         "--python", sys.executable, "--submission-id", submission_id, "--no-wait",
         "--output-root", str(tmp_path / "out"), "--",
         f"model.path={tiny_backbone}", f"data.train={FIXTURES / 'hh_train_small.jsonl'}",
         f"data.dev={FIXTURES / 'hh_dev_small.jsonl'}", "trainer.num_workers=1", "trainer.tokens_per_worker=1200",
         "logger=none", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env_without_ray_address(), capture_output=True, text=True, timeout=180)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    client = job_client(local_cluster["address"])
    deadline = time.monotonic() + 240
    status = client.get_job_status(submission_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(submission_id)
    logs = client.get_job_logs(submission_id)
    assert status == JobStatus.SUCCEEDED, f"job {status}; last log lines:\n" + "\n".join(logs.splitlines()[-40:])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert Path(metrics["checkpoint"]) == run_dir / "checkpoint"
    assert (run_dir / "checkpoint" / "config.json").exists()
    assert (run_dir / "checkpoint" / "rlhf_rm.json").exists()
    assert 0.0 <= metrics["dev_accuracy"] <= 1.0 and metrics["dev_pairs"] == 16
    assert str(run_dir / "metrics.json") in logs  # the driver's closing lines reached the job log
    # Ray Train's checkpoints live under the output root, not in the job's throwaway working-dir copy, under the
    # run_name the launcher printed (its `resume:` submission continues from them).
    [run_name] = [line.split()[1] for line in submitted.stdout.splitlines() if line.startswith("run_name: ")]
    assert list((tmp_path / "out" / "ray" / run_name).glob("checkpoint_*")), "no checkpoint under the printed run_name"

    uploads = list(Path(local_cluster["temp_dir"]).glob("session_*/runtime_resources/working_dir_files/*"))
    assert uploads, "the job ran without an uploaded working dir"
    size = sum(f.stat().st_size for f in uploads[0].rglob("*") if f.is_file())
    assert size < 5_000_000, f"uploaded working dir is {size} bytes"
    assert not (uploads[0] / ".venv").exists() and not (uploads[0] / "outputs").exists()

    # Nothing points later ray.init() calls at this cluster.
    assert "RAY_ADDRESS" not in os.environ
    assert (ray_address_file.read_text() if ray_address_file.exists() else None) == address_before
