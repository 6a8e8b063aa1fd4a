"""Serving settings: the fixed deployment shape (`ServeConfig`) and what can change live (`LiveSettings`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# conf/serve/default.yaml, found through the installed package (conf/ ships as rlhf_rm.conf).
DEFAULT_CONFIG = Path(str(resources.files("rlhf_rm.conf"))) / "serve" / "default.yaml"


@dataclass
class LiveSettings:
    """Sent to replicas as Serve `user_config`; `reconfigure` applies a change without a restart."""

    checkpoint: str | None = None  # directory written by training (HF files + rlhf_rm.json)
    # Served instead when `checkpoint` fails its parity certificate (app.start sets it to the checkpoint the
    # running pool serves, so a refused hot reload keeps answering with the old model).
    fallback_checkpoint: str | None = None
    normalize: bool = False  # default for requests that do not choose: (score - mean) / std from the checkpoint
    max_batch_size: int = 256  # texts per batched call
    batch_wait_timeout_s: float = 0.0    # wait of a batch's first text for company (a busy replica batches anyway)
    tokens_per_forward: int = 16384  # padded tokens per model forward inside a batch (a group is split to fit)
    # Admission control: a replica refuses a request (503 + Retry-After; `PoolOverloaded` through a handle) when
    # the work queued before it would take longer than this, by the replica's measured throughput.
    max_queue_s: float = 4.0
    pooling_shape: str = "vllm"  # /pooling answers as vLLM ("vllm") or LMDeploy ("lmdeploy") does; see protocol.py

    @classmethod
    def from_dict(cls, values: dict) -> "LiveSettings":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown serve live settings {sorted(unknown)}")
        settings = cls(**values)
        if not settings.checkpoint:
            raise ValueError("serve live settings need a checkpoint")
        if settings.max_batch_size < 1 or settings.tokens_per_forward < 1 or settings.batch_wait_timeout_s < 0 \
                or settings.max_queue_s <= 0:
            raise ValueError(f"bad batching settings: {settings}")
        from rlhf_rm.serve.protocol import POOLING_SHAPES

        if settings.pooling_shape not in POOLING_SHAPES:
            raise ValueError(f"pooling_shape={settings.pooling_shape!r}; choose one of {POOLING_SHAPES}")
        return settings


@dataclass
class ServeConfig:
    """Mirrors conf/serve/default.yaml; see the comments there."""

    app_name: str = "rlhf_rm"
    host: str = "127.0.0.1"
    port: int = 8000
    ingress: str = "proxy"  # proxy (Serve's Python proxy) | haproxy (haproxy_ingress.py); fixed when Serve starts
    route_prefix: str = "/"
    ray_address: str | None = None
    detach: bool = False
    num_replicas: int = 1
    autoscaling: dict | None = None
    num_cpus_per_replica: float = 1.0
    torch_threads: int = 1
    max_ongoing_requests: int = 512
    # Requests each caller (HTTP proxy, handle) holds back while every replica has max_ongoing_requests:
    # beyond it Serve answers 503 + Retry-After (BACKPRESSURE_RETRY_AFTER_S) instead of queueing without end.
    max_queued_requests: int = 256
    max_surge_percent: int = 100
    device: str = "cpu"
    # GPUs Ray reserves per replica; None: 1 when device is cuda, else 0 (a replica sees only what it reserved).
    num_gpus_per_replica: float | None = None
    replica_resources: dict | None = None  # custom Ray resources per replica: pins replicas to nodes declaring them
    dtype: str = "float32"  # float32 | bfloat16 | float16; the parity certificate's tolerance follows it
    max_texts_per_request: int = 4096
    max_body_bytes: int = 8 * 1024 * 1024
    max_text_chars: int = 200_000  # per prompt or response (a chat: its contents together); longer is a 413
    max_group_tokens: int = 65536  # tokens of one /score_group (prompt once + every reply); more is a 413
    allow_uncertified: bool = False  # serve a checkpoint without parity_certificate.json (logged, in /info)
    request_timeout_s: float | None = 120.0  # the HTTP proxy answers 408 after this; None: no limit
    token_env: str | None = "RLHF_RM_SERVE_TOKEN"
    live: LiveSettings = field(default_factory=LiveSettings)

    def replica_settings(self, token_sha256: str | None) -> "ReplicaSettings":
        """What each replica is built with (its fixed settings; live ones come as user_config)."""
        names = [f.name for f in dataclasses.fields(ReplicaSettings) if f.name != "token_sha256"]
        return ReplicaSettings(token_sha256=token_sha256, **{name: getattr(self, name) for name in names})

    @property
    def num_gpus(self) -> float:
        if self.num_gpus_per_replica is not None:
            return self.num_gpus_per_replica
        return 1.0 if self.device.startswith("cuda") else 0.0

    @classmethod
    def from_dict(cls, values: dict) -> "ServeConfig":
        values = dict(values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown serve config keys {sorted(unknown)}")
        live = LiveSettings(**(values.pop("live", None) or {}))
        return cls(live=live, **values)

    def __post_init__(self):
        from rlhf_rm.serve.haproxy_ingress import INGRESS_MODES

        if self.ingress not in INGRESS_MODES:
            raise ValueError(f"serve ingress must be one of {INGRESS_MODES}, got {self.ingress!r}")


@dataclass(frozen=True)
class ReplicaSettings:
    """A replica's fixed settings, taken from `ServeConfig` (its defaults live there only);
    `token_sha256`: the bearer token's digest, None for no auth."""

    max_texts_per_request: int
    max_body_bytes: int
    max_text_chars: int | None
    max_group_tokens: int
    allow_uncertified: bool
    torch_threads: int
    device: str
    dtype: str
    token_sha256: str | None = None


BACKPRESSURE_RETRY_AFTER_S = 1  # Retry-After of Serve's own refusal (max_queued_requests) and of a lost request


def load_serve_config(checkpoint: str | None = None, overrides: list[str] | None = None,
                      path: str | Path = DEFAULT_CONFIG) -> ServeConfig:
    """conf/serve/default.yaml + `key=value` overrides (OmegaConf dot-list, e.g. `live.normalize=true`).

    Live keys may also be given bare (`normalize=true`), which is what people type.
    """
    from omegaconf import OmegaConf

    base = OmegaConf.load(path)
    live_keys = {f.name for f in dataclasses.fields(LiveSettings)}
    dotlist = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        dotlist.append(f"live.{key}={value}" if key in live_keys else item)
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
    if checkpoint is not None:
        merged.live.checkpoint = str(checkpoint)
    return ServeConfig.from_dict(OmegaConf.to_container(merged, resolve=True))
