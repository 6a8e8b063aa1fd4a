"""Check data before spending a cluster: the training run's reading, validation, deduplication and truncation
accounting, on this machine, with only the tokenizer loaded.

    python -m rlhf_rm.validate data/train.jsonl 'more/*.parquet' data/shards/ [--dev data/dev.jsonl] \\
        [--format oasst_trees] [--model smollm2-135m-instruct] [--max-length 512] [--on-error skip] \\
        [--quarantine DIR] [data.KEY=VALUE ...]

Prints the accounting training prints at start-up (rlhf_rm.prepare.format_data_summary) and the first bad
rows with their file:line; with --dev also the dev split and the train/dev overlap. Exit status: 1 when a
row would stop training (data.on_error=raise, the default), 0 when the data is clean or when --on-error
skip would quarantine the bad rows (still counted). With --quarantine DIR the bad rows go to
DIR/quarantine_<split>_<source>.jsonl, as a training run writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from rlhf_rm.config import DataConfig
from rlhf_rm.data.sources import FORMATS


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rlhf_rm.validate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="files, directories or globs; data.KEY=VALUE items set any data option (data.limit=100)")
    parser.add_argument("--dev", action="append", default=[], metavar="PATH",
                        help="the dev split's files (repeatable): its accounting and the train/dev overlap")
    parser.add_argument("--format", default="preference", choices=FORMATS, help="the layout of every PATH")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a packaged backbone name or an HF directory: its tokenizer measures truncation")
    parser.add_argument("--max-length", type=int, help="tokens per text (data.max_length)")
    parser.add_argument("--on-error", choices=("raise", "skip"), help="data.on_error of the training run to check")
    parser.add_argument("--quarantine", metavar="DIR",
                        help="write the bad rows to DIR/quarantine_<split>_<source>.jsonl")
    parser.add_argument("--show", type=int, default=10, help="how many bad rows to print (default 10)")
    return parser.parse_intermixed_args(argv)  # PATHs and data.KEY=VALUE items may follow the options


def data_settings(args: argparse.Namespace) -> tuple[DataConfig, str]:
    """The typed data settings the arguments describe, and the on_error training would use. Validation
    itself always quarantines (on_error=skip) so that every bad row is found, not just the first."""
    overrides = [item for item in args.paths if "=" in item and item.startswith("data.")]
    paths = [item for item in args.paths if item not in overrides]
    if not paths:
        raise SystemExit("python -m rlhf_rm.validate: give at least one PATH")
    # The typed schema checks data.KEY=VALUE items (a misspelt key or a wrong type stops here).
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.from_dotlist(overrides).get("data", {}),
                             {"train": None, "dev": None})
    data: DataConfig = OmegaConf.to_object(merged)
    data.train, data.dev = sources(paths, args.format), sources(args.dev, args.format) or None
    if args.max_length is not None:
        data.max_length = args.max_length
    on_error = args.on_error or data.on_error
    data.on_error, data.cache, data.streaming = "skip", False, False
    return data, on_error


def sources(paths: list[str], fmt: str) -> list[dict]:
    """One source per PATH with a distinct name (its file, directory or glob's directory name): the
    accounting has a line per source and each source its own quarantine file."""
    names: list[str] = []
    for path in paths:
        name = Path(path).parent.name if any(c in path for c in "*?[") else Path(path).stem
        names.append(name if name not in names else f"{name}_{len(names)}")
    return [{"path": path, "format": fmt, "name": name} for path, name in zip(paths, names)]


def first_errors(quarantine_files: list[str], count: int) -> list[str]:
    """`file:line: reason` of the first `count` bad rows, read back from the quarantine files."""
    lines = []
    for path in quarantine_files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if len(lines) == count:
                    return lines
                entry = json.loads(line)
                lines.append(f"{entry['origin']}: {entry['reason']}")
    return lines


def validate(args: argparse.Namespace) -> int:
    """Print the accounting and the first bad rows; returns the exit status."""
    from rlhf_rm.backbone import resolve_backbone
    from rlhf_rm.model import load_tokenizer
    from rlhf_rm.prepare import build_encoder, format_data_summary, prepare_split

    data, on_error = data_settings(args)
    encoder = build_encoder(load_tokenizer(resolve_backbone(args.model)), data)
    with tempfile.TemporaryDirectory(prefix="rlhf_rm_validate_") as scratch:
        out_dir = Path(args.quarantine) if args.quarantine else Path(scratch)
        summaries = {split: prepare_split(data, encoder, out_dir, split).summary
                     for split in ("train", "dev") if getattr(data, split)}
        reports = [report for summary in summaries.values() for report in summary["sources"].values()]
        errors = first_errors([r["quarantine_file"] for r in reports if r["quarantine_file"]], args.show)
        if not args.quarantine:  # the files vanish with the scratch directory: do not name them
            for report in reports:
                report["quarantine_file"] = report["quarantine_file"] and "not kept (--quarantine DIR keeps them)"
    print(f"tokenizer: {args.model}; data.max_length={data.max_length}")
    for split, summary in summaries.items():
        print(format_data_summary(split, summary))
    bad = sum(summary["quarantined"] for summary in summaries.values())
    if errors:
        more = f" (first {len(errors)})" if bad > len(errors) else ""
        print(f"bad rows{more}:\n" + "\n".join(f"  {line}" for line in errors))
    if bad and on_error == "raise":
        print(f"FAIL: {bad} bad rows would stop training (data.on_error=raise); fix them, or train with "
              "data.on_error=skip to quarantine them")
        return 1
    print(f"OK: {summaries['train']['groups']} examples would train"
          + (f"; {bad} bad rows would be quarantined (data.on_error=skip)" if bad else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return validate(args)
    except ValueError as exc:  # a DataError raised before any row (a missing file, an unknown format)
        print(f"FAIL: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
