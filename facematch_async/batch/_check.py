"""The dry run as a library call: which pairs of a manifest a run would refuse before any
network call, through the client's own checks (:meth:`FaceMatchClient.check`: local images
read as the run reads them, images in a store asked about, never downloaded).

```python
client = FaceMatchClient.offline()          # no credentials needed: it never calls the API
check = await check_manifest(read_manifest("pairs.csv"), client)
print(check.ready, dict(check.failing))     # 998 {'PATH_OUTSIDE_ROOT': 1, ...}
```
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from facematch_async._client import FaceMatchClient
from facematch_async.batch._index import KeyIndex
from facematch_async.batch._manifest import ManifestProblem, PairSpec
from facematch_async.errors import ImageError

__all__ = ["ManifestCheck", "check_manifest"]

_CHECK_AHEAD = 16
"""Pairs checked at once: as many as the run reads in one hop, so that a stuck file delays
its own pair, as in the run, and not every pair after it."""
_EXAMPLES = 10


@dataclass
class ManifestCheck:
    """What a run would do with a manifest, found without a network call.

    Attributes:
        ready: Pairs whose images pass every local check: each would cost one request.
        skipped: Pairs the ``skip`` rule passed over (already done, on a resume).
        failing: Pairs a run would record as errors without a call, by code (the
            ``sub_code`` the run's summary counts them under, else the error's type).
        examples: The first few problems, one line each (``line 7: CODE: message``).
    """

    ready: int = 0
    skipped: int = 0
    failing: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def checked(self) -> int:
        """Pairs checked (ready or failing)."""
        return self.ready + sum(self.failing.values())

    def format(self) -> str:
        """The report a dry run prints: counts, each failing code, the first problems."""
        failing = sum(self.failing.values())
        lines = [
            f"{self.checked} pairs to run ({self.skipped} already done): "
            f"{self.ready} ready, {failing} would fail"
        ]
        lines += [f"  {code:<28}{count:>9}" for code, count in self.failing.most_common()]
        if self.examples:
            lines.append("first problems:")
            lines += [f"  {line}" for line in self.examples]
        return "\n".join(lines)

    def record(self, spec: PairSpec, problem: ManifestProblem | None) -> None:
        """Count one checked pair."""
        if problem is None:
            self.ready += 1
            return
        self.failing[problem.sub_code] += 1
        if len(self.examples) < _EXAMPLES:
            where = f"line {spec.line}" if spec.line else spec.pair_id
            self.examples.append(f"{where}: {problem.sub_code}: {problem.message}")


async def check_manifest(
    pairs: Iterable[PairSpec],
    client: FaceMatchClient,
    *,
    skip: Callable[[str], bool] | None = None,
    index_dir: str | None = None,
    on_progress: Callable[[ManifestCheck], object] | None = None,
) -> ManifestCheck:
    """Check every pair as a run would before its call: the manifest row, a repeated
    ``pair_id``, then both images (regular file, size, magic bytes, end marker, the read
    deadline), with ``client``'s settings. Nothing is sent.

    Args:
        pairs: The manifest's pairs (:func:`read_manifest`, filtered by a shard).
        client: Whose image settings apply; :meth:`FaceMatchClient.offline` needs no
            credentials.
        skip: As for :meth:`BatchRunner.run` (a results file's ``skip_rule`` on a resume).
        index_dir: Where the on-disk index of pair ids goes (default: the temp folder).
        on_progress: Called with the counts so far after each group of pairs.

    Raises:
        IndexStorageError: the on-disk index cannot be written.
    """
    check = ManifestCheck()
    seen = KeyIndex(index_dir)
    pending: list[PairSpec] = []
    try:
        for spec in pairs:
            problem = spec.problem
            if spec.pair_id and not seen.add(spec.pair_id, spec.line):
                problem = ManifestProblem("DUPLICATE_PAIR_ID", f"pair_id {spec.pair_id!r} repeated")
            key = PairSpec(spec.pair_id, None, None, spec.line, problem=problem).key
            if skip is not None and skip(key):
                check.skipped += 1
            elif problem is not None:
                check.record(spec, problem)
            else:
                pending.append(spec)
                if len(pending) >= _CHECK_AHEAD:
                    await _check_images(pending, client, check)
                    if on_progress is not None:
                        on_progress(check)
        await _check_images(pending, client, check)
    finally:
        seen.close()
    return check


async def _check_images(
    pending: list[PairSpec], client: FaceMatchClient, check: ManifestCheck
) -> None:
    checks = [client.check(*spec.images()) for spec in pending]
    results = await asyncio.gather(*checks, return_exceptions=True)
    for spec, result in zip(pending, results, strict=True):
        problem = None
        if isinstance(result, ImageError):
            problem = ManifestProblem(result.sub_code or type(result).__name__, result.message)
        elif isinstance(result, BaseException):
            raise result
        check.record(spec, problem)
    pending.clear()
