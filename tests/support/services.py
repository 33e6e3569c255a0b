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
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql

from mlstack.settings import TELEMETRY_OFF

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
    process: subprocess.Popen
    log_path: Path
    artifacts_dir: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
                raise ServiceError(f"pg_ctl start failed: {result.stderr.strip()}\n{_tail(log_path)}")
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


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


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
    """Environment of the server: offline and quiet (no telemetry, no background job workers)."""
    env = dict(os.environ)
    env.update(
        {
            **TELEMETRY_OFF,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start_mlflow_server(backend_store_uri: str, workdir: Path, timeout: float = 180.0) -> MlflowServer:
    """Start `mlflow server` on a free port with artifacts proxied to `workdir/artifacts`; wait for /health."""
    artifacts_dir = workdir / "artifacts"
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "mlflow-server.log"
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=mlflow_server_environment(),
            start_new_session=True,  # its own process group, so stopping it also stops its workers
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", process, log_path, artifacts_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"mlflow server exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    stop_mlflow_server(server)
    raise ServiceError(f"mlflow server did not answer /health within {timeout:.0f}s:\n{_tail(log_path)}")


def stop_mlflow_server(server: MlflowServer, timeout: float = 15.0) -> None:
    """Terminate the server's process group; kill it if it does not stop in time."""
    if server.process.poll() is not None:
        return
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
