"""`python -m rlhf_rm.evaluate`: the evaluation report of a checkpoint — accuracy per source, calibration, length bias, reward plots.

    python -m rlhf_rm.evaluate CHECKPOINT data.dev=../shared/data/hh-rlhf-harmless/dev.jsonl
    python -m rlhf_rm.evaluate CHECKPOINT 'data.dev=[a.jsonl,b.jsonl]' hydra.run.dir=reports/run1

data.dev takes what training takes: a path, or a list of paths or source mappings (conf/data/mix.yaml);
each source is one row of the per-source accuracy table.

Writes to the Hydra run dir (conf/evaluate.yaml): report.md (read this first), report.json (every
number), scores.jsonl (one line per pair), reliability.png, reward_histograms.png,
accuracy_by_length.png, reward_vs_length.png.

The work is done in rlhf_rm/evaluation/ (dev_data, pairs, report, plots, markdown, metrics, diagnostics,
rewardbench); this module is the command line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from rlhf_rm.config import ConfigError  # importing rlhf_rm.config registers the schemas with Hydra
from rlhf_rm.checkpoint.metadata import read_metadata
from rlhf_rm.evaluation.dev_data import checkpoint_prompt_style, load_dev_pairs
from rlhf_rm.evaluation.pairs import TextScores, benchmark_items, score_pairs
from rlhf_rm.evaluation.report import build_report, summary_text, write_report
from rlhf_rm.evaluation.rewardbench import rewardbench_report


def evaluate(cfg: DictConfig, report_dir: Path) -> dict:
    import torch

    from rlhf_rm.checkpoint.scorer import RewardScorer
    from rlhf_rm.checkpoint.storage import is_uri, materialize

    started = time.perf_counter()
    # A URI is checked, then downloaded once into this machine's cache; the report names the URI.
    source = cfg.checkpoint if is_uri(cfg.checkpoint) else os.path.normpath(to_absolute_path(cfg.checkpoint))
    checkpoint = materialize(source)
    report_dir.mkdir(parents=True, exist_ok=True)
    metadata = read_metadata(checkpoint)
    style, why = checkpoint_prompt_style(metadata, cfg.prompt_style)
    separator = metadata.prompt_separator
    data = load_dev_pairs(cfg, report_dir, style, separator)
    if not data.pairs:
        raise ValueError(f"no usable pairs in data.dev={cfg.data.dev}")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # The checkpoint's rendering decides lengths and EOS; loading re-scores its parity canaries.
    scorer = RewardScorer(checkpoint, tokens_per_batch=cfg.tokens_per_batch, device=device, dtype=cfg.dtype)
    table = TextScores(scorer, [(p.prompt, r) for p in data.pairs for r in (p.chosen, p.rejected)])
    scored = score_pairs(table, data.pairs, data.labels)
    report = build_report(scored, source, list(data.summary["sources"]), data.summary, bins=cfg.report.bins,
                          worst_k=cfg.report.worst_k, length_edges=list(cfg.report.length_edges))
    if data.benchmarks:
        report["rewardbench"] = {
            label: {"format": bench["format"], "prompt_style": bench["prompt_style"], "prompt_style_reason": why,
                    **rewardbench_report(benchmark_items(table, bench["examples"]),
                                         version=2 if bench["format"] == "rewardbench2" else 1)}
            for label, bench in data.benchmarks.items()}
    report["seconds"] = time.perf_counter() - started
    markdown = write_report(report, scored, report_dir)
    print(summary_text(report), flush=True)
    print(f"report: {markdown}", flush=True)
    return report


# The data.* keys evaluation reads; a `data=` group file may carry training keys, but naming another one on the
# command line would be silently ignored (lengths, EOS and template come from the checkpoint), so it is refused.
EVALUATE_DATA_KEYS = ("dev", "dev_limit", "on_error", "prompt_separator")


def refuse_ignored_overrides(overrides: list[str]) -> None:
    """Raise ConfigError for command-line `data.*` overrides evaluation would not read."""
    ignored = sorted({o.partition("=")[0].lstrip("+~") for o in overrides
                      if o.lstrip("+~").startswith("data.")
                      and o.lstrip("+~").partition("=")[0].split(".")[1] not in EVALUATE_DATA_KEYS})
    if ignored:
        raise ConfigError(f"evaluate does not read {', '.join(ignored)}: it scores data.dev with the checkpoint's "
                          f"own rendering (max length, EOS, template); it reads data.{{{','.join(EVALUATE_DATA_KEYS)}}}")


@hydra.main(config_path="pkg://rlhf_rm.conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> None:
    refuse_ignored_overrides(list(HydraConfig.get().overrides.task))
    evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


def checkpoint_argument_to_override(argv: list[str]) -> list[str]:
    """`evaluate CHECKPOINT k=v ...` → `evaluate checkpoint='CHECKPOINT' k=v ...` (Hydra takes only k=v). A URI
    is a checkpoint even with `=` in its query (s3://b/ckpt?endpoint_override=...): no override key has `://`."""
    if len(argv) > 1 and ("=" not in argv[1] or "://" in argv[1].split("=", 1)[0]) and not argv[1].startswith("-"):
        quoted = f"'{argv[1]}'" if "'" not in argv[1] else argv[1]
        return [argv[0], f"checkpoint={quoted}", *argv[2:]]
    return argv


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.argv = checkpoint_argument_to_override(sys.argv)
    main()
