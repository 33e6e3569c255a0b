"""Redis addressing: URL parsing and the Feast connection string (no server needed)."""

import pytest

from mlstack.features.online_store import OnlineStoreError, RedisTarget, feast_connection_string, parse_redis_url
from mlstack.settings import Settings


def test_parse_redis_url_reads_password_db_and_tls():
    target = parse_redis_url("rediss://alice:s%3Acret@cache.example:6380/3")
    assert target == RedisTarget("cache.example", 6380, "s:cret", "alice", 3, True)


def test_parse_redis_url_defaults_port_and_db():
    assert parse_redis_url("redis://localhost") == RedisTarget("localhost", 6379)


def test_parse_redis_url_rejects_other_schemes():
    with pytest.raises(OnlineStoreError, match="redis://"):
        parse_redis_url("http://localhost:6379")


def test_describe_never_shows_password():
    assert "secret" not in RedisTarget("h", 1, password="secret").describe()


def test_feast_connection_string_carries_timeouts_and_no_retry_storm():
    settings = Settings(redis_socket_timeout=0.25, redis_connect_timeout=0.5)
    conn = feast_connection_string(RedisTarget("127.0.0.1", 7000, "pw", None, 2, True), settings)
    parts = conn.split(",")
    assert parts[0] == "127.0.0.1:7000"
    assert {
        "db=2",
        "socket_timeout=0.25",
        "socket_connect_timeout=0.5",
        "retry=null",
        "password=pw",
        "ssl=true",
    } <= set(parts)


def test_feast_connection_string_refuses_comma_in_password():
    with pytest.raises(OnlineStoreError, match="','"):
        feast_connection_string(RedisTarget("h", 1, password="a,b"), Settings())
