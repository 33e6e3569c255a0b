"""Container healthcheck: exit 0 when every URL given answers GET with a 2xx, else 1.

The slim image has no curl or wget; this needs only the standard library. Used by the project
image's HEALTHCHECK and by docker-compose.yml (`python /app/infra/docker/healthcheck.py URL`).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def healthy(url: str, timeout: float = 4.0) -> bool:
    """True if GET `url` answers 2xx within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return False


def main(urls: list[str]) -> int:
    """Probe each URL; the exit status Docker reads (0 healthy, 1 unhealthy)."""
    if not urls:
        print("usage: healthcheck.py URL [URL ...]", file=sys.stderr)
        return 2
    return 0 if all(healthy(url) for url in urls) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
