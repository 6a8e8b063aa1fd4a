"""Hydra entry point: config → typed settings → prepared data → Ray Train TorchTrainer → HF checkpoint + metrics.

    python -m rlhf_rm.train trainer.num_workers=2 loss=regularized data.limit=256

The driver only wires: rlhf_rm.config types and checks the settings, rlhf_rm.prepare turns the data
settings into prepared splits, and every worker runs the recipe in rlhf_rm.training.recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from rlhf_rm.backbone import resolve_backbone
from rlhf_rm.checkpoint.rendering import RenderingSpec
from rlhf_rm.config import RayConfig, TrainConfig, as_dict, settings_from, upgrade_overrides
from rlhf_rm.evaluation.metrics import headline, source_lines
from rlhf_rm.losses import build_loss, check_loss_fits_data
from rlhf_rm.model import load_tokenizer
from rlhf_rm.prepare import PreparedSplit, build_encoder, format_data_summary, prepare_splits
from rlhf_rm.training.progress import DriverProgress
from rlhf_rm.training.tracking import run_id


def run(cfg: DictConfig | TrainConfig, run_dir: Path) -> dict:
    """Train once; returns the final metrics (also written to run_dir/metrics.json)."""
    started = time.perf_counter()
    settings = settings_from(cfg)
    check_storage(settings.trainer.storage_path, str(settings.run_name))
    run_dir.mkdir(parents=True, exist_ok=True)
    print(resume_line(settings, run_dir, typed_overrides()), flush=True)
    backbone_path = resolve_backbone(settings.model.path)
    encoder = build_encoder(load_tokenizer(backbone_path), settings.data)
    workers = 1
    if settings.data.streaming:  # the shards are prepared by Ray Data (otherwise Ray starts once the data is good)
        workers = init_ray(settings.ray)
    train, dev = prepare_splits(settings.data, encoder, run_dir, settings.seed, backbone_path, workers)
    for split in (train, dev):
        print(format_data_summary(split.name, split.summary), flush=True)
    check_loss_fits_data(build_loss(settings.loss), train.kinds, train.labels, data_name="the training data")
    if settings.trainer.num_workers > train.count or settings.trainer.num_workers > dev.count:
        raise ValueError(f"trainer.num_workers={settings.trainer.num_workers} exceeds the number of train/dev pairs")

    init_ray(settings.ray)
    loop_config = worker_config(settings, backbone_path, run_dir, train, dev, encoder.spec)
    trainer = build_trainer(settings, loop_config, train)
    with DriverProgress(run_dir):  # one bar in a terminal; plain step lines from rank 0 everywhere
        result = trainer.fit()
    metrics = write_results(result, run_dir, train, dev, time.perf_counter() - started)
    report_storage(result.checkpoint, settings, run_dir)
    return metrics


def typed_overrides() -> list[str] | None:
    """The overrides of this command line (None outside a Hydra app, e.g. `run(cfg, ...)` from Python)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


RESUME_KEYS = ("run_name", "trainer.storage_path", "hydra.run.dir")  # what the resume command pins


def resume_line(settings: TrainConfig, run_dir: Path, overrides: list[str] | None) -> str:
    """`run_name: NAME` and the exact command that resumes this run (the same overrides, with the run name,
    the absolute checkpoint storage and this run directory pinned): Ray Train continues from the latest
    checkpoint under <storage_path>/<run_name>. The default run_name is random, so without this line a rerun
    of the same command would start over."""
    import shlex

    storage = storage_location(settings.trainer.storage_path)
    if overrides is None:
        return f"run_name: {settings.run_name} (resume: run_name={settings.run_name} trainer.storage_path={storage})"
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in RESUME_KEYS]
    command = ["python", "-m", "rlhf_rm.train", *kept, f"run_name={settings.run_name}",
               f"trainer.storage_path={storage}", f"hydra.run.dir={run_dir.resolve()}"]
    return f"run_name: {settings.run_name}\nresume:   {shlex.join(command)}"


def checkpoint_metadata(settings: TrainConfig, train: PreparedSplit, dev: PreparedSplit,
                        rendering: RenderingSpec) -> dict:
    """What every checkpoint's rlhf_rm.json starts with (the recipe adds progress and dev metrics). The
    rendering spec is the encoder's: every scorer of the checkpoint reads it from here."""
    resolved = as_dict(settings)
    metadata = {"base_model": settings.model.path, "loss": resolved["loss"], "data": resolved["data"],
                "config": resolved, "data_summary": {"train": train.summary, "dev": dev.summary},
                "rendering": rendering.to_dict()}
    if settings.model.length_head.enabled:  # the model card and the server's /info say how this reward was made
        metadata["length_head"] = {**resolved["model"]["length_head"], "method": "ODIN (arXiv:2402.07319)",
                                   "saved": "quality head only; the length head was dropped at save"}
    return metadata


