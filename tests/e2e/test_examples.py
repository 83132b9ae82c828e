"""The examples run as users would run them, against a sandbox in its own process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facematch_async.sandbox import make_test_image, sandbox_process
from tests.helpers import CLIENT_ID, CLIENT_SECRET, load_example, upload

pytest.importorskip("fastapi", reason="the FastAPI example needs the 'examples' extra")
from fastapi.testclient import TestClient


@pytest.fixture
def kyc_app(cli_sandbox_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The FastAPI example with its lifespan running, configured through DEEPVUE_* only."""
    monkeypatch.setenv("DEEPVUE_BASE_URL", cli_sandbox_url)
    monkeypatch.setenv("DEEPVUE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", CLIENT_SECRET)
    module = load_example("fastapi_kyc")
    with TestClient(module.app) as http:
        yield http


def test_fastapi_example_returns_the_decision(kyc_app: TestClient) -> None:
    """Same person: 200 with match, confidence and transaction_id."""
    response = kyc_app.post(
        "/kyc/face-match",
        files=upload(make_test_image("meera", "jpeg"), make_test_image("meera", "png")),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["match"] is True
    assert body["confidence"] == 98.0
    assert body["transaction_id"]


def test_fastapi_example_asks_for_a_retake_when_no_face(kyc_app: TestClient) -> None:
    """No face: 422 telling the app to retake the photo."""
    response = kyc_app.post(
        "/kyc/face-match",
        files=upload(make_test_image("none", "jpeg"), make_test_image("meera", "png")),
    )
    assert response.status_code == 422
    assert response.json()["action"] == "retake"


def test_fastapi_example_refuses_a_gif_before_calling_the_api(kyc_app: TestClient) -> None:
    """A GIF upload is refused locally, naming the form field."""
    response = kyc_app.post(
        "/kyc/face-match", files=upload(b"GIF89a....", make_test_image("meera", "png"))
    )
    assert response.status_code == 422
    assert response.json()["code"] == "unsupported_format"
    assert response.json()["field"] == "selfie"


def test_fastapi_example_shares_one_client_across_requests(kyc_app: TestClient) -> None:
    """Many requests, one client: the token is fetched once and reused."""
    for _ in range(5):
        kyc_app.post(
            "/kyc/face-match",
            files=upload(make_test_image("a", "jpeg"), make_test_image("b", "png")),
        )
    client = kyc_app.app.state.facematch  # type: ignore[attr-defined]
    assert client._transport._session is not None
    assert client._tokens.cached() is not None


async def test_bulk_reverify_example_fills_its_table_and_resumes(
    cli_sandbox_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python-API bulk job writes one row per pair; a rerun sends nothing again."""
    import sqlite3

    monkeypatch.setenv("DEEPVUE_BASE_URL", cli_sandbox_url)
    monkeypatch.setenv("DEEPVUE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", CLIENT_SECRET)
    (tmp_path / "a.jpg").write_bytes(make_test_image("a", "jpeg"))
    (tmp_path / "b.png").write_bytes(make_test_image("b", "png"))
    (tmp_path / "pairs.csv").write_text(
        "pair_id,file_a,file_b\nsame,a.jpg,a.jpg\ndiff,a.jpg,b.png\nbad,a.jpg,missing.png\n"
    )
    module = load_example("bulk_reverify")
    database = tmp_path / "kyc.db"
    assert await module.reverify(tmp_path / "pairs.csv", database, rate_limit=None) == 1
    rows = dict(
        sqlite3.connect(database).execute("SELECT pair_id, status FROM kyc_results").fetchall()
    )
    assert rows == {"same": "match", "diff": "no_match", "bad": "error"}
    # Everything is in the table: the rerun skips all three pairs.
    assert await module.reverify(tmp_path / "pairs.csv", database, rate_limit=None) == 0


def test_sandbox_process_refuses_a_command_that_is_no_sandbox() -> None:
    """A process whose first line is not 'Sandbox listening on' raises, and is ended."""
    not_a_sandbox = [sys.executable, "-c", "print('hello'); input()"]
    with pytest.raises(RuntimeError, match="did not start"), sandbox_process(command=not_a_sandbox):
        pass
