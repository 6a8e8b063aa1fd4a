"""rlhf_rm.json, the checkpoint's own record, as one typed object: every reader goes through `CheckpointMetadata`.

Written by training (what data, loss, rendering and settings made the reward, its dev metrics and progress);
read by the scorer (rendering, reward mean/std), serving (/info), evaluation (training prompt style) and the
model card. Unknown keys are kept (`extra`), so a newer writer's file still loads and round-trips.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_rm.checkpoint.rendering import RenderingSpec

METADATA_FILE = "rlhf_rm.json"
# Settings a legacy checkpoint (saved before RenderingSpec) stated on their own; the spec's defaults otherwise.
LEGACY_MAX_LENGTH = 2048


@dataclass
class CheckpointMetadata:
    base_model: str | None = None  # the backbone training started from (a path or a packaged name)
    rendering: dict | None = None  # RenderingSpec.to_dict(); None only in checkpoints older than the spec
    loss: Any = None  # the resolved loss settings
    data: dict = field(default_factory=dict)  # the resolved data settings (train/dev sources)
    config: dict = field(default_factory=dict)  # the whole resolved training config
    data_summary: dict = field(default_factory=dict)  # per split: rows read, used, quarantined, truncated...
    length_head: dict | None = None  # ODIN's length head, when training used one (the saved head is quality only)
    dev_metrics: dict | None = None
    reward_mean: float | None = None  # on the dev split: serving's normalization
    reward_std: float | None = None
    final: bool | None = None  # the run's last checkpoint
    steps: int | None = None
    metrics_log: list = field(default_factory=list)
    trained_steps: list = field(default_factory=list)
    resumed_from: list = field(default_factory=list)
    max_length: int | None = None  # legacy mirrors of the spec (still written, for older readers)
    append_eos: bool | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, values: dict) -> "CheckpointMetadata":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in values.items() if v is not None}, **self.extra}

    def rendering_spec(self, tokenizer) -> RenderingSpec:
        """The rendering every scorer of this checkpoint uses; a checkpoint from before the spec existed is
        read from the two settings it stated (the one fallback, for save and load alike)."""
        if self.rendering is not None:
            return RenderingSpec.from_dict(self.rendering)
        return RenderingSpec.for_tokenizer(tokenizer, self.max_length or LEGACY_MAX_LENGTH, bool(self.append_eos))

    # -- what evaluation reads from the training config -------------------------------------------------
    @property
    def train_summary(self) -> dict:
        return self.data_summary.get("train") or {}

    @property
    def train_sources(self):
        return (self.config.get("data") or {}).get("train")

    @property
    def prompt_separator(self) -> str | None:
        return (self.config.get("data") or {}).get("prompt_separator")


def read_metadata(directory: str | Path) -> CheckpointMetadata:
    """The checkpoint's metadata; an empty one for a directory without rlhf_rm.json (a bare backbone)."""
    path = Path(directory) / METADATA_FILE
    return CheckpointMetadata.from_dict(json.loads(path.read_text())) if path.exists() else CheckpointMetadata()


def write_metadata(directory: str | Path, metadata: CheckpointMetadata) -> None:
    Path(directory, METADATA_FILE).write_text(json.dumps(metadata.to_dict(), indent=2, default=str))


def is_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / METADATA_FILE).exists()
