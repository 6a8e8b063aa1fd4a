"""Cold and warm download time of a reward checkpoint from a local S3 API (moto's server mode).

    python benchmarks/storage_bench.py [--backbone smollm2-135m-instruct] [--repeats 3]

Exports a reward checkpoint of the backbone with an untrained head (export_checkpoint, parity certificate
included), uploads it to a moto server on a free loopback port, then times `storage.fetch_checkpoint`
into an empty cache (cold: list + download + rename) and again (warm: a cache hit), and the load that
follows (RewardScorer re-scores the parity canaries). Prints one JSON line per measurement and the load
average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    from cluster_fixtures import moto_s3

    from rlhf_rm.backbone import resolve_backbone
    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.model import load_reward_model, load_tokenizer
    from rlhf_rm.checkpoint.scorer import RewardScorer
    from rlhf_rm.checkpoint.storage import fetch_checkpoint, upload_dir

    torch.manual_seed(0)
    backbone = resolve_backbone(args.backbone)
    tokenizer = load_tokenizer(backbone)
    work = Path(tempfile.mkdtemp(prefix="rlhf_rm_storage_bench_"))
    local = export_checkpoint(load_reward_model(backbone, tokenizer), tokenizer, work / "checkpoint",
                            {"base_model": args.backbone, "max_length": 2048})
    size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    with moto_s3() as s3:
        s3.create_bucket("bench")
        started = time.perf_counter()
        uri = upload_dir(local, s3.uri("bench", "checkpoint"))
        report("upload", time.perf_counter() - started, size)
        for repeat in range(args.repeats):
            cache = work / f"cache{repeat}"
            cold = fetch_checkpoint(uri, cache_dir=cache)
            report("cold materialize", cold.seconds, cold.bytes, downloaded=cold.downloaded)
            warm = fetch_checkpoint(uri, cache_dir=cache)
            report("warm materialize (cache hit)", warm.seconds, warm.bytes, downloaded=warm.downloaded)
        started = time.perf_counter()
        scorer = RewardScorer(cold.path)
        report("load + parity check", time.perf_counter() - started, size, certified=scorer.certified)
    return 0


def report(what: str, seconds: float, size: int, **extra) -> None:
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps({"what": what, "seconds": round(seconds, 3), "MB": round(size / 1e6, 1),
                      "MB_per_s": round(size / 1e6 / seconds, 1) if seconds else None, "loadavg": loadavg,
                      **extra}), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
