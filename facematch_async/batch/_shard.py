"""``--shard K/N``, ``--shard auto`` and ``--shard auto/N``: which slice of a manifest is ours.

Shards are 1-based (``1/8`` .. ``8/8``). ``auto`` reads the index from the job scheduler that
started the process, and the count where it gives one:

* Kubernetes Indexed Jobs: ``JOB_COMPLETION_INDEX`` (0-based); no count, so write
  ``auto/N`` or set ``FACEMATCH_SHARD_COUNT``;
* Slurm job arrays: ``SLURM_ARRAY_TASK_ID`` counted from ``SLURM_ARRAY_TASK_MIN`` in steps of
  ``SLURM_ARRAY_TASK_STEP``, and ``SLURM_ARRAY_TASK_COUNT``;
* AWS Batch array jobs: ``AWS_BATCH_JOB_ARRAY_INDEX`` (0-based); no count, as Kubernetes.

A count given both by the scheduler and by ``auto/N`` must agree: a job whose shards
disagree on N would skip or repeat pairs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping

from facematch_async.batch._index import key_hash
from facematch_async.batch._manifest import PairSpec

__all__ = ["COUNT_VARIABLE", "in_shard", "resolve_shard", "scheduler_shard", "shard_filter"]

COUNT_VARIABLE = "FACEMATCH_SHARD_COUNT"
"""Set this to the number of shards where the scheduler does not say (Kubernetes, AWS)."""


def _whole(text: str) -> int:
    """A whole number in plain ASCII digits: ``int()`` alone would also take ``1_0``,
    ``+3`` or other scripts' digits, which no scheduler writes."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return _whole(value)
    except ValueError:
        raise ValueError(f"${name} must be a whole number, not {value!r}") from None


def scheduler_shard(environ: Mapping[str, str]) -> tuple[str, int, int | None] | None:
    """The scheduler's name, our 0-based index and its count (``None`` if not given)."""
    index = _int(environ, "JOB_COMPLETION_INDEX")
    if index is not None:
        return "Kubernetes (JOB_COMPLETION_INDEX)", index, None
    task = _int(environ, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        first = _int(environ, "SLURM_ARRAY_TASK_MIN") or 0
        step = _int(environ, "SLURM_ARRAY_TASK_STEP") or 1
        if step < 1 or (task - first) % step:
            raise ValueError(
                f"Slurm task {task} is not on the array's grid (min {first}, step {step}); "
                "use an array like --array=0-7 or pass --shard K/N"
            )
        count = _int(environ, "SLURM_ARRAY_TASK_COUNT")
        return "Slurm (SLURM_ARRAY_TASK_ID)", (task - first) // step, count
    index = _int(environ, "AWS_BATCH_JOB_ARRAY_INDEX")
    if index is not None:
        return "AWS Batch (AWS_BATCH_JOB_ARRAY_INDEX)", index, None
    return None


def resolve_shard(
    text: str | None, environ: Mapping[str, str] | None = None
) -> tuple[int, int] | None:
    """``(k, n)``, 1-based, from ``K/N``, ``auto`` or ``auto/N``; ``None`` for no sharding.

    Raises:
        ValueError: malformed, out of range, no scheduler variables for ``auto``, no count,
            or a count that disagrees with the scheduler's.
    """
    if text is None:
        return None
    environ = os.environ if environ is None else environ
    head, _, tail = text.strip().partition("/")
    if head.lower() != "auto":
        try:
            k, n = _whole(head), _whole(tail)
        except ValueError:
            raise ValueError(f"--shard must look like 2/8, auto or auto/8, not {text!r}") from None
        if not 1 <= k <= n:
            raise ValueError(f"--shard {text}: K must be between 1 and N")
        return k, n
    try:
        given = _whole(tail) if tail else None
    except ValueError:
        raise ValueError(f"--shard {text}: expected auto or auto/N") from None
    found = scheduler_shard(environ)
    if found is None:
        raise ValueError(
            "--shard auto: no scheduler index found (JOB_COMPLETION_INDEX, "
            "SLURM_ARRAY_TASK_ID, AWS_BATCH_JOB_ARRAY_INDEX); pass --shard K/N"
        )
    source, index, count = found
    env_count = _int(environ, COUNT_VARIABLE)
    for other in (given, env_count):
        if other is not None and count is not None and other != count:
            raise ValueError(f"--shard {text}: {source} says {count} shards, not {other}")
        count = other if count is None else count
    if count is None:
        raise ValueError(
            f"--shard auto: {source} gives the index but not the count; "
            f"pass --shard auto/N or set {COUNT_VARIABLE}"
        )
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: {source} index {index} is outside 0..{count - 1}")
    return index + 1, count


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Whether the pair filed under ``key`` belongs to shard ``(k, n)`` (1-based): a stable
    hash of the key, so every machine agrees. Every pair belongs to ``None``."""
    if shard is None:
        return True
    k, n = shard
    return key_hash(key) % n == k - 1


def shard_filter(specs: Iterable[PairSpec], shard: tuple[int, int] | None) -> Iterator[PairSpec]:
    """The pairs of ``specs`` that belong to ``shard`` (all of them for ``None``)."""
    if shard is None:
        yield from specs
        return
    for spec in specs:
        if in_shard(spec.key, shard):
            yield spec
