"""The dlib engine on real photographs, directly and through the sandbox over HTTP.

The photos are read in place from ``../shared/faces/`` beside the repository (see its
README); they are never copied into the project. Every test here skips, saying why, when the
``face`` extra or that folder is missing.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from facematch_async.sandbox import (
    MATCH_THRESHOLD,
    DlibEngine,
    SandboxConfig,
    SandboxServer,
    choose_engine,
    distance_to_confidence,
    dlib_available,
)
from tests.helpers import FACES, fetch_token

pytestmark = [
    pytest.mark.skipif(
        not dlib_available(),
        reason="the 'face' extra is not installed: pip install -e '.[test,face]'",
    ),
    pytest.mark.skipif(not FACES.is_dir(), reason=f"the sample photos folder {FACES} is not there"),
]

CLIENT_ID = "face-client"
SECRET = "face-secret"


def photo(name: str) -> bytes:
    return (FACES / name).read_bytes()


@pytest.fixture(scope="module")
def engine() -> DlibEngine:
    """One engine for the module; its models load once per process anyway."""
    built = DlibEngine()
    built.warm_up()
    return built


# --- the engine ---------------------------------------------------------------------------


def test_same_person_matches(engine: DlibEngine) -> None:
    """Two different photos of Obama are the same person, about 0.35 apart."""
    verdict = engine.compare(photo("obama.jpg"), photo("obama2.jpg"))
    assert verdict.face_found and verdict.match
    assert verdict.distance is not None and verdict.distance < 0.5
    assert verdict.confidence == pytest.approx(distance_to_confidence(verdict.distance), abs=0.01)
    assert verdict.confidence > 50


@pytest.mark.parametrize(
    ("name_a", "name_b"),
    [("obama.jpg", "biden.jpg"), ("obama.jpg", "cruise.jpg"), ("biden.jpg", "cruise.jpg")],
)
def test_different_people_do_not_match(engine: DlibEngine, name_a: str, name_b: str) -> None:
    """Different people are well beyond the 0.6 threshold (0.8 to 0.9 apart)."""
    verdict = engine.compare(photo(name_a), photo(name_b))
    assert verdict.face_found and not verdict.match
    assert verdict.distance is not None and verdict.distance > 0.7
    assert verdict.confidence < 50


def test_the_same_photo_is_distance_zero(engine: DlibEngine) -> None:
    """A photo compared with itself is 0 apart, confidence 100."""
    verdict = engine.compare(photo("cruise.jpg"), photo("cruise.jpg"))
    assert verdict.match and verdict.distance == pytest.approx(0.0, abs=1e-6)
    assert verdict.confidence == 100.0


def test_no_face_in_either_image(engine: DlibEngine) -> None:
    """A gradient has no face, whichever side it is on."""
    assert not engine.compare(photo("no_face.png"), photo("obama.jpg")).face_found
    assert not engine.compare(photo("obama.jpg"), photo("no_face.png")).face_found
    assert engine.embed(photo("no_face.png")) is None


def test_undecodable_image_has_no_face(engine: DlibEngine) -> None:
    """A truncated JPEG (right magic bytes, no picture) is a no-face answer, not a crash."""
    truncated = photo("obama.jpg")[:200]
    assert not engine.compare(truncated, photo("obama.jpg")).face_found
    assert not engine.compare(b"%PDF-1.4\n" + bytes(64), photo("obama.jpg")).face_found


def test_exif_orientation_is_applied(engine: DlibEngine) -> None:
    """A photo stored sideways with an EXIF 'rotate' tag is read upright and still matches."""
    from PIL import Image

    upright = Image.open(io.BytesIO(photo("obama.jpg")))
    # Stored turned 90 degrees anticlockwise; orientation 6 tells viewers to turn it back.
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", exif=exif.tobytes(), quality=92)
    verdict = engine.compare(buffer.getvalue(), photo("obama2.jpg"))
    assert verdict.face_found and verdict.match


def test_large_photos_are_downscaled(engine: DlibEngine) -> None:
    """A 2x upscaled photo (2400 px) is downscaled first: it matches, in bounded time."""
    from PIL import Image

    original = Image.open(io.BytesIO(photo("obama2.jpg")))
    big = original.resize((original.width * 2, original.height * 2))
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    started = time.perf_counter()
    verdict = engine.compare(buffer.getvalue(), photo("obama.jpg"))
    assert verdict.match
    assert time.perf_counter() - started < 10  # ~1 s here; undownscaled it takes far longer


def test_confidence_falls_as_distance_grows() -> None:
    """The mapping is 100 at 0, 50 at the threshold, 0 from 1.2, and never increases."""
    assert distance_to_confidence(0.0) == 100.0
    assert distance_to_confidence(MATCH_THRESHOLD) == pytest.approx(50.0)
    assert distance_to_confidence(1.2) == 0.0 == distance_to_confidence(2.0)
    samples = [distance_to_confidence(step / 100) for step in range(150)]
    assert samples == sorted(samples, reverse=True)


def test_auto_picks_dlib_when_installed() -> None:
    """``auto`` means dlib when the extra is importable."""
    assert choose_engine("auto").name == "dlib"
    assert choose_engine("dlib").name == "dlib"


def test_engine_settings_are_validated() -> None:
    """A tiny max_side or a non-positive threshold is refused at construction."""
    with pytest.raises(ValueError, match="max_side"):
        DlibEngine(max_side=10)
    with pytest.raises(ValueError, match="threshold"):
        DlibEngine(threshold=0)


# --- through the sandbox -------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[SandboxServer]:
    config = SandboxConfig(client_id=CLIENT_ID, client_secret=SECRET, engine="dlib")
    async with SandboxServer(config) as running:
        yield running


async def authorize(session: aiohttp.ClientSession, server: SandboxServer) -> str:
    return await fetch_token(session, server, CLIENT_ID, SECRET)


async def facematch(
    session: aiohttp.ClientSession, server: SandboxServer, a: str, b: str, version: int = 1
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("file_a", photo(a), filename=a)
    form.add_field("file_b", photo(b), filename=b)
    headers = {"Authorization": f"Bearer {await authorize(session, server)}", "x-api-key": SECRET}
    url = f"{server.base_url}/v{version}/facematch"
    async with session.post(url, data=form, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_sandbox_answers_with_the_real_engine(server: SandboxServer) -> None:
    """v1 gives a float confidence, v2 an integer one; both say match for Obama twice."""
    assert server.engine.name == "dlib"
    async with aiohttp.ClientSession() as session:
        status, body = await facematch(session, server, "obama.jpg", "obama2.jpg")
        assert status == 200 and body["sub_code"] == "SUCCESS"
        assert body["data"]["match"] is True and isinstance(body["data"]["confidence"], float)
        status, body = await facematch(session, server, "obama.jpg", "cruise.jpg", version=2)
        assert status == 200 and body["data"]["match"] is False
        assert isinstance(body["data"]["confidence"], int)


async def test_sandbox_no_face_found(server: SandboxServer) -> None:
    """``no_face.png`` gives the documented NO_FACE_FOUND answer."""
    async with aiohttp.ClientSession() as session:
        status, body = await facematch(session, server, "obama.jpg", "no_face.png")
    assert status == 400
    assert body["sub_code"] == "NO_FACE_FOUND" and body["message"] == "Unable to detect face"


async def test_slow_compare_does_not_block_authorize(server: SandboxServer) -> None:
    """While dlib works on a pair (~0.6 s), an authorize request is answered promptly."""
    async with aiohttp.ClientSession() as session:
        token = await authorize(session, server)  # warm the connection pool and the models
        form = aiohttp.FormData()
        form.add_field("file_a", photo("obama.jpg"), filename="a.jpg")
        form.add_field("file_b", photo("biden.jpg"), filename="b.jpg")
        headers = {"Authorization": f"Bearer {token}", "x-api-key": SECRET}

        async def compare() -> float:
            url = f"{server.base_url}/v1/facematch"
            async with session.post(url, data=form, headers=headers) as resp:
                assert resp.status == 200
            return time.perf_counter()

        compare_started = time.perf_counter()
        comparing = asyncio.create_task(compare())
        await asyncio.sleep(0.1)  # the compare is under way in a worker thread
        started = time.perf_counter()
        await authorize(session, server)
        authorized = time.perf_counter()
        compared = await comparing
    # Relative, so a loaded machine slows both alike: had the engine held the event loop,
    # authorize would have waited for most of the compare.
    assert authorized < compared, "authorize waited for the face engine"
    assert authorized - started < (compared - compare_started) / 3


def test_concurrent_compares_agree(engine: DlibEngine) -> None:
    """Compares in several threads at once (as the sandbox runs them) give identical answers."""
    from concurrent.futures import ThreadPoolExecutor

    pairs = [("obama.jpg", "obama2.jpg"), ("obama.jpg", "biden.jpg")] * 2
    expected = {pair: engine.compare(photo(pair[0]), photo(pair[1])) for pair in set(pairs)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(
            pool.map(lambda pair: engine.compare(photo(pair[0]), photo(pair[1])), pairs)
        )
    for pair, verdict in zip(pairs, verdicts, strict=True):
        assert verdict.match == expected[pair].match
        assert verdict.distance == pytest.approx(expected[pair].distance, abs=1e-6)


def test_models_load_once_per_process(engine: DlibEngine) -> None:
    """Every engine shares the process's models: a second engine loads nothing."""
    from facematch_async.sandbox import _dlib

    loaded = _dlib._load_models()
    DlibEngine().warm_up()
    assert _dlib._load_models() is loaded


