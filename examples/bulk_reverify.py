"""Bulk re-verification from Python, with your own result sink (here: a SQLite table).

    export DEEPVUE_CLIENT_ID=... DEEPVUE_CLIENT_SECRET=...
    python examples/bulk_reverify.py pairs.csv kyc.db

The CLI (`facematch-async batch`) writes JSONL or CSV; a compliance back end often wants
the outcomes somewhere else. The runner yields one outcome per pair as it completes; the
sink commits each one, and a rerun skips the pairs the table already holds, so the job can
stop (Ctrl-C, a crash, the daily quota) and resume without repeating a billed call.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from facematch_async import BatchRunner, FaceMatchClient, PairOutcome, read_manifest


class SqliteSink:
    """One row per pair in ``kyc_results``; the pair id is the primary key."""

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS kyc_results (pair_id TEXT PRIMARY KEY, status TEXT,"
            " confidence REAL, error TEXT, transaction_id TEXT, attempts INTEGER)"
        )

    def done(self, pair_id: str) -> bool:
        """Whether the pair already has an outcome (so a rerun skips it)."""
        query = "SELECT 1 FROM kyc_results WHERE pair_id = ?"
        return self.db.execute(query, (pair_id,)).fetchone() is not None

    def write(self, outcome: PairOutcome) -> None:
        result, error = outcome.result, outcome.error
        self.db.execute(
            "INSERT OR REPLACE INTO kyc_results VALUES (?, ?, ?, ?, ?, ?)",
            (
                outcome.key,
                outcome.status,
                result.confidence if result else None,
                f"{error.type}: {error.message}" if error else None,
                (result.transaction_id if result else error.transaction_id if error else None),
                outcome.attempts,
            ),
        )
        self.db.commit()  # one commit per pair: a crash loses only the pairs in flight

    def close(self) -> None:
        self.db.close()


async def reverify(manifest: str | Path, database: str | Path, rate_limit: str | None) -> int:
    """Run every pair of ``manifest`` not yet in ``database``; returns the number of errors."""
    sink = SqliteSink(database)
    errors = 0
    try:
        # DEEPVUE_* from the environment; the client paces every call within the plan (with
        # DEEPVUE_RATE_LIMIT_STORE, together with the key's other processes).
        async with FaceMatchClient(rate_limit=rate_limit) as client:
            runner = BatchRunner(
                client, concurrency=16, rate_limit=client.rate_limiter
            )  # None: none
            async for outcome in runner.run(read_manifest(manifest), skip=sink.done):
                sink.write(outcome)
                errors += outcome.status == "error"
    finally:
        sink.close()
    return errors


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    failed = asyncio.run(reverify(sys.argv[1], sys.argv[2], rate_limit="business"))
    sys.exit(1 if failed else 0)
