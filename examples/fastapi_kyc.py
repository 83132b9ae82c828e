"""A FastAPI onboarding service that owns one FaceMatchClient for its whole life.

    pip install "facematch-async[examples]"
    facematch-async sandbox --port 8080 &          # or point DEEPVUE_* at Deepvue
    DEEPVUE_BASE_URL=http://127.0.0.1:8080 DEEPVUE_CLIENT_ID=sandbox-client \\
        DEEPVUE_CLIENT_SECRET=sandbox-secret uvicorn examples.fastapi_kyc:app

    curl -F selfie=@selfie.jpg -F id_document=@id.png http://127.0.0.1:8000/kyc/face-match

The client is created in the lifespan (credentials from the DEEPVUE_* variables), shared
by every request, and closed at shutdown. Each outcome maps to an HTTP answer a mobile
app can act on: a decision, "retake the photo", or "try again later".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, UploadFile

from facematch_async import (
    FaceMatchClient,
    FaceMatchError,
    ImageError,
    NoFaceFoundError,
    RateLimitError,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with FaceMatchClient(max_retries=2, timeout=20) as client:
        app.state.facematch = client
        yield


app = FastAPI(title="KYC face match", lifespan=lifespan)


@app.post("/kyc/face-match")
async def face_match(
    request: Request, selfie: UploadFile, id_document: UploadFile
) -> dict[str, Any]:
    """Compare a selfie with an ID document and return the decision."""
    client: FaceMatchClient = request.app.state.facematch
    try:
        # UploadFile.file is a binary file object: the client reads it off the event loop.
        result = await client.match(selfie.file, id_document.file)
    except NoFaceFoundError as error:
        raise HTTPException(422, {"action": "retake", "reason": "no face found"}) from error
    except ImageError as error:
        raise HTTPException(422, {"action": "retake", "reason": error.message}) from error
    except RateLimitError as error:
        retry_after = str(int(error.retry_after or 1))
        raise HTTPException(503, "busy, try again", headers={"Retry-After": retry_after}) from error
    except FaceMatchError as error:
        # transaction_id lets support find the call in Deepvue's logs.
        raise HTTPException(
            502, {"reason": "face match unavailable", "transaction_id": error.transaction_id}
        ) from error
    return {
        "match": result.match,
        "confidence": result.confidence,
        "transaction_id": result.transaction_id,
    }
