"""ASGI guards in front of the scoring endpoints: body limit (413), bearer-token auth (401), JSON only (415)."""

from __future__ import annotations

import hmac
import json
from typing import Any, Literal

from mlstack.settings import get_settings

Scope = dict[str, Any]
GuardCause = Literal["unauthorized", "payload_too_large", "unsupported_media_type"]
PROTECTED_PATHS = frozenset({"/predict", "/predict_batch"})
# Media types BentoML would decode as something other than JSON (forms, pickle): the scoring API takes JSON only.
# A malformed multipart body made BentoML answer a bare 500, and its 415 for pickle is a JSON array, not an object.
NON_JSON_MEDIA_TYPES = frozenset(
    {"multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle"}
)


class RequestGuard:
    """Rejects oversized bodies on every path; unauthenticated and non-JSON calls to the scoring paths.

    Settings are read when the app is built (at serve time), not at import.
    """

    def __init__(self, app: Any, max_body_bytes: int | None = None, token: str | None = None) -> None:
        settings = get_settings()
        self.app = app
        self.max_body_bytes = max_body_bytes or settings.service_max_body_bytes
        secret = settings.service_api_token
        self.token = token if token is not None else (secret.get_secret_value() if secret else None)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        if self.token and scope.get("path") in PROTECTED_PATHS and not self._authorised(headers):
            await _json(send, 401, "missing or wrong bearer token", "unauthorized", {"www-authenticate": "Bearer"})
            return
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if scope.get("path") in PROTECTED_PATHS and media_type in NON_JSON_MEDIA_TYPES:
            await _json(send, 415, f"send the body as application/json, not {media_type}", "unsupported_media_type")
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _json(send, 413, f"request body over {self.max_body_bytes} bytes", "payload_too_large")
            return
        body, too_large = await _read_body(receive, self.max_body_bytes)
        if too_large:  # chunked or lying Content-Length
            await _json(send, 413, f"request body over {self.max_body_bytes} bytes", "payload_too_large")
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: disconnects

    return replay


async def _json(send: Any, status: int, message: str, cause: GuardCause, extra: dict[str, str] | None = None) -> None:
    payload = json.dumps({"error": message, "cause": cause}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(key.encode(), value.encode()) for key, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
