"""Real PostgreSQL and MLflow servers for integration tests, started and stopped by the suite.

PostgreSQL: a throwaway cluster (`initdb` + `pg_ctl`) in a temp dir on a free 127.0.0.1 port, trust
auth, no durability (fsync off: it is thrown away). As root, PostgreSQL refuses to run, so the
binaries run as the `postgres` system user (`runuser`) and the temp dir is chowned to it. Each test
that needs a database creates its own (`create_database`) and drops it after (`drop_database`).

MLflow: `python -m mlflow server` on a free port, its backend store a database of that cluster and
its artifacts proxied to a temp dir (`mlflow-artifacts:/`), as a shared tracking server would be.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

from mlstack import processes
from mlstack.processes import ProcessRecord, free_port, tail
from mlstack.settings import TELEMETRY_OFF
from mlstack.stack import mlflow as stack_mlflow

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or in /usr/lib/postgresql/*/bin. "
    "Install them (`apt-get install postgresql`) or point the suite at a server with "
    "MLSTACK_TEST_POSTGRES_URL=postgresql://user:password@host:port/postgres."
)

INITDB_OPTIONS = ("--encoding=UTF8", "--locale=C", "--no-sync")


class ServiceError(RuntimeError):
    """A test service could not be started; the message says why and where its log is."""


@dataclass(frozen=True)
class PostgresCluster:
    """A running throwaway cluster: `url` points at its `postgres` maintenance database."""

    url: str
    data_dir: Path
    bin_dir: Path
    port: int


@dataclass(frozen=True)
class MlflowServer:
    """A running `mlflow server`: `url` is its tracking URI."""

    url: str
    process: ProcessRecord
    log_path: Path
    artifacts_dir: Path


def find_postgres_bin() -> Path | None:
    """Directory holding `initdb` and `pg_ctl`: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    candidates = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if (Path(d) / "pg_ctl").exists()]
    candidates.sort(key=lambda d: _version_key(d.parent.name), reverse=True)
    return candidates[0] if candidates else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _as_postgres_user() -> tuple[list[str], int | None, int | None]:
    """Command prefix, uid and gid to run PostgreSQL binaries with (root cannot run them)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServiceError(
            "Running as root, PostgreSQL must run as another user, but there is no `postgres` system user. "
            + INSTALL_HINT
        ) from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServiceError("Running as root, `runuser` is needed to start PostgreSQL as the `postgres` user.")
    return [runuser, "-u", "postgres", "--"], user.pw_uid, user.pw_gid


def start_postgres(bin_dir: Path, attempts: int = 3) -> PostgresCluster:
    """initdb a cluster in a fresh temp dir and start it on a free 127.0.0.1 port; wait until it accepts."""
    prefix, uid, gid = _as_postgres_user()
    # Directly under the system temp dir: pytest's own tmp dirs are 0700 root, closed to `postgres`.
    root = Path(tempfile.mkdtemp(prefix="mlstack-pg-"))
    data_dir = root / "data"
    log_path = root / "postgres.log"
    if uid is not None:
        os.chown(root, uid, gid)
    try:
        _run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", *INITDB_OPTIONS],
            "initdb",
        )
        for attempt in range(attempts):
            port = free_port()
            options = " ".join(
                [
                    f"-p {port}",
                    "-c listen_addresses=127.0.0.1",
                    f"-c unix_socket_directories={root}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=100",
                ]
            )
            start = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_path), "-o", options]
            result = subprocess.run([*start, "-w", "-t", "60", "start"], capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return PostgresCluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", data_dir, bin_dir, port)
            if attempt == attempts - 1:  # the port may have been taken between choosing and binding: retry
                raise ServiceError(f"pg_ctl start failed: {result.stderr.strip()}\n{tail(log_path, 30)}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


def stop_postgres(cluster: PostgresCluster) -> None:
    """Stop the cluster (immediate: it is thrown away) and remove its files."""
    prefix, _, _ = _as_postgres_user()
    subprocess.run(
        [*prefix, str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.data_dir), "-m", "immediate", "-w", "stop"],
        capture_output=True,
        check=False,
    )
    shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"{what} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")


def create_database(admin_url: str) -> str:
    """Create an empty `mlstack_test_<random>` database; returns its libpq URL."""
    name = f"mlstack_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection(admin_url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of `url`, disconnecting whoever still uses it."""
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    with _admin_connection(admin_url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def _admin_connection(url: str) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection (CREATE/DROP DATABASE cannot run in a transaction), closed on exit."""
    conn = psycopg2.connect(url, connect_timeout=10)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def _with_database(url: str, name: str) -> str:
    base, _, rest = url.rpartition("/")
    query = rest.split("?", 1)[1] if "?" in rest else ""
    return f"{base}/{name}" + (f"?{query}" if query else "")


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form (psycopg2 driver) of a libpq `postgresql://` URL."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


def mlflow_server_environment() -> dict[str, str]:
    """Environment of the server: ours, offline and quiet (no telemetry, no background job workers)."""
    merged = {**os.environ, **TELEMETRY_OFF, "PYTHONUNBUFFERED": "1", **stack_mlflow.SERVER_ENVIRONMENT}
    return {key: value for key, value in merged.items() if value is not None}


def start_mlflow_server(backend_store_uri: str, workdir: Path, timeout: float = 180.0) -> MlflowServer:
    """Start `mlflow server` on a free port with artifacts proxied to `workdir/artifacts`; wait for /health."""
    artifacts_dir = workdir / "artifacts"
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mlflow-server.log"
    port = free_port()
    record = processes.launch(
        "mlflow server",
        stack_mlflow.server_command(backend_store_uri, port, ["--artifacts-destination", str(artifacts_dir)]),
        log=log_path,
        env=mlflow_server_environment(),
        cwd=workdir,
        url=f"http://127.0.0.1:{port}",
    )
    processes.wait_healthy(record, stack_mlflow.mlflow_healthy, timeout, error=ServiceError, poll=0.25)
    return MlflowServer(record.url, record, log_path, artifacts_dir)


def stop_mlflow_server(server: MlflowServer, timeout: float = 15.0) -> None:
    """Stop the server's process group; kill what is left if it does not stop in time."""
    processes.stop(server.process, timeout)
