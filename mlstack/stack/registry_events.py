"""MLflow registry events into the stack: a webhook receiver for `@champion` moves, and its registration.

MLflow's webhooks (experimental; SQL backend only) are sent by the tracking server, HMAC-signed, and
kept only in its memory: a delivery lost to a restart is never retried. So the webhook is the fast
path and the poll (flow `watch-champion`) is the source of truth; both call
`registry.observe_champion`, which records a move once and announces it once.

Signature (MLflow's `webhooks.delivery`): header ``X-MLflow-Signature: v1,<base64 HMAC-SHA256>`` of
``<delivery id>.<timestamp>.<body>`` with the webhook's secret; ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp`` carry the other two parts. A delivery older than `MAX_AGE_SECONDS` is refused
(a replayed one).

MLflow refuses http:// and private addresses (127.0.0.1) by default: the local MLflow server is started
with ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES`` and ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS`` set (`stack.mlflow`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlstack.processes import ProcessRecord, free_port, http_ok
from mlstack.settings import Settings
from mlstack.stack.components import (
    LocalStackError,
    launch_process,
    running_process,
    state_secret,
    stop_process,
    wait_ready,
)
from mlstack.training.champion_history import ChampionMove

logger = logging.getLogger(__name__)

PROMOTED_EVENT = "mlstack.model.promoted"
WEBHOOK_NAME = "mlstack-champion"
WEBHOOK_RECEIVER = "mlflow-webhooks"  # the receiver process of the local stack
WEBHOOK_PATH = "/mlflow-webhook"
ALIAS_CREATED: Final = "model_version_alias.created"
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
MAX_AGE_SECONDS = 300
MAX_BODY_BYTES = 64 * 1024

Announce = Callable[[ChampionMove], None]


class WebhookRejected(Exception):
    """A delivery refused before anything was done: the HTTP status and why."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Reply:
    """What the receiver answers: a status and a JSON body."""

    status: HTTPStatus
    body: dict[str, str]


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise WebhookRejected (401) unless `body` carries a valid, recent MLflow signature made with `secret`."""
    lowered = {key.lower(): value for key, value in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER.lower())
    delivery = lowered.get(DELIVERY_HEADER.lower())
    timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    if not signature or not delivery or not timestamp:
        missing = [h for h in (SIGNATURE_HEADER, DELIVERY_HEADER, TIMESTAMP_HEADER) if not lowered.get(h.lower())]
        raise WebhookRejected(HTTPStatus.UNAUTHORIZED, f"unsigned delivery: missing {', '.join(missing)}")
    version, _, encoded = signature.partition(",")
    if version != SIGNATURE_VERSION or not encoded:
        raise WebhookRejected(HTTPStatus.UNAUTHORIZED, f"{SIGNATURE_HEADER} must be '{SIGNATURE_VERSION},<base64>'")
    try:
        given = base64.b64decode(encoded, validate=True)
        sent_at = int(timestamp)
    except (binascii.Error, ValueError):
        raise WebhookRejected(HTTPStatus.UNAUTHORIZED, "malformed signature or timestamp") from None
    if abs(now - sent_at) > MAX_AGE_SECONDS:
        raise WebhookRejected(HTTPStatus.UNAUTHORIZED, f"timestamp {sent_at} is more than {MAX_AGE_SECONDS}s away")
    signed = f"{delivery}.{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise WebhookRejected(HTTPStatus.UNAUTHORIZED, "signature does not match (wrong secret or altered body)")


def handle_delivery(
    settings: Settings, secret: str, headers: Mapping[str, str], body: bytes, announce: Announce
) -> Reply:
    """Verify one delivery; on a `@champion` alias of our model, record the move and announce it (once)."""
    try:
        verify_signature(secret, headers, body, time.time())
        try:
            delivery = json.loads(body)
            event = f"{delivery['entity']}.{delivery['action']}"
            data = delivery["data"]
        except (ValueError, KeyError, TypeError):
            raise WebhookRejected(HTTPStatus.BAD_REQUEST, "body is not an MLflow webhook payload") from None
    except WebhookRejected as exc:
        logger.warning("webhook delivery refused (%d): %s", exc.status, exc)
        return Reply(exc.status, {"error": str(exc)})
    # Imported here: the registry imports Feast, which `mlstack up` (importing this module) must not need.
    from mlstack.training import registry

    if event != ALIAS_CREATED or data.get("name") != settings.model_name or data.get("alias") != registry.CHAMPION:
        return Reply(HTTPStatus.ACCEPTED, {"status": "ignored", "event": event})
    move = registry.observe_champion(settings, "webhook", announce)
    if move is None:
        return Reply(HTTPStatus.OK, {"status": "already known", "version": str(data.get("version"))})
    logger.info("@%s of %s moved to version %s: announced", registry.CHAMPION, settings.model_name, move.version)
    return Reply(HTTPStatus.OK, {"status": "announced", "version": move.version})


def make_server(settings: Settings, secret: str, announce: Announce, port: int) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:`port`: POST `WEBHOOK_PATH` takes deliveries, GET /health answers 200."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(Reply(HTTPStatus.OK, {"status": "ok"}))
            else:
                self._reply(Reply(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"}))

        def do_POST(self) -> None:
            if self.path != WEBHOOK_PATH:
                self._reply(Reply(HTTPStatus.NOT_FOUND, {"error": f"deliveries go to {WEBHOOK_PATH}"}))
                return
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(Reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"}))
                return
            body = self.rfile.read(length)
            try:
                reply = handle_delivery(settings, secret, dict(self.headers.items()), body, announce)
            except Exception as exc:  # the registry or Prefect failed: MLflow logs the status, the poll catches up
                logger.exception("webhook delivery failed")
                reply = Reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"{type(exc).__name__}: {exc}"})
            self._reply(reply)

        def _reply(self, reply: Reply) -> None:
            payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            logger.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve `server` from a daemon thread (tests; the stack runs it as its own process)."""
    thread = threading.Thread(target=server.serve_forever, name="mlflow-webhooks", daemon=True)
    thread.start()
    return thread


