"""Settings and Redis-DB factories for tests: isolated state dirs, one logical Redis DB each."""

from __future__ import annotations

import itertools
from pathlib import Path

from mlstack.features.online_store import RedisTarget, make_client
from mlstack.settings import PROJECT_ROOT, Settings

DBS = itertools.cycle(range(1, 16))  # DB 0 is left to whoever owns an external server


def make_settings(state_dir: Path, target: RedisTarget | None = None, **overrides: object) -> Settings:
    """Settings isolated in ``state_dir``; pointing at ``target`` when given."""
    values: dict[str, object] = {
        "state_dir": state_dir,
        "feature_repo": PROJECT_ROOT / "feature_store",
        "redis_url": redis_url(target) if target else None,
    }
    values.update(overrides)
    return Settings(**values)


def redis_url(target: RedisTarget) -> str:
    """The redis:// (or rediss://) URL of `target`, with its password and DB."""
    return target.url()


def fresh_db(redis_server: RedisTarget) -> RedisTarget:
    """The next logical DB of the cycle, flushed: for tests that need more than one."""
    target = redis_server.with_db(next(DBS))
    make_client(target, Settings()).flushdb()
    return target
