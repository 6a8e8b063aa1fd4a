"""A real S3 API (moto's server mode, in a thread on a free loopback port) and a two-node Ray cluster on
one machine (`ray.cluster_utils.Cluster`, head {"node_a": 1}, worker {"node_b": 1}, its own temp dir)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from test_serve import free_port  # one free-port helper for every test server

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    endpoint: str  # host:port

    def uri(self, bucket: str, path: str = "") -> str:
        """s3://bucket/path with the query settings that reach this server."""
        return f"s3://{bucket}/{path.strip('/')}?endpoint_override={self.endpoint}&scheme=http"

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True,
                                 allow_bucket_deletion=True)

    def create_bucket(self, name: str) -> str:
        self.filesystem().create_dir(name)
        return name

    def set_auth(self, free_actions: float) -> None:
        """Moto checks credentials and IAM policies after `free_actions` more requests (inf: never)."""
        import urllib.request

        request = urllib.request.Request(f"http://{self.endpoint}/moto-api/reset-auth",
                                         data=str(free_actions).encode(), method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()


@contextmanager
def moto_s3():
    """Moto's S3 server on 127.0.0.1:<free port>, with the standard AWS variables set in this process (and
    so in every Ray node started while it runs)."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"127.0.0.1:{port}")
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def two_node_cluster(cpus_per_node: int = 2):
    """A head ({"node_a": 10}) and a worker node ({"node_b": 10}) on this machine, each a raylet of its own,
    under a temp dir of their own; ray.init joins it. Ten units each, so a replica pinned with {"node_b": 1}
    and its surge replacement during a reload fit together. RAY_TMPDIR points there while it runs: Cluster writes
    and removes the "current cluster" address file under it, never /tmp/ray (other local clusters' file)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    root = tempfile.mkdtemp(prefix="rmc_", dir="/tmp")  # short: Ray's unix socket paths live under it
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = root
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": cpus_per_node, "resources": {"node_a": 10}, "temp_dir": os.path.join(root, "ray"),
            "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port()})
        cluster.add_node(num_cpus=cpus_per_node, resources={"node_b": 10})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(root, ignore_errors=True)
