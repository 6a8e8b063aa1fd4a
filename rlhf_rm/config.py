"""Typed configuration: one dataclass per Hydra group, the only place defaults are declared.

The YAML files under conf/ only set values (a data set's paths, a loss's parameters, a preset);
every key's type and default lives here. Hydra composes the YAML on top of these schemas (registered in
its ConfigStore as `train_schema` / `evaluate_schema`), so a misspelt key or a wrong type stops the run
at composition; `settings_from()` then turns the composed config into a `TrainConfig` once, at the edge,
and `validate()` checks what types cannot say (choices, ranges, that the loss exists).

    python -m rlhf_rm.train trainer.lr=1e-4 batching.tokens_per_worker=4096 loss=regularized
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from rlhf_rm.data.readers import DEFAULT_MAX_ROW_BYTES


class ConfigError(ValueError):
    """A setting that cannot work, found at start-up (before Ray or any worker starts)."""


@dataclass
class LoraConfig:
    enabled: bool = False  # true: train low-rank adapters (peft) + the score head; merged into the checkpoint
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"])


@dataclass
class LengthHeadConfig:
    # ODIN (Chen et al. 2024): a second linear head absorbs response length during training; the preference loss
    # sees r_quality + r_length and the checkpoint keeps the quality head only (docs/length.md, losses/length.py).
    enabled: bool = False
    corr_weight: float = 1.0  # weight of |Pearson(r_quality, response tokens)| over the step's responses
    length_corr_weight: float = 1.0  # weight of 1 - Pearson(r_length, response tokens)
    ortho_weight: float = 1.0  # weight of |cos(w_quality, w_length)| between the two heads' weight vectors


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"  # a packaged backbone name (rlhf_rm.backbone) or any local HF directory
    head_init_std: Optional[float] = 0.02  # null: the HF initialisation of the score head
    ensemble_size: int = 1  # K > 1: K reward heads trained together; reward = their mean, spread = their std
    lora: LoraConfig = field(default_factory=LoraConfig)
    length_head: LengthHeadConfig = field(default_factory=LengthHeadConfig)


@dataclass
class LengthBalanceConfig:
    # Length-balanced train pairs (prepare/length_balance.py, docs/length.md): within each bin of |length difference|
    # as many "chosen longer" as "chosen shorter" pairs. none | downsample (drop majority pairs) | upsample (repeat)
    mode: str = "none"
    bin_tokens: int = 16  # width of a length-difference bin, in response tokens


@dataclass
class DataConfig:
    train: Any = MISSING  # a path (file, directory, glob), or a list of sources {path, format, weight, split, ...}
    dev: Any = None  # the same; each source is one row of the per-source accuracy
    limit: Optional[int] = None  # use only the first N train rows of each source
    dev_limit: Optional[int] = None
    max_length: int = 512  # tokens per text (prompt + response); a longer text keeps its last max_length tokens
    append_eos: bool = False  # true: read the reward at an EOS the saved tokenizer appends (docs/rendering.md)
    prompt_separator: str = "\n\nAssistant:"  # implicit-prompt rows: the prompt ends at the last separator
    on_error: str = "raise"  # raise: stop at the first bad row (file:line); skip: quarantine and count
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES  # a longer row (10 MiB) is rejected unparsed (on_error decides)
    dedupe: bool = True  # keep the first of identical examples (same prompt, responses, labels) within a split
    drop_dev_overlap: bool = False  # train examples whose texts also appear in dev: counted; true removes them
    cache: bool = True  # tokenized groups cached as Arrow under $RLHF_RM_CACHE/tokenized (~/.cache/rlhf_rm)
    streaming: bool = False  # true: Ray Data prepares tokenized shards (once, cached) streamed to the workers
    rows_per_unit: int = 50000  # streaming: rows per preparation task (large files are cut into slices)
    length_balance: LengthBalanceConfig = field(default_factory=LengthBalanceConfig)  # train split only


@dataclass
class BatchingConfig:
    # prefix_shared (one row per group, prompt once) | separate (one padded row per response) | packed (OpenRLHF's
    # packing: each response with its own prompt copy) | packed_shared (several groups per row, prompt once)
    layout: str = "prefix_shared"
    tokens_per_worker: int = 2048  # padded tokens per worker per optimizer step
    max_pairs_per_worker: Optional[int] = None  # cap on groups per worker per step (null: the budget decides)
    eval_tokens_per_worker: int = 4096  # padded tokens per worker per dev forward
    attention: str = "sdpa"  # sdpa (dense tree mask) | flex: FlexAttention block mask (GPU + prefix_shared)


@dataclass
class TrainerConfig:
    num_workers: int = 2  # data-parallel Ray Train workers
    cpus_per_worker: int = 1
    use_gpu: bool = False  # true: one GPU per worker, nccl
    epochs: int = 1
    lr: float = 5.0e-5  # the TRL reference's lr; docs/sweep.md: what the tuning-split sweep could and could not decide
    head_lr_multiplier: float = 1.0  # the randomly initialised head's lr = lr x this
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.95])  # AdamW (beta1, beta2)
    warmup_ratio: float = 0.05
    lr_schedule: str = "cosine"  # any transformers scheduler name
    max_grad_norm: float = 1.0
    max_steps: Optional[int] = None  # stop after this many optimizer steps (null: all epochs); sizes the schedule
    eval_every: int = 0  # steps between dev evaluations (0: only at the end)
    log_every: int = 5
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: only the final one)
    keep_checkpoints: int = 2  # how many checkpoints Ray keeps
    resume: str = "auto"  # auto: continue from the latest checkpoint of this run (same run_name); never
    # Worker-group restarts Ray Train attempts, each resuming from the latest checkpoint. 0 here (one machine: a
    # failure is a bug that a retry repeats); cluster jobs get launchers/submit.py's 3 (a lost node is not).
    max_failures: int = 0
    storage_path: str = "outputs/ray"  # Ray Train checkpoints: <storage_path>/<run_name>; multi-node: s3://...
    publish_to_serve: Optional[list] = None  # serve overrides, e.g. '["app_name=rlhf_rm"]': hot-reload that pool
    gradient_checkpointing: bool = False
    bf16: bool = False  # autocast to bfloat16 on GPU (ignored on CPU)


@dataclass
class DeepSpeedConfig:
    enabled: bool = False
    config: Any = field(default_factory=dict)  # a DeepSpeed JSON config (conf/deepspeed/zero2.yaml, zero3.yaml)


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none (TRACKING_BACKENDS)
    project: str = "rlhf_rm"
    mode: Optional[str] = None  # null: online when WANDB_API_KEY is set, offline otherwise
    log_texts: bool = True  # false: no decoded prompt or response reaches W&B (worst-pairs table keeps numbers only)


@dataclass
class RayConfig:
    address: Optional[str] = None  # null: start a local Ray; "auto" or ray://host:10001 to join a cluster
    num_cpus: Optional[int] = None  # cap the local Ray's CPUs (null: all cores)


@dataclass
class TrainConfig:
    """`python -m rlhf_rm.train`: one field per Hydra group, plus the run's identity."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: Any = field(default_factory=lambda: {"name": "bradley_terry"})  # {name, **params}: rlhf_rm.losses.LOSSES
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    seed: int = 0
    # A timestamp plus a random suffix: two runs started in the same second on one storage path must not share
    # a directory (nor resume each other). Rerun with the same run_name (and storage path) to resume.
    run_name: str = "${rlhf_rm_run_name:}"


