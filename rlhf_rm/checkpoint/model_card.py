"""The checkpoint's model card (README.md, Hugging Face's convention), generated from rlhf_rm.json only."""

from __future__ import annotations

import json

from rlhf_rm.checkpoint.metadata import CheckpointMetadata

CARD_FILE = "README.md"
# (metric key in the evaluation, label); shown when present.
EVALUATION_ROWS = (
    ("accuracy", "pair accuracy (preferred scored above the other)"),
    ("mean_margin", "mean margin r_preferred − r_other"),
    ("ece", "expected calibration error of σ(r_a − r_b)"),
    ("length_reward_correlation", "reward–length Pearson r"),
    ("accuracy_chosen_shorter", "accuracy where the preferred reply is the shorter one"),
    ("accuracy_chosen_longer", "accuracy where the preferred reply is the longer one"),
    ("tie_aware_accuracy", "tie-aware accuracy"),
    ("ranking_top1_accuracy", "ranking top-1 accuracy"),
    ("ranking_kendall_tau", "ranking Kendall τ"),
    ("reward_mean", "reward mean"),
    ("reward_std", "reward std"),
)
ACCOUNTING = ("rows_read", "used", "examples", "quarantined", "deduplicated", "dropped_dev_overlap",
              "other_split", "without_comparison", "prompt_truncated", "response_truncated", "ties", "groups")


def fmt(value) -> str:
    """How every figure is printed in the card (tests compare against rlhf_rm.json through this)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_model_card(metadata: CheckpointMetadata, certificate: dict | None = None, ensemble_size: int = 1) -> str:
    """The card's text; `ensemble_size`: the checkpoint's reward heads (num_labels), whose mean is the reward."""
    base = metadata.base_model or "unknown"
    sections = [
        _front_matter(base),
        f"# Reward model: {base} + scalar head\n\nTrained with [rlhf_rm](https://github.com/) on human preferences. "
        "It returns one scalar r(x, y) per text: higher means more preferred. Everything below is generated from "
        "`rlhf_rm.json` in this directory.",
        _usage_section(metadata.rendering or {}, ensemble_size),
        _rendering_section(metadata.rendering or {}),
        _data_section(metadata),
        _training_section(metadata),
        _evaluation_section(metadata),
        _certificate_section(certificate),
        _limits_section(metadata),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _front_matter(base: str) -> str:
    return f"---\nlibrary_name: transformers\npipeline_tag: text-classification\nbase_model: {base}\n" \
           "tags:\n- reward-model\n- rlhf\n- rlhf_rm\n---"


def _usage_section(rendering: dict, ensemble_size: int = 1) -> str:
    if ensemble_size > 1:
        read = "logits[0].mean()"
        heads = (f"\n\nAn ensemble of {ensemble_size} reward heads: the reward is the mean of `logits[0]` across "
                 f"the heads (what rlhf_rm and its serving pool return; their std is the spread).")
    else:
        read, heads = "logits[0, 0]", ""
    return f"""## How to load it{heads}

