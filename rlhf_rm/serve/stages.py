"""When an HTTP request entered the replica (perf_counter), for the per-stage timings (`recent_stages`).

A module of its own: Serve pickles the ingress app, and a ContextVar cannot be pickled, but a module is
pickled by reference."""

import contextvars

HTTP_ENTRY: contextvars.ContextVar = contextvars.ContextVar("rlhf_rm_http_entry", default=None)
