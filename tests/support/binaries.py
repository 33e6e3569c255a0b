"""System binaries some tests drive (Debian packages, `make system-deps`): found, or the test fails naming them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

INSTALL_HINT = (
    "{binary} was not found on PATH. Install the system packages the tests drive with `make system-deps` "
    "(apt-get install chromium prometheus prometheus-pushgateway wrk jq), or `apt-get install {package}`."
)


def require_binary(binary: str, package: str | None = None) -> Path:
    """The path of `binary` on PATH; fails the test (not a skip: CI installs it) naming the package to install."""
    found = shutil.which(binary)
    if found is None:
        pytest.fail(INSTALL_HINT.format(binary=binary, package=package or binary), pytrace=False)
    return Path(found)
