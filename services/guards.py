"""ASGI guards in front of the app: header limits (431) on every path, body limit (413) on every path;
on the scoring paths, POST only (405), bearer-token auth (401) and JSON only (415). Every answer is JSON.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Literal

from mlstack.settings import get_settings

Scope = dict[str, Any]
GuardCause = Literal[
    "request_header_fields_too_large",
    "method_not_allowed",
    "unauthorized",
    "unsupported_media_type",
    "payload_too_large",
]
PROTECTED_PATHS = frozenset({"/predict", "/predict_batch"})
SCORING_METHOD = "POST"
# The body limit does not cover headers, and uvicorn's httptools parser (what `bentoml serve` runs) has no
# header limit of its own: an 8 MiB header reached the app. 16 KiB in all is h11's limit (uvicorn's other
# parser); 100 fields is Apache's LimitRequestFields.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100
JSON_MEDIA_TYPE = "application/json"


class RequestGuard:
    """Rejects oversized headers and bodies on every path; other methods than POST, unauthenticated calls and
    bodies not labelled `application/json` (optionally `; charset=utf-8`) on the scoring paths.

    JSON only: BentoML decodes a form, a multipart or a pickle body by its Content-Type (a malformed
    multipart body was a bare 500) and a `text/plain` or unlabelled body as JSON, which a page on any
    origin can send without a CORS preflight. Settings are read when the app is built (at serve time), not at import.
    """

    def __init__(
        self,
        app: Any,
        max_body_bytes: int | None = None,
        token: str | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_header_count: int = MAX_HEADER_COUNT,
    ) -> None:
        settings = get_settings()
        self.app = app
        self.max_body_bytes = max_body_bytes or settings.service_max_body_bytes
        secret = settings.service_api_token
        self.token = token if token is not None else (secret.get_secret_value() if secret else None)
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers", [])
        refusal = self._header_refusal(raw_headers)
        if refusal is not None:  # before decoding them
            await _json(send, 431, refusal, "request_header_fields_too_large")
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in raw_headers}
        scoring = scope.get("path") in PROTECTED_PATHS
        if scoring and scope.get("method") != SCORING_METHOD:
            await _json(send, 405, f"use {SCORING_METHOD}", "method_not_allowed", {"allow": SCORING_METHOD})
            return
        if self.token and scoring and not self._authorised(headers):
            await _json(send, 401, "missing or wrong bearer token", "unauthorized", {"www-authenticate": "Bearer"})
            return
        if scoring:
            refusal = _media_type_refusal(headers.get("content-type"))
            if refusal is not None:
                await _json(send, 415, refusal, "unsupported_media_type")
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

    def _header_refusal(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        if len(headers) > self.max_header_count:
            return f"{len(headers)} request header fields, over {self.max_header_count}"
        size = sum(len(key) + len(value) for key, value in headers)
        if size > self.max_header_bytes:
            key, value = max(headers, key=lambda header: len(header[0]) + len(header[1]))
            name = key[:64].decode("latin-1")
            return (
                f"request header fields over {self.max_header_bytes} bytes in all (largest: {name}, {len(value)} bytes)"
            )
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())


def _media_type_refusal(content_type: str | None) -> str | None:
    """Why a scoring body with this Content-Type is refused, or None for `application/json` in UTF-8."""
    if content_type is None:
        return f"send the body as {JSON_MEDIA_TYPE} (no Content-Type header)"
    media_type, *parameters = (part.strip() for part in content_type.split(";"))
    if media_type.lower() != JSON_MEDIA_TYPE:
        return f"send the body as {JSON_MEDIA_TYPE}, not {media_type or 'an empty Content-Type'}"
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"send {JSON_MEDIA_TYPE} in UTF-8, not {value.strip()}"
    return None


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
