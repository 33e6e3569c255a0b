"""The ASGI guards of the service (body limit, bearer token) on a tiny ASGI app: no BentoML needed."""

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.guards import RequestGuard


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


def _client(**options) -> TestClient:
    app = Starlette(routes=[Route("/predict", echo, methods=["POST"]), Route("/livez", echo, methods=["GET"])])
    return TestClient(RequestGuard(app, **options))


def test_guard_passes_a_body_under_the_limit():
    response = _client(max_body_bytes=100, token="").post("/predict", content=b"x" * 100)
    assert response.status_code == 200 and response.json() == {"size": 100}


def test_guard_refuses_declared_oversized_body_with_413_json():
    response = _client(max_body_bytes=100, token="").post("/predict", content=b"x" * 101)
    assert response.status_code == 413
    assert response.json()["cause"] == "payload_too_large"


def test_guard_refuses_chunked_oversized_body():
    def chunks():
        for _ in range(5):
            yield b"x" * 50

    response = _client(max_body_bytes=100, token="").post("/predict", content=chunks())
    assert response.status_code == 413


@pytest.mark.parametrize("header", [None, "Bearer wrong", "secret", "Basic c2VjcmV0"])
def test_guard_requires_the_bearer_token_when_set(header):
    headers = {"authorization": header} if header else {}
    response = _client(max_body_bytes=1000, token="secret").post("/predict", content=b"{}", headers=headers)
    assert response.status_code == 401
    assert response.json()["cause"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_guard_accepts_the_right_token_and_leaves_health_open():
    client = _client(max_body_bytes=1000, token="secret")
    assert client.post("/predict", content=b"{}", headers={"authorization": "Bearer secret"}).status_code == 200
    assert client.get("/livez").status_code == 200


def test_guard_without_token_is_open():
    assert _client(max_body_bytes=1000, token="").post("/predict", content=b"{}").status_code == 200


@pytest.mark.parametrize(
    "media_type",
    ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle"],
)
def test_guard_refuses_non_json_bodies_on_scoring_paths_with_415(media_type):
    response = _client(max_body_bytes=1000, token="").post(
        "/predict", content=b"{}", headers={"content-type": media_type}
    )
    assert response.status_code == 415
    assert response.json()["cause"] == "unsupported_media_type"


@pytest.mark.parametrize("media_type", [None, "application/json", "application/json; charset=utf-8", "text/plain"])
def test_guard_passes_json_and_unlabelled_bodies(media_type):
    headers = {"content-type": media_type} if media_type else {}
    assert _client(max_body_bytes=1000, token="").post("/predict", content=b"{}", headers=headers).status_code == 200