def webhook_secret(settings: Settings) -> str:
    """The HMAC secret shared by the local MLflow server's webhook and the receiver (kept in the state dir)."""
    return state_secret(settings.stack_dir / "webhook-secret", lambda: secrets.token_urlsafe(32))


def start_webhook_receiver(settings: Settings, api_url: str, mlflow_url: str, timeout: float) -> ProcessRecord:
    """Start (or reuse) the receiver; once listening it points the MLflow server's `mlstack-champion` webhook at itself.

    The registration is made by the receiver, not here: an MLflow REST call loads MLflow's request-header
    plugins, which import Feast, and this process may carry a caller's broken `PROMETHEUS_MULTIPROC_DIR`.
    """
    process = running_process(settings, WEBHOOK_RECEIVER)
    if process is None:
        port = free_port()
        command = [sys.executable, "-m", "flows.champion", "--port", str(port), "--mlflow-url", mlflow_url]
        url = f"http://127.0.0.1:{port}"
        process = launch_process(settings, WEBHOOK_RECEIVER, command, url, {"PREFECT_API_URL": api_url})
    return wait_ready(settings, process, receiver_healthy, timeout)


def receiver_healthy(process: ProcessRecord) -> bool:
    """True if the receiver answers /health."""
    return http_ok(f"{process.url}/health")


def stop_webhook_receiver(settings: Settings, timeout: float = 10) -> bool:
    """Stop the receiver; True if it was running (MLflow's deliveries then fail; the poll still notices)."""
    return stop_process(settings, WEBHOOK_RECEIVER, timeout)


def register_webhook(tracking_url: str, receiver_url: str, secret: str) -> str:
    """Create or update the `mlstack-champion` webhook on the MLflow server at `tracking_url`; its id."""
    client = MlflowClient(tracking_uri=tracking_url, registry_uri=tracking_url)
    try:
        existing = next((hook for hook in client.list_webhooks() if hook.name == WEBHOOK_NAME), None)
        if existing is not None:
            client.update_webhook(
                existing.webhook_id, url=receiver_url, events=[ALIAS_CREATED], secret=secret, status="ACTIVE"
            )
            return str(existing.webhook_id)
        created = client.create_webhook(
            WEBHOOK_NAME,
            receiver_url,
            events=[ALIAS_CREATED],
            description="mlstack: @champion moves become the Prefect event mlstack.model.promoted",
            secret=secret,
        )
        return str(created.webhook_id)
    except MlflowException as exc:
        raise LocalStackError(f"could not register the MLflow webhook at {tracking_url}: {exc.message}") from exc
