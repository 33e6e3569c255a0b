"""The OpenAPI document the service publishes at `/docs.json`: BentoML's, with the error responses it really sends.

BentoML documents every API's errors as 400/404/500 `{"error": string, "detail": string}`. What the
service sends instead (checked by tests/integration/test_service_schema.py with schemathesis):

- 400 from BentoML's request validation: `detail` is the list of pydantic errors, one per bad field;
- 401, 413, 415 and 431 from the guards (services/guards.py), 503 when the online store is down or hung,
  and 500 from the service: `{"error", "cause"}`; BentoML's own 500 has no `cause`;
- never 404 on an API route; another method than POST on one gets a JSON 405 from the guards (not an
  operation of the document, so not in it).

`published_spec` rewrites the error responses of every API operation accordingly; `OpenAPIDocument`
serves the result (BentoML offers no hook for the responses of an API, so the document is corrected
where it is served).
"""

from __future__ import annotations

import json
from typing import Any, get_args

from mlstack.serving.scoring import ErrorCause
from services.guards import MAX_HEADER_BYTES, MAX_HEADER_COUNT, GuardCause

REF = "#/components/schemas/{}"
CAUSES = (*get_args(GuardCause), *get_args(ErrorCause))  # every cause the service itself answers with

ERROR_BODY = {
    "type": "object",
    "title": "ErrorBody",
    "description": "An error the service answered itself: a message and a machine-readable cause.",
    "required": ["error", "cause"],
    "properties": {
        "error": {"type": "string", "title": "Message"},
        "cause": {
            "type": "string",
            "title": "Cause",
            "description": f"{', '.join(CAUSES[:-1])} or {CAUSES[-1]}.",
        },
    },
}
INTERNAL_ERROR_BODY = {
    "type": "object",
    "title": "InternalErrorBody",
    "description": "An unexpected error; details are in the service log. `cause` is absent when BentoML answered.",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "title": "Message"},
        "cause": {"type": "string", "title": "Cause", "enum": ["internal"]},
    },
}
VALIDATION_ISSUE = {
    "type": "object",
    "title": "ValidationIssue",
    "description": "One invalid field (a pydantic error).",
    "required": ["type", "loc", "msg"],
    "properties": {
        "type": {"type": "string", "title": "Error type"},
        "loc": {
            "type": "array",
            "title": "Location",
            "description": "Path to the field: names and list indices; empty for the whole body.",
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        },
        "msg": {"type": "string", "title": "Message"},
        "url": {"type": "string", "title": "Documentation"},
    },
}
VALIDATION_ERROR_BODY = {
    "type": "object",
    "title": "ValidationErrorBody",
    "description": "The request body is not valid JSON or breaks the request schema; `detail` names each bad field.",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "title": "Message"},
        "detail": {"type": "array", "title": "Invalid fields", "items": {"$ref": REF.format("ValidationIssue")}},
    },
}
SCHEMAS = {
    "ErrorBody": ERROR_BODY,
    "InternalErrorBody": INTERNAL_ERROR_BODY,
    "ValidationIssue": VALIDATION_ISSUE,
    "ValidationErrorBody": VALIDATION_ERROR_BODY,
}


def _response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(schema)}}}}


ERROR_RESPONSES = {
    "400": _response(
        "Invalid request: not JSON, or a field breaks the schema, wrong JSON types included (each is named).",
        "ValidationErrorBody",
    ),
    "401": _response("Missing or wrong bearer token (only when MLSTACK_SERVICE_API_TOKEN is set).", "ErrorBody"),
    "413": _response("Request body over MLSTACK_SERVICE_MAX_BODY_BYTES.", "ErrorBody"),
    "415": _response(
        "The body is not labelled application/json (optionally ; charset=utf-8): form, pickle, text/plain or none.",
        "ErrorBody",
    ),
    "431": _response(
        f"Request header fields over {MAX_HEADER_BYTES} bytes in all, or more than {MAX_HEADER_COUNT} of them.",
        "ErrorBody",
    ),
    "500": _response("Internal error; the service log has the traceback.", "InternalErrorBody"),
    "503": _response("The online feature store is unreachable or timed out (cause says which).", "ErrorBody"),
}


def published_spec(spec: dict[str, Any], api_routes: set[str]) -> dict[str, Any]:
    """BentoML's spec (`Service.openapi_spec.asdict()`) with the real error responses of `api_routes`; a new dict."""
    spec = json.loads(json.dumps(spec))
    spec.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    for route, item in spec.get("paths", {}).items():
        if route not in api_routes:
            continue
        for operation in item.values():
            responses = operation.get("responses", {})
            success = {code: value for code, value in responses.items() if str(code).startswith("2")}
            operation["responses"] = {**success, **ERROR_RESPONSES}
    return spec


class OpenAPIDocument:
    """ASGI middleware answering `GET /docs.json` with `published_spec` of the service (built once)."""

    def __init__(self, app: Any, service: Any, path: str = "/docs.json") -> None:
        self.app = app
        self.service = service
        self.path = path
        self._body: bytes | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if self._body is None:
            routes = {api.route for api in self.service.apis.values()}
            self._body = json.dumps(published_spec(self.service.openapi_spec.asdict(), routes)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self._body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self._body})
