"""An external Ray cluster for integration tests: two nodes started with `ray start`, as an operator starts them.

The head (`ray start --head`: GCS, Ray Client server, a raylet with 1 CPU) and a second node (`ray start
--address=<head>`, another raylet with 1 CPU) run as separate processes on this machine, each node in its
own temp dir under the test's tmp path, every port chosen free. Both run with `--block`, as KubeRay runs
them in pods: the `ray start` process stays in the foreground and owns its node's processes.

Each node is launched in a process group of its own (`mlstack.processes.launch`); teardown stops those
two groups (SIGTERM, then SIGKILL) and nothing else. Not `ray stop`: it kills every Ray on the machine,
including other test runs' and the suite's own local Ray.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from mlstack import processes
from mlstack.processes import ProcessRecord, free_port, tail
from mlstack.settings import TELEMETRY_OFF

NODE_CPUS = 1
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's floor is 75 MiB; two nodes stay well under 1 GiB in all
START_TIMEOUT = 120.0  # seconds for both nodes to come up on a busy 2-core machine
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL at teardown
# Ray refuses a node whose socket paths (`<temp dir>/session_<date>_<pid>/sockets/plasma_store`) exceed
# AF_UNIX's 107 bytes: a cluster directory longer than this moves to a short one under the system temp dir.
MAX_DIRECTORY_CHARS = 36


# Ray 2.60 turns token authentication on for `ray start` when ~/.ray/auth_token exists (any local `ray.init()`
# on the machine writes one), and for a process that started a local Ray (it sets RAY_AUTH_MODE=token in
# os.environ). Both ends must agree: a driver in token mode refuses the workers' calls without a token
# (a task fetching an object the driver put fails with OwnerDiedError). The test cluster, open to 127.0.0.1
# only, runs without, whatever the home directory holds; the tests' process uses the same mode meanwhile.
AUTH_MODE = "disabled"


class RayClusterError(RuntimeError):
    """The external Ray cluster did not start; the message names the node's log."""


@dataclass(frozen=True)
class ExternalRayCluster:
    """A running two-node cluster: its addresses and the `ray start` processes that own it."""

    host: str
    gcs_port: int
    client_port: int
    directory: Path
    nodes: tuple[ProcessRecord, ...]

    @property
    def gcs_address(self) -> str:
        """What a driver inside the cluster's network passes as MLSTACK_RAY_ADDRESS (`host:port`)."""
        return f"{self.host}:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        """The Ray Client address (`ray://host:port`): what the Kubernetes overlay gives the flow runs."""
        return f"ray://{self.host}:{self.client_port}"


def ray_environment() -> dict[str, str]:
    """The environment of the `ray start` processes: this one's, without telemetry or `uv run` propagation."""
    env = {**os.environ, **TELEMETRY_OFF, "RAY_USAGE_STATS_ENABLED": "0"}
    # As in mlstack.compute.ensure_ray: a process under `uv run` would start Ray's workers through `uv run`.
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    env["RAY_AUTH_MODE"] = AUTH_MODE
    return env


def start_cluster(directory: Path, host: str = "127.0.0.1") -> ExternalRayCluster:
    """Start the head and a second node, each with `NODE_CPUS` CPUs; return once both are alive in the GCS.

    The nodes' temp dirs are `head` and `node` under `directory` (or under a short new temp dir, removed with
    the cluster, if `directory`'s path is too long for Ray's sockets).
    """
    if len(str(directory)) > MAX_DIRECTORY_CHARS:
        directory = Path(tempfile.mkdtemp(prefix="mlstack-ray-"))
    ray = Path(sys.executable).with_name("ray")
    gcs_port, client_port = free_port(), free_port()
    nodes: list[ProcessRecord] = []
    try:
        head = _node_command(ray, directory / "head", "--head", f"--port={gcs_port}")
        head += [f"--ray-client-server-port={client_port}", "--include-dashboard=false"]
        head.append(f"--dashboard-port={free_port()}")  # the head still runs a minimal dashboard, on 8265 by default
        nodes.append(_launch("ray-head", head, directory / "head"))
        _wait_for_port(host, gcs_port, nodes[0])
        worker = _node_command(ray, directory / "node", f"--address={host}:{gcs_port}")
        nodes.append(_launch("ray-worker", worker, directory / "node"))
        cluster = ExternalRayCluster(host, gcs_port, client_port, directory, tuple(nodes))
        _wait_for_nodes(cluster, 2)
        _wait_for_port(host, client_port, nodes[0])
    except BaseException:
        stop_cluster(ExternalRayCluster(host, gcs_port, client_port, directory, tuple(nodes)), remove=False)
        raise
    return cluster


