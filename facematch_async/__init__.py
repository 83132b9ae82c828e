"""Async client for the Deepvue Face Match API.

```python
from facematch_async import FaceMatchClient

async with FaceMatchClient(client_id="...", client_secret="...") as client:
    result = await client.match("selfie.jpg", "id_card.png")

    runner = BatchRunner(client, concurrency=32, rate_limit="business")
    async for outcome in runner.run(read_manifest("pairs.csv")):
        print(outcome.pair_id, outcome.status)
```
"""

from facematch_async._client import PRODUCTION_BASE_URL, FaceMatchClient
from facematch_async._events import RequestEvent, RequestHook
from facematch_async._images import ImageInput, PreparedMatch
from facematch_async._models import FaceMatchResult
from facematch_async._pacing import redact_url
from facematch_async._plans import PLANS, Window, parse_rate_limit
from facematch_async._ratelimit import PacingStatus, RateLimiter
from facematch_async._retry import RetryPolicy
from facematch_async._storage import ImageLocation
from facematch_async._version import __version__
from facematch_async.batch import (
    BatchRunner,
    BatchSummary,
    Comparison,
    JobState,
    PairError,
    PairOutcome,
    PairSpec,
    ResultsFile,
    compare_results,
    job_state,
    read_manifest,
    write_report,
)
from facematch_async.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CallStoppedError,
    ClientClosedError,
    CorruptImageError,
    DeadlineExceededError,
    EmptyImageError,
    FaceMatchError,
    ImageError,
    ImageReadError,
    ImageTooLargeError,
    ImageUnavailableError,
    InactiveClientError,
    InternalServerError,
    InvalidTokenError,
    NoFaceFoundError,
    PacingStoreError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    RequestValidationError,
    UnsupportedFileFormatError,
)

__all__ = [
    "PLANS",
    "PRODUCTION_BASE_URL",
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchRunner",
    "BatchSummary",
    "CallStoppedError",
    "ClientClosedError",
    "Comparison",
    "CorruptImageError",
    "DeadlineExceededError",
    "EmptyImageError",
    "FaceMatchClient",
    "FaceMatchError",
    "FaceMatchResult",
    "ImageError",
    "ImageInput",
    "ImageLocation",
    "ImageReadError",
    "ImageTooLargeError",
    "ImageUnavailableError",
    "InactiveClientError",
    "InternalServerError",
    "InvalidTokenError",
    "JobState",
    "NoFaceFoundError",
    "PacingStatus",
    "PacingStoreError",
    "PairError",
    "PairOutcome",
    "PairSpec",
    "PermissionDeniedError",
    "PreparedMatch",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimiter",
    "RequestEvent",
    "RequestHook",
    "RequestValidationError",
    "ResultsFile",
    "RetryPolicy",
    "UnsupportedFileFormatError",
    "Window",
    "__version__",
    "compare_results",
    "job_state",
    "parse_rate_limit",
    "read_manifest",
    "redact_url",
    "write_report",
]
