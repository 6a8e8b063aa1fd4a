"""Print reward scores from a checkpoint.

    python -m rlhf_rm.score CHECKPOINT --prompt "How do I..." --response "You can..."
    python -m rlhf_rm.score CHECKPOINT --file pairs.jsonl      # preference pairs: scores + accuracy
"""

from __future__ import annotations

import argparse
import json
import sys

from rlhf_rm.checkpoint.scorer import RewardScorer
from rlhf_rm.data import load_pairs
from rlhf_rm.evaluation.metrics import pair_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_rm.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="directory, or URI (s3://bucket/path?endpoint_override=...)")
    parser.add_argument("--prompt", action="append", default=[], help="repeatable; pairs with --response in order")
    parser.add_argument("--response", action="append", default=[])
    parser.add_argument("--file", help="JSONL/JSON/Parquet preference pairs to score")
    parser.add_argument("--on-error", default="raise", choices=["raise", "skip"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="lengths, EOS and template always come from the checkpoint's rendering")
    args = parser.parse_args(argv)
    if not args.file and not args.response:
        parser.error("give --prompt/--response or --file")
    if len(args.prompt) not in (0, len(args.response)):
        parser.error("give one --prompt per --response (or none)")

    import torch

    from rlhf_rm.checkpoint.storage import StorageError, materialize

    try:  # a URI is downloaded once into this machine's cache
        checkpoint = materialize(args.checkpoint)
    except StorageError as error:
        parser.exit(2, f"{error}\n")
    scorer = RewardScorer(checkpoint, dtype=args.dtype)
    if args.response:
        prompts = args.prompt or [""] * len(args.response)
        for item in scorer.score(prompts, args.response):
            print(json.dumps({"score": round(item.score, 6), "truncated": item.truncated}))
    if args.file:
        pairs, report = load_pairs(args.file, on_error=args.on_error, quarantine_path="quarantine_score.jsonl")
        chosen = scorer.score([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = scorer.score([p.prompt for p in pairs], [p.rejected for p in pairs])
        for pair, c, r in zip(pairs, chosen, rejected):
            print(json.dumps({"origin": pair.origin, "chosen": round(c.score, 6), "rejected": round(r.score, 6)}))
        metrics = pair_metrics(torch.tensor([c.score for c in chosen]), torch.tensor([r.score for r in rejected]))
        print(json.dumps({"summary": metrics, "data": report.as_dict()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