Without rlhf_rm (the tokenizer carries the rendering: no EOS to add by hand):

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tok = AutoTokenizer.from_pretrained(path)
rm = AutoModelForSequenceClassification.from_pretrained(path)
reward = rm(**tok(prompt + response, truncation=True, return_tensors="pt")).{read}
# chat messages: text = tok.apply_chat_template(messages, tokenize=False)
```

With rlhf_rm (re-checks the parity certificate on load):

```bash
python -m rlhf_rm.score PATH --prompt "..." --response "..."
python -m rlhf_rm.evaluate PATH data.dev=pairs.jsonl
python -m rlhf_rm.serve PATH        # Ray Serve pool on 127.0.0.1:8000 (/score, /get_reward, /classify)
```

Texts longer than {fmt(rendering.get('max_length'))} tokens score as in training only with `truncation=True`."""


def _rendering_section(rendering: dict) -> str:
    if not rendering:
        return ""
    rows = "\n".join(f"| {key} | {fmt(value)} |" for key, value in rendering.items())
    return f"## Rendering it expects\n\n| setting | value |\n|---|---|\n{rows}\n\n" \
           "Strings are scored as `prompt + response`; chat message lists through the tokenizer's chat template. " \
           "The reward is read at the last token; over-long texts keep their last `max_length` tokens."


def _data_section(metadata: CheckpointMetadata) -> str:
    summary, data = metadata.data_summary, metadata.data
    if not summary:
        return ""
    lines = ["## Training data", ""]
    for split in ("train", "dev"):
        if split in data:
            lines.append(f"- {split}: `{json.dumps(data[split], ensure_ascii=False)}`")
    lines += ["", "| count | " + " | ".join(summary) + " |", "|---|" + "---|" * len(summary)]
    for key in ACCOUNTING:
        if any(key in s for s in summary.values()):
            lines.append(f"| {key} | " + " | ".join(fmt(s.get(key)) for s in summary.values()) + " |")
    balance = summary.get("train", {}).get("length_balance")
    if balance:
        kept = (f"{balance['dropped']} dropped" if balance["mode"] == "downsample" else
                f"{balance['repeated']} repeated")
        lines += ["", f"Length-balanced train pairs (`data.length_balance`, {balance['mode']}, bins of "
                      f"{balance['bin_tokens']} tokens): {balance['chosen_longer']} chosen longer / "
                      f"{balance['chosen_shorter']} chosen shorter → {kept}; {balance['groups']} groups."]
    return "\n".join(lines)


def _training_section(metadata: CheckpointMetadata) -> str:
    config = metadata.config
    loss = metadata.loss or config.get("loss")
    lines = ["## Training", "", f"- loss: `{json.dumps(loss, ensure_ascii=False)}`"]
    for key in ("steps", "final"):
        if getattr(metadata, key) is not None:
            lines.append(f"- {key}: {fmt(getattr(metadata, key))}")
    length_head = metadata.length_head
    if length_head:
        weights = {k: length_head[k] for k in ("corr_weight", "length_corr_weight", "ortho_weight") if k in length_head}
        lines.append(f"- length head (ODIN, arXiv:2402.07319): a second head absorbed response length during training "
                     f"(`{json.dumps(weights)}`); this checkpoint's score is the quality head alone")
    for group in ("trainer", "batching"):
        settings = config.get(group) or {}
        chosen = {k: settings[k] for k in ("lr", "epochs", "num_workers", "tokens_per_worker", "lr_schedule",
                                           "warmup_ratio", "weight_decay", "layout") if k in settings}
        if chosen:
            lines.append(f"- {group}: `{json.dumps(chosen)}`")
    return "\n".join(lines)


def _evaluation_section(metadata: CheckpointMetadata) -> str:
    metrics = metadata.dev_metrics
    if not metrics:
        return "## Evaluation\n\nNo evaluation was stored with this checkpoint."
    split = metadata.data.get("dev", "the dev split")
    rows = "\n".join(f"| {label} | {fmt(metrics[key])} |" for key, label in EVALUATION_ROWS if key in metrics)
    rows += _baseline_rows(metrics, "")
    per_source = "\n".join(f"| accuracy on `{key.split('/', 1)[1]}` | {fmt(value)} |"
                            + _baseline_rows(metrics, "/" + key.split("/", 1)[1])
                           for key, value in metrics.items() if key.startswith("accuracy/"))
    return (f"## Evaluation\n\nSplit: `{json.dumps(split, ensure_ascii=False)}` (the `data.dev` of the training run; "
            f"figures computed at the final step).\n\n| metric | value |\n|---|---|\n{rows}"
            + (f"\n{per_source}" if per_source else ""))


def _baseline_rows(metrics: dict, suffix: str) -> str:
    """The length-only baseline of the same dev pairs, its rule and the margin over it (issue 29), as table rows."""
    if metrics.get(f"length_baseline{suffix}") is None:
        return ""
    where = f" on `{suffix[1:]}`" if suffix else ""
    return (f"\n| length-only baseline{where} (the better of shorter / longer reply wins; equal lengths count half) "
            f"| {fmt(metrics[f'length_baseline{suffix}'])} |"
            f"\n| length-only baseline rule{where} | {fmt(metrics.get(f'length_baseline_rule{suffix}'))} |"
            f"\n| margin over the length-only baseline{where} | {fmt(metrics.get(f'margin_over_length_baseline{suffix}'))} |")


def _certificate_section(certificate: dict | None) -> str:
    if not certificate:
        return ""
    names = ", ".join(c["name"] for c in certificate["canaries"])
    return (f"## Parity certificate\n\n`parity_certificate.json` holds {len(certificate['canaries'])} canary texts "
            f"({names}) with their tokens and scores at save time ({certificate['dtype']}); rlhf_rm re-scores them on "
            "every load and refuses the checkpoint if the template, EOS, length or weights no longer give them.")


def _limits_section(metadata: CheckpointMetadata) -> str:
    metrics = metadata.dev_metrics or {}
    limits = ["- It learned only what its training data prefers; scores on other domains are not validated here.",
              "- A reward is a ranking signal: compare texts for the same prompt; absolute values carry no meaning "
              "(use the stored reward mean/std to normalize).",
              "- Peers that append an EOS themselves (e.g. OpenRLHF's own RM server) read another token."]
    correlation = metrics.get("length_reward_correlation")
    if correlation is not None and abs(correlation) >= 0.3:
        direction = "shorter" if correlation < 0 else "longer"
        limits.append(f"- Length bias: reward–length r = {fmt(correlation)}; it tends to prefer {direction} replies.")
    return "## Known limits\n\n" + "\n".join(limits)
