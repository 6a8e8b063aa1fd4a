"""Submit training, evaluation or the serving pool to a Ray cluster as a Ray job (`ray job submit`).

    python launchers/submit.py train -- trainer.num_workers=4 trainer.use_gpu=true
    python launchers/submit.py evaluate --gpus 1 -- /home/ubuntu/rlhf_rm_outputs/train/RUN/checkpoint
    python launchers/submit.py serve -- /home/ubuntu/rlhf_rm_outputs/train/RUN/checkpoint num_replicas=2
    python launchers/submit.py train --dry-run -- data.limit=256     # print the command, submit nothing

Everything after `--` reaches the module unchanged (Hydra overrides for train/evaluate, serve keys for
serve). The repository is uploaded as the job's working directory (without .venv, outputs, .git, ...);
the cluster must already have the dependencies installed (cluster.yaml does that).
Address: --address, else $RAY_ADDRESS, else http://127.0.0.1:8265 (the dashboard, e.g. forwarded by
`ray dashboard cluster.yaml`). Token auth: the cluster's token in ~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH
or $RAY_AUTH_TOKEN is sent along (RAY_AUTH_MODE=token unless you set RAY_AUTH_MODE yourself).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODULES = {"train": "rlhf_rm.train", "evaluate": "rlhf_rm.evaluate", "serve": "rlhf_rm.serve"}

# Never uploaded: environments, run outputs, VCS data, weights. (Ray also honours .gitignore/.rayignore;
# listing them here keeps the upload small even from a checkout without our .gitignore.)
UPLOAD_EXCLUDES = [".git", ".venv", "venv", "outputs", "multirun", "wandb", ".pytest_cache", "**/__pycache__",
                   "*.safetensors", "*.gguf", "*.pt", "*.bin", ".ci"]

# Default output root on the head node, resolved there by Hydra (not on the submitting machine).
# Multi-node training needs a directory every node sees (e.g. an EFS/NFS mount): pass --output-root.
DEFAULT_OUTPUT_ROOT = "${oc.env:HOME}/rlhf_rm_outputs"
# A cluster job's failure budget: a lost node (spot reclaim, hardware) restarts the worker group from the latest
# checkpoint up to this many times, on the nodes left or on one the autoscaler adds. (Locally the default stays 0:
# there a failure is a bug, and retrying it only repeats it.)
DEFAULT_MAX_FAILURES = 3


def has_override(args: list[str], key: str) -> bool:
    return any(a.lstrip("+~").split("=", 1)[0] == key for a in args if "=" in a)


def job_command(job: str, args: list[str], python: str, output_root: str, stamp: str,
                run_name: str | None = None) -> list[str]:
    """The entrypoint argv. Adds defaults a cluster job needs, never overriding what the user passed."""
    command = [python, "-m", MODULES[job], *args]
    if job == "train" and run_name and not has_override(args, "run_name"):
        command.append(f"run_name={run_name}")  # chosen here, so the resume command can be printed at submit
    if job in ("train", "evaluate"):
        if not has_override(args, "hydra.run.dir"):
            command.append(f"hydra.run.dir={output_root}/{job}/{stamp}")
    if job == "train" and not has_override(args, "ray.address"):
        command.append("ray.address=auto")  # the job's driver joins the cluster it runs on
    if job == "train" and not has_override(args, "trainer.storage_path"):
        # The job's cwd is a throwaway copy of the upload: Ray Train checkpoints written there (the default
        # outputs/ray) would be lost with it, and a resubmission could not resume from them.
        command.append(f"trainer.storage_path={output_root}/ray")
    if job == "train" and not has_override(args, "trainer.max_failures"):
        command.append(f"trainer.max_failures={DEFAULT_MAX_FAILURES}")
    if job == "serve":
        for key, value in (("ray_address", "auto"), ("detach", "true")):
            if not has_override(args, key):
                command.append(f"{key}={value}")
    return command


# Names that hold credentials. Ray records a job's runtime env in its job table (`ray job list` shows it to
# anyone who can reach the dashboard), so such values must reach jobs through the nodes' environment instead.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
SECRETS_FILE = "~/.rlhf_rm/secrets.env"  # cluster.yaml file-mounts it on every node; `ray start` exports it


def runtime_env(env_names: list[str]) -> dict:
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    for name in env_names:
        if SECRET_NAME.search(name):
            raise SystemExit(
                f"--env {name}: looks like a secret, and Ray keeps every job's runtime env in its job table. "
                f"Put `{name}=...` in {SECRETS_FILE} on your machine, then `ray up cluster.yaml -y`: its file_mounts "
                f"copy the file to every node (nodes added later too) and every node's `ray start` exports it, so "
                f"jobs inherit it (docs/cluster.md, Secrets).")
        if name not in os.environ:
            raise SystemExit(f"--env {name}: not set in this shell")
        env_vars[name] = os.environ[name]
    return {"excludes": UPLOAD_EXCLUDES, "env_vars": env_vars}


@contextmanager
def runtime_env_file(env_names: list[str]):
    """The runtime env in a file only we can read, removed once submitted: forwarded values (--env, e.g.
    WANDB_PROJECT) never appear on a command line (`ps`), in the printed command or in the entrypoint
    Ray records for the job. Secrets are refused by runtime_env(): Ray records the runtime env itself."""
    handle, path = tempfile.mkstemp(prefix="rlhf_rm_runtime_env_", suffix=".yaml")  # mode 0600
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(runtime_env(env_names), out)  # JSON is YAML
        yield path
    finally:
        os.unlink(path)


def ray_executable() -> str:
    """The `ray` CLI beside this interpreter (a venv not on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else "ray"


def submit_command(opts: argparse.Namespace, entrypoint: list[str], runtime_env_path: str = "RUNTIME_ENV_FILE"
                   ) -> list[str]:
    command = [ray_executable(), "job", "submit", "--address", opts.address, "--working-dir", str(opts.working_dir),
               "--runtime-env", runtime_env_path]
    if opts.submission_id:
        command += ["--submission-id", opts.submission_id]
    if opts.gpus:
        command += ["--entrypoint-num-gpus", f"{opts.gpus:g}"]
    if opts.no_wait or opts.job == "serve" and not opts.wait:
        command.append("--no-wait")
    return [*command, "--", *entrypoint]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="launchers/submit.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=sorted(MODULES))
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265",
                        help="Ray dashboard/job server address")
    parser.add_argument("--working-dir", default=str(REPO), help="uploaded as the job's working directory")
    parser.add_argument("--python", default="python", help="interpreter on the cluster (default: python on PATH)")
    parser.add_argument("--output-root", default=DEFAULT_OUTPUT_ROOT,
                        help="train/evaluate write under OUTPUT_ROOT/JOB/TIMESTAMP unless hydra.run.dir is given")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs for the entrypoint itself (evaluate on a GPU)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME",
                        help="forward this (non-secret) environment variable, e.g. WANDB_PROJECT; repeatable")
    parser.add_argument("--submission-id", default=None)
    parser.add_argument("--no-wait", action="store_true", help="return after submitting instead of tailing logs")
    parser.add_argument("--wait", action="store_true", help="serve: tail logs (default: return once submitted)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    if "--" in argv:
        split = argv.index("--")
        own, passthrough = argv[:split], argv[split + 1:]
    else:
        own, passthrough = argv, []
    return parser.parse_args(own), passthrough


def main(argv: list[str] | None = None) -> int:
    opts, passthrough = parse(sys.argv[1:] if argv is None else argv)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    run_name = f"{stamp}_{secrets.token_hex(3)}"  # rlhf_rm.config.new_run_name's form
    entrypoint = job_command(opts.job, passthrough, opts.python, opts.output_root, stamp, run_name)
    if opts.job == "train":
        print(resume_line(opts, passthrough, entrypoint), flush=True)
    forwarded = ", ".join(["TOKENIZERS_PARALLELISM", *opts.env])
    if opts.dry_run:
        runtime_env(opts.env)  # the same checks (every --env set), without writing the values anywhere
        print(shlex.join(submit_command(opts, entrypoint)), flush=True)
        print(f"runtime env: uploads {opts.working_dir}; forwards {forwarded} (values not shown)", flush=True)
        return 0
    with runtime_env_file(opts.env) as path:
        command = submit_command(opts, entrypoint, path)
        print(shlex.join(command), f"\n(runtime env forwards {forwarded}; values not shown)", flush=True)
        return subprocess.run(command, env=submit_env()).returncode


def resume_line(opts: argparse.Namespace, passthrough: list[str], entrypoint: list[str]) -> str:
    """`run_name: NAME` and the submission that resumes this run from its latest checkpoint (same storage)."""
    pinned = [a for a in entrypoint if a.split("=", 1)[0] in ("run_name", "trainer.storage_path")]
    kept = [a for a in passthrough if not has_override([a], "run_name") and not has_override([a], "trainer.storage_path")]
    name = next(a.split("=", 1)[1] for a in pinned if a.startswith("run_name="))
    command = ["python", "launchers/submit.py", "train", "--address", opts.address, "--", *kept, *pinned]
    return f"run_name: {name}\nresume:   {shlex.join(command)}"


def submit_env() -> dict:
    """Environment for `ray job submit`. RAY_ADDRESS would only repeat --address, so it is dropped.
    Ray clusters started where a token exists enforce token auth, but the CLI sends the token only
    when RAY_AUTH_MODE=token: set it when a token is at hand and the caller did not choose a mode."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    token_file = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in env and (env.get("RAY_AUTH_TOKEN") or token_file.exists()):
        env["RAY_AUTH_MODE"] = "token"
    return env


if __name__ == "__main__":
    raise SystemExit(main())
