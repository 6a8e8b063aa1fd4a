"""Start the reward pool:  python -m rlhf_rm.serve CHECKPOINT [key=value ...]

Keys are those of conf/serve/default.yaml (live ones may be given bare): e.g.
    python -m rlhf_rm.serve outputs/run/checkpoint num_replicas=2 port=8001 normalize=true
Hot reload a running pool (same app name) without dropping requests:
    python -m rlhf_rm.serve NEW_CHECKPOINT ray_address=auto detach=true
"""

from __future__ import annotations

import argparse
import json
import signal
import threading

from rlhf_rm.serve.app import start
from rlhf_rm.serve.config import load_serve_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_rm.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint directory written by training, or its URI (s3://...)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/serve/default.yaml")
    parser.add_argument("--config", default=None, help="another serve YAML instead of conf/serve/default.yaml")
    args = parser.parse_args(argv)
    kwargs = {"path": args.config} if args.config else {}
    config = load_serve_config(args.checkpoint, args.overrides, **kwargs)

    from rlhf_rm.checkpoint.storage import StorageError

    try:
        handle = start(config)
    except StorageError as error:  # the checkpoint URI, checked before any replica starts
        parser.exit(2, f"{error}\n")
    info = handle.info.remote().result(timeout_s=120)
    print(json.dumps({"serving": f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}",
                      "app": config.app_name, **info}), flush=True)
    if config.detach:
        return 0
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    from ray import serve

    serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