def worker_config(settings: TrainConfig, backbone_path: str, run_dir: Path, train: PreparedSplit,
                  dev: PreparedSplit, rendering: RenderingSpec) -> dict:
    """Ray Train's train_loop_config: the settings, where things are, and the data (object refs or a stream)."""
    import ray

    streamed = train.streamed
    return {
        "settings": settings,
        "backbone_path": backbone_path,
        "run_dir": str(run_dir),
        "train_ref": None if streamed else ray.put(train.groups),
        "stream": {"tokens": streamed.tokens, "groups": train.summary["groups"]} if streamed else None,
        "dev_ref": ray.put(dev.groups),
        "metadata": checkpoint_metadata(settings, train, dev, rendering),
        # every attempt and rerun of this run logs into one W&B run (resume="allow")
        "wandb_run_id": run_id(str(settings.run_name), storage_location(settings.trainer.storage_path)),
        "outputs_uri": outputs_uri(settings),  # rank 0 copies progress, diagnostics, W&B files there
    }


def build_trainer(settings: TrainConfig, loop_config: dict, train: PreparedSplit):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rlhf_rm.training.recipe import train_loop_per_worker

    trainer = settings.trainer
    callbacks = []
    if trainer.publish_to_serve:
        from rlhf_rm.serve.publish import PublishCheckpointsToPool

        callbacks.append(PublishCheckpointsToPool(list(trainer.publish_to_serve),
                                                  storage_location(trainer.storage_path)))
    datasets = {"train": train.streamed.dataset(readers=max(2, trainer.num_workers))} if train.streamed else None
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        datasets=datasets,
        scaling_config=ScalingConfig(num_workers=trainer.num_workers, use_gpu=trainer.use_gpu,
                                     resources_per_worker={"CPU": trainer.cpus_per_worker,
                                                           **({"GPU": 1} if trainer.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if trainer.use_gpu else "gloo"),
        run_config=RunConfig(name=str(settings.run_name), storage_path=storage_location(trainer.storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=trainer.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=trainer.max_failures),
                             callbacks=callbacks),
    )


def write_results(result, run_dir: Path, train: PreparedSplit, dev: PreparedSplit, wall_seconds: float) -> dict:
    """Copy the final checkpoint into the run dir, write metrics.json and print where everything went."""
    checkpoint_dir = run_dir / "checkpoint"
    with result.checkpoint.as_directory() as source:
        replace_directory(source, checkpoint_dir)
    metrics = dict(result.metrics)
    metrics["wall_seconds"] = wall_seconds
    metrics["checkpoint"] = str(checkpoint_dir)
    metrics["data"] = {"train": train.summary, "dev": dev.summary}
    write_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))
    print(f"dev: {headline(metrics, prefix='dev_')} on {dev.count} examples; "
          f"{metrics['train_pairs_per_s']:.2f} examples/s; wall {metrics['wall_seconds']:.0f}s", flush=True)
    for line in source_lines(metrics, prefix="dev_"):
        print(line, flush=True)
    print(f"checkpoint: {checkpoint_dir}\nmetrics:    {run_dir / 'metrics.json'}", flush=True)
    return metrics


def replace_directory(source: str | Path, target: Path) -> None:
    """Copy `source` to `target`, replacing it only once the copy is complete: a failure half way (disk
    full, a kill) leaves the previous `target` as it was."""
    staging = target.with_name(f"{target.name}.copying")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = target.with_name(f"{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.replace(previous)
    staging.replace(target)
    shutil.rmtree(previous, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def check_storage(storage_path: str, run_name: str) -> None:
    """A storage URI must take writes before anything starts (one line naming it otherwise)."""
    from rlhf_rm.checkpoint.storage import check_writable, is_uri, join_uri

    if is_uri(storage_path):
        check_writable(join_uri(storage_path, run_name))


def outputs_uri(settings: TrainConfig) -> str | None:
    """<storage_path>/<run_name>/outputs when the storage is a URI: the run outputs beside its checkpoints."""
    from rlhf_rm.checkpoint.storage import is_uri, join_uri

    storage = settings.trainer.storage_path
    return join_uri(storage, str(settings.run_name), "outputs") if is_uri(storage) else None


def report_storage(checkpoint, settings: TrainConfig, run_dir: Path) -> None:
    """With a storage URI: print the final checkpoint's URI (what serve/score/evaluate take on any node) and
    copy the run outputs (metrics.json, ...) next to the checkpoints."""
    from rlhf_rm.checkpoint.storage import is_uri, upload_run_outputs, uri_for

    storage = settings.trainer.storage_path
    if not is_uri(storage):
        return
    print(f"checkpoint_uri: {uri_for(checkpoint.filesystem, checkpoint.path, like=storage)}", flush=True)
    upload_run_outputs(run_dir, outputs_uri(settings))
    print(f"outputs_uri:    {outputs_uri(settings)}", flush=True)


def storage_location(path: str) -> str:
    """Ray Train's storage: a local path (made absolute) or a URI every node can reach (s3://, gs://)."""
    return path if "://" in path else str(Path(to_absolute_path(path)))


def init_ray(ray_settings: RayConfig) -> int:
    """Start (or join) Ray once; returns the CPUs it offers (Ray Data's actor count when streaming)."""
    import ray

    if not ray.is_initialized():
        local_cap = {"num_cpus": ray_settings.num_cpus} if ray_settings.num_cpus and not ray_settings.address else {}
        ray.init(address=ray_settings.address, log_to_driver=True, **local_cap)
    return max(1, int(ray.available_resources().get("CPU", 1)))


@hydra.main(config_path="pkg://rlhf_rm.conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    # Ray workers inherit this; tokenizers' own thread pool would fight the workers for 2 cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.argv = [sys.argv[0], *upgrade_overrides(sys.argv[1:])]  # old trainer.layout=... names still work
    main()