@dataclass
class ReportConfig:
    bins: int = 10  # reliability-diagram bins over [0, 1]
    worst_k: int = 10  # how many of the most wrong pairs to list
    length_edges: list = field(default_factory=lambda: [0, 32, 64, 128, 256, 512])  # response-token bucket edges


@dataclass
class EvaluateConfig:
    """`python -m rlhf_rm.evaluate CHECKPOINT data.dev=...`: the report of a trained checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: str = MISSING  # a directory written by rlhf_rm.train (or the first positional argument)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    dtype: str = "float32"  # float32 | bfloat16 | float16; lengths, EOS and template come from the checkpoint
    tokens_per_batch: int = 8192  # padded tokens per scoring batch
    # RewardBench prompts: auto (as the checkpoint was trained: chat template or HH-style plain text) | chat | plain
    prompt_style: str = "auto"
    report: ReportConfig = field(default_factory=ReportConfig)


# Each Hydra group (a directory of conf) and the schema its options fill. `loss` options are
# checked against the loss registry (rlhf_rm.losses.LOSSES); `experiment` presets may set any key;
# `serve` is read by rlhf_rm.serve into its own dataclass (rlhf_rm.serve.config.ServeConfig).
GROUP_SCHEMAS: dict[str, Any] = {
    "model": ModelConfig, "data": DataConfig, "loss": "rlhf_rm.losses.LOSSES", "trainer": TrainerConfig,
    "batching": BatchingConfig, "deepspeed": DeepSpeedConfig, "logger": LoggerConfig, "experiment": TrainConfig,
    "serve": "rlhf_rm.serve.config.ServeConfig",
}

# Keys that moved to the `batching` group; the command line still takes the old names (upgrade_overrides).
MOVED_KEYS = {f"trainer.{name}": f"batching.{name}" for name in
              ("layout", "tokens_per_worker", "max_pairs_per_worker", "eval_tokens_per_worker", "attention")}

ATTENTION = ("sdpa", "flex")
TRACKING_BACKENDS = ("wandb", "none")  # training/tracking.py builds one of these
LENGTH_BALANCE_MODES = ("none", "downsample", "upsample")  # prepare/length_balance.py


def choices() -> dict[str, tuple]:
    """Settings with a fixed set of values, each from the registry in code that consumes it."""
    from rlhf_rm.batching.collate import LAYOUTS

    return {"data.on_error": ("raise", "skip"), "batching.layout": LAYOUTS, "batching.attention": ATTENTION,
            "trainer.resume": ("auto", "never"), "logger.backend": TRACKING_BACKENDS}


def new_run_name() -> str:
    """run_name's default: the start time to the second and 6 random hex digits."""
    import secrets
    import time

    return f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"