def stop_cluster(cluster: ExternalRayCluster, remove: bool = True) -> None:
    """Stop the cluster's own processes (its two process groups), then remove its directory."""
    for node in reversed(cluster.nodes):  # the second node first: it would otherwise retry the GCS for a while
        # SIGTERM to the group stops the raylet and GCS at once; the `ray start` process itself then drains for a
        # while (it has nothing left to drain): a throwaway cluster is killed after a short grace.
        processes.stop(node, timeout=STOP_GRACE)
    for survivor in own_processes(cluster):  # one that left its node's process group still names our directory
        survivor.kill()
    if remove:
        shutil.rmtree(cluster.directory, ignore_errors=True)


def alive_nodes(cluster: ExternalRayCluster) -> list[dict[str, object]]:
    """The cluster's alive nodes as the GCS lists them (`NodeID`, `Resources`), read without joining as a driver."""
    from ray._private.state import GlobalState
    from ray._raylet import GcsClientOptions

    state = GlobalState()
    state._initialize_global_state(
        GcsClientOptions.create(cluster.gcs_address, None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False)
    )
    try:
        return [node for node in state.node_table() if node["Alive"]]
    finally:
        state.disconnect()


def _node_command(ray: Path, directory: Path, *where: str) -> list[str]:
    """`ray start` of one node: its own temp dir, 1 CPU, a small object store, free ports for everything fixed."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        str(ray),
        "start",
        *where,
        "--block",
        "--disable-usage-stats",
        f"--temp-dir={directory}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={NODE_CPUS}",
        "--num-gpus=0",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        # Ray's fixed defaults (agent 52365, runtime-env agent, metrics) would collide between the two nodes
        # and with any other Ray on the machine; node and object manager ports would be random anyway.
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


def _launch(name: str, command: list[str], directory: Path) -> ProcessRecord:
    return processes.launch(name, command, log=directory / "ray-start.log", env=ray_environment(), cwd=directory)


def _check_running(node: ProcessRecord) -> None:
    if not processes.is_running(node):
        raise RayClusterError(f"`ray start` of {node.name} exited; its log {node.log}:\n{tail(node.log, 30)}")


def _wait_for_port(host: str, port: int, node: ProcessRecord) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        _check_running(node)
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((host, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RayClusterError(f"{node.name} did not listen on {host}:{port}; its log {node.log}:\n{tail(node.log)}")
        time.sleep(0.2)


def _wait_for_nodes(cluster: ExternalRayCluster, count: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while len(alive_nodes(cluster)) < count:
        for node in cluster.nodes:
            _check_running(node)
        if time.monotonic() > deadline:
            logs = "\n".join(f"{node.name}: {tail(node.log)}" for node in cluster.nodes)
            raise RayClusterError(f"fewer than {count} Ray nodes joined the GCS at {cluster.gcs_address}:\n{logs}")
        time.sleep(0.5)


def own_processes(cluster: ExternalRayCluster) -> list[psutil.Process]:
    """Processes still alive whose command line names the cluster's directory (its nodes' processes)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(cluster.directory) in " ".join(
                proc.info["cmdline"] or ()
            ):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found
