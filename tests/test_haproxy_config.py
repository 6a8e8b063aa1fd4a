"""haproxy_ingress without Ray: the config edits the `rlhf-rm-haproxy` wrapper makes, the controller environment
for ingress=haproxy, and the setting's validation (the real HAProxy runs in test_serve_haproxy.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlhf_rm.serve.haproxy_ingress import (REAL_BINARY_ENV, SHIM, controller_env, real_binary, rewrite_config,
                                           unavailable_response)

# The lines of Ray 2.60's haproxy_templates.py that the wrapper edits, as Ray renders them, and lines it must not touch.
RAY_CONFIG = """defaults
    mode http
    option abortonclose
    option redispatch 1
    retry-on conn-failure
    errorfile 502 /tmp/haproxy-serve/x/500.http
    errorfile 503 /tmp/haproxy-serve/x/500.http
    errorfile 504 /tmp/haproxy-serve/x/500.http
frontend prometheus
    bind :9101
frontend http_frontend
    bind 127.0.0.1:8000
frontend grpc_frontend
    bind 0.0.0.0:9000 proto h2
backend http-app
    server SERVE_REPLICA_a 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
"""


def test_rewrite_binds_admin_ports_to_loopback_maps_errors_to_503_and_closes_replica_connections():
    out = rewrite_config(RAY_CONFIG, "127.0.0.1", "/cfg/503-retry.http")
    assert "    bind 127.0.0.1:9101\n" in out and "  bind 127.0.0.1:8404\n" in out
    assert "bind :" not in out and "bind *:" not in out
    # Binds that name a host are an operator's choice: the pool's own and a deliberate 0.0.0.0 stay.
    assert "    bind 127.0.0.1:8000\n" in out and "    bind 0.0.0.0:9000 proto h2\n" in out
    for code in ("502", "503", "504"):
        assert f"    errorfile {code} /cfg/503-retry.http\n" in out
    assert "500.http" not in out
    assert "    option redispatch 1\n    option http-server-close\n" in out
    assert out.count("http-server-close") == 1
    assert rewrite_config(out, "127.0.0.1", "/cfg/503-retry.http") == out  # a second pass changes nothing
    assert rewrite_config(RAY_CONFIG, "10.0.0.5", "/e").count("bind 10.0.0.5:") == 2


def test_unavailable_response_is_a_complete_503_with_retry_after():
    head, _, body = unavailable_response().partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Retry-After"] == "1" and int(headers["Content-Length"]) == len(body.encode())


def test_controller_env_switches_haproxy_on_through_the_wrapper(monkeypatch, tmp_path):
    assert controller_env("proxy") == {}
    with pytest.raises(ValueError, match="ingress"):
        controller_env("nginx")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    monkeypatch.setenv("RLHF_RM_HAPROXY_ADMIN_HOST", "10.0.0.5")
    own = tmp_path / "haproxy"  # an operator's own HAProxy
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(own))
    env = controller_env("haproxy")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).name == SHIM and os.access(env["RAY_SERVE_HAPROXY_BINARY_PATH"],
                                                                              os.X_OK)
    assert env[REAL_BINARY_ENV] == str(own)  # the wrapper runs the operator's binary
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="not an HAProxy"):
        controller_env("haproxy")  # refused where the pool is started, not inside Ray's HAProxy manager
    assert "empty-response" in env["RAY_SERVE_HAPROXY_RETRY_ON"]
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404" and env["RLHF_RM_HAPROXY_ADMIN_HOST"] == "10.0.0.5"


def test_real_binary_is_never_the_wrapper(monkeypatch, tmp_path):
    monkeypatch.delenv(REAL_BINARY_ENV, raising=False)
    wrapper = tmp_path / SHIM
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(wrapper))  # what the HAProxy manager's env says
    found = real_binary()
    assert Path(found).name != SHIM and os.access(found, os.X_OK)
    assert os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(wrapper)  # left as it was
    monkeypatch.setenv(REAL_BINARY_ENV, str(wrapper))
    with pytest.raises(RuntimeError, match="not an HAProxy"):
        real_binary()


def test_serve_config_refuses_an_unknown_ingress():
    from rlhf_rm.serve.config import ServeConfig

    assert ServeConfig().ingress == "proxy"
    with pytest.raises(ValueError, match="ingress"):
        ServeConfig.from_dict({"ingress": "nginx"})


def test_the_lines_the_wrapper_edits_are_in_rays_template():
    """If a Ray upgrade changes these lines, the wrapper's edits would silently stop applying."""
    from ray.serve._private import haproxy_templates

    source = "\n".join(v for v in vars(haproxy_templates).values() if isinstance(v, str))
    for line in ("bind *:{{ config.stats_port }}", "bind :{{ config.metrics_port }}",
                 "errorfile 502 {{ config.error_file_path }}", "errorfile 503 {{ config.error_file_path }}",
                 "errorfile 504 {{ config.error_file_path }}", "option redispatch 1"):
        assert line in source, line


def render_ray_config(tmp_path: Path, host: str, port: int = 8000) -> str:
    """The HAProxy config Ray 2.60 writes for a pool started with `host`, rendered by Ray's own HAProxyApi."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    directory = tmp_path / host.replace(":", "_")
    api = HAProxyApi(HAProxyConfig(http_options=HTTPOptions(host=host, port=port),
                                   socket_path=str(directory / "admin.sock")),
                     config_file_path=str(directory / "haproxy.cfg"))
    api._generate_config_file_internal()
    return (directory / "haproxy.cfg").read_text()


def binds_by_section(text: str) -> dict:
    """{section header: [its bind lines]} of an HAProxy config."""
    binds, section = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
        elif line.strip().startswith("bind "):
            binds.setdefault(section, []).append(line.strip())
    return binds


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1"])
def test_rays_rendered_config_keeps_the_pools_bind_and_puts_admin_on_loopback(tmp_path, host):
    rendered = render_ray_config(tmp_path, host)
    before = binds_by_section(rendered)
    out = rewrite_config(rendered, "127.0.0.1", "/cfg/503-retry.http")
    after = binds_by_section(out)
    expected_pool_bind = "bind *:8000" if host in ("0.0.0.0", "::") else f"bind {host}:8000"
    assert before["frontend http_frontend"] == after["frontend http_frontend"] == [expected_pool_bind]
    admin = {section: lines for section, lines in after.items() if section != "frontend http_frontend"}
    assert admin, "Ray's config has no stats/metrics section any more"
    for section, lines in admin.items():
        for line in lines:
            assert line.startswith("bind 127.0.0.1:"), (section, line)
    sockets = [line.split() for line in out.splitlines() if line.strip().startswith("stats socket")]
    assert sockets and all(words[words.index("mode") + 1] == "600" for words in sockets)
    assert "mode 666" in rendered  # what Ray renders (if Ray changes it, this test says so)