def register_schemas() -> None:
    """Make the schemas known to Hydra; conf/config.yaml and conf/evaluate.yaml list them first."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's ${now:...} resolver, also outside a Hydra app
    if not OmegaConf.has_resolver("rlhf_rm_run_name"):
        OmegaConf.register_new_resolver("rlhf_rm_run_name", new_run_name)

    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)


def conf_dir() -> Path:
    """The shipped YAML directory, found through the installed package (not the repository root)."""
    return Path(str(resources.files("rlhf_rm.conf")))


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """`trainer.layout=separate` → `batching.layout=separate` (and the other MOVED_KEYS), so old command
    lines keep working; everything else passes through unchanged."""
    upgraded = []
    for override in overrides:
        prefix = override[: len(override) - len(override.lstrip("+~"))]
        key, sep, value = override[len(prefix):].partition("=")
        upgraded.append(f"{prefix}{MOVED_KEYS.get(key, key)}{sep}{value}" if sep else override)
    return upgraded


def compose(overrides: list[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the shipped config the way the command line does (tests, benchmarks, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name=config_name, overrides=upgrade_overrides(list(overrides)))


def settings_from(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """The composed DictConfig (or a TrainConfig built in code) as a validated TrainConfig with every
    interpolation resolved; done once, at the edge."""
    settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg))
    settings.loss = _plain(settings.loss)
    settings.data.train, settings.data.dev = _plain(settings.data.train), _plain(settings.data.dev)
    settings.deepspeed.config = _plain(settings.deepspeed.config)
    validate(settings)
    return settings


def as_dict(settings) -> dict:
    """JSON-ready dict of a settings dataclass (checkpoint metadata, W&B config)."""
    return dataclasses.asdict(settings)


def _validate_length_balance(data: DataConfig) -> None:
    """data.length_balance, checked before any file is read (prepare/length_balance.py checks again)."""
    balance = data.length_balance
    if balance.mode not in LENGTH_BALANCE_MODES:
        raise ConfigError(f"data.length_balance.mode={balance.mode!r}: choose one of {list(LENGTH_BALANCE_MODES)}")
    if balance.bin_tokens < 1:
        raise ConfigError(f"data.length_balance.bin_tokens={balance.bin_tokens}: must be at least 1")
    if balance.mode != "none" and data.streaming:
        raise ConfigError(f"data.length_balance.mode={balance.mode} needs the whole train split in memory; "
                          "it is not applied when streaming (data.streaming=true)")


def validate(settings: TrainConfig) -> None:
    """What types cannot say: choices, ranges, and that the configured loss exists and accepts its parameters."""
    from rlhf_rm.losses import build_loss

    for dotted, allowed in choices().items():
        group, key = dotted.split(".")
        value = getattr(getattr(settings, group), key)
        if value not in allowed:
            raise ConfigError(f"{dotted}={value!r}: choose one of {list(allowed)}")
    trainer, batching = settings.trainer, settings.batching
    positive = {"trainer.num_workers": trainer.num_workers, "trainer.epochs": trainer.epochs,
                "trainer.log_every": trainer.log_every, "batching.tokens_per_worker": batching.tokens_per_worker,
                "batching.eval_tokens_per_worker": batching.eval_tokens_per_worker,
                "data.max_length": settings.data.max_length, "model.ensemble_size": settings.model.ensemble_size}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value}: must be at least 1")
    if len(trainer.betas) != 2 or not all(0.0 <= b < 1.0 for b in trainer.betas):
        raise ConfigError(f"trainer.betas={list(trainer.betas)}: two numbers in [0, 1)")
    if batching.attention == "flex" and batching.layout == "separate":
        raise ConfigError("batching.attention=flex needs a tree layout (prefix_shared, packed or packed_shared)")
    zero_stage = (settings.deepspeed.config or {}).get("zero_optimization", {}).get("stage", 0)
    if settings.model.lora.enabled and settings.deepspeed.enabled and zero_stage == 3:
        # Merging adapters for the checkpoint needs the whole weights on one rank; ZeRO-3 shards them.
        raise ConfigError("model.lora.enabled=true: LoRA with DeepSpeed ZeRO-3 cannot save a merged checkpoint; "
                          "use deepspeed=zero2 (adapters are small) or no DeepSpeed")
    _validate_length_head(settings.model.length_head, settings.deepspeed.enabled and zero_stage == 3)
    _validate_length_balance(settings.data)
    if not isinstance(settings.loss, dict) or "name" not in settings.loss:
        raise ConfigError(f"loss must be a mapping with a name, got {settings.loss!r}")
    try:
        build_loss(settings.loss)
    except TypeError as exc:
        raise ConfigError(f"loss={settings.loss}: {exc}") from exc


def _validate_length_head(length_head: LengthHeadConfig, zero3: bool) -> None:
    if not length_head.enabled:
        return
    for key in ("corr_weight", "length_corr_weight", "ortho_weight"):
        if getattr(length_head, key) < 0:
            raise ConfigError(f"model.length_head.{key}={getattr(length_head, key)}: must be >= 0")
    if zero3:
        # The orthogonality term reads both heads' whole weight vectors inside the forward; ZeRO-3 holds only a
        # shard of each parameter outside its own module's call.
        raise ConfigError("model.length_head.enabled=true: the length head does not run under DeepSpeed ZeRO-3; "
                          "use deepspeed=zero2 or no DeepSpeed")


def _plain(value):
    """OmegaConf containers inside `Any` fields → plain lists and dicts."""
    if isinstance(value, (DictConfig,)) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


register_schemas()  # on import, like any Hydra structured config: the entry points import this module
