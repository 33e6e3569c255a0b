"""The ASGI guards of the service (header and body limits, method, bearer token, media type) on a tiny ASGI app."""

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from services.guards import MAX_HEADER_BYTES, MAX_HEADER_COUNT, RequestGuard

JSON = {"content-type": "application/json"}


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


def _client(**options) -> TestClient:
    app = Starlette(routes=[Route("/predict", echo, methods=["POST"]), Route("/livez", echo, methods=["GET"])])
    return TestClient(RequestGuard(app, **options), headers=JSON)


def _assert_json_error(response, status: int, cause: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["cause"] == cause
    assert response.json()["error"]


def test_guard_passes_a_body_under_the_limit():
    response = _client(max_body_bytes=100, token="").post("/predict", content=b"x" * 100)
    assert response.status_code == 200 and response.json() == {"size": 100}


def test_guard_refuses_declared_oversized_body_with_413_json():
    response = _client(max_body_bytes=100, token="").post("/predict", content=b"x" * 101)
    _assert_json_error(response, 413, "payload_too_large")


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
    _assert_json_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_guard_accepts_the_right_token_and_leaves_health_open():
    client = _client(max_body_bytes=1000, token="secret")
    assert client.post("/predict", content=b"{}", headers={"authorization": "Bearer secret"}).status_code == 200
    assert client.get("/livez").status_code == 200


def test_guard_without_token_is_open():
    assert _client(max_body_bytes=1000, token="").post("/predict", content=b"{}").status_code == 200


@pytest.mark.parametrize(
    "media_type",
    [
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/vnd.bentoml+pickle",
        "text/plain",  # what a page on any origin sends without a CORS preflight
        "text/plain; charset=utf-8",
        "application/json-patch+json",
        "application/json; charset=latin-1",
        "",
    ],
)
def test_guard_refuses_non_json_bodies_on_scoring_paths_with_415(media_type):
    response = _client(max_body_bytes=1000, token="").post(
        "/predict", content=b"{}", headers={"content-type": media_type}
    )
    _assert_json_error(response, 415, "unsupported_media_type")


def test_guard_refuses_an_unlabelled_body_on_scoring_paths_with_415():
    client = TestClient(RequestGuard(Starlette(routes=[Route("/predict", echo, methods=["POST"])]), 1000, ""))
    response = client.post("/predict", content=b"{}")
    assert "content-type" not in response.request.headers
    _assert_json_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "media_type", ["application/json", "application/json; charset=utf-8", 'Application/JSON; charset="UTF-8"']
)
def test_guard_passes_json_bodies(media_type):
    response = _client(max_body_bytes=1000, token="").post(
        "/predict", content=b"{}", headers={"content-type": media_type}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_guard_answers_other_methods_on_scoring_paths_with_json_405(method):
    response = _client(max_body_bytes=1000, token="secret").request(method, "/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    if method != "HEAD":
        _assert_json_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/predict", "/livez"])
def test_guard_refuses_an_oversized_header_with_431_json(path):
    client = _client(max_body_bytes=1000, token="secret")
    response = client.request("POST" if path == "/predict" else "GET", path, headers={"x-big": "x" * MAX_HEADER_BYTES})
    _assert_json_error(response, 431, "request_header_fields_too_large")
    assert "x-big" in response.json()["error"]


def test_guard_refuses_too_many_headers_with_431_json():
    headers = {f"x-h{i}": "v" for i in range(MAX_HEADER_COUNT)}
    response = _client(max_body_bytes=1000, token="").post("/predict", content=b"{}", headers=headers)
    _assert_json_error(response, 431, "request_header_fields_too_large")


def test_guard_passes_headers_up_to_the_limits():
    client = _client(max_body_bytes=1000, token="", max_header_bytes=4096, max_header_count=20)
    assert client.post("/predict", content=b"{}", headers={"x-big": "x" * 3500}).status_code == 200
    assert client.post("/predict", content=b"{}", headers={"x-big": "x" * 4096}).status_code == 431