def test_the_highest_scoring_face_wins_not_the_largest(monkeypatch: pytest.MonkeyPatch) -> None:
    """With two detections, the landmarks are taken on the one dlib is surest of."""
    from facematch_async.sandbox import _dlib, make_test_image

    dlib = importlib.import_module("dlib")  # untyped, and absent without the extra

    large = dlib.rectangle(0, 0, 400, 400)
    small = dlib.rectangle(10, 10, 60, 60)
    chosen: list[Any] = []

    class Detector:
        def run(self, pixels: Any, upsample: int) -> tuple[list[Any], list[float], list[int]]:
            assert upsample == 1
            return [large, small], [0.4, 1.7], [0, 0]

    def predictor(pixels: Any, rect: Any) -> str:
        chosen.append(rect)
        return "landmarks"

    real = _dlib._load_models()
    fake = _dlib._Models(
        dlib=real.dlib,
        numpy=real.numpy,
        shape_predictor=predictor,
        face_encoder=type("Encoder", (), {"compute_face_descriptor": lambda *_: [0.0] * 128})(),
        lock=real.lock,
    )
    monkeypatch.setattr(_dlib, "_load_models", lambda: fake)
    monkeypatch.setattr(_dlib, "_detector", lambda models: Detector())
    assert DlibEngine().embed(make_test_image("anyone")) == [0.0] * 128
    assert chosen == [small]
