"""Real Prometheus and Pushgateway servers (the Debian binaries) on free loopback ports, and PromQL queries.

The Prometheus configuration is the repository's (infra/prometheus/prometheus.yml) with its targets
pointed at native addresses, so what is checked is the scrape configuration compose and Kubernetes use.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from mlstack import processes
from mlstack.processes import free_port
from tests.support.binaries import require_binary

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "infra" / "prometheus" / "prometheus.yml"
SCRAPE_INTERVAL = "1s"  # the repository's 15s would make a test wait; only the interval differs


@dataclass(frozen=True)
class Server:
    """A running server: its base URL and its process record."""

    url: str
    process: processes.ProcessRecord


def _serve(name: str, command: list[str], root: Path, ready_path: str, port: int) -> Server:
    url = f"http://127.0.0.1:{port}"
    record = processes.launch(
        name, command, log=root / f"{name}.log", env={"PATH": os.environ.get("PATH", "")}, cwd=root, url=url
    )
    processes.wait_healthy(record, lambda _: processes.http_ok(f"{url}{ready_path}"), timeout=60)
    return Server(url, record)


@contextlib.contextmanager
def pushgateway(root: Path) -> Iterator[Server]:
    """`prometheus-pushgateway` on a free port, in memory (Debian defaults to a shared file); stopped after."""
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    command = [str(binary), f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    server = _serve("pushgateway", command, root, "/-/ready", port)
    try:
        yield server
    finally:
        processes.stop(server.process, timeout=10)


def native_config(targets: Mapping[str, str]) -> dict[str, Any]:
    """The repository's Prometheus config: only the jobs in `targets` (job -> native host:port), scraped every 1s."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    jobs = [job for job in config["scrape_configs"] if job["job_name"] in targets]
    for job in jobs:
        job["static_configs"] = [{**group, "targets": [targets[job["job_name"]]]} for group in job["static_configs"]]
    missing = set(targets) - {job["job_name"] for job in jobs}
    assert not missing, f"{PROMETHEUS_CONFIG} has no scrape job {sorted(missing)}"
    config["scrape_configs"] = jobs
    return config


@contextlib.contextmanager
def prometheus(root: Path, config: Mapping[str, Any]) -> Iterator[Server]:
    """`prometheus` on a free port with `config` and a fresh TSDB under `root`; stopped after."""
    binary = require_binary("prometheus")
    port = free_port()
    config_file = root / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(dict(config)))
    command = [
        str(binary),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={root / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    server = _serve("prometheus", command, root, "/-/ready", port)
    try:
        yield server
    finally:
        processes.stop(server.process, timeout=10)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector `promql` evaluates to now (Prometheus's HTTP API)."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for_series(url: str, promql: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Poll `promql` until it returns series (scrapes are periodic); the last answer, possibly empty, at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)
